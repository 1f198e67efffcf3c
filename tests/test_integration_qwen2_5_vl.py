"""apply_ada_vtp on HF transformers' Qwen2_5_VLForConditionalGeneration, on a tiny random config
(2-block vision tower with window and full attention, 2-layer language model; CPU, seconds): token
counts, the kept tokens' original 3D positions, keep = all against the unpatched model, ragged
image sizes in one batch, the received-attention score against the model's own eager attention
maps, and argument errors."""

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration  # noqa: E402
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl  # noqa: E402
from transformers.vision_utils import get_vision_window_index  # noqa: E402

from ada_vtp_kernels.integrations import apply_ada_vtp, last_prune_result, remove_ada_vtp  # noqa: E402
from ada_vtp_kernels.integrations.qwen2_5_vl import image_features_and_scores  # noqa: E402

from support.precision import assert_within_fp32_error  # noqa: E402

pytestmark = pytest.mark.requires_ext

PAD, BOS, IMAGE_TOKEN, VIDEO_TOKEN, VISION_START, VISION_END = 0, 1, 150, 151, 152, 153
PATCH, MERGE = 14, 2
PIXELS_PER_PATCH = 3 * 2 * PATCH * PATCH  # channels · temporal_patch_size · patch²
SQUARE, WIDE = (1, 8, 8), (1, 6, 10)  # patch grids: 16 and 15 merged tokens
GENERATE = dict(max_new_tokens=6, do_sample=False)


def tiny_qwen(fullatt_block_indexes=(1,), attn_implementation: str = "sdpa") -> Qwen2_5_VLForConditionalGeneration:
    """Vision: 2 blocks, window 56 px (2×2 merged tokens per window); the last block full attention
    unless ``fullatt_block_indexes`` says otherwise."""
    torch.manual_seed(0)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=PATCH,
                  spatial_merge_size=MERGE, temporal_patch_size=2, window_size=56, out_hidden_size=32,
                  fullatt_block_indexes=list(fullatt_block_indexes))
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=160, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=None,
                max_position_embeddings=4096,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]})
    config = Qwen2_5_VLConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN,
                              video_token_id=VIDEO_TOKEN, vision_start_token_id=VISION_START,
                              vision_end_token_id=VISION_END)
    return Qwen2_5_VLForConditionalGeneration._from_config(config, attn_implementation=attn_implementation).eval()


def tokens(grid) -> int:
    return grid[0] * grid[1] * grid[2] // MERGE**2


def inputs(grids: list[tuple], text_lengths: list[int]) -> dict:
    """What the processor returns for one image per row: left-padded input_ids (BOS, text,
    <vision_start>, the image's placeholders, <vision_end>, text), attention_mask,
    mm_token_type_ids, pixel_values [Σ t·h·w, 1176] and image_grid_thw."""
    g = torch.Generator().manual_seed(1)
    rows = []
    for grid, length in zip(grids, text_lengths):
        text = torch.randint(2, IMAGE_TOKEN, (length,), generator=g).tolist()
        half = length // 2
        rows.append([BOS] + text[:half] + [VISION_START] + [IMAGE_TOKEN] * tokens(grid) + [VISION_END] + text[half:])
    width = max(map(len, rows))
    input_ids = torch.tensor([[PAD] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    grid_thw = torch.tensor(grids)
    pixels = torch.randn(int(grid_thw.prod(dim=-1).sum()), PIXELS_PER_PATCH, generator=g)
    return dict(input_ids=input_ids, attention_mask=mask, mm_token_type_ids=(input_ids == IMAGE_TOKEN).int(),
                pixel_values=pixels, image_grid_thw=grid_thw)


def record_language_model(model):
    """A pre-hook recording (sequence length, position_ids) of each language-model call."""
    seen = []
    handle = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((kwargs["inputs_embeds"].shape[1], kwargs["position_ids"])),
        with_kwargs=True)
    return seen, handle


def generate_with_scores(model, batch: dict):
    out = model.generate(**batch, **GENERATE, return_dict_in_generate=True, output_scores=True)
    return out.sequences, torch.stack(out.scores)


@pytest.mark.parametrize("fullatt", [(1,), (0,)], ids=["last-block-full", "last-block-windowed"])
def test_scores_equal_the_eager_attention_maps(monkeypatch, fullatt):
    """The chunked received-attention score equals column sums of the model's own eager attention
    probabilities (recorded per segment: per image for full attention, per window otherwise)."""
    model = tiny_qwen(fullatt, attn_implementation="eager")
    batch = inputs([SQUARE, WIDE], [3, 3])
    grid_thw = batch["image_grid_thw"]
    window_index, cu_window_seqlens = get_vision_window_index(grid_thw, MERGE, model.model.visual.window_size, PATCH)
    segments = len(grid_thw) if fullatt == (1,) else len(cu_window_seqlens) - 1
    assert segments == (2 if fullatt == (1,) else 4 + 6)  # 4×4 merged tokens: 2×2 windows; 3×5: 2×3
    eager = modeling_qwen2_5_vl.eager_attention_forward

    def scores_and_eager_scores(m, pixels):
        """(features, scores) of `m`, and the scores summed from its eager probabilities."""
        probabilities = []  # per attention call: [1, H, n, n]

        def recording(module, *args, **kwargs):
            out, weights = eager(module, *args, **kwargs)
            probabilities.append(weights)
            return out, weights

        with monkeypatch.context() as patch:
            patch.setattr(modeling_qwen2_5_vl, "eager_attention_forward", recording)
            features, scores = image_features_and_scores(m.model, pixels, grid_thw)
        last_block = probabilities[-segments:]
        received = torch.cat([p[0].sum(dim=1) for p in last_block], dim=-1).mean(dim=0)  # [T] in window order
        merged = received.view(-1, MERGE**2).sum(dim=1)[torch.argsort(window_index)]
        patches = grid_thw.prod(dim=-1).tolist()
        return features, scores, [s / n for s, n in zip(torch.split(merged, [tokens(g) for g in grid_thw.tolist()]),
                                                         patches)]

    features, scores, want = scores_and_eager_scores(model, batch["pixel_values"])
    _, chunked = image_features_and_scores(model.model, batch["pixel_values"], grid_thw, chunk_elements=16)
    _, _, exact = scores_and_eager_scores(copy.deepcopy(model).double(), batch["pixel_values"].double())
    assert [len(f) for f in features] == [16, 15]
    for i, (got, got_chunked, expected) in enumerate(zip(scores, chunked, want)):
        assert_within_fp32_error(got, exact[i], expected, label=f"image {i}")
        assert_within_fp32_error(got_chunked, exact[i], expected, label=f"image {i}, chunked")
        torch.testing.assert_close(got.sum(), torch.tensor(1.0))
    pooler = model.model.get_image_features(batch["pixel_values"], grid_thw).pooler_output
    for got, expected in zip(features, pooler):
        torch.testing.assert_close(got, expected)


def test_keep_all_tokens_equals_unpatched():
    """Same-size images, rows of different lengths (left padding): K = N reproduces the unpatched
    generation token for token (scores to rounding), with and without mm_token_type_ids."""
    model = tiny_qwen()
    batch = inputs([SQUARE, SQUARE], [4, 9])
    want, want_scores = generate_with_scores(model, batch)
    want_logits = model(**batch).logits
    apply_ada_vtp(model, keep=tokens(SQUARE), method="agile")
    got, got_scores = generate_with_scores(model, batch)
    assert torch.equal(got, want)
    torch.testing.assert_close(got_scores, want_scores)
    torch.testing.assert_close(model(**batch).logits, want_logits)
    derived = {k: v for k, v in batch.items() if k != "mm_token_type_ids"}
    assert torch.equal(model.generate(**derived, **GENERATE), want)


def test_keep_all_tokens_non_square_image():
    model = tiny_qwen()
    batch = inputs([WIDE], [6])
    want, want_scores = generate_with_scores(model, batch)
    apply_ada_vtp(model, keep=tokens(WIDE), method="divprune")
    got, got_scores = generate_with_scores(model, batch)
    assert torch.equal(got, want)
    torch.testing.assert_close(got_scores, want_scores)


@pytest.mark.parametrize("method", ["attention", "agile", "divprune", "dpp", "mix_adaptive"])
def test_language_model_sees_k_tokens_at_their_original_positions(method):
    """Ragged images (16 and 15 tokens) pruned in one call: the prefill holds K visual tokens per
    image, each kept token and every text token at the 3D position the unpatched model gives it,
    and decoding continues at the unpatched model's next position."""
    model = tiny_qwen()
    batch = inputs([SQUARE, WIDE], [4, 11])
    full_positions, _ = model.model.get_rope_index(batch["input_ids"], batch["mm_token_type_ids"],
                                                   image_grid_thw=batch["image_grid_thw"],
                                                   attention_mask=batch["attention_mask"])
    keep = 5
    apply_ada_vtp(model, keep=keep, method=method)
    seen, handle = record_language_model(model)
    out = model.generate(**batch, **GENERATE)
    handle.remove()
    valid = batch["attention_mask"].sum(dim=1)
    shrunk = valid - torch.tensor([tokens(SQUARE) - keep, tokens(WIDE) - keep])
    prefill, positions = seen[0]
    assert prefill == int(shrunk.max())
    assert all(length == 1 for length, _ in seen[1:])
    assert out.shape == (2, prefill + GENERATE["max_new_tokens"])
    indices = last_prune_result(model).indices
    assert indices.shape == (2, keep) and torch.all(indices[:, 1:] > indices[:, :-1])
    for row in range(2):
        ids = batch["input_ids"][row]
        columns = torch.nonzero(batch["attention_mask"][row]).flatten()
        image_columns = columns[ids[columns] == IMAGE_TOKEN]
        kept = torch.sort(torch.cat([columns[ids[columns] != IMAGE_TOKEN], image_columns[indices[row]]])).values
        want = full_positions[:, row, kept]  # [3, shrunk length]
        got = positions[1:, row, prefill - int(shrunk[row]):]  # left padded
        assert torch.equal(got, want)
        assert torch.equal(positions[0, row, prefill - int(shrunk[row]):], torch.arange(int(shrunk[row])))
        first_decoded = seen[1][1][1:, row, 0]
        assert torch.equal(first_decoded, full_positions[:, row, -1] + 1)


def test_ragged_batch_rows_generate_what_they_generate_alone():
    model = tiny_qwen()
    apply_ada_vtp(model, keep=4, method="agile")
    batch = inputs([SQUARE, WIDE], [6, 3])
    batched = model.generate(**batch, **GENERATE)
    batched_indices = last_prune_result(model).indices
    pixel_rows = [slice(0, 64), slice(64, 124)]
    for row in range(2):
        valid = batch["attention_mask"][row].bool()
        alone = model.generate(input_ids=batch["input_ids"][row:row + 1, valid],
                               mm_token_type_ids=batch["mm_token_type_ids"][row:row + 1, valid],
                               pixel_values=batch["pixel_values"][pixel_rows[row]],
                               image_grid_thw=batch["image_grid_thw"][row:row + 1], **GENERATE)
        assert torch.equal(last_prune_result(model).indices[0], batched_indices[row])
        assert torch.equal(batched[row, -GENERATE["max_new_tokens"]:], alone[0, -GENERATE["max_new_tokens"]:])


def test_forward_with_labels_text_only_and_remove_restores():
    model = tiny_qwen()
    batch = inputs([SQUARE, SQUARE], [5, 7])
    labels = torch.where(batch["attention_mask"].bool() & (batch["input_ids"] != IMAGE_TOKEN), batch["input_ids"], -100)
    text_only = dict(input_ids=batch["input_ids"][:, -4:], attention_mask=batch["attention_mask"][:, -4:])
    before = model(**batch).logits
    text_before = model.generate(**text_only, **GENERATE)
    apply_ada_vtp(model, keep=4, method="divprune")
    out = model(**batch, labels=labels)
    assert out.logits.shape[1] == batch["input_ids"].shape[1] - (tokens(SQUARE) - 4)
    assert torch.isfinite(out.loss)
    model.generate(**batch, **GENERATE)  # leaves the pruned rope_deltas on the model
    assert torch.equal(model.generate(**text_only, **GENERATE), text_before)  # text-only calls pass through
    with pytest.raises(RuntimeError, match="already applied"):
        apply_ada_vtp(model, keep=4)
    remove_ada_vtp(model)
    assert "forward" not in model.__dict__ and "generate" not in model.__dict__
    assert torch.equal(model(**batch).logits, before)


def test_bad_arguments():
    model = tiny_qwen()
    with pytest.raises(ValueError, match="keep = 0; expected an int >= 1"):
        apply_ada_vtp(model, keep=0)
    with pytest.raises(ValueError, match="not patched"):
        remove_ada_vtp(model)
    batch = inputs([SQUARE, WIDE], [4, 4])
    apply_ada_vtp(model, keep=16)
    with pytest.raises(ValueError, match="keep = 16 is outside"):  # the 6×10 image has 15 tokens
        model.generate(**batch, **GENERATE)
    remove_ada_vtp(model)
    apply_ada_vtp(model, keep=4)
    without_grid = {k: v for k, v in batch.items() if k != "image_grid_thw"}
    with pytest.raises(ValueError, match="needs image_grid_thw"):
        model.generate(**without_grid, **GENERATE)
    with pytest.raises(ValueError, match="no position_ids"):
        model(**batch, position_ids=torch.zeros_like(batch["input_ids"]))
    with pytest.raises(NotImplementedError, match="prunes images only"):
        model(**batch, pixel_values_videos=torch.randn(8, PIXELS_PER_PATCH))
    with pytest.raises(ValueError, match="needs input_ids"):
        model(**{k: v for k, v in batch.items() if k != "input_ids"}, inputs_embeds=torch.randn(2, 5, 32))
    wrong = dict(batch, input_ids=batch["input_ids"].masked_fill(batch["input_ids"] == VISION_END, IMAGE_TOKEN))
    with pytest.raises(ValueError, match=r"hold 33 image tokens \(id 150\) but image_grid_thw gives 31 merged tokens"):
        model.generate(**wrong, **GENERATE)

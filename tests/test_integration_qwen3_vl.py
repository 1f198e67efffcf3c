"""apply_ada_vtp on HF transformers' Qwen3VLForConditionalGeneration (and the MoE
Qwen3VLMoeForConditionalGeneration), on a tiny random config (2-block vision tower, both blocks
feeding DeepStack, 2-layer language model; CPU, seconds): keep = all against the unpatched model,
the token count, positions and DeepStack features the language model receives, ragged image sizes
in one batch, the received-attention score against the model's own eager attention maps, and
argument errors."""

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import (  # noqa: E402
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeConfig,
    Qwen3VLMoeForConditionalGeneration,
)
from transformers.models.qwen3_vl import modeling_qwen3_vl  # noqa: E402

from ada_vtp_kernels.integrations import apply_ada_vtp, last_prune_result, remove_ada_vtp  # noqa: E402
from ada_vtp_kernels.integrations.qwen3_vl import image_features_and_scores  # noqa: E402

from support.precision import assert_within_fp32_error  # noqa: E402

pytestmark = pytest.mark.requires_ext

PAD, BOS, IMAGE_TOKEN, VIDEO_TOKEN, VISION_START, VISION_END = 0, 1, 150, 151, 152, 153
PATCH, MERGE = 16, 2
PIXELS_PER_PATCH = 3 * 2 * PATCH * PATCH  # channels · temporal_patch_size · patch²
SQUARE, WIDE = (1, 8, 8), (1, 6, 10)  # patch grids: 16 and 15 merged tokens
GENERATE = dict(max_new_tokens=6, do_sample=False)


def tiny_qwen(moe: bool = False, attn_implementation: str = "sdpa"):
    """Vision: 2 blocks, each feeding a DeepStack merger (injected after LM layers 0 and 1), an 8×8
    learned position grid; text: 2 layers, GQA, head dim 8 (mrope sections 2, 1, 1); ``moe``: the
    MoE language model (4 experts, 2 per token)."""
    torch.manual_seed(0)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=PATCH,
                  spatial_merge_size=MERGE, temporal_patch_size=2, out_hidden_size=32, num_position_embeddings=64,
                  deepstack_visual_indexes=[0, 1])
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=8, vocab_size=160, pad_token_id=PAD, bos_token_id=BOS,
                eos_token_id=None, max_position_embeddings=4096,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]})
    if moe:
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, decoder_sparse_step=1)
    config_class, model_class = ((Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration) if moe
                                 else (Qwen3VLConfig, Qwen3VLForConditionalGeneration))
    config = config_class(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN,
                          video_token_id=VIDEO_TOKEN, vision_start_token_id=VISION_START,
                          vision_end_token_id=VISION_END)
    return model_class._from_config(config, attn_implementation=attn_implementation).eval()


def tokens(grid) -> int:
    return grid[0] * grid[1] * grid[2] // MERGE**2


def inputs(grids: list[tuple], text_lengths: list[int]) -> dict:
    """What the processor returns for one image per row: left-padded input_ids (BOS, text,
    <vision_start>, the image's placeholders, <vision_end>, text), attention_mask,
    mm_token_type_ids, pixel_values [Σ t·h·w, 1536] and image_grid_thw."""
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
    """A pre-hook recording the keywords of each language-model call (inputs_embeds,
    position_ids, visual_pos_masks, deepstack_visual_embeds)."""
    seen = []
    handle = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(dict(kwargs)), with_kwargs=True)
    return seen, handle


def generate_with_scores(model, batch: dict):
    out = model.generate(**batch, **GENERATE, return_dict_in_generate=True, output_scores=True)
    return out.sequences, torch.stack(out.scores)


def test_scores_equal_the_eager_attention_maps(monkeypatch):
    """The chunked received-attention score equals column sums of the model's own eager attention
    probabilities in the last vision block (one segment per image: no windows), the 2×2 patches of
    each merged token summed in the processor's merge-block order."""
    model = tiny_qwen(attn_implementation="eager")
    batch = inputs([SQUARE, WIDE], [3, 3])
    grid_thw = batch["image_grid_thw"]
    eager = modeling_qwen3_vl.eager_attention_forward

    def scores_and_eager_scores(m, pixels):
        probabilities = []  # per attention call: [1, H, n, n]

        def recording(module, *args, **kwargs):
            out, weights = eager(module, *args, **kwargs)
            probabilities.append(weights)
            return out, weights

        with monkeypatch.context() as patch:
            patch.setattr(modeling_qwen3_vl, "eager_attention_forward", recording)
            features, _, scores = image_features_and_scores(m.model, pixels, grid_thw)
        received = torch.cat([p[0].sum(dim=1) for p in probabilities[-len(grid_thw):]], dim=-1).mean(dim=0)
        merged = received.view(-1, MERGE**2).sum(dim=1)
        patches = grid_thw.prod(dim=-1).tolist()
        return features, scores, [s / n for s, n in zip(torch.split(merged, [tokens(g) for g in grid_thw.tolist()]),
                                                         patches)]

    features, scores, want = scores_and_eager_scores(model, batch["pixel_values"])
    _, _, chunked = image_features_and_scores(model.model, batch["pixel_values"], grid_thw, chunk_elements=16)
    _, _, exact = scores_and_eager_scores(copy.deepcopy(model).double(), batch["pixel_values"].double())
    assert [len(f) for f in features] == [16, 15]
    for i, (got, got_chunked, expected) in enumerate(zip(scores, chunked, want)):
        assert_within_fp32_error(got, exact[i], expected, label=f"image {i}")
        assert_within_fp32_error(got_chunked, exact[i], expected, label=f"image {i}, chunked")
        torch.testing.assert_close(got.sum(), torch.tensor(1.0))


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_keep_all_tokens_equals_unpatched(moe):
    """Images of different sizes, rows of different lengths (left padding): K = N reproduces the
    unpatched generation token for token (scores and logits to rounding), with and without
    mm_token_type_ids."""
    model = tiny_qwen(moe)
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


@pytest.mark.parametrize("method", ["attention", "divprune", "mix_adaptive"])
def test_language_model_sees_k_tokens_and_their_deepstack_features(method):
    """Ragged images (16 and 15 tokens) pruned in one call: the prefill holds K visual tokens per
    image, at the 3D positions the unpatched model gives them, and every DeepStack layer injects
    exactly the unpatched DeepStack features of the kept tokens, at the kept tokens' positions;
    decoding continues at the unpatched model's next position."""
    model = tiny_qwen()
    batch = inputs([SQUARE, WIDE], [4, 11])
    full_positions, _ = model.model.get_rope_index(batch["input_ids"], batch["mm_token_type_ids"],
                                                   image_grid_thw=batch["image_grid_thw"],
                                                   attention_mask=batch["attention_mask"])
    unpatched = model.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"])
    keep = 5
    apply_ada_vtp(model, keep=keep, method=method)
    seen, handle = record_language_model(model)
    out = model.generate(**batch, **GENERATE)
    handle.remove()
    valid = batch["attention_mask"].sum(dim=1)
    shrunk = valid - torch.tensor([tokens(SQUARE) - keep, tokens(WIDE) - keep])
    prefill = seen[0]
    width = prefill["inputs_embeds"].shape[1]
    assert width == int(shrunk.max())
    assert all(call["inputs_embeds"].shape[1] == 1 and call["deepstack_visual_embeds"] is None for call in seen[1:])
    assert out.shape == (2, width + GENERATE["max_new_tokens"])
    indices = last_prune_result(model).indices
    assert indices.shape == (2, keep) and torch.all(indices[:, 1:] > indices[:, :-1])

    visual = prefill["visual_pos_masks"]
    assert visual.sum(dim=1).tolist() == [keep, keep]
    deepstack = prefill["deepstack_visual_embeds"]
    assert len(deepstack) == 2  # one per deepstack_visual_indexes entry
    for layer, injected in zip(unpatched.deepstack_features, deepstack):
        torch.testing.assert_close(injected, torch.cat([image[i] for image, i in zip(layer, indices)]))
    positions = prefill["position_ids"]
    for row in range(2):
        ids = batch["input_ids"][row]
        columns = torch.nonzero(batch["attention_mask"][row]).flatten()
        image_columns = columns[ids[columns] == IMAGE_TOKEN]
        kept = torch.sort(torch.cat([columns[ids[columns] != IMAGE_TOKEN], image_columns[indices[row]]])).values
        start = width - int(shrunk[row])  # left padded
        assert torch.equal(positions[1:, row, start:], full_positions[:, row, kept])
        assert torch.equal(positions[0, row, start:], torch.arange(int(shrunk[row])))
        assert torch.equal(visual[row, start:], ids[kept] == IMAGE_TOKEN)
        assert torch.equal(seen[1]["position_ids"][1:, row, 0], full_positions[:, row, -1] + 1)


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
    remove_ada_vtp(model)
    assert "forward" not in model.__dict__ and "generate" not in model.__dict__
    assert torch.equal(model(**batch).logits, before)


def test_bad_arguments():
    model = tiny_qwen()
    with pytest.raises(ValueError, match="keep = 0; expected an int >= 1"):
        apply_ada_vtp(model, keep=0)
    batch = inputs([SQUARE, WIDE], [4, 4])
    apply_ada_vtp(model, keep=16)
    with pytest.raises(ValueError, match="keep = 16 is outside"):  # the 6×10 image has 15 tokens
        model.generate(**batch, **GENERATE)
    with pytest.raises(NotImplementedError, match="prunes images only"):
        model(**batch, pixel_values_videos=torch.randn(8, PIXELS_PER_PATCH))

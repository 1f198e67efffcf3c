"""apply_ada_vtp on HF transformers' LlavaNextForConditionalGeneration (LLaVA-NeXT), on tiny random
configs (CLIP tower with 56 px tiles of 4×4 patches, pinpoints up to 112×112, Llama language
model; CPU, seconds).  Placeholder counts and grid shapes are computed as the processor computes
them, independently of the patch."""

import copy
import functools
import types

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import (  # noqa: E402
    CLIPVisionConfig,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
)
from transformers.image_processing_utils import select_best_resolution  # noqa: E402

from ada_vtp_kernels import functional  # noqa: E402
from ada_vtp_kernels.integrations import apply_ada_vtp, last_prune_result, remove_ada_vtp  # noqa: E402

from support.precision import assert_within_fp32_error  # noqa: E402

pytestmark = pytest.mark.requires_ext

IMAGE_TOKEN, PAD, BOS = 100, 0, 1
TILE, PATCH = 56, 14
BASE = (TILE // PATCH) ** 2  # 16 tokens per tile, the base view's tokens
PINPOINTS = [[56, 112], [112, 56], [112, 112]]
MAX_TILES = 5  # base view + a 2×2 grid
GENERATE = dict(max_new_tokens=6, do_sample=False)
# (height, width): 1×2 tiles, unpadded grid 4×8 (nothing cut); 2×2 tiles, 8×6; 1×2 tiles, 4×4 (columns cut)
SIZES = [(40, 100), (100, 70), (56, 56)]


def tiny_llava_next() -> LlavaNextForConditionalGeneration:
    torch.manual_seed(0)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                              image_size=TILE, patch_size=PATCH)
    text = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=128, pad_token_id=PAD, max_position_embeddings=4096)
    config = LlavaNextConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN,
                             vision_feature_layer=-2, vision_feature_select_strategy="default",
                             image_grid_pinpoints=PINPOINTS)
    config._attn_implementation = "sdpa"
    return LlavaNextForConditionalGeneration(config).eval()


def processor() -> types.SimpleNamespace:
    """What LlavaNextProcessor's token count reads of itself (its tokenizer is not needed)."""
    fake = types.SimpleNamespace(image_processor=types.SimpleNamespace(image_grid_pinpoints=PINPOINTS),
                                 patch_size=PATCH, num_additional_image_tokens=1)  # CLIP's [CLS]
    fake._get_unpadded_features = functools.partial(LlavaNextProcessor._get_unpadded_features, fake)
    return fake


def grid(size: tuple[int, int]) -> tuple[int, int]:
    """(rows, columns) of an image's unpadded high-resolution grid, by the processor's formula."""
    height, width = select_best_resolution(size, PINPOINTS)
    side = TILE // PATCH
    unpadded, rows = processor()._get_unpadded_features(*size, side, side, height // TILE, width // TILE)
    return rows, unpadded // rows


def tokens(size) -> int:
    """N_i: the image's vision tokens (base view + unpadded grid)."""
    rows, columns = grid(size)
    return BASE + rows * columns


def placeholders(size) -> int:
    """N_i + r_i: the vision tokens and one newline per grid row, as the processor writes them."""
    count = LlavaNextProcessor._get_number_of_features(processor(), *size, TILE, TILE) - 1  # "default": no [CLS]
    assert count == tokens(size) + grid(size)[0]
    return count


def prompts(images_per_row: list[list[tuple[int, int]]], text_lengths: list[int]):
    """Left-padded input_ids / attention_mask (BOS, text, each image's placeholders then a text
    token, text), pixel_values [images, MAX_TILES, 3, 56, 56] and image_sizes [images, 2]."""
    g = torch.Generator().manual_seed(1)
    rows, sizes = [], []
    for images, length in zip(images_per_row, text_lengths):
        text = torch.randint(2, IMAGE_TOKEN, (length,), generator=g).tolist()
        row = [BOS] + text[: length // 2]
        for size in images:
            row += [IMAGE_TOKEN] * placeholders(size) + text[length // 2:][:1]
            sizes.append(size)
        rows.append(row + text[length // 2 + 1:])
    width = max(map(len, rows))
    return dict(input_ids=torch.tensor([[PAD] * (width - len(r)) + r for r in rows]),
                attention_mask=torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows]),
                pixel_values=torch.randn(len(sizes), MAX_TILES, 3, TILE, TILE, generator=g),
                image_sizes=torch.tensor(sizes))


def count_language_tokens(model):
    """A pre-hook recording the sequence length the language model is called with."""
    seen = []
    handle = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True)
    return seen, handle


def rows_keeping_a_token(indices: torch.Tensor, size) -> int:
    """The grid rows holding at least one of the kept pool indices."""
    grid_indices = indices[indices >= BASE] - BASE
    return len(torch.unique(grid_indices // grid(size)[1]))


def packed_positions(indices: torch.Tensor, size) -> list[int]:
    """The packed-sequence positions that survive: the kept tokens and the newline of every row
    (base view first, then rows of `columns` tokens and a newline)."""
    rows, columns = grid(size)
    positions = {BASE + row * (columns + 1) + columns for row in range(rows)}
    for p in indices.tolist():
        if p < BASE:
            positions.add(p)
        else:
            row, column = divmod(p - BASE, columns)
            positions.add(BASE + row * (columns + 1) + column)
    return sorted(positions)


@pytest.mark.parametrize("size", SIZES)
def test_keep_all_tokens_equals_unpatched(size):
    model = tiny_llava_next()
    inputs = prompts([[size], [size]], [5, 9])
    want = model.generate(**inputs, **GENERATE)
    apply_ada_vtp(model, keep=tokens(size), method="agile")
    seen, handle = count_language_tokens(model)
    got = model.generate(**inputs, **GENERATE)
    handle.remove()
    assert seen[0] == inputs["input_ids"].shape[1]
    assert torch.equal(got, want)


@pytest.mark.parametrize("method", ["attention", "agile", "divprune", "dpp", "mix_adaptive"])
def test_language_model_sees_k_tokens_and_every_rows_newline(method):
    """Image i reaches the language model as K + r_i tokens whatever the method selects: the
    count depends on the image size only, as a serving engine needs it before encoding."""
    keep = 7
    model = tiny_llava_next()
    images = [[(40, 100), (56, 56)], [(100, 70)]]
    inputs = prompts(images, [4, 11])
    apply_ada_vtp(model, keep=keep, method=method)
    seen, handle = count_language_tokens(model)
    out = model.generate(**inputs, **GENERATE)
    handle.remove()
    result = last_prune_result(model)
    assert result.indices.shape == (3, keep)
    assert torch.all(result.indices[:, 1:] > result.indices[:, :-1])
    sizes = [size for row in images for size in row]
    shrink = [placeholders(size) - keep - grid(size)[0] for size in sizes]
    lengths = inputs["attention_mask"].sum(dim=1) - torch.tensor([shrink[0] + shrink[1], shrink[2]])
    assert seen[0] == int(lengths.max())  # prefill: each image shrank to K + its grid rows
    assert all(length == 1 for length in seen[1:])  # decoding
    assert out.shape == (2, seen[0] + GENERATE["max_new_tokens"])


def test_scattered_sequence_is_the_models_packed_sequence_at_the_kept_slots():
    """What the language model receives for each image: the unpatched model's packed features
    (base view, unpadded rows, newline after each row) at exactly the surviving positions: the
    kept tokens and every row's newline, also that of a row that keeps no token."""
    model = tiny_llava_next()
    images = [[(100, 70)], [(40, 100)]]
    inputs = prompts(images, [6, 3])
    full = model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"]).pooler_output
    exact = copy.deepcopy(model).double().model.get_image_features(inputs["pixel_values"].double(),
                                                                    inputs["image_sizes"]).pooler_output
    apply_ada_vtp(model, keep=9, method="divprune")
    captured = []
    handle = model.model.register_forward_pre_hook(
        lambda module, args, kwargs: captured.append(kwargs["mm_encoder_outputs"]["image"].pooler_output),
        with_kwargs=True)
    model(**inputs)
    handle.remove()
    indices = last_prune_result(model).indices
    sizes = [row[0] for row in images]
    assert bool((indices < BASE).any()) and bool((indices >= BASE).any())  # base view and grid tokens
    assert rows_keeping_a_token(indices[0], sizes[0]) < grid(sizes[0])[0]  # some row keeps just its newline
    for i, size in enumerate(sizes):
        kept = packed_positions(indices[i], size)
        assert_within_fp32_error(captured[0][i], exact[i][kept], full[i][kept], label=f"image {i}")


def test_ragged_images_pruned_in_one_call(monkeypatch):
    """Two prompts of different lengths with images of different sizes: one prune call over both
    images with ragged lengths; each row generates what it generates alone."""
    calls = []
    prune = functional.prune

    def recording_prune(*args, **kwargs):
        calls.append(kwargs["lengths"].clone())
        return prune(*args, **kwargs)

    monkeypatch.setattr(functional, "prune", recording_prune)
    model = tiny_llava_next()
    apply_ada_vtp(model, keep=5, method="attention")
    images = [[(100, 70)], [(56, 56)]]
    inputs = prompts(images, [3, 12])
    batched = model.generate(**inputs, **GENERATE)
    assert len(calls) == 1
    assert calls[0].tolist() == [tokens((100, 70)), tokens((56, 56))]  # 64 and 32
    for row in range(2):
        valid = inputs["attention_mask"][row].bool()
        alone = model.generate(input_ids=inputs["input_ids"][row:row + 1, valid],
                               pixel_values=inputs["pixel_values"][row:row + 1],
                               image_sizes=inputs["image_sizes"][row:row + 1], **GENERATE)
        assert torch.equal(batched[row, -GENERATE["max_new_tokens"]:], alone[0, -GENERATE["max_new_tokens"]:])
    assert len(calls) == 3


def test_concatenated_tiles_equal_padded_tiles():
    """pixel_values [tiles, 3, H, W] (the tiles of all images concatenated) select what the
    processor's padded [images, MAX_TILES, 3, H, W] selects."""
    model = tiny_llava_next()
    images = [[(40, 100)], [(100, 70)]]
    inputs = prompts(images, [4, 4])
    apply_ada_vtp(model, keep=6, method="agile")
    padded = model(**inputs).logits
    tiles = torch.cat([inputs["pixel_values"][0, :3], inputs["pixel_values"][1, :5]])  # 1×2 and 2×2 grids
    torch.testing.assert_close(model(**{**inputs, "pixel_values": tiles}).logits, padded)


def test_forward_with_labels_and_remove_restores():
    model = tiny_llava_next()
    size = (100, 70)
    inputs = prompts([[size], [size]], [5, 7])
    labels = torch.where(inputs["attention_mask"].bool() & (inputs["input_ids"] != IMAGE_TOKEN), inputs["input_ids"],
                         -100)
    before = model(**inputs).logits
    apply_ada_vtp(model, keep=4, method="divprune")
    out = model(**inputs, labels=labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()  # the kept tokens and the newline embedding keep their gradient
    assert model.model.multi_modal_projector.linear_1.weight.grad is not None
    assert model.model.image_newline.grad is not None
    shrink = placeholders(size) - 4 - grid(size)[0]
    assert out.logits.shape[1] == int(inputs["attention_mask"].sum(dim=1).max()) - shrink
    with pytest.raises(RuntimeError, match="already applied"):
        apply_ada_vtp(model, keep=4)
    remove_ada_vtp(model)
    assert "forward" not in model.__dict__ and "generate" not in model.__dict__
    assert last_prune_result(model) is None
    assert torch.equal(model(**inputs).logits, before)


def test_bad_arguments():
    model = tiny_llava_next()
    inputs = prompts([[(100, 70)], [(56, 56)]], [4, 4])
    apply_ada_vtp(model, keep=33)
    with pytest.raises(ValueError, match=r"keep = 33 exceeds image 1's 32 vision tokens \(16 of the base view, 16 of"):
        model.generate(**inputs, **GENERATE)
    remove_ada_vtp(model)
    apply_ada_vtp(model, keep=4)
    with pytest.raises(ValueError, match="needs image_sizes"):
        model.generate(**{**inputs, "image_sizes": None}, **GENERATE)
    with pytest.raises(ValueError, match="pixel_values holds 2 images but image_sizes 1"):
        model.generate(**{**inputs, "image_sizes": inputs["image_sizes"][:1]}, **GENERATE)
    with pytest.raises(ValueError, match=r"pixel_values holds 7 tiles but image_sizes implies 8 \(5, 3 per image\)"):
        model.generate(**{**inputs, "pixel_values": inputs["pixel_values"].flatten(0, 1)[:7]}, **GENERATE)
    with pytest.raises(ValueError, match=r"pixel_values of shape \(3, 56, 56\); expected 5 dimensions"):
        model.generate(**{**inputs, "pixel_values": torch.zeros(3, 56, 56)}, **GENERATE)
    with pytest.raises(ValueError, match="input_ids hold 144 image tokens .* but the images have 108 features"):
        model.generate(**prompts([[(100, 70)], [(100, 70)]], [4, 4]) | {"image_sizes": inputs["image_sizes"]},
                       **GENERATE)
    with pytest.raises(NotImplementedError, match=r"vision_feature_layer=\[-2, -1\]"):
        model.generate(**inputs, vision_feature_layer=[-2, -1], **GENERATE)
    with pytest.raises(NotImplementedError, match="vision_feature_select_strategy='full'"):
        model.generate(**inputs, vision_feature_select_strategy="full", **GENERATE)
    with pytest.raises(ValueError, match="derive position_ids"):
        model(**inputs, position_ids=torch.arange(inputs["input_ids"].shape[1])[None])

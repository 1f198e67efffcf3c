"""apply_ada_vtp(..., method="dpp", relevance=...) on the HF LLaVA-1.5 and LLaVA-NeXT integrations.

These are WIRING tests on tiny random weights (a random CLIP text tower with a character-level
tokenizer, random LLaVA towers and language models; no CLIP weights are available offline): they
check that the relevance is computed as CDPruner's published code computes it ("clip_text", against
a line-by-line port of that code written below) or as MMTok's recipe states it ("lm", against a
direct computation), and that the selection is ``functional.prune(..., "dpp", relevance=r)``.
They say nothing of the accuracy of either relevance on real images and questions.
"""

import types

import pytest
import torch

transformers = pytest.importorskip("transformers")

from test_integration_llava import prompts as llava_prompts  # noqa: E402
from test_integration_llava import tiny_llava  # noqa: E402
from test_integration_llava_next import BASE, IMAGE_TOKEN, tiny_llava_next  # noqa: E402
from test_integration_llava_next import prompts as next_prompts  # noqa: E402
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer  # noqa: E402

from ada_vtp_kernels import functional  # noqa: E402
from ada_vtp_kernels.integrations import apply_ada_vtp, last_prune_result, remove_ada_vtp  # noqa: E402
from ada_vtp_kernels.integrations.llava import vision_features_and_scores  # noqa: E402
from ada_vtp_kernels.integrations.llava_next import NEWLINE, image_tiles, packed_layouts  # noqa: E402

pytestmark = pytest.mark.requires_ext

LETTERS = "abcdefghijklmnopqrstuvwxyz"
SHORT = "what colour is the cat"  # 1 segment of 77 CLIP tokens
LONG = "describe every object on the table and say which of them is the largest and which is red " * 2  # > 77: M = 2


def clip_tokenizer() -> CLIPTokenizer:
    """A character-level CLIP tokenizer (no merges): one token per letter, so a text of n letters
    is n + 2 tokens."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in LETTERS:
        vocab[letter] = len(vocab)
        vocab[letter + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])


def tiny_clip(vision_config) -> CLIPModel:
    """A random CLIPModel whose vision config is the LLaVA tower's (so visual_projection takes its width)."""
    torch.manual_seed(2)
    text = CLIPTextConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                          vocab_size=2 + 2 * len(LETTERS), max_position_embeddings=77, projection_dim=16,
                          bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision_config.to_dict(),
                                projection_dim=16)).eval()


def text_tower_of(clip: CLIPModel) -> CLIPTextModelWithProjection:
    """CDPruner's ``CLIPTextModelWithProjection`` with the CLIP model's text weights."""
    tower = CLIPTextModelWithProjection(clip.config.text_config).eval()
    state = {k: v for k, v in clip.state_dict().items() if k.startswith(("text_model.", "text_projection."))}
    tower.load_state_dict(state)
    return tower


def llava_tokenizer():
    """The VLM tokenizer stand-in for ``tokenizer=``: id i decodes to a letter."""
    return types.SimpleNamespace(
        decode=lambda ids, skip_special_tokens: " ".join(LETTERS[i % 26] * 3 for i in ids if i > 1))


@torch.no_grad()
def cdpruner_relevance(vision_tower, visual_projection, text_tokenizer, text_tower, images, texts,
                       select_layer=-2):
    """A line-by-line port of CDPruner's relevance (Theia-4869/CDPruner at 9541616:
    llava/model/multimodal_encoder/clip_encoder.py ``CLIPVisionTower.forward`` and
    llava/model/llava_arch.py ``encode_images``).  Changes: no CUDA streams; ``post_layernorm`` is
    at the tower's top level in transformers 5 (``vision_model.post_layernorm`` in 4); also
    returns the values before the min-max (``raw``) and M."""
    # clip_encoder.py
    image_forward_outs = vision_tower(images, output_hidden_states=True)
    image_outputs = image_forward_outs.hidden_states[select_layer][:, 1:]  # feature_select, 'patch'
    max_position_embeddings = text_tower.config.max_position_embeddings
    text_inputs = text_tokenizer(text=texts, return_tensors="pt")
    text_segment = (text_inputs.input_ids.shape[1] - 1) // max_position_embeddings + 1
    text_padding = max_position_embeddings * text_segment - text_inputs.input_ids.shape[1]
    text_inputs = {
        k: torch.cat([v, v.new_zeros((v.shape[0], text_padding))],
                     dim=1).reshape(-1, max_position_embeddings)
        for k, v in text_inputs.items()
    }
    text_embeds = text_tower(**text_inputs).text_embeds
    image_embeds = vision_tower.post_layernorm(image_outputs)
    image_embeds = visual_projection(image_embeds.float())
    # llava_arch.py
    image_embeds = image_embeds / image_embeds.norm(dim=-1, keepdim=True)  # (B, N, C)
    text_embeds = text_embeds / text_embeds.norm(dim=-1, keepdim=True)  # (M, C)
    relevance = torch.matmul(image_embeds, text_embeds.t())  # (B, N, M)
    relevance = (-relevance).mean(dim=-1)  # (B, N)
    raw = relevance
    relevance = (relevance - relevance.min() + 1e-6) / (relevance.max() - relevance.min())  # (B, N)
    return relevance, raw, text_segment


def minmax(r: torch.Tensor) -> torch.Tensor:
    return (r - r.min() + 1e-6) / (r.max() - r.min())


def record_relevance(monkeypatch) -> list[torch.Tensor]:
    """The relevance of every functional.prune call."""
    seen = []
    prune = functional.prune

    def recording(*args, **kwargs):
        seen.append(kwargs["relevance"])
        return prune(*args, **kwargs)

    monkeypatch.setattr(functional, "prune", recording)
    return seen


def lm_relevance(model, projected: torch.Tensor, text_ids: torch.Tensor) -> torch.Tensor:
    """MMTok-style: mean cosine of each projected token with the input embeddings of the text ids."""
    text = model.get_input_embeddings().weight[text_ids]
    cos = torch.nn.functional.normalize(projected.float(), dim=-1) @ torch.nn.functional.normalize(text, dim=-1).t()
    return cos.mean(dim=-1)


@pytest.mark.parametrize("query", [SHORT, LONG, None])
def test_clip_text_equals_cdpruner_port(monkeypatch, query):
    """One prompt with two images: relevance over both images at once, as CDPruner's call; the
    long query takes M = 2 segments; without query=, the prompt decoded with tokenizer=."""
    seen = record_relevance(monkeypatch)
    model = tiny_llava()
    clip, tokenizer = tiny_clip(model.config.vision_config), clip_tokenizer()
    input_ids, mask = llava_prompts([2], [9])
    pixels = torch.randn(2, 3, 56, 56)
    text = query if query is not None else llava_tokenizer().decode(
        input_ids[0][(input_ids[0] != IMAGE_TOKEN) & mask[0].bool()].tolist(), skip_special_tokens=True)
    want, _, segments = cdpruner_relevance(model.model.vision_tower, clip.visual_projection, tokenizer,
                                        text_tower_of(clip), pixels, text)
    assert segments == (2 if query == LONG else 1)
    apply_ada_vtp(model, keep=5, method="dpp", relevance="clip_text", clip=clip, clip_tokenizer=tokenizer,
                  tokenizer=llava_tokenizer() if query is None else None)
    with torch.no_grad():
        model(input_ids=input_ids, attention_mask=mask, pixel_values=pixels,
              **({} if query is None else {"query": query}))
    torch.testing.assert_close(seen[0], want, rtol=1e-5, atol=1e-5)
    features, scores = vision_features_and_scores(model.model.vision_tower, pixels, -2)
    expected = functional.prune(features, scores, 5, "dpp", relevance=want)
    assert torch.equal(last_prune_result(model).indices, expected.indices)


def test_clip_text_llava_next_over_the_pools(monkeypatch):
    """LLaVA-NeXT: the port's per-token values (before its min-max) at each pool token, min-max
    normalised over the pools of the prompt row (not over the letterbox tokens unpadding cuts)."""
    seen = record_relevance(monkeypatch)
    model = tiny_llava_next()
    clip, tokenizer = tiny_clip(model.config.vision_config), clip_tokenizer()
    inputs = next_prompts([[(56, 56), (100, 70)]], [6])
    tiles, counts = image_tiles(model.config, inputs["pixel_values"], inputs["image_sizes"])
    _, raw, _ = cdpruner_relevance(model.model.vision_tower, clip.visual_projection, tokenizer, text_tower_of(clip),
                                   tiles, LONG)
    layouts = packed_layouts(model.model, counts, inputs["image_sizes"], BASE)
    pools = [layout[layout != NEWLINE] for layout in layouts]
    values = minmax(torch.cat([raw.flatten()[pool] for pool in pools]))
    apply_ada_vtp(model, keep=6, method="dpp", relevance="clip_text", clip=clip, clip_tokenizer=tokenizer)
    with torch.no_grad():
        model(**inputs, query=LONG)
    got = torch.cat([seen[0][i, :len(pool)] for i, pool in enumerate(pools)])
    torch.testing.assert_close(got, values, rtol=1e-4, atol=1e-5)


def test_lm_equals_direct_computation(monkeypatch):
    """"lm" on LLaVA-1.5: each row's images against that row's text tokens (non-image, non-pad)."""
    seen = record_relevance(monkeypatch)
    model = tiny_llava()
    input_ids, mask = llava_prompts([1, 2], [5, 9])
    pixels = torch.randn(3, 3, 56, 56)
    apply_ada_vtp(model, keep=6, method="dpp", relevance="lm")
    with torch.no_grad():
        model(input_ids=input_ids, attention_mask=mask, pixel_values=pixels)
        features, scores = vision_features_and_scores(model.model.vision_tower, pixels, -2)
        projected = model.model.multi_modal_projector(features)
    text = [ids[(ids != IMAGE_TOKEN) & m.bool()] for ids, m in zip(input_ids, mask)]
    want = torch.cat([minmax(lm_relevance(model, projected[:1], text[0])),
                      minmax(lm_relevance(model, projected[1:], text[1]))])
    torch.testing.assert_close(seen[0], want, rtol=1e-5, atol=1e-6)
    expected = functional.prune(features, scores, 6, "dpp", relevance=want)
    assert torch.equal(last_prune_result(model).indices, expected.indices)


def test_lm_llava_next_over_the_pools(monkeypatch):
    seen = record_relevance(monkeypatch)
    model = tiny_llava_next()
    inputs = next_prompts([[(40, 100)], [(100, 70), (56, 56)]], [4, 7])
    apply_ada_vtp(model, keep=6, method="dpp", relevance="lm")
    with torch.no_grad():
        model(**inputs)
        tiles, counts = image_tiles(model.config, inputs["pixel_values"], inputs["image_sizes"])
        features, _ = vision_features_and_scores(model.model.vision_tower, tiles, -2)
        projected = model.model.multi_modal_projector(features).flatten(0, 1)
    layouts = packed_layouts(model.model, counts, inputs["image_sizes"], BASE)
    pools = [layout[layout != NEWLINE] for layout in layouts]
    text = [ids[(ids != IMAGE_TOKEN) & m.bool()] for ids, m in zip(inputs["input_ids"], inputs["attention_mask"])]
    first = minmax(lm_relevance(model, projected[pools[0]], text[0]))
    second = minmax(torch.cat([lm_relevance(model, projected[pool], text[1]) for pool in pools[1:]]))
    got = [seen[0][i, :len(pool)] for i, pool in enumerate(pools)]
    torch.testing.assert_close(got[0], first, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.cat(got[1:]), second, rtol=1e-5, atol=1e-6)
    assert bool((seen[0][0, len(pools[0]):] == 0).all())  # padding of the shorter pool


@pytest.mark.parametrize("relevance", ["clip_text", "lm"])
def test_batched_prompts_equal_their_single_runs(monkeypatch, relevance):
    """Two prompt rows, different images, queries and lengths: each selects what it selects alone."""
    model = tiny_llava()
    clip = tiny_clip(model.config.vision_config) if relevance == "clip_text" else None
    parts = dict(clip=clip, clip_tokenizer=clip_tokenizer()) if clip is not None else {}
    input_ids, mask = llava_prompts([1, 1], [4, 10])
    pixels = torch.randn(2, 3, 56, 56)
    queries = [SHORT, LONG]
    apply_ada_vtp(model, keep=5, method="dpp", relevance=relevance, **parts)
    query = (lambda rows: {"query": [queries[r] for r in rows]}) if clip is not None else (lambda rows: {})
    seen = record_relevance(monkeypatch)
    with torch.no_grad():
        model(input_ids=input_ids, attention_mask=mask, pixel_values=pixels, **query([0, 1]))
        batched = last_prune_result(model).indices
        for row in range(2):
            valid = mask[row].bool()
            model(input_ids=input_ids[row:row + 1, valid], pixel_values=pixels[row:row + 1], **query([row]))
            assert torch.equal(last_prune_result(model).indices[0], batched[row])
            torch.testing.assert_close(seen[-1][0], seen[0][row], rtol=1e-5, atol=1e-6)


def test_batched_llava_next_prompts_equal_their_single_runs():
    model = tiny_llava_next()
    clip = tiny_clip(model.config.vision_config)
    apply_ada_vtp(model, keep=5, method="dpp", relevance="clip_text", clip=clip, clip_tokenizer=clip_tokenizer())
    inputs = next_prompts([[(100, 70)], [(56, 56)]], [3, 12])
    with torch.no_grad():
        model(**inputs, query=[LONG, SHORT])
        batched = last_prune_result(model).indices
        for row, query in enumerate([LONG, SHORT]):
            valid = inputs["attention_mask"][row].bool()
            model(input_ids=inputs["input_ids"][row:row + 1, valid], pixel_values=inputs["pixel_values"][row:row + 1],
                  image_sizes=inputs["image_sizes"][row:row + 1], query=query)
            assert torch.equal(last_prune_result(model).indices[0], batched[row])


def test_bad_arguments():
    model = tiny_llava()
    clip, tokenizer = tiny_clip(model.config.vision_config), clip_tokenizer()
    with pytest.raises(ValueError, match=r"relevance='lm' needs a method that reads a relevance \('dpp'\); "
                                         r"got method='agile'"):
        apply_ada_vtp(model, keep=4, method="agile", relevance="lm")
    with pytest.raises(ValueError, match=r"relevance='text'; expected None, 'clip_text' or 'lm'"):
        apply_ada_vtp(model, keep=4, method="dpp", relevance="text")
    with pytest.raises(ValueError, match=r"relevance='clip_text' needs clip and clip_tokenizer"):
        apply_ada_vtp(model, keep=4, method="dpp", relevance="clip_text")
    with pytest.raises(ValueError, match=r"relevance='clip_text' needs clip_tokenizer"):
        apply_ada_vtp(model, keep=4, method="dpp", relevance="clip_text", clip=clip)
    with pytest.raises(TypeError, match=r"expected a transformers CLIPModel"):
        apply_ada_vtp(model, keep=4, method="dpp", relevance="clip_text", clip=clip.text_model,
                      clip_tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"clip, clip_tokenizer given with relevance='lm'"):
        apply_ada_vtp(model, keep=4, method="dpp", relevance="lm", clip=clip, clip_tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"visual_projection takes 24 features but the vision tower's width is 32"):
        apply_ada_vtp(model, keep=4, method="dpp", relevance="clip_text", clip=tiny_clip(
            transformers.CLIPVisionConfig(hidden_size=24, num_attention_heads=4)), clip_tokenizer=tokenizer)
    assert not hasattr(model, "_ada_vtp")  # nothing patched by a refused call
    input_ids, mask = llava_prompts([1, 1], [4, 4])
    pixels = torch.randn(2, 3, 56, 56)
    apply_ada_vtp(model, keep=4, method="dpp", relevance="clip_text", clip=clip, clip_tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"needs the question text: pass query= .* or tokenizer= to apply_ada_vtp"):
        model(input_ids=input_ids, attention_mask=mask, pixel_values=pixels)
    with pytest.raises(ValueError, match=r"expected a string or a list of 2 strings, one per prompt row"):
        model(input_ids=input_ids, attention_mask=mask, pixel_values=pixels, query=[SHORT])
    remove_ada_vtp(model)
    apply_ada_vtp(model, keep=4, method="dpp", relevance="lm")
    with pytest.raises(ValueError, match=r"query= is read only with relevance='clip_text'"):
        model(input_ids=input_ids, attention_mask=mask, pixel_values=pixels, query=SHORT)


def test_a_caller_without_relevance_fails_instead_of_pruning_unconditionally():
    """The vLLM plugin reads the same Settings but computes no relevance: it must not ignore it."""
    from ada_vtp_kernels.integrations._common import Settings

    settings = Settings.of(4, "dpp", relevance="lm")
    with pytest.raises(NotImplementedError, match=r"relevance='lm' is set but this caller computes no relevance"):
        settings.prune(torch.randn(1, 16, 8), torch.rand(1, 16))

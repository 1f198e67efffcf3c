"""The vLLM plugin on LLaVA-NeXT (tiny random-weight checkpoint, CPU: 112 px tiles, pinpoints up to a
2 × 2 grid): vLLM with ``hf_overrides={"ada_vtp": ...}`` and HF transformers with `apply_ada_vtp`
give the same prompt length (K + r_i per image), kept indices and greedy tokens for every method
and K at the edges, on a batch of images of different sizes; the placeholders the processor emits
are the rows the encoder returns, also at extreme aspect ratios; without the override vLLM is
unchanged; a K above an image's token count fails its request with the plugin's own error.

Image sizes are (width, height), as PIL gives them; N_i and r_i are computed with HF's processor
formula, independently of the plugin.  Runs in the vLLM venv (tools/vllm_env.sh); elsewhere it is
skipped.
"""

import pytest
import torch

pytest.importorskip("vllm")

from transformers import LlavaNextForConditionalGeneration, LlavaNextProcessor  # noqa: E402
from transformers.image_processing_utils import select_best_resolution  # noqa: E402

from ada_vtp_kernels import spec  # noqa: E402
from ada_vtp_kernels.integrations import apply_ada_vtp, remove_ada_vtp  # noqa: E402
from ada_vtp_kernels.integrations.vllm import llava_next as plugin  # noqa: E402

from support import tiny_llava_next  # noqa: E402
from support.tiny_llava_next import PINPOINTS, SIDE, TILE  # noqa: E402
from support.vllm_runs import HF, Engine, images, record_selections  # noqa: E402

pytestmark = pytest.mark.requires_ext

PROMPTS = ["USER: <image>\nWhat is this? ASSISTANT:", "USER: <image>\nDescribe the picture in detail. ASSISTANT:",
           "USER: <image>\n<image>\nWhich one is brighter? ASSISTANT:"]
# per prompt, its images' (width, height): a 1 × 2 grid, a 2 × 1 grid with columns cut, a 2 × 2 grid
# with rows cut and a 1 × 2 grid keeping 2 of its 8 rows
SIZES = [[(150, 100)], [(60, 200)], [(200, 150), (400, 40)]]


def tokens_and_rows(size: tuple[int, int]) -> tuple[int, int]:
    """(N_i, r_i) of a (width, height) image: its vision tokens (base view + unpadded grid) and the
    rows of its unpadded grid, by HF's processor formula (which reads nothing of the processor)."""
    width, height = size
    best_height, best_width = select_best_resolution((height, width), PINPOINTS)
    unpadded, rows = LlavaNextProcessor._get_unpadded_features(None, height, width, SIDE, SIDE, best_height // TILE,
                                                               best_width // TILE)
    return SIDE * SIDE + unpadded, rows


SMALLEST = min(tokens_and_rows(size)[0] for prompt in SIZES for size in prompt)  # 96: the 400 × 40 image


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_llava_next.save_llava_next(tmp_path_factory.mktemp("tiny-llava-next"))


@pytest.fixture(scope="module")
def engine(checkpoint):
    engine = Engine(checkpoint)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def hf(checkpoint):
    return HF(checkpoint, LlavaNextForConditionalGeneration)


@pytest.fixture(scope="module")
def image_lists():
    # seed 0 puts VisPruner at K = 40 on a near-tie: on both towers' features (5e-6 apart) two of
    # its s_a = max_b S(a, b) in round 3 are 2e-8 to 3e-8 apart exactly, under an fp32 ulp (6e-8);
    # the op's fp32 cosines round them one ulp apart on one side and equal on the other
    pictures = iter(images([size for prompt in SIZES for size in prompt], seed=1))
    return [[next(pictures) for _ in prompt] for prompt in SIZES]


def text_tokens(hf, prompt: str) -> int:
    return len(hf.processor.tokenizer(prompt)["input_ids"]) - prompt.count("<image>")


def per_image(calls) -> tuple[list[torch.Tensor], list[list[int]]]:
    """(features [N_i, C], kept indices) of each image, in encoding order, from recorded prune
    calls (vLLM prunes once per encoder batch, the HF integration once per prompt)."""
    features, indices = [], []
    for call_features, _, lengths, result in calls:
        for i, length in enumerate(lengths.tolist()):
            features.append(call_features[i, :length])
            indices.append(result.indices[i].tolist())
    return features, indices


def test_without_override_vllm_equals_hf_unpatched(engine, hf, image_lists):
    engine.configure(None)
    got, want = engine.generate(PROMPTS, image_lists), hf.generate(PROMPTS, image_lists)
    assert got == want
    for prompt, sizes, run in zip(PROMPTS, SIZES, got):
        assert run.prompt_tokens == text_tokens(hf, prompt) + sum(sum(tokens_and_rows(size)) for size in sizes)


@pytest.mark.parametrize("method", spec.METHODS)
@pytest.mark.parametrize("keep", [1, 40, SMALLEST])
def test_same_tokens_and_indices_as_hf(engine, hf, image_lists, monkeypatch, method, keep):
    selections = record_selections(monkeypatch)
    engine.configure({"keep": keep, "method": method})
    got = engine.generate(PROMPTS, image_lists)
    vllm_calls = list(selections.calls)
    selections.calls.clear()
    apply_ada_vtp(hf.model, keep, method)
    try:
        want = hf.generate(PROMPTS, image_lists)
    finally:
        remove_ada_vtp(hf.model)
    for prompt, sizes, run in zip(PROMPTS, SIZES, got):
        assert run.prompt_tokens == text_tokens(hf, prompt) + sum(keep + tokens_and_rows(size)[1] for size in sizes)
    assert [run.prompt_tokens for run in got] == [run.prompt_tokens for run in want]
    assert len(vllm_calls) <= len(PROMPTS)  # one prune call per encoder batch, not per image
    got_features, got_indices = per_image(vllm_calls)
    want_features, want_indices = per_image(selections.calls)
    assert [len(f) for f in got_features] == [tokens_and_rows(size)[0] for prompt in SIZES for size in prompt]
    for got_image, want_image in zip(got_features, want_features, strict=True):
        torch.testing.assert_close(got_image, want_image, rtol=1e-4, atol=1e-4)
    assert got_indices == want_indices
    assert [run.tokens for run in got] == [run.tokens for run in want]


@pytest.mark.parametrize("size", [(112, 112), (90, 160), (224, 224), (400, 40), (40, 400), (1000, 20), (20, 1000)])
def test_placeholders_are_the_rows_the_encoder_returns(engine, hf, monkeypatch, size):
    """K + r_i placeholders and K + r_i rows, also where unpadding leaves no row (1000 × 20: r_i = 0,
    only the base view) or no column (20 × 1000: r_i = 16 rows that are just their newline)."""
    keep = 16
    returned = []
    encode = plugin.LlavaNextForConditionalGeneration._process_image_input

    def recording(self, image_input):
        sequences = encode(self, image_input)
        returned.extend(len(sequence) for sequence in sequences)
        return sequences

    monkeypatch.setattr(plugin.LlavaNextForConditionalGeneration, "_process_image_input", recording)
    engine.configure({"keep": keep, "method": "agile"})
    [run] = engine.generate(PROMPTS[:1], [images([size])])
    placeholders = run.prompt_tokens - text_tokens(hf, PROMPTS[0])
    assert returned == [placeholders] == [keep + tokens_and_rows(size)[1]]


def test_keep_above_an_images_tokens_fails_its_request(engine, image_lists):
    engine.configure({"keep": SMALLEST + 1})
    with pytest.raises(ValueError, match=rf"keep = {SMALLEST + 1} exceeds the {SMALLEST} visual tokens of an image; "
                                         rf"expected 1 <= keep <= {SMALLEST}"):
        engine.generate(PROMPTS, image_lists)
    engine.configure({"keep": SMALLEST})  # the engine serves the next requests
    assert len(engine.generate(PROMPTS, image_lists)) == len(PROMPTS)


def test_engine_start_rejects_keep_above_a_pinpoint_images_tokens(checkpoint):
    """vLLM profiles with the pinpoint-sized images: a K above the smallest one's tokens (112 × 112:
    64 + 64) fails the engine start, though a 224 × 224 image has 320."""
    with pytest.raises(ValueError, match=r"keep = 129 exceeds the 128 visual tokens of an image"):
        Engine(checkpoint, {"ada_vtp": {"keep": 129}})

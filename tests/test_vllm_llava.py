"""The vLLM plugin on LLaVA-1.5 (tiny random-weight checkpoint, CPU): vLLM with
``hf_overrides={"ada_vtp": ...}`` and HF transformers with `apply_ada_vtp` give the same prompt
length, kept indices and greedy tokens for every method and K at the edges; without the override
vLLM is unchanged; bad settings fail at engine start with the package's own errors.

Runs in the vLLM venv (tools/vllm_env.sh); elsewhere it is skipped.
"""

import pytest
import torch

pytest.importorskip("vllm")

from transformers import LlavaForConditionalGeneration  # noqa: E402

from ada_vtp_kernels import spec  # noqa: E402
from ada_vtp_kernels.integrations import apply_ada_vtp, remove_ada_vtp  # noqa: E402

from support import tiny_checkpoints  # noqa: E402
from support.vllm_runs import HF, Engine, images, record_selections  # noqa: E402

pytestmark = pytest.mark.requires_ext

PATCHES = (tiny_checkpoints.IMAGE_SIZE // tiny_checkpoints.PATCH) ** 2
PROMPTS = ["USER: <image>\nWhat is this? ASSISTANT:", "USER: <image>\nDescribe the picture in detail. ASSISTANT:",
           "USER: <image>\n<image>\nWhich one is brighter? ASSISTANT:"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoints.save_llava(tmp_path_factory.mktemp("tiny-llava"))


@pytest.fixture(scope="module")
def engine(checkpoint):
    engine = Engine(checkpoint)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def hf(checkpoint):
    return HF(checkpoint, LlavaForConditionalGeneration)


@pytest.fixture(scope="module")
def image_lists():
    """Three prompts: two single images of different sizes and aspect ratios, one with two images."""
    first, second, third, fourth = images([(112, 112), (200, 150), (90, 160), (150, 150)])
    return [[first], [second], [third, fourth]]


def text_tokens(hf, prompt: str) -> int:
    return len(hf.processor.tokenizer(prompt)["input_ids"]) - prompt.count("<image>")


def test_without_override_vllm_equals_hf_unpatched(engine, hf, image_lists):
    engine.configure(None)
    got, want = engine.generate(PROMPTS, image_lists), hf.generate(PROMPTS, image_lists)
    assert got == want
    for prompt, run in zip(PROMPTS, got):
        assert run.prompt_tokens == text_tokens(hf, prompt) + PATCHES * prompt.count("<image>")


@pytest.mark.parametrize("method", spec.METHODS)
@pytest.mark.parametrize("keep", [1, 16, PATCHES])
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
    hf_calls = list(selections.calls)
    for prompt, run in zip(PROMPTS, got):
        assert run.prompt_tokens == text_tokens(hf, prompt) + keep * prompt.count("<image>")
    assert [run.prompt_tokens for run in got] == [run.prompt_tokens for run in want]
    # vLLM encodes the batch's images in prompt order, in one call or several; HF one prompt at a time
    got_features = torch.cat([features for features, *_ in vllm_calls])
    want_features = torch.cat([features for features, *_ in hf_calls])
    torch.testing.assert_close(got_features, want_features, rtol=1e-4, atol=1e-4)
    got_indices = [row for *_, result in vllm_calls for row in result.indices]
    want_indices = [row for *_, result in hf_calls for row in result.indices]
    assert [row.tolist() for row in got_indices] == [row.tolist() for row in want_indices]
    assert [run.tokens for run in got] == [run.tokens for run in want]


@pytest.mark.parametrize("settings, message", [
    ({"keep": 8, "method": "bogus"}, "unknown method 'bogus'"),
    ({"keep": PATCHES + 1}, f"keep = {PATCHES + 1} exceeds the {PATCHES} visual tokens"),
])
def test_engine_start_rejects_bad_settings(checkpoint, settings, message):
    with pytest.raises(Exception, match=message):
        Engine(checkpoint, {"ada_vtp": settings})


@pytest.mark.parametrize("settings, message", [
    ({"keep": 8, "method": "agile", "tau": 0.5}, r"unknown parameter\(s\) \['tau'\]"),
    ({"keep": 0}, "keep = 0; expected an int >= 1"),
    ({"keep": 8, "backend": "gpu"}, "unknown backend 'gpu'"),
    ({"method": "agile"}, "expected a dict with 'keep'"),
    ([64], "expected a dict with 'keep'"),
])
def test_settings_are_validated(settings, message):
    """What the model's constructor (engine start) and the processor read."""
    from types import SimpleNamespace

    from ada_vtp_kernels.integrations.vllm import settings_of

    with pytest.raises(ValueError, match=message):
        settings_of(SimpleNamespace(ada_vtp=settings))


def test_instruction_relevance_is_refused():
    from types import SimpleNamespace

    from ada_vtp_kernels.integrations.vllm import settings_of

    with pytest.raises(NotImplementedError, match="relevance='lm': the vLLM plugin does not compute"):
        settings_of(SimpleNamespace(ada_vtp={"keep": 8, "method": "dpp", "relevance": "lm"}))


def test_plugin_refuses_other_vllm_releases(monkeypatch):
    from ada_vtp_kernels.integrations import vllm as plugin

    monkeypatch.setattr(plugin, "vllm_version", lambda: "0.31.1")
    with pytest.raises(RuntimeError, match="supports vLLM 0.32.0; found vLLM 0.31.1"):
        plugin.register()

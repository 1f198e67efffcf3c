"""Run the same prompts through vLLM (with the ada_vtp plugin) and through HF transformers (with
`apply_ada_vtp`) on one tiny checkpoint, recording what each language model saw.

vLLM runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so a test reaches the model and
can record each call of `Settings.prune`.  One engine serves every method of a test module: the
plugin reads ``hf_config.ada_vtp`` at every processor and encoder call, so a test switches the
method by assigning it (`Engine.configure`); prefix and processor caches are off so that no
output of an earlier setting is reused.  The start-up path (validation of the override) has
tests of its own that start engines.
"""

import os
from dataclasses import dataclass, field

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from ada_vtp_kernels.integrations import _common  # noqa: E402

NEW_TOKENS = 6


def images(sizes: list[tuple[int, int]], seed: int = 0) -> list[Image.Image]:
    """RGB images of the given (width, height): smooth colour fields plus noise, each different."""
    rng = np.random.default_rng(seed)
    out = []
    for width, height in sizes:
        y, x = np.mgrid[0:height, 0:width] / max(width, height)
        base = np.stack([np.sin(6 * x + rng.uniform(0, 6)), np.cos(5 * y + rng.uniform(0, 6)),
                         np.sin(4 * (x + y) + rng.uniform(0, 6))], axis=-1)
        pixels = (base * 0.4 + 0.5 + rng.normal(0, 0.08, base.shape)).clip(0, 1)
        out.append(Image.fromarray((pixels * 255).astype(np.uint8)))
    return out


@dataclass
class Run:
    """What one prompt gave: the prompt length the language model saw, the greedy tokens."""

    prompt_tokens: int
    tokens: list[int]


@dataclass
class Selections:
    """Every `Settings.prune` call's (features, scores, lengths, result), in call order."""

    calls: list = field(default_factory=list)

    def indices(self) -> list[torch.Tensor]:
        """Per image, the kept indices, in the order the images were encoded."""
        return [row for *_, result in self.calls for row in result.indices]


def record_selections(monkeypatch) -> Selections:
    seen = Selections()
    prune = _common.Settings.prune

    def recording(self, features, scores, lengths=None, relevance=None):
        result = prune(self, features, scores, lengths, relevance)
        seen.calls.append((features.detach().clone(), scores.detach().clone(),
                           None if lengths is None else lengths.clone(), result))
        return result

    monkeypatch.setattr(_common.Settings, "prune", recording)
    return seen


class Engine:
    """One in-process vLLM engine on ``path`` (fp32, eager, no caches across requests)."""

    def __init__(self, path, overrides: dict | None = None, max_images: int = 2, **kwargs):
        from vllm import LLM

        self.llm = LLM(model=str(path), dtype="float32", max_model_len=2048, enforce_eager=True,
                       gpu_memory_utilization=0.5, limit_mm_per_prompt={"image": max_images},
                       enable_prefix_caching=False, mm_processor_cache_gb=0, seed=0,
                       hf_overrides=overrides or {}, **kwargs)

    def configure(self, settings: dict | None) -> None:
        """Switch pruning (``{"keep": ..., "method": ..., ...}``) or off (None) for the next requests."""
        self.llm.llm_engine.model_config.hf_config.ada_vtp = settings

    def generate(self, prompts: list[str], image_lists: list[list[Image.Image]]) -> list[Run]:
        from vllm import SamplingParams

        requests = [{"prompt": p, "multi_modal_data": {"image": imgs}} for p, imgs in zip(prompts, image_lists)]
        outputs = self.llm.generate(requests, SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True),
                                    use_tqdm=False)
        return [Run(len(o.prompt_token_ids), list(o.outputs[0].token_ids)) for o in outputs]

    def close(self) -> None:
        import gc

        del self.llm
        gc.collect()


class HF:
    """The same checkpoint in HF transformers, one prompt per call (batch 1: no padding)."""

    def __init__(self, path, model_class):
        from transformers import AutoProcessor

        self.processor = AutoProcessor.from_pretrained(path)
        self.model = model_class.from_pretrained(path, dtype=torch.float32).eval()
        self.model.generation_config.eos_token_id = None  # NEW_TOKENS tokens, as vLLM's ignore_eos
        self.seen = []
        self.model.model.language_model.register_forward_pre_hook(
            lambda module, args, kwargs: self.seen.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True)

    def generate(self, prompts: list[str], image_lists: list[list[Image.Image]]) -> list[Run]:
        runs = []
        for prompt, imgs in zip(prompts, image_lists):
            inputs = self.processor(images=imgs, text=prompt, return_tensors="pt")
            self.seen.clear()
            with torch.no_grad():
                out = self.model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
            # the patched generate returns the shrunk prompt: the new tokens are the last ones
            runs.append(Run(self.seen[0], out[0, -NEW_TOKENS:].tolist()))
        return runs

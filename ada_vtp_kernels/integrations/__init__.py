"""One-line pruning for HF transformers vision-language models (transformers >= 5).

    >>> from ada_vtp_kernels.integrations import apply_ada_vtp, remove_ada_vtp
    >>> apply_ada_vtp(model, keep=64, method="agile")     # model.generate now sees 64 tokens per image
    >>> out = model.generate(**processor(images=image, text=prompt, return_tensors="pt"))
    >>> remove_ada_vtp(model)                             # the original forward and generate again

Supported (model class -> the module that patches it, each documenting its choices):
``LlavaForConditionalGeneration`` (LLaVA-1.5) -> `llava`; ``LlavaNextForConditionalGeneration``
(LLaVA-NeXT) -> `llava_next`; ``Qwen2_5_VLForConditionalGeneration`` -> `qwen2_5_vl`.  Each module
has ``apply(model, settings)`` and ``remove(model)``.  For the original LLaVA code base
(haotian-liu/LLaVA), `prune_image_features` is a function-level hook (README shows the lines to
change in ``encode_images``).
"""

import importlib

import torch
from torch import nn

from .. import functional
from ..reference import PruneResult
from ._common import Settings

_MODULES = {
    "LlavaForConditionalGeneration": "llava",
    "LlavaNextForConditionalGeneration": "llava_next",
    "Qwen2_5_VLForConditionalGeneration": "qwen2_5_vl",
}


def _patcher(model: nn.Module):
    name = _MODULES.get(type(model).__name__)
    if name is None:
        raise TypeError(f"ada_vtp does not support {type(model).__name__}; supported: {', '.join(_MODULES)}")
    return importlib.import_module(f".{name}", __package__)


def apply_ada_vtp(model: nn.Module, keep: int, method: str = "agile", **prune_kwargs) -> nn.Module:
    """Patch ``model`` (in place) so that its ``forward`` and ``generate`` run the language model on
    ``keep`` visual tokens per image, selected by ``method``.

    Args:
        model: a supported transformers model (see the module docstring).
        keep: K, tokens kept per image, 1 <= K <= the image's token count.
        method: any `ada_vtp_kernels.functional.prune` method.
        **prune_kwargs: the other keywords of `functional.prune` (tau_max, erank_ref, backend, ...).

    Returns:
        ``model`` itself.  `last_prune_result` gives the latest selection (indices, erank, entropy).
    """
    module = _patcher(model)
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep = {keep!r}; expected an int >= 1")
    if hasattr(model, "_ada_vtp"):
        raise RuntimeError("apply_ada_vtp was already applied to this model; call remove_ada_vtp first")
    module.apply(model, Settings(keep, method, prune_kwargs))
    return model


def remove_ada_vtp(model: nn.Module) -> nn.Module:
    """Undo `apply_ada_vtp`: the class's own ``forward`` and ``generate`` again."""
    module = _patcher(model)
    if not hasattr(model, "_ada_vtp"):
        raise ValueError(f"this {type(model).__name__} is not patched by apply_ada_vtp")
    module.remove(model)
    return model


def last_prune_result(model: nn.Module) -> PruneResult | None:
    """The selection of the patched model's latest call with images (indices [I, K] per image)."""
    return getattr(model, "_ada_vtp_last", None)


def prune_image_features(image_features: torch.Tensor, cls_attention: torch.Tensor, keep: int,
                         method: str = "agile", **prune_kwargs) -> tuple[torch.Tensor, PruneResult]:
    """Function-level hook for LLaVA-style code: keep K of each image's visual tokens.

    Args:
        image_features: [B, N, D] the vision tower's patch features ([CLS] dropped), before the
            projector.
        cls_attention: [B, N] the [CLS] query's attention to each patch at the same layer,
            averaged over heads, [CLS] column dropped.
        keep: K.
        method: any `functional.prune` method; **prune_kwargs: its other keywords.

    Returns:
        (kept [B, K, D] in ascending token order, the PruneResult).
    """
    result = functional.prune(image_features, cls_attention, keep, method, **prune_kwargs)
    return functional.gather(image_features, result.indices), result

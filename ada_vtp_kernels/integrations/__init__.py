"""One-line pruning for HF transformers vision-language models (transformers >= 5).

    >>> from ada_vtp_kernels.integrations import apply_ada_vtp, remove_ada_vtp
    >>> apply_ada_vtp(model, keep=64, method="agile")     # model.generate now sees 64 tokens per image
    >>> out = model.generate(**processor(images=image, text=prompt, return_tensors="pt"))
    >>> remove_ada_vtp(model)                             # the original forward and generate again

Supported (``config.model_type`` -> the module that patches it, each documenting its choices):
``"llava"`` (LLaVA-1.5, ``LlavaForConditionalGeneration``) -> `llava`; ``"llava_next"``
(``LlavaNextForConditionalGeneration``) -> `llava_next`; ``"qwen2_5_vl"``
(``Qwen2_5_VLForConditionalGeneration``) -> `qwen2_5_vl`.  Each module has ``apply(model, settings)``
and ``remove(model)``.  For the original LLaVA code base (haotian-liu/LLaVA), `prune_image_features`
is a function-level hook (README shows the lines to change in ``encode_images``).
"""

import importlib

import torch
from torch import nn

from .. import functional, spec
from ._common import Settings

# config.model_type -> the module that patches it
_MODULES = {"llava": "llava", "llava_next": "llava_next", "qwen2_5_vl": "qwen2_5_vl"}


def _patcher(model: nn.Module):
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    name = _MODULES.get(model_type)
    if name is None:
        raise TypeError(f"ada_vtp does not support {type(model).__name__} (config.model_type {model_type!r}); "
                        f"supported model types: {', '.join(_MODULES)}")
    if not hasattr(model, "generate"):
        raise TypeError(f"ada_vtp patches the generating model ({type(model).__name__} has no generate): pass the "
                        "*ForConditionalGeneration model")
    return importlib.import_module(f".{name}", __package__)


def apply_ada_vtp(model: nn.Module, keep: int, method: str = spec.DEFAULTS.method, *, backend: str = "auto",
                  **params) -> nn.Module:
    """Patch ``model`` (in place) so that its ``forward`` and ``generate`` run the language model on
    ``keep`` visual tokens per image, selected by ``method``.  K, the method, its parameters and the
    backend are validated here, before any call.

    Args:
        model: a supported transformers model (see the module docstring).
        keep: K, tokens kept per image, 1 <= K <= the image's token count.
        method: a method of `ada_vtp_kernels.spec.METHODS`.
        backend: as `functional.prune`'s.
        **params: the method parameters (`spec.PruneParams`: tau_max, erank_ref, ...).

    Returns:
        ``model`` itself.  `last_prune_result` gives the latest selection (indices, erank, entropy).
    """
    module = _patcher(model)
    settings = Settings.of(keep, method, backend, **params)
    if hasattr(model, "_ada_vtp"):
        raise RuntimeError("apply_ada_vtp was already applied to this model; call remove_ada_vtp first")
    module.apply(model, settings)
    return model


def remove_ada_vtp(model: nn.Module) -> nn.Module:
    """Undo `apply_ada_vtp`: the class's own ``forward`` and ``generate`` again."""
    module = _patcher(model)
    if not hasattr(model, "_ada_vtp"):
        raise ValueError(f"this {type(model).__name__} is not patched by apply_ada_vtp")
    module.remove(model)
    return model


def last_prune_result(model: nn.Module) -> spec.PruneResult | None:
    """The selection of the patched model's latest call with images (indices [I, K] per image)."""
    return getattr(model, "_ada_vtp_last", None)


def prune_image_features(image_features: torch.Tensor, cls_attention: torch.Tensor, keep: int,
                         method: str = spec.DEFAULTS.method, **prune_kwargs) -> tuple[torch.Tensor, spec.PruneResult]:
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

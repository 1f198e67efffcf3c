"""One-line pruning for HF transformers vision-language models (transformers >= 5).

    >>> from ada_vtp_kernels.integrations import apply_ada_vtp, remove_ada_vtp
    >>> apply_ada_vtp(model, keep=64, method="agile")     # model.generate now sees 64 tokens per image
    >>> out = model.generate(**processor(images=image, text=prompt, return_tensors="pt"))
    >>> remove_ada_vtp(model)                             # the original forward and generate again

Supported (``config.model_type`` -> the module that patches it, each documenting its choices):
``"llava"`` (LLaVA-1.5, ``LlavaForConditionalGeneration``) -> `llava`; ``"llava_next"``
(``LlavaNextForConditionalGeneration``) -> `llava_next`; ``"qwen2_5_vl"``
(``Qwen2_5_VLForConditionalGeneration``) -> `qwen2_5_vl`; ``"qwen3_vl"``
(``Qwen3VLForConditionalGeneration``) and ``"qwen3_vl_moe"`` (``Qwen3VLMoeForConditionalGeneration``)
-> `qwen3_vl`.  Each module has ``apply(model, settings)`` and ``remove(model)``.  For the original
LLaVA code base (haotian-liu/LLaVA), `prune_image_features` is a function-level hook (README shows the
lines to change in ``encode_images``).
"""

import importlib

import torch
from torch import nn

from .. import functional, spec
from ._common import Settings

# config.model_type -> the module that patches it
_MODULES = {"llava": "llava", "llava_next": "llava_next", "qwen2_5_vl": "qwen2_5_vl", "qwen3_vl": "qwen3_vl",
            "qwen3_vl_moe": "qwen3_vl"}

_RELEVANCE_MODULES = ("llava", "llava_next")  # the modules that compute apply_ada_vtp's relevance=


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
                  relevance: str | None = None, clip: nn.Module | None = None, clip_tokenizer=None, tokenizer=None,
                  **params) -> nn.Module:
    """Patch ``model`` (in place) so that its ``forward`` and ``generate`` run the language model on
    ``keep`` visual tokens per image, selected by ``method``.  K, the method, its parameters, the
    backend and the relevance are validated here, before any call.

    Args:
        model: a supported transformers model (see the module docstring).
        keep: K, tokens kept per image, 1 <= K <= the image's token count.
        method: a method of `ada_vtp_kernels.spec.METHODS`.
        backend: as `functional.prune`'s.
        relevance: ``method="dpp"`` only, LLaVA-1.5 and LLaVA-NeXT only (`llava` documents both):
            None (default): r = 1, an unconditional DPP;
            ``"clip_text"``: CDPruner's instruction relevance as published: minus the mean CLIP
            cosine between each token and the question's 77-token segments, so the tokens LEAST
            similar to the text get the HIGHEST relevance; the question is ``query=`` given to
            ``generate``/``forward`` (a string, or one per prompt row), else the prompt row's text
            decoded with ``tokenizer``;
            ``"lm"``: MMTok's: the cosine between each projected token and the language model's
            input embeddings of the prompt row's text tokens (no extra model, not negated).
            Both min-max normalised per prompt row.
        clip: ``"clip_text"``: a ``transformers.CLIPModel`` whose vision tower is the VLM's (e.g.
            openai/clip-vit-large-patch14-336 for LLaVA-1.5); its text_model, text_projection and
            visual_projection are read (``del clip.vision_model`` frees the rest).
        clip_tokenizer: ``"clip_text"``: its CLIP tokenizer.
        tokenizer: ``"clip_text"``, optional: the VLM's tokenizer or processor (``decode``), for
            calls without ``query=``.
        **params: the method parameters (`spec.PruneParams`: tau_max, erank_ref, ...).

    Returns:
        ``model`` itself.  `last_prune_result` gives the latest selection (indices, erank, entropy).
    """
    module = _patcher(model)
    settings = Settings.of(keep, method, backend, relevance=relevance, clip=clip, clip_tokenizer=clip_tokenizer,
                           tokenizer=tokenizer, **params)
    if relevance is not None and module.__name__.rsplit(".", 1)[1] not in _RELEVANCE_MODULES:
        raise NotImplementedError(f"relevance={relevance!r} is implemented for model types "
                                  f"{', '.join(_RELEVANCE_MODULES)}; not for {model.config.model_type!r}")
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

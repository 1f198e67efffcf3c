"""What every model integration shares: the [CLS] attention row of one vision block, and the
shrinking of image-token runs in ``input_ids`` / ``attention_mask``.

The [CLS] row (`cls_attention`) is recomputed from the block's input, one query against all keys,
so the vision tower keeps its fast attention (SDPA / flash) for its own forward: an eager tower
would materialise every [T, T] attention map of every block and head to expose one row of one.
"""

import functools
import types
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .. import functional, spec

RELEVANCE = ("clip_text", "lm")  # the instruction relevances of ``apply_ada_vtp(..., relevance=...)``
# the methods whose selection reads a per-token relevance (the kernel diag(r) S diag(r))
RELEVANCE_METHODS = tuple(m.name for m in spec.METHODS.values() if m.selection == spec.Selection.DPP)


@dataclass(frozen=True)
class Settings:
    """What `apply_ada_vtp` was called with, validated: K, the method and its parameters, the backend,
    and the instruction relevance with the parts it reads (`Settings.of` documents them)."""

    keep: int
    params: spec.PruneParams
    backend: str = "auto"
    relevance: str | None = None
    clip: nn.Module | None = field(default=None, repr=False)
    clip_tokenizer: Any = field(default=None, repr=False)
    tokenizer: Any = field(default=None, repr=False)

    @classmethod
    def of(cls, keep: int, method: str = spec.DEFAULTS.method, backend: str = "auto", *,
           relevance: str | None = None, clip: nn.Module | None = None, clip_tokenizer: Any = None,
           tokenizer: Any = None, **params) -> "Settings":
        """Validated settings: K an int >= 1, a known backend, the method and its parameters as
        `spec.PruneParams.of` checks them (what each image's token count bounds K by is checked
        where the count is known), and the relevance:

        - ``relevance``: None (r = 1), ``"clip_text"`` or ``"lm"``, only with a method whose
          selection reads it (`RELEVANCE_METHODS`: ``"dpp"``);
        - ``clip``, ``clip_tokenizer``: ``"clip_text"`` only, and required there: a
          ``transformers.CLIPModel`` (its ``text_model``, ``text_projection`` and
          ``visual_projection`` are read) and its CLIP tokenizer;
        - ``tokenizer``: ``"clip_text"`` only, optional: the VLM's tokenizer (anything with
          ``decode``), for prompts called without ``query=``.
        """
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep = {keep!r}; expected an int >= 1")
        functional._check_backend(backend)  # the name only: the device is not known yet
        prune_params = spec.PruneParams.of(method, **params)
        if relevance is not None and (not isinstance(relevance, str) or relevance not in RELEVANCE):
            raise ValueError(f"relevance={relevance!r}; expected None, {' or '.join(map(repr, RELEVANCE))}")
        if relevance is not None and method not in RELEVANCE_METHODS:
            raise ValueError(f"relevance={relevance!r} needs a method that reads a relevance "
                             f"({', '.join(map(repr, RELEVANCE_METHODS))}); got method={method!r}")
        given = {"clip": clip, "clip_tokenizer": clip_tokenizer, "tokenizer": tokenizer}
        if relevance != "clip_text":
            extra = [name for name, value in given.items() if value is not None]
            if extra:
                raise ValueError(f"{', '.join(extra)} given with relevance={relevance!r}; they are read only with "
                                 "relevance='clip_text'")
        else:
            missing = [name for name in ("clip", "clip_tokenizer") if given[name] is None]
            parts = ("text_model", "text_projection", "visual_projection")
            if clip is not None and not all(hasattr(clip, part) for part in parts):
                raise TypeError(f"clip = a {type(clip).__name__}; expected a transformers CLIPModel (with "
                                f"{', '.join(parts)})")
            if missing:
                raise ValueError(f"relevance='clip_text' needs {' and '.join(missing)}: clip= a transformers "
                                 "CLIPModel (its text_model, text_projection, visual_projection) and clip_tokenizer= "
                                 "its CLIP tokenizer (LLaVA checkpoints hold no CLIP text tower)")
            if tokenizer is not None and not hasattr(tokenizer, "decode"):
                raise TypeError(f"tokenizer = a {type(tokenizer).__name__}; expected the model's tokenizer (or "
                                "processor), with decode")
        return cls(keep, prune_params, backend, relevance, clip, clip_tokenizer, tokenizer)

    def prune(self, features: torch.Tensor, scores: torch.Tensor, lengths: torch.Tensor | None = None,
              relevance: torch.Tensor | None = None) -> spec.PruneResult:
        """`functional.prune` of the vision features with these settings (the selection is not
        differentiable: it reads detached features, and the kept features keep their gradient).
        ``relevance`` [B, N]: the instruction relevance, required when the settings ask for one (a
        caller that cannot compute it fails here rather than prune unconditionally)."""
        if self.relevance is not None and relevance is None:
            raise NotImplementedError(f"relevance={self.relevance!r} is set but this caller computes no relevance "
                                      "(only the HF LLaVA-1.5 and LLaVA-NeXT integrations do)")
        return functional.prune(features.detach(), scores.detach(), self.keep, self.params.method, lengths=lengths,
                                relevance=None if relevance is None else relevance.detach(), backend=self.backend,
                                **self.params.as_dict())


def _attention_of(block: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(pre-attention LayerNorm, self-attention module) of a ViT block: CLIP's ``layer_norm1`` /
    ``self_attn`` or DINOv2's ``norm1`` / ``attention``."""
    for norm, attention in (("layer_norm1", "self_attn"), ("norm1", "attention")):
        if hasattr(block, norm) and hasattr(getattr(block, attention, None), "q_proj"):
            return getattr(block, norm), getattr(block, attention)
    raise TypeError(
        f"cannot read the attention of a {type(block).__name__}: expected a CLIP-style block (layer_norm1, "
        "self_attn.q_proj/k_proj) or a DINOv2-style block (norm1, attention.q_proj/k_proj)"
    )


def cls_attention(block: nn.Module, hidden_in: torch.Tensor) -> torch.Tensor:
    """[CLS] attention of one ViT block, averaged over heads, the [CLS] column dropped.

    Args:
        block: the encoder block (CLIP or DINOv2 layout, pre-norm).
        hidden_in: [B, 1 + N, C] the block's input hidden states, [CLS] first.

    Returns:
        [B, N] float32: softmax(q_cls kᵀ · scale) of each head, averaged over the heads, at the
        N patch columns — the row that eager attention would return as ``attentions[b, :, 0, 1:]``.
    """
    norm, attention = _attention_of(block)
    heads = getattr(attention, "num_heads", None) or attention.num_attention_heads
    scale = getattr(attention, "scale", None) or attention.scaling
    x = norm(hidden_in)
    batch, tokens, _ = x.shape
    q = attention.q_proj(x[:, :1]).view(batch, 1, heads, -1).transpose(1, 2)  # [B, H, 1, hd]
    k = attention.k_proj(x).view(batch, tokens, heads, -1).transpose(1, 2)  # [B, H, T, hd]
    probs = torch.softmax((q.float() @ k.float().transpose(-1, -2)) * scale, dim=-1)  # [B, H, 1, T]
    return probs[:, :, 0, 1:].mean(dim=1)


def image_token_keep_mask(input_ids: torch.Tensor, image_token_id: int, run_lengths: torch.Tensor,
                          keep_lengths: torch.Tensor) -> torch.Tensor:
    """Which positions of ``input_ids`` survive when image i keeps keep_lengths[i] of its tokens.

    Args:
        input_ids: [B, L] with the image tokens of the images in order (row by row, left to right),
            image i taking run_lengths[i] consecutive image tokens.
        image_token_id: the placeholder token.
        run_lengths: [I] int, image tokens of each image.
        keep_lengths: [I] int, tokens each image keeps (<= its run length).

    Returns:
        [B, L] bool: True for every text token and for the first keep_lengths[i] placeholders of
        image i (placeholders are identical, so which ones survive does not matter; the features
        scattered into them are the kept tokens in ascending order).
    """
    is_image = input_ids == image_token_id
    total = int(is_image.sum())
    if total != int(run_lengths.sum()):
        raise ValueError(
            f"input_ids hold {total} image tokens (id {image_token_id}) but the images have "
            f"{int(run_lengths.sum())} features; expected one placeholder per feature, as the processor writes them"
        )
    flat = is_image.flatten()
    order = torch.cumsum(flat.long(), 0) - 1  # index of each placeholder among all placeholders
    starts = torch.cumsum(run_lengths, 0) - run_lengths
    image = torch.searchsorted(torch.cumsum(run_lengths, 0), order, right=True).clamp(max=len(run_lengths) - 1)
    offset = order - starts[image]
    keep = ~flat | (offset < keep_lengths.to(offset.device)[image])
    return keep.view_as(input_ids)


def image_rows(input_ids: torch.Tensor, image_token_id: int, run_lengths: torch.Tensor) -> torch.Tensor:
    """[I] the row of ``input_ids`` whose placeholders image i fills (images in order, row by row,
    image i taking run_lengths[i] consecutive placeholders, as `image_token_keep_mask` reads them)."""
    per_row = torch.cumsum((input_ids == image_token_id).sum(dim=1), 0)
    starts = torch.cumsum(run_lengths, 0) - run_lengths
    return torch.searchsorted(per_row, starts.to(per_row.device), right=True)


def shrink_rows(keep: torch.Tensor, tensors: dict[str, torch.Tensor], pad_values: dict[str, int],
                padding_side: str) -> dict[str, torch.Tensor]:
    """Drop the positions where ``keep`` is False (dropped image tokens and the old padding) from
    every [B, L] tensor and pad the rows to the longest again (``padding_side`` "left" or "right",
    with ``pad_values[name]``)."""
    lengths = keep.sum(dim=1)
    width = int(lengths.max())
    out = {}
    for name, t in tensors.items():
        new = torch.full((t.shape[0], width), pad_values[name], dtype=t.dtype, device=t.device)
        positions = torch.arange(width, device=t.device)[None, :]
        if padding_side == "left":
            slots = positions >= (width - lengths)[:, None]
        else:
            slots = positions < lengths[:, None]
        new[slots] = t[keep]
        out[name] = new
    return out


def padding_side_of(attention_mask: torch.Tensor | None) -> str:
    """"left" when some row starts with padding (generation's usual layout), else "right"."""
    if attention_mask is not None and bool((attention_mask[:, 0] == 0).any()):
        return "left"
    return "right"


def check_feature_selection(layer, strategy) -> None:
    """What [CLS] scores need of a LLaVA-style feature selection: one layer (an int) and the
    "default" select strategy ([CLS] dropped, its attention scoring the patches)."""
    if not isinstance(layer, int):
        raise NotImplementedError(f"vision_feature_layer={layer!r}: ada_vtp prunes one feature layer (an int)")
    if strategy != "default":
        raise NotImplementedError(
            f"vision_feature_select_strategy={strategy!r}: ada_vtp needs 'default' (the [CLS] token dropped, "
            "its attention scoring the patches)"
        )


def feature_layer(config, kwargs: dict) -> int:
    """The ``vision_feature_layer`` of a LLaVA-style call (popped from kwargs, else the config's),
    checked by `check_feature_selection`."""
    layer = kwargs.pop("vision_feature_layer", None)
    layer = config.vision_feature_layer if layer is None else layer
    strategy = kwargs.pop("vision_feature_select_strategy", None) or config.vision_feature_select_strategy
    check_feature_selection(layer, strategy)
    return layer


def take_inputs(kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixel_values popped from kwargs, input_ids), with the checks every patch shares."""
    pixel_values = kwargs.pop("pixel_values")
    if kwargs.get("position_ids") is not None:
        raise ValueError("ada_vtp shrinks the sequence; pass attention_mask and let the model derive position_ids")
    input_ids = kwargs.get("input_ids")
    if input_ids is None:
        raise ValueError("ada_vtp needs input_ids (the image placeholders mark where the kept tokens go)")
    return pixel_values, input_ids


def with_pruned_images(model: nn.Module, kwargs: dict, keep: torch.Tensor, features: list[torch.Tensor]) -> dict:
    """kwargs for the model's own forward/generate: input_ids, attention_mask (and labels) shrunk to
    the positions ``keep`` marks ([B, L] bool, e.g. `image_token_keep_mask`), rows re-padded, and
    the per-image feature sequences as pre-encoded ``mm_encoder_outputs``."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    input_ids = kwargs["input_ids"]
    attention_mask = kwargs.get("attention_mask")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    tensors = {"input_ids": input_ids, "attention_mask": attention_mask}
    if kwargs.get("labels") is not None:
        tensors["labels"] = kwargs["labels"]
    pad = {"input_ids": model.config.text_config.pad_token_id or 0, "attention_mask": 0, "labels": -100}
    # the old padding goes too: the rows are padded again for their new lengths
    kwargs.update(shrink_rows(keep & attention_mask.bool(), tensors, pad, padding_side_of(attention_mask)))
    kwargs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=features)}
    return kwargs


def install(model: nn.Module, settings: Settings, for_forward, for_generate) -> None:
    """Patch the instance: its ``forward`` and ``generate`` pass calls without ``pixel_values``
    through, and hand those with images to the class's own methods after ``for_forward(model,
    kwargs)`` / ``for_generate(model, kwargs)`` rewrote their keywords.  The patched methods carry
    the class's signatures (``functools.wraps``): ``generate`` reads ``forward``'s to validate its
    keywords and derive position ids."""
    cls = type(model)

    @functools.wraps(cls.forward)
    def forward(self, *args, **kwargs):
        if kwargs.get("pixel_values") is None:
            return cls.forward(self, *args, **kwargs)
        return cls.forward(self, *args, **for_forward(self, kwargs))

    @functools.wraps(cls.generate)
    def generate(self, *args, **kwargs):
        if args:
            kwargs["input_ids"], args = args[0], args[1:]
        if kwargs.get("pixel_values") is None:
            return cls.generate(self, *args, **kwargs)
        with torch.no_grad():  # as generate itself: the vision tower keeps no activations for backward
            kwargs = for_generate(self, kwargs)
        return cls.generate(self, *args, **kwargs)

    model._ada_vtp = settings
    model.forward = types.MethodType(forward, model)
    model.generate = types.MethodType(generate, model)


def uninstall(model: nn.Module) -> None:
    """Undo `install`: the class's methods again, and no pruning state on the instance."""
    for name in ("forward", "generate", "_ada_vtp", "_ada_vtp_last"):
        model.__dict__.pop(name, None)

"""LLaVA-1.5 in HF transformers (``LlavaForConditionalGeneration``): prune the image features to K
tokens per image before the language model sees them.

What the patched ``generate`` / ``forward`` do when ``pixel_values`` are given (they pass
everything else through):

1. one vision-tower forward with hidden states (its own attention implementation, SDPA by
   default); the features are ``hidden_states[vision_feature_layer]`` without [CLS] (LLaVA's
   ``vision_feature_select_strategy="default"``);
2. scores: the [CLS] attention of the block that produced that layer, recomputed for the one
   [CLS] query row (`_common.cls_attention`), averaged over heads, [CLS] column dropped —
   FasterVLM's scores, without an eager tower;
3. ``ada_vtp_kernels.prune`` on those vision features (similarity and erank read the vision
   layer, as the paper's analysis and DivPrune do, not the 4096-wide projector output: the
   projector is a per-token MLP, so it changes neither which tokens are alike nor their count,
   and projecting only the K kept tokens is cheaper);
4. the projector on the K kept tokens (ascending: spatial order), handed to the model as
   ``mm_encoder_outputs`` (transformers >= 5 takes pre-encoded image features there);
5. each image's run of N placeholder tokens in ``input_ids`` (and ``attention_mask``, ``labels``)
   shrunk to K, rows re-padded on their padding side when their image counts differ; position ids
   follow from the shrunk mask as usual.
"""

import torch
from torch import nn

from .. import functional
from ._common import (
    Settings,
    cls_attention,
    feature_layer,
    image_token_keep_mask,
    install,
    take_inputs,
    uninstall,
    with_pruned_images,
)


def encoder_blocks(vision_tower: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a CLIP (``vision_model.encoder.layers``) or DINOv2
    (``encoder.layer``) vision tower."""
    for path in ("vision_model.encoder.layers", "encoder.layers", "encoder.layer"):
        module = vision_tower
        for name in path.split("."):
            module = getattr(module, name, None)
        if isinstance(module, nn.ModuleList):
            return module
    raise TypeError(f"cannot find the encoder blocks of a {type(vision_tower).__name__} vision tower")


def vision_features_and_scores(vision_tower: nn.Module, pixel_values: torch.Tensor, layer: int
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch features [I, N, C] of ``hidden_states[layer]`` ([CLS] dropped) and the [CLS] attention
    [I, N] of the block that produced them."""
    out = vision_tower(pixel_values, output_hidden_states=True, return_dict=True)
    hidden = out.hidden_states
    index = layer % len(hidden)
    if index == 0:
        raise ValueError(f"vision_feature_layer={layer} is the embeddings, which no attention block produced")
    scores = cls_attention(encoder_blocks(vision_tower)[index - 1], hidden[index - 1])
    return hidden[index][:, 1:], scores


def _pruned_image_features(model, pixel_values: torch.Tensor, kwargs: dict) -> list[torch.Tensor]:
    settings = model._ada_vtp
    inner = model.model
    features, scores = vision_features_and_scores(inner.vision_tower, pixel_values, feature_layer(model.config, kwargs))
    result = settings.prune(features, scores)
    kept = functional.gather(features, result.indices)
    model._ada_vtp_last = result
    return list(inner.multi_modal_projector(kept))


def _shrunk_inputs(model, kwargs: dict) -> dict:
    """kwargs with pixel_values replaced by pruned mm_encoder_outputs and the image runs shrunk."""
    pixel_values, input_ids = take_inputs(kwargs)
    if kwargs.pop("image_sizes", None) is not None:
        raise NotImplementedError("image_sizes (Pixtral-style variable sizes) is not supported by the LLaVA-1.5 patch")
    features = _pruned_image_features(model, pixel_values, kwargs)
    image_token_id = model.config.image_token_id
    placeholders = int((input_ids == image_token_id).sum())
    if placeholders % len(features):
        raise ValueError(f"input_ids hold {placeholders} image tokens for {len(features)} images; expected the same "
                         "number per image, as LLaVA's processor writes them")
    runs = torch.full((len(features),), placeholders // len(features), dtype=torch.long, device=input_ids.device)
    keep = image_token_keep_mask(input_ids, image_token_id, runs, torch.full_like(runs, model._ada_vtp.keep))
    return with_pruned_images(model, kwargs, keep, features)


def apply(model: nn.Module, settings: Settings) -> None:
    install(model, settings, _shrunk_inputs, _shrunk_inputs)


remove = uninstall

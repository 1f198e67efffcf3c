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

Instruction relevance (``method="dpp"``, ``apply_ada_vtp(..., relevance=...)``): the DPP kernel
becomes diag(r) S diag(r), r [I, N] computed here between step 2 and 3 from each image's prompt row
(`instruction_relevance`):

- ``"clip_text"``: CDPruner's recipe as published (Theia-4869/CDPruner, ``clip_encoder.py`` and
  ``llava_arch.encode_images``).  The question text (``query=`` given to generate/forward, a string
  or one per prompt row; else the row's non-image, non-padding tokens decoded with ``tokenizer=``,
  chat template words included) is CLIP-tokenized without truncation, zero-padded to a multiple of
  the text tower's 77 positions and encoded as M segments of 77 (``text_projection`` of the pooled
  output); each visual token is the tower's ``post_layernorm`` of the feature-layer patch state (the
  state pruned in step 3), then ``clip.visual_projection`` in fp32.  r = the mean over the M
  segments of the NEGATED cosine: **the tokens least similar to the text get the highest
  relevance.**  That is what CDPruner's code does (``(-relevance).mean(dim=-1)``; its users asked
  why, CDPruner issues #14 and #19); it is reproduced as published, not corrected.
- ``"lm"``: no extra model (MMTok's text-visual similarity, ICLR 2026): the cosine between each
  PROJECTED visual token (the projector's output for all N tokens) and the language model's input
  embedding of each text token of the image's prompt row (non-image, non-padding, BOS and template
  included), averaged over those text tokens; not negated: the tokens most similar to the prompt
  get the highest relevance.  It compares the tokens in the space the language model reads, where
  ``"clip_text"`` compares them in CLIP's joint space through a second text encoder.

Both then min-max normalise as CDPruner does, (r - min + 1e-6) / (max - min), over all tokens of all
images of one prompt row at once (r = 1 where they are all equal).  CDPruner normalises over all
images of its call, which its evaluation runs with one prompt; per row keeps that and makes a
batched prompt select what it selects alone.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .. import functional
from ._common import (
    Settings,
    cls_attention,
    feature_layer,
    image_rows,
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


def post_layernorm(vision_tower: nn.Module) -> nn.Module:
    """The final LayerNorm of a CLIP vision tower (``post_layernorm``), which ``"clip_text"``
    applies to the feature-layer states before ``visual_projection``, as CLIP's image embedding does."""
    for path in ("post_layernorm", "vision_model.post_layernorm"):
        module = vision_tower
        for name in path.split("."):
            module = getattr(module, name, None)
        if isinstance(module, nn.Module):
            return module
    raise TypeError(f"relevance='clip_text' needs a CLIP vision tower (post_layernorm); this model's is a "
                    f"{type(vision_tower).__name__}")


def check_relevance_parts(model: nn.Module, settings: Settings) -> None:
    """At apply time: what ``"clip_text"`` reads of the model fits the CLIP parts given."""
    if settings.relevance != "clip_text":
        return
    post_layernorm(model.model.vision_tower)
    width = model.config.vision_config.hidden_size
    projection = settings.clip.visual_projection
    if projection.in_features != width:
        raise ValueError(f"clip.visual_projection takes {projection.in_features} features but the vision tower's "
                         f"width is {width}; expected the CLIP model whose vision tower the VLM uses")


def text_token_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, image_token_id: int
                   ) -> list[torch.Tensor]:
    """Per prompt row its text tokens: the non-image, non-padding ids, in order."""
    text = input_ids != image_token_id
    if attention_mask is not None:
        text &= attention_mask.bool()
    return [ids[mask] for ids, mask in zip(input_ids, text)]


def _question(settings: Settings, query, row: int, batch: int, ids: torch.Tensor) -> str:
    """The question text of prompt row ``row``: ``query`` (one string for every row, or one per
    row), else the row's text tokens decoded with the settings' tokenizer."""
    if query is not None:
        if isinstance(query, str):
            return query
        if not isinstance(query, (list, tuple)) or len(query) != batch or not all(isinstance(q, str) for q in query):
            raise ValueError(f"query = {query!r}; expected a string or a list of {batch} strings, one per prompt row")
        return query[row]
    if settings.tokenizer is None:
        raise ValueError("relevance='clip_text' needs the question text: pass query= (a string, or one per prompt "
                         "row) to generate/forward, or tokenizer= to apply_ada_vtp to decode it from input_ids")
    return settings.tokenizer.decode(ids.tolist(), skip_special_tokens=True)


def clip_text_embeds(settings: Settings, text: str) -> torch.Tensor:
    """[M, P] float32 CLIP text embeddings of ``text`` as CDPruner computes them: tokenized without
    truncation, zero-padded (ids and mask) to M·77 tokens, encoded as M segments of 77."""
    clip = settings.clip
    tokens = settings.clip_tokenizer(text=text, return_tensors="pt")
    width = clip.config.text_config.max_position_embeddings
    length = tokens["input_ids"].shape[1]
    segments = (length - 1) // width + 1
    device = clip.text_projection.weight.device
    inputs = {name: torch.cat([tokens[name], tokens[name].new_zeros((1, segments * width - length))], dim=1)
              .reshape(-1, width).to(device) for name in ("input_ids", "attention_mask")}
    return clip.text_projection(clip.text_model(**inputs).pooler_output).float()


def _normalised_per_row(relevance: torch.Tensor, valid: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """CDPruner's (r - min + 1e-6) / (max - min) over the valid tokens of each prompt row's images
    (1 where they are all equal, which would divide by zero); 0 at padding."""
    out = torch.zeros_like(relevance)
    for row in rows.unique().tolist():
        images = rows == row
        r, mask = relevance[images], valid[images]
        low, high = r[mask].min(), r[mask].max()
        span = high - low
        normalised = torch.where(span > 0, (r - low + 1e-6) / span, torch.ones_like(r))
        out[images] = torch.where(mask, normalised, 0.0)
    return out


@torch.no_grad()  # it only steers the selection, which is not differentiable
def instruction_relevance(model: nn.Module, query, features: torch.Tensor, lengths: torch.Tensor | None,
                          runs: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
                          ) -> torch.Tensor:
    """The ``relevance=`` of the settings (module docstring) for each image's candidate tokens.

    Args:
        model: the patched LLaVA-style model (its vision tower, projector and input embeddings).
        query: the ``query=`` of the call (``"clip_text"``), or None.
        features: [I, N, C] the feature-layer states of each image's candidates ([CLS] dropped).
        lengths: [I] valid candidates per image (the rest is padding), or None: all N.
        runs: [I] placeholders of each image in ``input_ids`` (where its prompt row is found).
        input_ids, attention_mask: the call's prompt rows, before any shrinking.

    Returns:
        [I, N] float32, min-max normalised per prompt row; 0 at padding.
    """
    settings = model._ada_vtp
    inner = model.model
    image_token_id = model.config.image_token_id
    rows = image_rows(input_ids, image_token_id, runs).to(features.device)
    valid = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
    if lengths is not None:
        valid = torch.arange(features.shape[1], device=features.device) < lengths.to(features.device)[:, None]
    texts = text_token_ids(input_ids, attention_mask, image_token_id)
    relevance = torch.zeros(features.shape[:2], dtype=torch.float32, device=features.device)
    if settings.relevance == "clip_text":
        projection = settings.clip.visual_projection
        bias = None if projection.bias is None else projection.bias.float().to(features.device)
        embeds = F.linear(post_layernorm(inner.vision_tower)(features).float(),
                          projection.weight.float().to(features.device), bias)
        embeds = embeds / embeds.norm(dim=-1, keepdim=True)
        for row in rows.unique().tolist():
            text = clip_text_embeds(settings, _question(settings, query, row, len(texts), texts[row]))
            text = text.to(features.device)
            text = text / text.norm(dim=-1, keepdim=True)  # [M, P]
            images = rows == row
            relevance[images] = (-(embeds[images] @ text.t())).mean(dim=-1)
    else:  # "lm"
        projected = inner.multi_modal_projector(features).float()
        projected = projected / projected.norm(dim=-1, keepdim=True)
        embedding = model.get_input_embeddings()
        for row in rows.unique().tolist():
            if len(texts[row]) == 0:
                raise ValueError(f"relevance='lm': prompt row {row} holds no text token to compare the image with")
            text = embedding(texts[row].to(embedding.weight.device)).float().to(features.device)
            text = text / text.norm(dim=-1, keepdim=True)  # [T, D]
            images = rows == row
            relevance[images] = (projected[images] @ text.t()).mean(dim=-1)
    return _normalised_per_row(relevance, valid, rows)


def take_query(settings: Settings, kwargs: dict):
    """``query=`` popped from the call's keywords (read only by ``"clip_text"``)."""
    query = kwargs.pop("query", None)
    if query is not None and settings.relevance != "clip_text":
        raise ValueError(f"query= is read only with relevance='clip_text'; this model has "
                         f"relevance={settings.relevance!r}")
    return query


def _image_runs(input_ids: torch.Tensor, image_token_id: int, images: int) -> torch.Tensor:
    """[I] placeholders per image: the same for every image, as LLaVA's processor writes them."""
    placeholders = int((input_ids == image_token_id).sum())
    if placeholders % images:
        raise ValueError(f"input_ids hold {placeholders} image tokens for {images} images; expected the same "
                         "number per image, as LLaVA's processor writes them")
    return torch.full((images,), placeholders // images, dtype=torch.long, device=input_ids.device)


def _pruned_image_features(model, pixel_values: torch.Tensor, runs: torch.Tensor, query, kwargs: dict
                           ) -> list[torch.Tensor]:
    settings = model._ada_vtp
    inner = model.model
    features, scores = vision_features_and_scores(inner.vision_tower, pixel_values, feature_layer(model.config, kwargs))
    relevance = None
    if settings.relevance is not None:
        relevance = instruction_relevance(model, query, features, None, runs, kwargs["input_ids"],
                                          kwargs.get("attention_mask"))
    result = settings.prune(features, scores, relevance=relevance)
    kept = functional.gather(features, result.indices)
    model._ada_vtp_last = result
    return list(inner.multi_modal_projector(kept))


def _shrunk_inputs(model, kwargs: dict) -> dict:
    """kwargs with pixel_values replaced by pruned mm_encoder_outputs and the image runs shrunk."""
    pixel_values, input_ids = take_inputs(kwargs)
    query = take_query(model._ada_vtp, kwargs)
    if kwargs.pop("image_sizes", None) is not None:
        raise NotImplementedError("image_sizes (Pixtral-style variable sizes) is not supported by the LLaVA-1.5 patch")
    image_token_id = model.config.image_token_id
    runs = _image_runs(input_ids, image_token_id, pixel_values.shape[0])
    features = _pruned_image_features(model, pixel_values, runs, query, kwargs)
    keep = image_token_keep_mask(input_ids, image_token_id, runs, torch.full_like(runs, model._ada_vtp.keep))
    return with_pruned_images(model, kwargs, keep, features)


def apply(model: nn.Module, settings: Settings) -> None:
    check_relevance_parts(model, settings)
    install(model, settings, _shrunk_inputs, _shrunk_inputs)


remove = uninstall

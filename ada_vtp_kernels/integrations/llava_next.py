"""LLaVA-NeXT in HF transformers (``LlavaNextForConditionalGeneration``): prune each image's visual
tokens to K (plus the newline token of each row of its high-resolution grid) before the language
model sees them.

LLaVA-NeXT encodes an image as several 336 px tiles: a base view of the whole image, then the tiles
of a high-resolution grid (``image_grid_pinpoints``).  The model packs an image's tokens as: the
base view's h·w tokens, then the high-resolution grid with its letterbox padding cut away
("unpadded", r_i rows × c_i columns), row by row, each row followed by the learned
``image_newline`` embedding.  Image i has N_i = h·w + r_i·c_i vision tokens and N_i + r_i
placeholders (576 + 2·24·2·24 + 48 = 2928 at most for a square image with CLIP-L/14-336 and the
672×672 pinpoint, fewer when its aspect ratio leaves padding).

What the patched ``generate`` / ``forward`` do when ``pixel_values`` are given (they pass
everything else through):

1. one vision-tower forward over all tiles of all images with hidden states (its own attention
   implementation); features are ``hidden_states[vision_feature_layer]`` without [CLS], scores the
   [CLS] attention row of the block that produced that layer, recomputed for the one [CLS] query
   (`_common.cls_attention`): each token is scored by the [CLS] of its own tile;
2. each image's candidates: its N_i vision tokens in the model's packed order (base view, then the
   unpadded grid row by row), newline slots excluded.  The layout is the model's own: the patch
   runs ``pack_image_features`` on token indices, so it cannot drift from what the model builds;
3. one batched ``ada_vtp_kernels.prune`` over all images, ragged ``lengths`` = N_i, on the vision
   features (not the projector output, as in the LLaVA-1.5 patch): K tokens per image.
   **Budget split: none fixed.**  The base view and the high-resolution tiles compete in one pool
   and the method decides how many each keeps (a quota per tile would spend budget on tiles that
   are all background, and unpadding already makes the tiles unequal).  The scores are comparable
   across tiles: each is a share of its own tile's [CLS] softmax, so a token of a uniformly
   attended tile scores 1/(h·w + 1) in every tile;
4. the projector on the K kept tokens, in ascending pool order (the packed order), and
   **newline tokens: every grid row keeps its own.**  Each row of the unpadded grid keeps its
   ``image_newline``, right after the row's kept tokens (a row that keeps none is just its
   newline), so image i reaches the language model as K + r_i tokens.  The count must be known
   before the image is encoded: a serving engine that allocates the KV cache from the prompt
   (vLLM: `ada_vtp_kernels.integrations.vllm.llava_next`) sizes the prompt, its cache blocks and
   positions from the processor's placeholder count, which can depend on the image size but not on
   the selection; keeping only the newlines of the rows that keep a token would make it depend on
   the selection.  The newline still marks where each image row ends ("the tokens since the
   previous newline are one image row, left to right": pruning removes tokens from a row but never
   moves one to another row), and keep = N_i is exactly the unpatched model's input.  Dropping
   every newline would change the input even without pruning; counting newlines in K would make
   the selection depend on itself.  The cost: r_i tokens per image beyond K (at most 72 with
   LLaVA-v1.6's pinpoints: three 336 px tiles of 24 rows);
5. those sequences handed to the model as ``mm_encoder_outputs``, and each image's run of
   N_i + r_i placeholders in ``input_ids`` (and ``attention_mask``, ``labels``) shrunk to K + r_i,
   rows re-padded on their padding side; position ids follow from the shrunk mask as usual.

Instruction relevance (``method="dpp"``, ``relevance="clip_text"`` or ``"lm"``): as in the
LLaVA-1.5 patch (`llava.instruction_relevance` documents both), computed on each image's pool (the
same candidates step 3 prunes: ``"clip_text"`` reads their feature-layer states through the
tower's ``post_layernorm``, ``"lm"`` their projector output) and min-max normalised over all tokens
of all pools of one prompt row at once.  CDPruner normalises over every tile it encodes, the
letterbox tokens that unpadding cuts included; those are never candidates here, so they do not
set the range.

`last_prune_result` gives indices [I, K] into each image's pool (0 .. h·w − 1: the base view;
h·w + row·c_i + column: the unpadded grid).
"""

import functools
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from .. import functional, spec
from ._common import Settings, feature_layer, image_token_keep_mask, install, take_inputs, uninstall, with_pruned_images
from .llava import check_relevance_parts, instruction_relevance, take_query, vision_features_and_scores

NEWLINE = -1  # a newline slot in `packed_layouts`


def image_tiles(config, pixel_values: torch.Tensor | list[torch.Tensor], image_sizes
                ) -> tuple[torch.Tensor, list[int]]:
    """The tiles the model encodes, as ``LlavaNextModel.get_image_features`` selects them.

    Args:
        config: the ``LlavaNextConfig``.
        pixel_values: [I, max_tiles, 3, H, W] as the processor pads them, a list of I
            [tiles_i, 3, H, W] (vLLM's batch of images whose padded tile counts differ), or
            [T, 3, H, W] (the tiles of all images, concatenated).
        image_sizes: [I, 2] (height, width) of each original image.

    Returns:
        (tiles [T, 3, H, W], tiles per image: base view + high-resolution tiles).
    """
    counts = [image_size_to_num_patches(size, config.image_grid_pinpoints, config.vision_config.image_size)
              for size in image_sizes]
    if isinstance(pixel_values, list) or pixel_values.dim() == 5:
        if len(pixel_values) != len(counts):
            raise ValueError(f"pixel_values holds {len(pixel_values)} images but image_sizes {len(counts)}; "
                             "expected one (height, width) per image")
        return torch.cat([tiles[:count] for tiles, count in zip(pixel_values, counts)]), counts
    if pixel_values.dim() == 4:
        if pixel_values.shape[0] != sum(counts):
            raise ValueError(f"pixel_values holds {pixel_values.shape[0]} tiles but image_sizes implies {sum(counts)} "
                             f"({', '.join(map(str, counts))} per image)")
        return pixel_values, counts
    raise ValueError(f"pixel_values of shape {tuple(pixel_values.shape)}; expected 5 dimensions "
                     "[images, tiles, 3, H, W] or 4 [tiles, 3, H, W]")


def packed_layouts(inner: nn.Module, counts: list[int], image_sizes, tokens_per_tile: int) -> list[torch.Tensor]:
    """Where each vision token lands in the model's packed image sequence.

    Args:
        inner: the ``LlavaNextModel`` (its ``pack_image_features`` is run on token indices).
        counts: tiles per image.
        image_sizes: [I, 2] (height, width) of each original image.
        tokens_per_tile: h·w, vision tokens per tile ([CLS] dropped).

    Returns:
        per image a [N_i + r_i] int64 tensor: the index into the T·h·w tile tokens (tile-major) of
        the token at each position of the packed sequence, or `NEWLINE` at a newline slot.
    """
    tokens = torch.arange(sum(counts) * tokens_per_tile).view(-1, tokens_per_tile, 1)
    layouts, _ = inner.pack_image_features(list(torch.split(tokens, counts)), image_sizes, "default",
                                           image_newline=torch.tensor([NEWLINE]))
    return [layout[:, 0] for layout in layouts]


def with_newlines(kept: torch.Tensor, indices: torch.Tensor, layout: torch.Tensor, newline: torch.Tensor
                  ) -> torch.Tensor:
    """One image's pruned sequence: its kept tokens and every newline of its layout, in layout order.

    Args:
        kept: [K, D] the projected kept tokens, in ascending pool order.
        indices: [K] their ascending indices into the image's pool (its non-newline slots, in order).
        layout: [N + r] the image's packed layout (`packed_layouts`).
        newline: [D] the ``image_newline`` embedding.

    Returns:
        [K + r, D]: the slots of ``layout`` that survive (the kept tokens' and the r newlines').
    """
    is_newline = layout == NEWLINE
    survives = is_newline.clone()
    survives[(~is_newline).nonzero().squeeze(1)[indices.to(layout.device)]] = True
    slot_is_newline = is_newline[survives].to(kept.device)
    source = (torch.cumsum((~slot_is_newline).long(), 0) - 1).clamp(min=0)  # which kept token fills a slot
    return torch.where(slot_is_newline[:, None], newline.to(kept.dtype), kept[source])


def pruned_sequences(settings: Settings, features: torch.Tensor, scores: torch.Tensor, layouts: list[torch.Tensor],
                     projector: nn.Module, newline: torch.Tensor,
                     relevance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                     ) -> tuple[list[torch.Tensor], spec.PruneResult]:
    """Steps 2-4 above, shared with the vLLM plugin (`ada_vtp_kernels.integrations.vllm.llava_next`)
    so that both prune alike: each image's pool, one batched ragged prune, the projector on the
    kept tokens, every row's newline.

    Args:
        settings: K, the method and its parameters.
        features: [T, h·w, C] the vision features of all tiles ([CLS] dropped), tile-major.
        scores: [T, h·w] their [CLS] attention, each token's in its own tile.
        layouts: per image its packed layout [N_i + r_i] (`packed_layouts`, or the vLLM model's own).
        projector: the multimodal projector (per token, C -> D).
        newline: [D] the ``image_newline`` embedding.
        relevance: with ``settings.relevance``: (pool features [I, max N_i, C], lengths [I]) ->
            relevance [I, max N_i] of the pools' tokens (the HF patch's `llava.instruction_relevance`).

    Returns:
        (per image its sequence [K + r_i, D], the prune result: indices [I, K] into each pool).
    """
    base_tokens = features.shape[1]
    pools = [layout[layout != NEWLINE] for layout in layouts]
    lengths = [len(pool) for pool in pools]
    if settings.keep > min(lengths):
        image = lengths.index(min(lengths))
        raise ValueError(f"keep = {settings.keep} exceeds image {image}'s {lengths[image]} vision tokens "
                         f"({base_tokens} of the base view, {lengths[image] - base_tokens} of the unpadded grid); "
                         "expected keep <= every image's token count")
    index = pad_sequence(pools, batch_first=True).to(features.device)  # [I, max N_i], padded with token 0
    pool_features = features.flatten(0, 1)[index]  # [I, max N_i, C]
    pool_scores = scores.flatten()[index]
    pool_lengths = torch.tensor(lengths, device=features.device)
    # the selection is not differentiable; the kept features keep their gradient (training)
    if relevance is None:
        result = settings.prune(pool_features, pool_scores, pool_lengths)
    else:
        result = settings.prune(pool_features, pool_scores, pool_lengths,
                                relevance=relevance(pool_features, pool_lengths))
    kept = projector(functional.gather(pool_features, result.indices))  # [I, K, D]
    sequences = [with_newlines(kept[i], result.indices[i], layout, newline) for i, layout in enumerate(layouts)]
    return sequences, result


def _pruned_image_features(model, pixel_values: torch.Tensor, query, kwargs: dict
                           ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """(per image the pruned sequence [K + r_i, D], placeholders per image N_i + r_i, K + r_i)."""
    config = model.config
    layer = feature_layer(config, kwargs)
    image_sizes = kwargs.pop("image_sizes", None)
    if image_sizes is None:
        raise ValueError("LLaVA-NeXT needs image_sizes ([images, 2] original height, width), as the processor returns")
    inner = model.model
    tiles, counts = image_tiles(config, pixel_values, image_sizes)
    features, scores = vision_features_and_scores(inner.vision_tower, tiles, layer)  # [T, h·w, C], [T, h·w]
    layouts = packed_layouts(inner, counts, image_sizes, features.shape[1])
    runs = torch.tensor([len(layout) for layout in layouts])
    relevance = None
    if model._ada_vtp.relevance is not None:  # of the pools: (pool features, lengths) -> [I, max N_i]
        input_ids = kwargs["input_ids"]
        relevance = functools.partial(instruction_relevance, model, query, runs=runs.to(input_ids.device),
                                      input_ids=input_ids, attention_mask=kwargs.get("attention_mask"))
    sequences, result = pruned_sequences(model._ada_vtp, features, scores, layouts, inner.multi_modal_projector,
                                         inner.image_newline, relevance)
    model._ada_vtp_last = result
    return sequences, runs, torch.tensor([len(sequence) for sequence in sequences])


def _shrunk_inputs(model, kwargs: dict) -> dict:
    """kwargs with pixel_values replaced by pruned mm_encoder_outputs and the image runs shrunk."""
    pixel_values, input_ids = take_inputs(kwargs)
    features, runs, kept = _pruned_image_features(model, pixel_values, take_query(model._ada_vtp, kwargs), kwargs)
    keep = image_token_keep_mask(input_ids, model.config.image_token_id, runs.to(input_ids.device), kept)
    return with_pruned_images(model, kwargs, keep, features)


def apply(model: nn.Module, settings: Settings) -> None:
    check_relevance_parts(model, settings)
    install(model, settings, _shrunk_inputs, _shrunk_inputs)


remove = uninstall

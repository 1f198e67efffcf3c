"""Qwen3-VL in HF transformers (``Qwen3VLForConditionalGeneration``, and the MoE
``Qwen3VLMoeForConditionalGeneration``, whose vision tower and multimodal forward are the same code):
prune each image's merged visual tokens to K before the language model sees them, the DeepStack
features with the same kept indices, keeping the kept tokens' original 3D rope positions.

What the patched ``generate`` / ``forward`` do when ``pixel_values`` are given (they pass
everything else through, text-only calls included) — `qwen2_5_vl`'s steps, which this module reuses,
with the differences of Qwen3-VL's vision tower:

1. one vision-tower forward (``get_image_features``, the tower's own attention implementation);
   a pre-hook on its last block records that block's input, its ``cu_seqlens`` and its rotary
   cos/sin (`qwen2_5_vl.encode_with_received_attention`).  Qwen3-VL has no window attention: every
   block attends within each image (each frame of a t > 1 grid), its patches in the processor's
   merge-block order (the 2×2 patches of each merged token consecutive, the merged tokens in raster
   order), with a 2D (h, w) rotary embedding over the full head dim applied to q and k as in
   Qwen2.5-VL, plus a learned position embedding added before the first block (already in the
   recorded input);
2. scores — the substitute for [CLS] attention that Qwen2.5-VL uses: the mean attention each patch
   *receives* in the last vision block (`qwen2_5_vl.received_attention`: chunked over queries, no
   [T, T] map; here every segment is a whole image), the 2×2 patches of each merged token summed
   (no window permutation to undo), divided by the image's patch count so that each image's scores
   sum to 1 (`qwen2_5_vl.image_scores`);
3. ONE ``ada_vtp_kernels.prune`` AFTER the patch merger over all images (ragged token counts, with
   ``lengths``), on the merged tokens (the merger output, ``pooler_output``): each image keeps K;
4. DeepStack: the tower also returns, per layer of ``deepstack_visual_indexes`` (8, 16, 24 in the
   released checkpoints), that layer's visual states merged by its own merger, one [N_i, D] block
   per image, which the language model adds to the hidden states of the visual positions after
   each of its first len(deepstack_visual_indexes) decoder layers.  Each of these blocks is
   gathered with the SAME kept indices as the merger output, so that every injected layer sees
   the same K tokens, in the same (ascending, raster) order as the placeholders they land on.
   The scores come from the last block only: the DeepStack layers do not vote;
5. the kept tokens and their DeepStack features handed to the model as ``mm_encoder_outputs``
   (a ``BaseModelOutputWithDeepstackFeatures``: ``pooler_output`` and ``deepstack_features``);
6. positions and the shrunk ``input_ids`` / ``attention_mask`` / ``mm_token_type_ids`` /
   ``labels``, as `qwen2_5_vl` steps 5-6 (`qwen2_5_vl.shrunk_inputs`): the unpatched model's
   ``get_rope_index`` on the FULL input, the pruned tokens' columns dropped, so that each kept
   visual token keeps its original (t, h, w) and each text token its original position, and
   ``model.model.rope_deltas`` set so that decoding continues where the unpatched model does.

The language model sees the text tokens and K tokens per image, at every layer (the DeepStack
additions included); with K = all tokens the patched model computes what the unpatched one does.

Not supported (as for Qwen2.5-VL): videos together with images in one call (``pixel_values_videos``
with ``pixel_values`` raises; videos alone pass through unpruned, DeepStack included), caller-given
``position_ids`` with images, ``inputs_embeds`` without ``input_ids``, and continuing a ``cache``
from an earlier call with new images.
"""

import functools

import torch
from torch import nn
from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

from ._common import Settings, install, uninstall
from .qwen2_5_vl import (
    SCORE_CHUNK_ELEMENTS,
    encode_with_received_attention,
    image_scores,
    kept_tokens,
    select_tokens,
    shrunk_inputs,
)


def image_features_and_scores(inner: nn.Module, pixel_values: torch.Tensor, grid_thw: torch.Tensor,
                              chunk_elements: int = SCORE_CHUNK_ELEMENTS
                              ) -> tuple[list[torch.Tensor], list[list[torch.Tensor]], list[torch.Tensor]]:
    """The merged visual tokens of each image, their DeepStack features and their scores.

    Args:
        inner: ``model.model`` (a ``Qwen3VLModel`` or ``Qwen3VLMoeModel``).
        pixel_values: [T, C·temporal_patch·patch²] the processor's flattened patches.
        grid_thw: [I, 3] each image's (t, h, w) patch grid.
        chunk_elements: see `qwen2_5_vl.received_attention`.

    Returns:
        (I tensors [N_i, D] the merger output; per DeepStack layer, I tensors [N_i, D] in the same
        token order; I tensors [N_i] float32 scores, the attention each merged token's patches
        receive in the last vision block, summing to 1 per image).
    """
    output, received = encode_with_received_attention(inner, pixel_values, grid_thw, chunk_elements)
    unit = inner.visual.spatial_merge_unit
    # the blocks see the patches in merge-block order (no windows): consecutive groups of `unit` are the merged tokens
    scores = image_scores(received.view(-1, unit).sum(dim=1), grid_thw, unit)
    return list(output.pooler_output), [list(layer) for layer in output.deepstack_features], scores


def _pruned_image_outputs(model, pixel_values: torch.Tensor, grid_thw: torch.Tensor, lengths: torch.Tensor
                          ) -> tuple[BaseModelOutputWithDeepstackFeatures, torch.Tensor]:
    """(the kept tokens and each DeepStack layer's features at the same kept indices, as
    ``mm_encoder_outputs["image"]``; the [I, K] kept indices)."""
    features, deepstack, scores = image_features_and_scores(model.model, pixel_values, grid_thw)
    indices = select_tokens(model, features, scores, lengths)
    return BaseModelOutputWithDeepstackFeatures(
        pooler_output=kept_tokens(features, indices),
        deepstack_features=[kept_tokens(layer, indices) for layer in deepstack],
    ), indices


def apply(model: nn.Module, settings: Settings) -> None:
    # forward gets the three mRoPE rows; generate also the text row it splits off for the decoder
    install(model, settings,
            functools.partial(shrunk_inputs, text_row=False, pruned_images=_pruned_image_outputs),
            functools.partial(shrunk_inputs, text_row=True, pruned_images=_pruned_image_outputs))


remove = uninstall

"""Qwen2.5-VL in HF transformers (``Qwen2_5_VLForConditionalGeneration``): prune each image's merged
visual tokens to K before the language model sees them, keeping their original 3D rope positions.

What the patched ``generate`` / ``forward`` do when ``pixel_values`` are given (they pass
everything else through, text-only calls included):

1. one vision-tower forward (``get_image_features``, the tower's own attention implementation);
   a pre-hook on its last block records that block's input, its ``cu_seqlens`` (the full-attention
   segments if the block index is in ``fullatt_block_indexes``, as in the released checkpoints:
   32 blocks, full attention at 7, 15, 23, 31; else its attention windows) and its rotary cos/sin;
2. scores — a substitute for [CLS] attention, which Qwen2.5-VL lacks: the mean attention each
   patch *receives* in the last vision block, sum_q softmax(q kᵀ · scale)[q, k] over the queries
   of k's attention segment, averaged over heads and divided by the image's patch count (queries
   that cannot see k count as 0).  It is accumulated one chunk of queries at a time within each
   segment (`received_attention`), so no [T, T] map is materialised; the extra cost is one
   q kᵀ of one block, next to the tower's 32 attention passes.  The four patches of each
   spatial_merge_size² group sum to the score of their merged token; each image's scores then
   sum to 1;
3. ``ada_vtp_kernels.prune`` AFTER the patch merger, on the merged tokens (the merger output,
   ``pooler_output``): the merged token is the unit that is kept or dropped, and the merger is an
   MLP over the concatenated 2×2 patches, not a per-token map, so pooling the pre-merger patches
   would only approximate what the language model receives.  Images of different sizes (ragged
   token counts) are pruned in one call with ``lengths``; each keeps K;
4. the K kept tokens (ascending: raster order) handed to the model as ``mm_encoder_outputs``;
5. positions: Qwen2.5-VL gives text tokens 1D positions and visual tokens 3D (t, h, w) positions
   (``get_rope_index``), and the text after an image continues at max(image position) + 1, not
   at its token count.  The patch computes the unpatched model's positions on the FULL
   ``input_ids`` (``get_rope_index``; ``mm_token_type_ids`` are derived from the image
   placeholders when the caller gives none), then drops the columns of the pruned tokens together
   with their placeholders: every kept visual token keeps its original (t, h, w) and every text
   token its original position.  The result is passed as explicit ``position_ids`` (generate:
   with the 1D text row that generate prepends, counted on the shrunk mask), and
   ``model.model.rope_deltas`` is set to (next position) − (shrunk length) per row, so that
   decoding continues at the positions the unpatched model uses; with K = all tokens the patched
   model computes what the unpatched one does;
6. ``input_ids``, ``attention_mask``, ``mm_token_type_ids`` and ``labels`` shrunk to the kept
   tokens, rows re-padded on their padding side.

Not supported: videos together with images in one call (``pixel_values_videos`` with
``pixel_values`` raises; videos alone pass through unpruned), caller-given ``position_ids`` with
images, ``inputs_embeds`` without ``input_ids``, and continuing a ``cache`` from an earlier call
with new images (the cached sequence was shrunk, so ``input_ids`` no longer line up with it).
"""

import functools
from collections.abc import Callable

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    apply_rotary_pos_emb_vision,
)
from transformers.vision_utils import get_vision_window_index

from .. import functional
from ._common import Settings, install, padding_side_of, shrink_rows, uninstall

#: queries × keys × heads of one score chunk (fp32 probabilities: 256 MiB)
SCORE_CHUNK_ELEMENTS = 2**26


def received_attention(block: nn.Module, hidden_in: torch.Tensor, cu_seqlens: torch.Tensor,
                       position_embeddings: tuple[torch.Tensor, torch.Tensor],
                       chunk_elements: int = SCORE_CHUNK_ELEMENTS) -> torch.Tensor:
    """Attention each token receives in one Qwen2.5-VL vision block, summed over queries, averaged
    over heads, without materialising the attention map.

    Args:
        block: a ``Qwen2_5_VLVisionBlock`` (``norm1``, ``attn.qkv``, rotary q/k), or a
            ``Qwen3VLVisionBlock``: the same layout and rotary application.
        hidden_in: [T, C] the block's input, all images packed (in the tower's window order).
        cu_seqlens: [S + 1] int, the block's attention segments (images for a full-attention block,
            windows otherwise); a query attends to the keys of its own segment only.
        position_embeddings: (cos, sin), each [T, head_dim], the block's rotary embeddings.
        chunk_elements: heads × queries × segment keys per softmax chunk (a memory bound).

    Returns:
        [T] float32: r[k] = mean over heads of sum over the queries q of k's segment of
        softmax(q kᵀ · scale)[q, k].  Each segment's entries sum to its length.
    """
    attention = block.attn
    tokens = hidden_in.shape[0]
    heads = attention.num_heads
    qkv = attention.qkv(block.norm1(hidden_in)).reshape(tokens, 3, heads, -1).permute(1, 0, 2, 3)
    q, k = apply_rotary_pos_emb_vision(qkv[0], qkv[1], *position_embeddings)
    return received_by_segment(q.float().transpose(0, 1), k.float().transpose(0, 1), cu_seqlens, attention.scaling,
                               chunk_elements) / heads


def received_by_segment(q: torch.Tensor, k: torch.Tensor, cu_seqlens: torch.Tensor, scale: float,
                        chunk_elements: int = SCORE_CHUNK_ELEMENTS) -> torch.Tensor:
    """The attention each key receives, summed over the heads given and over the queries of its
    segment, one chunk of queries at a time (no [T, T] map).

    Args:
        q, k: [H, T, hd] float32, rotary embeddings applied.
        cu_seqlens: [S + 1] int, the attention segments; a query attends to its own segment's keys.
        scale: the softmax scale.
        chunk_elements: heads × queries × segment keys per softmax chunk (a memory bound).

    Returns:
        [T] float32: sum over the H heads and the queries q of k's segment of softmax(q kᵀ · scale)[q, k].
    """
    heads, tokens, _ = q.shape
    received = torch.zeros(tokens, dtype=torch.float32, device=q.device)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        keys = k[:, start:end]
        chunk = max(1, chunk_elements // (heads * (end - start)))
        for first in range(start, end, chunk):
            probs = torch.softmax((q[:, first:min(first + chunk, end)] @ keys.transpose(-1, -2)) * scale,
                                  dim=-1)  # [H, chunk, segment]
            received[start:end] += probs.sum(dim=(0, 1))
    return received


def merged_token_scores(visual: nn.Module, received: torch.Tensor, grid_thw: torch.Tensor) -> list[torch.Tensor]:
    """Per-image scores of the merged tokens from the per-patch `received_attention`.

    Args:
        visual: the ``Qwen2_5_VisionTransformerPretrainedModel``.
        received: [T] per patch, in the tower's window order (as its blocks see the patches).
        grid_thw: [I, 3] the images' patch grids.

    Returns:
        `image_scores` of the merged tokens, put back from window order into raster order (the
        order of the merger output and of the placeholders).
    """
    window_index, _ = get_vision_window_index(grid_thw, spatial_merge_size=visual.spatial_merge_size,
                                              window_size=visual.window_size, patch_size=visual.patch_size)
    merged = received.view(-1, visual.spatial_merge_unit).sum(dim=1)[torch.argsort(window_index.to(received.device))]
    return image_scores(merged, grid_thw, visual.spatial_merge_unit)


def image_scores(merged: torch.Tensor, grid_thw: torch.Tensor, merge_unit: int) -> list[torch.Tensor]:
    """Each image's merged-token scores, normalised.

    Args:
        merged: [Σ N_i] float32, each merged token's summed `received_attention` (the sum over its
            merge_unit patches), the images' tokens in order.
        grid_thw: [I, 3] the images' patch grids.
        merge_unit: patches per merged token (spatial_merge_size²).

    Returns:
        I tensors [N_i] float32, N_i = t·h·w / merge_unit: the sums divided by the image's patch
        count, so that each image's scores sum to 1.
    """
    patches = grid_thw.prod(dim=-1).tolist()
    return [s / n for s, n in zip(torch.split(merged, [n // merge_unit for n in patches]), patches)]


def encode_with_received_attention(inner: nn.Module, pixel_values: torch.Tensor, grid_thw: torch.Tensor,
                                   chunk_elements: int = SCORE_CHUNK_ELEMENTS
                                   ) -> tuple[BaseModelOutputWithPooling, torch.Tensor]:
    """One forward of the vision tower and the attention each patch receives in its last block.

    Args:
        inner: ``model.model`` (a ``Qwen2_5_VLModel``, or any model whose ``visual.blocks[-1]`` is
            called as ``block(hidden_states, cu_seqlens=..., position_embeddings=...)`` and reads
            as `received_attention` expects: Qwen3-VL's too).
        pixel_values: [T, C·temporal_patch·patch²] the processor's flattened patches.
        grid_thw: [I, 3] each image's (t, h, w) patch grid.
        chunk_elements: see `received_attention`.

    Returns:
        (``get_image_features``' output, per-image ``pooler_output``; [T] float32 `received_attention`
        in the order the last block sees the patches).
    """
    last = inner.visual.blocks[-1]
    seen = {}

    def record(module, args, kwargs):
        seen.update(hidden=args[0] if args else kwargs["hidden_states"], cu_seqlens=kwargs["cu_seqlens"],
                    position_embeddings=kwargs["position_embeddings"])

    handle = last.register_forward_pre_hook(record, with_kwargs=True)
    try:
        output = inner.get_image_features(pixel_values, grid_thw, return_dict=True)
    finally:
        handle.remove()
    with torch.no_grad():
        received = received_attention(last, seen["hidden"], seen["cu_seqlens"], seen["position_embeddings"],
                                      chunk_elements)
    return output, received


def image_features_and_scores(inner: nn.Module, pixel_values: torch.Tensor, grid_thw: torch.Tensor,
                              chunk_elements: int = SCORE_CHUNK_ELEMENTS
                              ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The merged visual tokens of each image and their `merged_token_scores` (last vision block).

    Args:
        inner: ``model.model`` (a ``Qwen2_5_VLModel``).
        pixel_values: [T, C·temporal_patch·patch²] the processor's flattened patches.
        grid_thw: [I, 3] each image's (t, h, w) patch grid.
        chunk_elements: see `received_attention`.

    Returns:
        (I tensors [N_i, D] the merger output, I tensors [N_i] float32 scores).
    """
    output, received = encode_with_received_attention(inner, pixel_values, grid_thw, chunk_elements)
    return list(output.pooler_output), merged_token_scores(inner.visual, received, grid_thw)


def _pad(rows: list[torch.Tensor]) -> torch.Tensor:
    """I tensors [N_i, ...] -> [I, max N_i, ...], zero-padded."""
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)


def select_tokens(model, features: list[torch.Tensor], scores: list[torch.Tensor], lengths: torch.Tensor
                  ) -> torch.Tensor:
    """The [I, K] kept indices of the I images: one `Settings.prune` over the padded features and
    scores, ``lengths`` [I] the token counts N_i, so that images of different sizes are pruned in
    one call.  The result is recorded for `last_prune_result`."""
    padded = _pad(features)
    result = model._ada_vtp.prune(padded, _pad(scores), lengths.to(padded.device))
    model._ada_vtp_last = result
    return result.indices


def kept_tokens(rows: list[torch.Tensor], indices: torch.Tensor) -> list[torch.Tensor]:
    """I tensors [K, D]: image i's rows [N_i, D] at indices[i] (the kept features keep their
    gradient; the selection is not differentiable)."""
    return list(functional.gather(_pad(rows), indices))


def _pruned_image_outputs(model, pixel_values: torch.Tensor, grid_thw: torch.Tensor, lengths: torch.Tensor
                          ) -> tuple[BaseModelOutputWithPooling, torch.Tensor]:
    """(the kept [K, D] feature blocks as ``mm_encoder_outputs["image"]``, the [I, K] kept indices)."""
    features, scores = image_features_and_scores(model.model, pixel_values, grid_thw)
    indices = select_tokens(model, features, scores, lengths)
    return BaseModelOutputWithPooling(pooler_output=kept_tokens(features, indices)), indices


def _selected_token_mask(input_ids: torch.Tensor, image_token_id: int, indices: torch.Tensor,
                         lengths: torch.Tensor) -> torch.Tensor:
    """[B, L] bool: True for every text token and for the placeholder of each kept token.

    Image i's run holds lengths[i] placeholders in its tokens' order (sum(lengths) placeholders in
    all); ``indices`` [I, K] are the kept tokens of each image.  Unlike
    `_common.image_token_keep_mask` (which keeps the first K placeholders of a run) this keeps the
    kept tokens' own placeholders, so that the positions selected with the same mask are those of
    the kept tokens.
    """
    starts = torch.cumsum(lengths, 0) - lengths
    selected = torch.zeros(int(lengths.sum()), dtype=torch.bool, device=input_ids.device)
    selected[(starts[:, None] + indices.to(starts.device)).flatten().to(input_ids.device)] = True
    flat = (input_ids == image_token_id).flatten()
    keep = ~flat
    keep[flat] = selected
    return keep.view_as(input_ids)


def shrunk_inputs(model, kwargs: dict, text_row: bool, pruned_images: Callable = _pruned_image_outputs) -> dict:
    """kwargs with pixel_values replaced by pruned mm_encoder_outputs, the image runs shrunk and the
    kept tokens' original positions passed as position_ids ([4, B, L'] with ``text_row``, the
    layout generate uses, else [3, B, L'] as forward computes it).  ``pruned_images(model,
    pixel_values, image_grid_thw, lengths)`` returns (``mm_encoder_outputs["image"]``, the [I, K]
    kept indices): the one step that differs between Qwen2.5-VL and Qwen3-VL (DeepStack)."""
    pixel_values = kwargs.pop("pixel_values")
    grid_thw = kwargs.pop("image_grid_thw", None)
    if grid_thw is None:
        raise ValueError("ada_vtp needs image_grid_thw with pixel_values (the processor returns both)")
    if kwargs.get("pixel_values_videos") is not None:
        raise NotImplementedError("pixel_values_videos with pixel_values: ada_vtp prunes images only; "
                                  "pass the videos in a call without images")
    if kwargs.get("position_ids") is not None:
        raise ValueError("ada_vtp shrinks the sequence and derives the kept tokens' 3D positions itself; "
                         "pass attention_mask and no position_ids")
    input_ids = kwargs.get("input_ids")
    if input_ids is None:
        raise ValueError("ada_vtp needs input_ids (the image placeholders mark where the kept tokens go)")
    config = model.config
    lengths = grid_thw.prod(dim=-1) // config.vision_config.spatial_merge_size**2  # merged tokens per image
    placeholders = int((input_ids == config.image_token_id).sum())
    if placeholders != int(lengths.sum()):
        raise ValueError(
            f"input_ids hold {placeholders} image tokens (id {config.image_token_id}) but image_grid_thw gives "
            f"{int(lengths.sum())} merged tokens; expected one placeholder per merged token, as the processor "
            "writes them"
        )
    attention_mask = kwargs.get("attention_mask")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    token_types = kwargs.get("mm_token_type_ids")
    if token_types is None:
        token_types = (input_ids == config.image_token_id).int()
    inner = model.model
    positions, deltas = inner.get_rope_index(input_ids, token_types, image_grid_thw=grid_thw,
                                             attention_mask=attention_mask)  # [3, B, L], [B, 1]
    image_outputs, indices = pruned_images(model, pixel_values, grid_thw, lengths)
    keep = _selected_token_mask(input_ids, config.image_token_id, indices, lengths)
    keep &= attention_mask.bool()  # padding is rebuilt for the new lengths
    tensors = {"input_ids": input_ids, "attention_mask": attention_mask, "mm_token_type_ids": token_types,
               "t": positions[0], "h": positions[1], "w": positions[2]}
    pad = {"input_ids": config.text_config.pad_token_id or 0, "attention_mask": 0, "mm_token_type_ids": 0,
           "labels": -100, "t": 0, "h": 0, "w": 0}
    if kwargs.get("labels") is not None:
        tensors["labels"] = kwargs["labels"]
    shrunk = shrink_rows(keep, tensors, pad, padding_side_of(attention_mask))
    position_ids = torch.stack([shrunk.pop(axis) for axis in ("t", "h", "w")])
    mask = shrunk["attention_mask"]
    if text_row:  # generate's layout: the 1D text positions (what it derives from the mask) first
        text = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        position_ids = torch.cat([text[None], position_ids])
    # next position minus the token count, per row: what decoding with a cache adds to its count
    inner.rope_deltas = deltas + (attention_mask.sum(dim=1) - mask.sum(dim=1))[:, None]
    kwargs.update(shrunk, position_ids=position_ids, mm_encoder_outputs={"image": image_outputs})
    return kwargs


def apply(model: nn.Module, settings: Settings) -> None:
    # forward gets the three mRoPE rows; generate also the text row it splits off for the decoder
    install(model, settings, functools.partial(shrunk_inputs, text_row=False),
            functools.partial(shrunk_inputs, text_row=True))


remove = uninstall

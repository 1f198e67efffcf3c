"""Qwen2.5-VL in vLLM (``Qwen2_5_VLForConditionalGeneration``): K placeholders per image, the image
encoder returns the K kept merged tokens, and each kept token keeps its ORIGINAL M-RoPE (t, h, w)
position, as in the HF integration (`..qwen2_5_vl`).

What it does, with ``ada_vtp`` in the HF config when the engine starts (without it, vLLM's class
unchanged):

1. processor: each image's ``<|image_pad|>`` expands to K placeholders instead of one per merged
   token (vLLM's replacement, cut to K after checking K <= the image's token count); the
   processing info counts K per image, which sets vLLM's encoder budget and profiling.
   Image-embedding inputs (``image_embeds``) and videos keep vLLM's counts;
2. encoder: one vision-tower forward with vLLM's own attention; a stand-in for the last block
   records its input and rotary cos/sin (vLLM's compilable blocks skip module hooks: their
   ``__call__`` calls ``forward``).  The scores are the HF integration's: the attention each
   patch receives in that block, `received_attention` (recomputed from the block's fused ``qkv``
   and vLLM's own rotary embedding, over the block's segments: the images for a full-attention
   block, as in the released checkpoints, else its windows), summed over each 2×2 group into its
   merged token and normalised per image (`..qwen2_5_vl.merged_token_scores`);
3. ONE `Settings.prune` over the images, ragged (``lengths``), on the merger output; the K kept
   tokens in ascending (raster) order;
4. positions, the EVS path (`SupportsMultiModalPruning`): every image and video embedding the
   encoder returns carries its tokens' (t, h, w) offsets and the media's extent (max + 1: where
   the text after it continues) as appended columns; the runner hands them back to
   `recompute_mrope_positions`, which writes offset + (position after ``<|vision_start|>``) into
   the placeholders and renumbers the text after each media item, so a kept token keeps the
   position the unpruned model gives it and the text after an image continues where it would
   have.  vLLM's own EVS code is not reused for this: its recomputation finds the second media
   item of a prompt by a token count that does not include the text before the first (with K = 1
   and a few words before the first image, the second image took the first one's slot), ends the
   media at its width instead of its extent (portrait images), and appends the positions in the
   embeddings' dtype (bf16 rounds integers above 256).  Here they are appended as base-256 digits
   (exact in bf16) and recomputed per contiguous placeholder run, chunked prefill included;
5. the runner flag: vLLM's runners split the positions off only when pruning is on for the
   engine, which they read from the multimodal config (``video_pruning_rate > 0`` for EVS): the
   V1 GPU runner after loading the model, the V2 runner when it builds its state.  The model, when
   built with ``ada_vtp``, makes its engine's (its worker's) config instance report pruning.
   vLLM 0.32's V1 ``CPUModelRunner.load_model`` never sets the flag (the GPU runner's line is
   missing there: EVS fails on CPU too), and the model is built inside that call, so on CPU the
   model also turns the runner's attribute into a property that applies the GPU runner's rule
   (a pruning model and a pruning config) when read, for the runner that is loading it.

Videos are not pruned (vLLM's behaviour, EVS included when ``video_pruning_rate`` is set); with
``ada_vtp`` they carry their positions as images do.  Tensor parallelism: each rank holds
``num_heads / tp`` heads of every vision block; each rank sums the received attention of its
heads, an all-reduce adds the ranks' sums and dividing by the total head count gives the head
average, so every rank selects the same tokens.  With ``mm_encoder_tp_mode="data"`` the tower is
replicated and every rank encodes and prunes all images (vLLM's sharded run gathers full-length
outputs, so it is not used for pruned images).  ``ada_vtp`` is read when the engine starts for the
runner flag and the position path, and at every call for K and the method, as the processor reads
it.  It is validated when the engine starts: vLLM's encoder budget asks the processing info for
the largest image's token count (a bad method or parameter, or K above that count, raises there).
"""

import functools

import numpy as np
import torch
from torch import nn
from transformers.vision_utils import get_vision_window_index
from vllm.distributed import tensor_model_parallel_all_reduce
from vllm.model_executor.models import qwen2_5_vl as vllm_qwen
from vllm.model_executor.models.interfaces import supports_multimodal_pruning
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.processing import PromptReplacement
from vllm.platforms import current_platform
from vllm.utils.gpu_sync_debug import gpu_sync_allowed

from ... import functional
from ..qwen2_5_vl import SCORE_CHUNK_ELEMENTS, merged_token_scores, received_by_segment
from . import settings_of

#: each appended position column is written as two base-256 digits: integers up to 256 are exact
#: in bf16, so a single column would round the positions of grids wider than 256 merged tokens
DIGIT = 256
#: columns appended to each media embedding: (t, h, w, extent), high digits then low digits
POSITION_COLUMNS = 8


def received_attention(block: nn.Module, hidden_in: torch.Tensor, cu_seqlens: torch.Tensor, cos: torch.Tensor,
                       sin: torch.Tensor, chunk_elements: int = SCORE_CHUNK_ELEMENTS) -> torch.Tensor:
    """Attention each token receives in one vLLM ``Qwen2_5_VisionBlock``, summed over queries,
    averaged over all heads (across tensor-parallel ranks); the math of the HF integration's
    `..qwen2_5_vl.received_attention`, on vLLM's modules.

    Args:
        block: the vision block (``norm1``, ``attn.qkv``: this rank's heads, ``attn.apply_rotary_emb``).
        hidden_in: [T, 1, C] the block's input, all images packed (in the tower's window order).
        cu_seqlens: [S + 1] int, the block's attention segments (images or windows).
        cos, sin: the block's rotary embeddings, as the tower passes them.
        chunk_elements: heads × queries × segment keys per softmax chunk (a memory bound).

    Returns:
        [T] float32: r[k] = mean over heads of sum over the queries q of k's segment of
        softmax(q kᵀ · scale)[q, k].
    """
    attention = block.attn
    tokens = hidden_in.shape[0]
    heads = attention.num_attention_heads_per_partition
    qkv, _ = attention.qkv(block.norm1(hidden_in))  # [T, 1, 3·h·hd], [q | k | v] as vLLM's forward splits it
    qk = qkv.view(tokens, 3, heads, -1)[:, :2].permute(1, 0, 2, 3).contiguous()  # [2, T, h, hd]
    q, k = attention.apply_rotary_emb(qk, cos, sin).unbind(0)
    received = received_by_segment(q.float().transpose(0, 1), k.float().transpose(0, 1), cu_seqlens,
                                   attention.attn.scale, chunk_elements)
    if attention.tp_size > 1:
        received = tensor_model_parallel_all_reduce(received)
    return received / (heads * attention.tp_size)


def last_block_segments(visual: nn.Module, grid_thw: torch.Tensor) -> torch.Tensor:
    """[S + 1] int: the attention segments of the tower's last block, from the grids (the block's
    own ``cu_seqlens`` are backend-specific offsets under FlashInfer): one per frame for a
    full-attention block, else the windows, in the tower's window order."""
    if len(visual.blocks) - 1 in visual.fullatt_block_indexes:
        frames = torch.repeat_interleave(grid_thw[:, 1] * grid_thw[:, 2], grid_thw[:, 0])
        return torch.nn.functional.pad(frames.cumsum(0), (1, 0))
    _, cu_window_seqlens = get_vision_window_index(grid_thw, visual.spatial_merge_size, visual.window_size,
                                                   visual.patch_size)
    return cu_window_seqlens


class _Recording(nn.Module):
    """Calls ``block`` and keeps its input and rotary embeddings (``seen``)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block
        self.seen = {}

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        self.seen = dict(kwargs, x=x)
        return self.block(x, **kwargs)


def image_features_and_scores(visual: nn.Module, pixel_values: torch.Tensor, grid_thw: torch.Tensor
                              ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(I tensors [N_i, D] the merger output, I tensors [N_i] float32 scores summing to 1) of one
    vision-tower forward, as the HF integration's `..qwen2_5_vl.image_features_and_scores`."""
    last = visual.blocks[-1]
    recording = _Recording(last)
    # vLLM's compilable blocks call forward directly (no module hooks): the tower calls a stand-in
    visual.blocks[-1] = recording
    try:
        features = visual(pixel_values, grid_thw=grid_thw.tolist())
    finally:
        visual.blocks[-1] = last
    seen = recording.seen
    received = received_attention(last, seen["x"], last_block_segments(visual, grid_thw), seen["rotary_pos_emb_cos"],
                                  seen["rotary_pos_emb_sin"])
    sizes = (grid_thw.prod(dim=-1) // visual.spatial_merge_unit).tolist()
    return list(features.split(sizes)), merged_token_scores(visual, received, grid_thw)


def grid_positions(t: int, h: int, w: int, t_factor: float = 1.0) -> np.ndarray:
    """[3, t·h·w] int64: the M-RoPE (t, h, w) of a media item's merged tokens (raster order, h and
    w in merged tokens) relative to its first token, as vLLM's ``get_mrope_input_positions`` and
    HF's ``get_rope_index`` number them (t scaled by seconds per grid × tokens per second for
    videos).  The text after the item continues at max + 1, its extent."""
    index = np.indices((t, h, w)).reshape(3, -1)
    if t_factor != 1.0:
        index[0] = (index[0] * t_factor).astype(np.int64)
    return index


def with_positions(embedding: torch.Tensor, positions: np.ndarray, extent: int) -> torch.Tensor:
    """[n, D + POSITION_COLUMNS]: ``embedding`` [n, D] with the rows' ``positions`` [3, n] and the
    item's ``extent`` (where the text after it continues) appended as base-`DIGIT` digits (read
    back by `split_positions`)."""
    values = torch.from_numpy(np.concatenate([positions, np.full((1, positions.shape[1]), extent)]).T)
    digits = torch.cat([values // DIGIT, values % DIGIT], dim=1)
    return torch.cat([embedding, digits.to(device=embedding.device, dtype=embedding.dtype)], dim=1)


def split_positions(embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the embedding [n, D], its [n, 4] int64 (t, h, w, extent)) of a `with_positions` result."""
    digits = embedding[:, -POSITION_COLUMNS:].round().long()
    half = POSITION_COLUMNS // 2
    return embedding[:, :-POSITION_COLUMNS], digits[:, :half] * DIGIT + digits[:, half:]


def recompute_positions(is_media: torch.Tensor, media: list[torch.Tensor], positions: torch.Tensor,
                        num_computed_tokens: int) -> tuple[torch.Tensor, int]:
    """A prompt's M-RoPE positions once the media rows of one prefill step are known.

    Args:
        is_media: [N] bool, the prompt's image and video placeholders; each media item is one
            contiguous run (Qwen wraps it in ``<|vision_start|>`` ... ``<|vision_end|>``).
        media: the step's media rows in prompt order, [n_i, 4] int64 (t, h, w, extent) each (see
            `split_positions`): the whole item, or its part inside the step (chunked prefill: the
            first may continue an item at ``num_computed_tokens``, the last may stop inside one).
        positions: [3, N] int64, the prompt's positions so far (those before this step are final).
        num_computed_tokens: the prompt tokens computed before this step.

    Returns:
        (the [3, N] positions: each row at (position of the token before its item) + 1 + its (t, h,
        w); the text after an item from there + its extent on, one position per text token; the
        M-RoPE delta: next position minus N, what decoding adds to its token count).
    """
    positions = positions.clone()
    edges = torch.diff(is_media.int(), prepend=is_media.new_zeros(1, dtype=torch.int),
                       append=is_media.new_zeros(1, dtype=torch.int))
    starts, ends = (edges == 1).nonzero().flatten().tolist(), (edges == -1).nonzero().flatten().tolist()
    done = sum(end <= num_computed_tokens for end in ends)  # items completed in earlier steps
    for rows, start, end in zip(media, starts[done:], ends[done:]):
        first = max(start, num_computed_tokens)
        base = int(positions[0, start - 1]) + 1 if start > 0 else 0
        positions[:, first:first + len(rows)] = rows[:, :3].T.to(positions.device) + base
        text_after = torch.cumsum(~is_media[end:], dim=0)  # 1 at the first text token after the item
        positions[:, end:] = text_after + (base + int(rows[0, 3]) - 1)
    return positions, int(positions.max()) + 1 - is_media.numel()


def _kept_count(keep: int, tokens: int, what: str) -> int:
    if keep > tokens:
        raise ValueError(f"keep = {keep} exceeds the {tokens} merged visual tokens of {what}; expected "
                         f"1 <= keep <= {tokens} (the image processor's min_pixels / max_pixels bound the counts)")
    return keep


def _cut_to_keep(replacement, keep: int, out_mm_kwargs, item_idx: int) -> list[int]:
    """vLLM's placeholders for image ``item_idx`` (one per merged token), cut to K; image-embedding
    inputs keep theirs (they are not pruned)."""
    placeholders = replacement(item_idx)
    item = out_mm_kwargs["image"][item_idx]
    if "pixel_values" not in item:
        return placeholders
    grid = "×".join(map(str, item["image_grid_thw"].data.tolist()))
    return placeholders[:_kept_count(keep, len(placeholders), f"image {item_idx} (patch grid {grid})")]


class Qwen2_5_VLProcessingInfo(vllm_qwen.Qwen2_5_VLProcessingInfo):
    def get_num_image_tokens(self, *, image_width: int, image_height: int, image_processor, mm_kwargs) -> int:
        tokens = super().get_num_image_tokens(image_width=image_width, image_height=image_height,
                                              image_processor=image_processor, mm_kwargs=mm_kwargs)
        settings = settings_of(self.get_hf_config())
        if settings is None:
            return tokens
        return _kept_count(settings.keep, tokens, f"a {image_width}×{image_height} image")


class Qwen2_5_VLMultiModalProcessor(vllm_qwen.Qwen2_5_VLMultiModalProcessor):
    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        settings = settings_of(self.info.get_hf_config())
        if settings is None:
            return updates
        return [PromptReplacement(modality=update.modality, target=update.target,
                                  replacement=functools.partial(_cut_to_keep, update.replacement, settings.keep,
                                                                out_mm_kwargs))
                if update.modality == "image" else update for update in updates]


def _runners_recompute_positions(vllm_config) -> None:
    """Make the runner that is loading the model split the appended positions off and recompute
    M-RoPE positions (see the module docstring, 5.)."""
    multimodal_config = vllm_config.model_config.multimodal_config
    multimodal_config.is_multimodal_pruning_enabled = lambda: True  # this engine's instance only
    if not current_platform.is_cpu():
        return
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner

    if isinstance(vars(CPUModelRunner).get("is_multimodal_pruning_enabled"), property):
        return

    def enabled(runner) -> bool:  # GPUModelRunner.load_model's rule
        model, config = runner.__dict__.get("model"), runner.model_config.multimodal_config
        return (model is not None and supports_multimodal_pruning(model) and config is not None
                and config.is_multimodal_pruning_enabled())

    # GPUModelRunner.__init__ assigns False before the model exists; the rule decides once it does
    CPUModelRunner.is_multimodal_pruning_enabled = property(enabled, lambda runner, value: None)


@MULTIMODAL_REGISTRY.register_processor(Qwen2_5_VLMultiModalProcessor, info=Qwen2_5_VLProcessingInfo,
                                        dummy_inputs=vllm_qwen.Qwen2_5_VLDummyInputsBuilder)
class Qwen2_5_VLForConditionalGeneration(vllm_qwen.Qwen2_5_VLForConditionalGeneration):
    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        #: whether this engine prunes images: fixed when it starts, as the runners' flag is
        self.prunes_images = settings_of(self.config) is not None
        if self.prunes_images:
            self.is_multimodal_pruning_enabled = True  # vLLM's own reading: no encoder CUDA graphs
            _runners_recompute_positions(vllm_config)

    def embed_multimodal(self, **kwargs) -> tuple[torch.Tensor, ...]:
        if not self.prunes_images:
            return super().embed_multimodal(**kwargs)
        embeddings = []
        for modality, media in self._parse_and_validate_multimodal_inputs(**kwargs).items():
            embeddings += self._image_embeddings(media) if modality == "image" else self._video_embeddings(media)
        return tuple(embeddings)

    def _image_embeddings(self, image_input) -> list[torch.Tensor]:
        """Each image's kept tokens [K, D] (all [N_i, D] for image embeddings, or when pruning was
        switched off after start) with their positions appended."""
        # read at every call, as the processor does, so that both always follow the same config
        settings = settings_of(self.config)
        grid_thw = image_input["image_grid_thw"]
        merge = self.visual.spatial_merge_size
        if settings is None or image_input["type"] != "pixel_values":
            embeddings, kept = self._process_image_input(image_input), [slice(None)] * len(grid_thw)
        else:  # the segments and the kept indices (for the positions) are read on the host
            with gpu_sync_allowed():
                features, scores = image_features_and_scores(self.visual, image_input["pixel_values"], grid_thw)
                padded = torch.nn.utils.rnn.pad_sequence(features, batch_first=True)
                lengths = torch.tensor([len(f) for f in features], device=padded.device)
                result = settings.prune(padded, torch.nn.utils.rnn.pad_sequence(scores, batch_first=True), lengths)
                embeddings, kept = functional.gather(padded, result.indices), result.indices.cpu().numpy()
        grids = [grid_positions(t, h // merge, w // merge) for t, h, w in grid_thw.tolist()]
        return [with_positions(embedding, grid[:, rows], int(grid.max()) + 1)
                for embedding, grid, rows in zip(embeddings, grids, kept)]

    def _video_embeddings(self, video_input) -> list[torch.Tensor]:
        """Each video's tokens, unpruned (EVS-pruned when ``video_pruning_rate`` is set), with their
        positions appended."""
        embeddings = self._process_video_input(video_input)
        if self.video_pruning_rate:  # vLLM's EVS: its (t, h, w, width) columns, re-appended as digits
            pruned = self._postprocess_video_embeds_evs(embeddings, video_input)
            columns = [e[:, -4:].round().long().T.cpu().numpy() for e in pruned]
            return [with_positions(e[:, :-4], c[:3], int(c[3, 0])) for e, c in zip(pruned, columns)]
        merge = self.visual.spatial_merge_size
        seconds = video_input.get("second_per_grid_ts")
        seconds = [1.0] * len(embeddings) if seconds is None else seconds.tolist()
        per_second = getattr(self.config.vision_config, "tokens_per_second", 1.0)
        grids = [grid_positions(t, h // merge, w // merge, s * per_second)
                 for (t, h, w), s in zip(video_input["video_grid_thw"].tolist(), seconds)]
        return [with_positions(embedding, grid, int(grid.max()) + 1) for embedding, grid in zip(embeddings, grids)]

    def get_mrope_input_positions(self, input_tokens: list[int], mm_features) -> tuple[torch.Tensor, int]:
        """vLLM's numbering for the placeholders as laid out (vLLM's assumes t·h·w per item): each
        item's first ``length`` grid positions, the text after it from its extent on.  The text
        positions are final (a prefix-cache hit skips the recomputation of the cached items); the
        rows of pruned items are provisional: `recompute_mrope_positions` writes the kept tokens'
        own positions in the step that computes them."""
        if not self.prunes_images:
            return super().get_mrope_input_positions(input_tokens, mm_features)
        features = sorted(mm_features, key=lambda f: f.mm_position.offset)
        columns, start, next_position = [], 0, 0
        for feature, (offset, t, h, w, t_factor) in zip(features, self.iter_mm_grid_thw(features)):
            text = offset - start
            columns.append(np.broadcast_to(np.arange(text) + next_position, (3, text)))
            grid = grid_positions(t, h, w, t_factor)
            columns.append(grid[:, :feature.mm_position.length] + next_position + text)
            next_position += text + int(grid.max()) + 1
            start = offset + feature.mm_position.length
        tail = len(input_tokens) - start
        columns.append(np.broadcast_to(np.arange(tail) + next_position, (3, tail)))
        positions = np.concatenate(columns, axis=1)
        return torch.from_numpy(positions), int(positions.max(initial=-1)) + 1 - len(input_tokens)

    def recompute_mrope_positions(self, input_ids, multimodal_embeddings, mrope_positions: torch.Tensor,
                                  num_computed_tokens: int) -> tuple[list[torch.Tensor], torch.Tensor, int]:
        """`recompute_positions` for the runner (`SupportsMultiModalPruning`): the embeddings
        without their position columns, the prompt's positions, the M-RoPE delta."""
        if not self.prunes_images:
            return super().recompute_mrope_positions(input_ids, multimodal_embeddings, mrope_positions,
                                                     num_computed_tokens)
        device = mrope_positions.device
        ids = torch.as_tensor(input_ids, device=device)
        is_media = (ids == self.config.image_token_id) | (ids == self.config.video_token_id)
        embeddings, media = zip(*map(split_positions, multimodal_embeddings)) if multimodal_embeddings else ((), ())
        with gpu_sync_allowed():
            positions, delta = recompute_positions(is_media, list(media), mrope_positions, num_computed_tokens)
        return list(embeddings), positions, delta

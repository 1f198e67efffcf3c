"""LLaVA-1.5 in vLLM (``LlavaForConditionalGeneration`` with a CLIP tower): K placeholders per
image, and the image encoder returns the K kept tokens, projected.

What it does, with ``ada_vtp`` in the HF config (without it, vLLM's class unchanged):

1. processor: ``get_num_image_tokens`` returns K, so each ``<image>`` expands to K placeholders;
   that one number sets vLLM's prompt length, KV-cache blocks, positions, encoder budget and
   profiling.  LLaVA's 1D RoPE numbers the K contiguous placeholders as the HF integration's
   shrunk sequence does, so positions need nothing more;
2. encoder: vLLM builds the CLIP tower only up to ``vision_feature_layer``, so its last block
   produces the features.  A forward pre-hook records that block's input; the [CLS] attention
   row is recomputed from the block's own fused ``qkv_proj`` (one query against all keys,
   `cls_attention`), so the tower keeps vLLM's fast attention;
3. `Settings.prune` (the package's op) on the tower's patch features [I, N, C] ([CLS] dropped),
   as in the HF integration;
4. the projector on the K kept tokens only (ascending: spatial order): [I, K, D] to the runner.

Tensor parallelism: each rank holds ``num_heads / tp`` heads of every block.  Each rank sums the
softmax rows of its heads, an all-reduce adds the ranks' sums, and dividing by the total head
count gives the head average; with ``mm_encoder_tp_mode="data"`` the tower is not split and no
reduction runs.  Image-embedding inputs (``image_embeds``) and Pixtral towers pass through
unpruned; the processor then counts their tokens as vLLM does.
"""

import torch
from torch import nn
from vllm.distributed import tensor_model_parallel_all_reduce
from vllm.model_executor.models import llava as vllm_llava
from vllm.model_executor.models.vision import get_num_selected_vision_tokens, get_vision_encoder_info
from vllm.multimodal import MULTIMODAL_REGISTRY

from ... import functional
from .._common import check_feature_selection
from . import check_keep, settings_of


def cls_attention(block: nn.Module, hidden_in: torch.Tensor) -> torch.Tensor:
    """[CLS] attention of one vLLM ``CLIPEncoderLayer``, averaged over all heads (across tensor-
    parallel ranks), the [CLS] column dropped.

    Args:
        block: the encoder layer (``layer_norm1``, ``self_attn.qkv_proj``: this rank's heads).
        hidden_in: [I, 1 + N, C] the block's input, [CLS] first.

    Returns:
        [I, N] float32: softmax(q_cls kᵀ · scale) of each head, averaged over the heads.
    """
    attention = block.self_attn
    qkv, _ = attention.qkv_proj(block.layer_norm1(hidden_in))
    q, k, _ = qkv.chunk(3, dim=-1)  # this rank's heads, [q | k | v] as vLLM's own forward splits them
    images, tokens, _ = hidden_in.shape
    heads = attention.num_heads_per_partition
    q = q[:, :1].reshape(images, 1, heads, -1).transpose(1, 2)  # [I, h, 1, hd]
    k = k.reshape(images, tokens, heads, -1).transpose(1, 2)  # [I, h, T, hd]
    probs = torch.softmax((q.float() @ k.float().transpose(-1, -2)) * attention.scale, dim=-1)
    summed = probs[:, :, 0, 1:].sum(dim=1)
    if attention.tp_size > 1:
        summed = tensor_model_parallel_all_reduce(summed)
    return summed / attention.num_heads


def features_and_scores(vision_tower: nn.Module, pixel_values: torch.Tensor, select_strategy: str
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(patch features [I, N, C] of the tower's output, [CLS] scores [I, N] of its last block)."""
    last = vision_tower.vision_model.encoder.layers[-1]
    seen = {}
    handle = last.register_forward_pre_hook(lambda module, args: seen.update(hidden=args[0]))
    try:
        features = vision_tower(pixel_values, feature_select_strategy=select_strategy)
    finally:
        handle.remove()
    return features, cls_attention(last, seen["hidden"])


class LlavaProcessingInfo(vllm_llava.LlavaProcessingInfo):
    def get_num_image_tokens(self, *, image_width: int, image_height: int) -> int:
        tokens = super().get_num_image_tokens(image_width=image_width, image_height=image_height)
        settings = settings_of(self.get_hf_config())
        if settings is None:
            return tokens
        check_keep(settings.keep, tokens)
        return settings.keep


def _processing_info(ctx):
    # no checks here: vLLM takes a ValueError from this factory for "no multimodal processor" and
    # runs the model text-only; the model's constructor checks the settings when the engine starts
    info = vllm_llava._build_llava_or_pixtral_hf_info(ctx)
    return LlavaProcessingInfo(ctx) if type(info) is vllm_llava.LlavaProcessingInfo else info  # Pixtral: vLLM's


@MULTIMODAL_REGISTRY.register_processor(vllm_llava._build_llava_or_pixtral_hf_processor, info=_processing_info,
                                        dummy_inputs=vllm_llava.LlavaDummyInputsBuilder)
class LlavaForConditionalGeneration(vllm_llava.LlavaForConditionalGeneration):
    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        settings = settings_of(self.config)  # raises on bad settings: the engine does not start
        if settings is not None:
            check_feature_selection(self.config.vision_feature_layer, self.config.vision_feature_select_strategy)
            size = self.config.vision_config.image_size
            check_keep(settings.keep, get_num_selected_vision_tokens(
                get_vision_encoder_info(self.config).get_num_image_tokens(image_width=size, image_height=size),
                self.config.vision_feature_select_strategy))

    def _process_image_input(self, image_input):
        # read at every call, as the processor does, so that both always follow the same config
        settings = settings_of(self.config)
        if settings is None or image_input["type"] != "pixel_values":
            return super()._process_image_input(image_input)
        features, scores = features_and_scores(self.vision_tower, image_input["pixel_values"],
                                               self.config.vision_feature_select_strategy)
        result = settings.prune(features, scores)
        return self.multi_modal_projector(functional.gather(features, result.indices))

"""A tiny random-weight LLaVA-NeXT checkpoint written to disk the way the hub ships them (config,
safetensors, tokenizer, image processor, chat template), so that vLLM can load it offline.

The geometry is LLaVA-v1.6's at a small scale: 112 px tiles of 14 px patches (8 × 8 = 64 tokens per
tile, where the released model has 336 px tiles of 24 × 24) and pinpoints up to a 2 × 2 grid, so
that images of different aspect ratios get different grids, unpadded rows r_i and token counts
N_i.  The tokenizer and the weight names are those of `tiny_checkpoints` (its LLaVA-1.5).
"""

from pathlib import Path

import torch

from .tiny_checkpoints import CHAT_TEMPLATE, _hub_vision_names, tokenizer

TILE = 112  # CLIP's image_size: the base view and each grid tile
PATCH = 14
SIDE = TILE // PATCH  # 8 patches a side: h·w = 64 tokens per tile
PINPOINTS = [[TILE, TILE], [TILE, 2 * TILE], [2 * TILE, TILE], [2 * TILE, 2 * TILE]]  # (height, width)
VISION_WIDTH = 128


def save_llava_next(path: Path, *, vision_layers: int = 3, feature_layer: int = -2, seed: int = 0) -> Path:
    """Write a tiny LLaVA-NeXT (CLIP tower 112 px / 14 px, width 128, 4 heads; Llama width 128, 2
    layers; `PINPOINTS`) with its tokenizer and processor to ``path``; returns ``path``."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    path = Path(path)
    tok = tokenizer()
    # wider than the pools the tests prune to (K <= 96): DPP's greedy never runs past its kernel's
    # rank (at most the width), where the gains left are fp32 rounding noise weighed against
    # spec.DPP_STOP and features a few 1e-6 apart may stop one pick apart
    vision = CLIPVisionConfig(hidden_size=VISION_WIDTH, intermediate_size=2 * VISION_WIDTH,
                              num_hidden_layers=vision_layers, num_attention_heads=4, image_size=TILE,
                              patch_size=PATCH, projection_dim=64)
    text = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, max_position_embeddings=2048)
    config = LlavaNextConfig(vision_config=vision, text_config=text,
                             image_token_id=tok.convert_tokens_to_ids("<image>"), image_grid_pinpoints=PINPOINTS,
                             vision_feature_layer=feature_layer, vision_feature_select_strategy="default",
                             architectures=["LlavaNextForConditionalGeneration"])
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    # as tiny_checkpoints.save_llava: LLaVA-like scales keep the attention and the greedy tokens
    # informative (unit-scale random weights saturate every softmax)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.08 if "vision_tower" in name else 0.05)
    model.save_pretrained(path)
    _hub_vision_names(path / "model.safetensors")
    image_processor = LlavaNextImageProcessor(size={"shortest_edge": TILE}, crop_size={"height": TILE, "width": TILE},
                                              image_grid_pinpoints=PINPOINTS)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, patch_size=PATCH,
                                   vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE,
                                   num_additional_image_tokens=1)
    processor.save_pretrained(path)
    return path

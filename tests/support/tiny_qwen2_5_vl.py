"""A tiny random-weight Qwen2.5-VL checkpoint written to disk the way the hub ships it (config,
safetensors, tokenizer with Qwen's special tokens, image and video processors, chat template), so
that vLLM and HF transformers load the same directory offline.

Geometry: 14 px patches merged 2×2 (28 px per merged token), images resized to between 4 and 64
merged tokens; a 2-block vision tower whose first block attends within 56 px windows (2×2 merged
tokens) and whose last block attends over the whole image, as in the released checkpoints (32
blocks, full attention at 7, 15, 23, 31).  The language model is a 2-layer Qwen2 with M-RoPE.
"""

from pathlib import Path

import torch

PATCH, MERGE = 14, 2
UNIT = PATCH * MERGE  # pixels per merged token, along each side
MIN_TOKENS, MAX_TOKENS = 4, 64  # merged tokens per image after the processor's resize
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or part['type'] == 'image_url' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = [
    "<|im_start|>user\nWhat is in this picture?<|im_end|>\n<|im_start|>assistant\nA cat on a red chair.",
    "Describe the image in one sentence. The photo shows a street with cars, trees and people walking.",
    "How many objects are there? There are three apples, two bananas and one orange on the table.",
]


def tokenizer(vocab_size: int = 320):
    """A byte-level BPE fast tokenizer trained in memory, with Qwen's special tokens (the vision
    markers and pads, ``<|im_start|>`` / ``<|im_end|>``; ``<|endoftext|>`` pads)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(_CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   extra_special_tokens={"image_token": "<|image_pad|>",
                                                         "video_token": "<|video_pad|>",
                                                         "vision_start_token": "<|vision_start|>",
                                                         "vision_end_token": "<|vision_end|>"})
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_qwen2_5_vl(path: Path, *, seed: int = 0) -> Path:
    """Write the tiny Qwen2.5-VL (vision width 64, 4 heads, 2 blocks; Qwen2 width 128, 4 heads, 2
    layers) with its tokenizer and processors to ``path``; returns ``path``."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    path = Path(path)
    tok = tokenizer()
    ids = {name: tok.convert_tokens_to_ids(token) for name, token in
           [("image", "<|image_pad|>"), ("video", "<|video_pad|>"), ("start", "<|vision_start|>"),
            ("end", "<|vision_end|>")]}
    vision = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, patch_size=PATCH,
                  spatial_merge_size=MERGE, temporal_patch_size=2, window_size=2 * UNIT, out_hidden_size=128,
                  fullatt_block_indexes=[1], tokens_per_second=2)
    text = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id, bos_token_id=None, max_position_embeddings=4096,
                tie_word_embeddings=False,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]})
    config = Qwen2_5_VLConfig(vision_config=vision, text_config=text, image_token_id=ids["image"],
                              video_token_id=ids["video"], vision_start_token_id=ids["start"],
                              vision_end_token_id=ids["end"], tie_word_embeddings=False,
                              architectures=["Qwen2_5_VLForConditionalGeneration"])
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    # random weights of unit scale would saturate every softmax, the default 0.02 would make every
    # attention row nearly uniform (near-tied scores); these scales keep both informative
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.1 if ".visual." in f".{name}" else 0.05)
    model.save_pretrained(path)
    size = {"shortest_edge": MIN_TOKENS * UNIT**2, "longest_edge": MAX_TOKENS * UNIT**2}
    image_processor = Qwen2VLImageProcessor(size=size, patch_size=PATCH, merge_size=MERGE, temporal_patch_size=2)
    video_processor = Qwen2VLVideoProcessor(size=size, patch_size=PATCH, merge_size=MERGE, temporal_patch_size=2)
    processor = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tok, video_processor=video_processor,
                                    chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(path)
    return path

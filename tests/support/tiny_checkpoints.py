"""Tiny random-weight LLaVA checkpoints written to disk the way the hub ships them (config,
safetensors, tokenizer, image processor, chat template), so that vLLM can load them offline.

The tokenizer is a byte-level BPE trained in memory on a few sentences (no download), with
``<image>`` as an added special token; the image processor is CLIP's.  Both HF transformers and
vLLM read the same directory, so a test can compare the two on identical weights.
"""

from pathlib import Path

import torch

IMAGE_SIZE = 112  # CLIP geometry at a small scale: 8 × 8 = 64 patches of 14 px
PATCH = 14
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() }}: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or part['type'] == 'image_url' %}<image>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}\n"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
_CORPUS = [
    "USER: <image>\nWhat is in this picture? ASSISTANT: a cat sitting on a red chair near the window.",
    "Describe the image in one sentence. The photo shows a street with cars, trees and people walking.",
    "How many objects are there? There are three apples, two bananas and one orange on the table.",
]


def tokenizer(vocab_size: int = 320):
    """A byte-level BPE fast tokenizer trained in memory, with <s>, </s>, <pad>, <unk>, <image>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>", "<unk>", "<image>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(_CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", extra_special_tokens={"image_token": "<image>"})
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_llava(path: Path, *, image_size: int = IMAGE_SIZE, vision_layers: int = 3, feature_layer: int = -2,
               seed: int = 0) -> Path:
    """Write a tiny LLaVA-1.5 (CLIP tower: ``image_size`` px, 14 px patches, width 64, 4 heads;
    Llama width 128, 2 layers) with its tokenizer and processor to ``path``; returns ``path``.
    ``image_size=336`` gives LLaVA-1.5's 576 tokens per image."""
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    path = Path(path)
    tok = tokenizer()
    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=vision_layers,
                              num_attention_heads=4, image_size=image_size, patch_size=PATCH, projection_dim=64)
    text = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, max_position_embeddings=2048)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=feature_layer, vision_feature_select_strategy="default",
                         architectures=["LlavaForConditionalGeneration"])
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    # random weights of unit scale would saturate every softmax; LLaVA-like scales keep the
    # attention and the greedy tokens informative
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.08 if "vision_tower" in name else 0.05)
    model.save_pretrained(path)
    _hub_vision_names(path / "model.safetensors")
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=PATCH,
                               vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE,
                               num_additional_image_tokens=1)
    processor.save_pretrained(path)
    return path


def _hub_vision_names(file: Path) -> None:
    """Rename the CLIP tower's weights as the hub's LLaVA checkpoints have them
    (``vision_tower.vision_model.*``): transformers 5 saves ``vision_tower.*`` and loads both, vLLM
    0.32 loads only the hub's names."""
    from safetensors.torch import load_file, save_file

    weights = load_file(file)
    save_file({name.replace("vision_tower.", "vision_tower.vision_model.", 1) if name.startswith("vision_tower.")
               else name: tensor for name, tensor in weights.items()}, file, metadata={"format": "pt"})

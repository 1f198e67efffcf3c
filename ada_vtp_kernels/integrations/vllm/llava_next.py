"""LLaVA-NeXT in vLLM (``LlavaNextForConditionalGeneration`` with a CLIP tower): K + r_i placeholders
per image, and the image encoder returns the K kept tokens, projected, with the ``image_newline`` of
each of the image's r_i grid rows.

What it does, with ``ada_vtp`` in the HF config (without it, vLLM's class unchanged):

1. processor: ``get_num_image_tokens`` returns K + r_i, r_i the rows of the image's unpadded
   high-resolution grid as vLLM's own count computes them (``_get_num_unpadded_features``).  vLLM
   sizes the prompt, KV-cache blocks, positions and encoder budget from this number before the
   image is encoded, so it may depend on the image size but not on the selection: hence the HF
   integration's newline policy, every grid row keeps its newline (`..llava_next`, point 4).  The
   image's N_i vision tokens (base view + unpadded grid) bound K there: a smaller image fails its
   request with a ValueError naming K and N_i.  LLaVA-NeXT's 1D RoPE numbers the contiguous
   placeholders as the HF integration's shrunk sequence does, so positions need nothing more;
2. encoder: one tower forward over the real tiles of all images of the call (the processor pads a
   prompt's images to its largest tile count; vLLM's own path encodes that padding, this one cuts
   it first, `..llava_next.image_tiles`), and the [CLS] scores of the feature block from its own
   fused ``qkv_proj`` (`llava.features_and_scores`): each token is scored by its own tile's [CLS];
3. each image's layout: vLLM's own ``_merge_image_patch_embeddings`` run on token indices
   (`packed_layouts`), so the pool is what the unpatched model packs and keep = N_i returns
   exactly vLLM's unpatched embeddings;
4. `..llava_next.pruned_sequences`, the HF integration's own steps: each image's pool (base view,
   then the unpadded grid row by row), one batched ragged `Settings.prune` over all images, the
   projector on the K kept tokens only, the newlines inserted: [K + r_i, D] per image to the
   runner.  One home for these choices, so vLLM and HF transformers select the same tokens.

The engine start checks the settings and the feature layer and strategy (the model's
constructor), and vLLM's profiling counts the placeholders of every pinpoint-sized image, so a K
above such an image's token count fails there too (LLaVA-v1.6: K <= 1728, the 336×672 pinpoint's
576 + 1152); an image that unpadding leaves with fewer tokens fails its own request.  Tensor
parallelism as in `llava`; image-embedding inputs (``image_embeds``) pass through unpruned.
"""

import types

import torch
from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape
from vllm.model_executor.models import llava as vllm_llava
from vllm.model_executor.models import llava_next as vllm_llava_next
from vllm.multimodal import MULTIMODAL_REGISTRY

from .._common import check_feature_selection
from ..llava_next import NEWLINE, image_tiles, pruned_sequences
from . import check_keep, settings_of
from .llava import features_and_scores


def packed_layouts(hf_config, counts: list[int], image_sizes: torch.Tensor, tokens_per_tile: int
                   ) -> list[torch.Tensor]:
    """Where each vision token lands in vLLM's packed image sequence: vLLM's own
    ``_merge_image_patch_embeddings`` run on token indices, `NEWLINE` standing in for the newline
    embedding (`..llava_next.packed_layouts` does the same with HF's model).

    Args:
        hf_config: the ``LlavaNextConfig`` (tile size, patch size, pinpoints).
        counts: tiles per image.
        image_sizes: [I, 2] (height, width) of each original image.
        tokens_per_tile: h·w, vision tokens per tile ([CLS] dropped).

    Returns:
        per image a [N_i + r_i] int64 tensor: the index into the T·h·w tile tokens (tile-major) of
        the token at each position of the packed sequence, or `NEWLINE` at a newline slot.
    """
    tokens = torch.arange(sum(counts) * tokens_per_tile).view(-1, tokens_per_tile, 1)
    # the method reads only config and image_newline of its model
    on_indices = types.SimpleNamespace(config=hf_config, image_newline=torch.tensor([NEWLINE]))
    merge = vllm_llava_next.LlavaNextForConditionalGeneration._merge_image_patch_embeddings
    return [merge(on_indices, size, image_tokens, strategy="spatial_unpad")[:, 0]
            for size, image_tokens in zip(image_sizes, torch.split(tokens, counts))]


class LlavaNextProcessingInfo(vllm_llava_next.LlavaNextProcessingInfo):
    def get_num_image_tokens(self, *, image_width: int, image_height: int) -> int:
        tokens = super().get_num_image_tokens(image_width=image_width, image_height=image_height)
        settings = settings_of(self.get_hf_config())
        if settings is None:
            return tokens
        rows = self.grid_rows(image_width=image_width, image_height=image_height)
        check_keep(settings.keep, tokens - rows)  # N_i: the base view and the unpadded grid
        return settings.keep + rows

    def grid_rows(self, *, image_width: int, image_height: int) -> int:
        """r_i: the rows of the image's unpadded high-resolution grid (one newline each), as vLLM's
        own ``get_num_image_tokens`` counts them."""
        encoder = self.get_vision_encoder_info()
        grid_height, grid_width = get_anyres_image_grid_shape(
            image_size=(image_height, image_width), grid_pinpoints=self.get_hf_config().image_grid_pinpoints,
            patch_size=encoder.get_image_size())
        _, rows = self._get_num_unpadded_features(original_height=image_height, original_width=image_width,
                                                  npatches=encoder.get_patch_grid_length(),
                                                  num_patch_height=grid_height, num_patch_width=grid_width)
        return rows


@MULTIMODAL_REGISTRY.register_processor(vllm_llava_next.LlavaNextMultiModalProcessor, info=LlavaNextProcessingInfo,
                                        dummy_inputs=vllm_llava.LlavaDummyInputsBuilder)
class LlavaNextForConditionalGeneration(vllm_llava_next.LlavaNextForConditionalGeneration):
    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        settings = settings_of(self.config)  # raises on bad settings: the engine does not start
        if settings is not None:
            check_feature_selection(self.config.vision_feature_layer, self.config.vision_feature_select_strategy)

    def _process_image_input(self, image_input):
        # read at every call, as the processor does, so that both always follow the same config
        settings = settings_of(self.config)
        if settings is None or image_input["type"] != "pixel_values":
            return super()._process_image_input(image_input)
        image_sizes = image_input["image_sizes"]
        tiles, counts = image_tiles(self.config, image_input["pixel_values"], image_sizes)
        features, scores = features_and_scores(self.vision_tower, tiles, self.config.vision_feature_select_strategy)
        layouts = packed_layouts(self.config, counts, image_sizes, features.shape[1])
        sequences, _ = pruned_sequences(settings, features, scores, layouts, self.multi_modal_projector,
                                        self.image_newline)
        return sequences

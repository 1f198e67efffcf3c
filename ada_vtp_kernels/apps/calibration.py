"""``ada-vtp calibrate``: erank_ref and entropy_ref of the encoder over a folder of images.

    ada-vtp calibrate --images DIR [--size 336] [--layer -2]
    ada-vtp calibrate --sample-photos [NAME ...]

``agile`` and ``mix_adaptive`` read an image's complexity as c = erank / erank_ref (or
entropy / entropy_ref with ``complexity="entropy"``), so the reference values should be "a typical
image" of the encoder, layer and resolution the pruner sees: c ≈ 1 for an average image, below 1
for simple ones, above 1 for cluttered ones.  This command measures, per image, the exact erank of
the N = (size/14)² DINOv2 ViT-S/14 patch tokens of hidden state ``--layer`` and the entropy (nats)
of the [CLS] attention of the block producing it (`analysis.image_statistics`), and prints

- erank_ref = the mean exact erank, entropy_ref = the mean entropy (unrounded means, printed with
  2 and 3 decimals), as the keyword arguments to pass to ``prune``, and a line saying that they
  are these means, with the standard deviation over the images;
- the spread of each: min, median, max, with the images at the extremes;
- the package defaults (`spec.DEFAULTS.erank_ref`, `spec.DEFAULTS.entropy_ref`, measured the same way on
  eight photos at 336 px, layer -2) for comparison.

The erank grows with the token count, so calibrate at the ``--size`` the pruner will see.  Input
folders are read as in `ada_vtp_kernels.apps.analysis` (non-images skipped with a warning).  Fewer
than `MIN_IMAGES` images draw a warning on stderr: the mean of a few images is a poor reference
for "a typical image".
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import spec
from .analysis import (
    ImageStatistics,
    add_input_arguments,
    image_statistics,
    load_images,
    run_reporting_usage_errors,
)

MIN_IMAGES = 8  # below this many images the command warns that the means are a poor reference


@dataclass(frozen=True)
class Calibration:
    """erank_ref and entropy_ref (the means of the per-image values) and the statistics they come from."""

    stats: ImageStatistics
    erank_ref: float
    entropy_ref: float


def calibrate(images: list[tuple[str, np.ndarray]], size: int = 336, layer: int = -2,
              model: Any = None) -> Calibration:
    """Means of the exact erank and the attention entropy of B images' encoder tokens.

    Args:
        images: B (name, image) pairs, as `analysis.load_images` returns them.
        size: input side, a multiple of 14.
        layer: hidden_states index of the features and of the scores' block.
        model: a DINOv2 ``Dinov2Model`` with eager attention; default `encoders.load_dinov2()`.

    Returns:
        Calibration with the per-image statistics (erank [B], entropy [B]) and their means, in fp64.
    """
    stats = image_statistics(images, size, layer, model)
    return Calibration(stats, stats.erank.double().mean().item(), stats.entropy.double().mean().item())


def _spread(label: str, values: list[float], names: list[str], digits: int) -> str:
    """"label: min v (name), median v, max v (name)" of one per-image quantity."""
    low, high = int(np.argmin(values)), int(np.argmax(values))
    return (f"{label}: min {values[low]:.{digits}f} ({names[low]}), median {statistics.median(values):.{digits}f}, "
            f"max {values[high]:.{digits}f} ({names[high]})")


def _std(values: list[float], digits: int) -> str:
    """The sample standard deviation (n - 1) of `values`, or "n/a" for a single value."""
    return f"{statistics.stdev(values):.{digits}f}" if len(values) > 1 else "n/a (one image)"


def few_images_warning(images: int) -> str | None:
    """The warning for a calibration on fewer than `MIN_IMAGES` images; None from MIN_IMAGES on."""
    if images >= MIN_IMAGES:
        return None
    return (f"only {images} image{'s' if images != 1 else ''}: erank_ref and entropy_ref are the mean over the "
            f"images, and the mean of fewer than {MIN_IMAGES} is a poor reference for a typical image; "
            f"calibrate on {MIN_IMAGES} or more images like the ones the pruner will see")


def report(calibration: Calibration, size: int, layer: int) -> str:
    """The printed report: per-image values, the spread, the values to pass, the current defaults."""
    stats = calibration.stats
    names, eranks, entropies = stats.names, stats.erank.tolist(), stats.entropy.tolist()
    width = max(len(n) for n in names + ["image"])
    count = f"{len(names)} image{'s' if len(names) != 1 else ''}"
    lines = [f"{count}, {stats.features.shape[1]} tokens x {stats.features.shape[2]} "
             f"(DINOv2 ViT-S/14, --size {size}, --layer {layer})", "", f"{'image':{width}s}   erank  entropy"]
    lines += [f"{name:{width}s}  {e:6.2f}  {h:7.3f}" for name, e, h in zip(names, eranks, entropies)]
    lines += ["", _spread("erank  ", eranks, names, 2), _spread("entropy", entropies, names, 3), "",
              f"erank_ref = the MEAN erank over the {count} (std {_std(eranks, 2)}), "
              f"entropy_ref = the MEAN entropy (std {_std(entropies, 3)}):",
              f"erank_ref={calibration.erank_ref:.2f}, entropy_ref={calibration.entropy_ref:.3f}",
              f"(current defaults: erank_ref={spec.DEFAULTS.erank_ref}, entropy_ref={spec.DEFAULTS.entropy_ref}, "
              "measured on 8 photos at --size 336, --layer -2)"]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``ada-vtp calibrate``."""
    add_input_arguments(parser)


def calibrate_from_args(args: argparse.Namespace) -> Calibration:
    """Runs ``ada-vtp calibrate``: measures, prints the report, returns the Calibration.

    Raises:
        UsageError: bad input (folder, --size, --layer).
    """
    images = load_images(args)
    calibration = calibrate(images, args.size, args.layer)
    print(report(calibration, args.size, args.layer))
    warning = few_images_warning(len(images))
    if warning is not None:  # after the report, where it is read
        print(f"ada-vtp calibrate: warning: {warning}", file=sys.stderr)
    return calibration


def run(args: argparse.Namespace) -> int:
    """``ada-vtp calibrate``: 0 on success, 2 (message on stderr) on bad input."""
    return run_reporting_usage_errors("calibrate", calibrate_from_args, args)

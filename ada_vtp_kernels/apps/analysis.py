"""``ada-vtp analyze``: the AgilePruner paper's token analysis on any folder of images.

    ada-vtp analyze --images DIR [--keep 32 64 128] [--methods ...] [--out DIR] [--size 336] [--layer -2]
    ada-vtp analyze --sample-photos [NAME ...]        (scikit-image's real photos: runs offline)

What is measured, per image, on DINOv2 ViT-S/14 (`ada_vtp_kernels.apps.encoders`; features of hidden
state `--layer`, [CLS] attention of the block that produces it, heads averaged, N = (size/14)²
patch tokens x 384 channels):

- the [CLS] attention entropy H (nats, `functional.attention_entropy`; ln N is uniform);
- the exact erank of all N tokens (`functional.erank(method="exact")`: fp64 eigensolver, uncentred);
- for each method and budget K, the exact erank of the K kept tokens (``prune`` with the
  package defaults or ``--erank-ref/--entropy-ref``, then ``gather``): the paper's Table 1 measure.
  It lies in [1, K]; a set that covers more distinct directions has the higher erank.

Across images: the Pearson and Spearman correlation between input erank and entropy (the paper
reports a strong positive one; p-values from scipy.stats, two-sided; undefined below 3 images or
when either quantity is constant), and per K the methods ordered by mean kept-token erank, with
two checks of the paper's claims: DivPrune keeps the highest erank, attention (FasterVLM) the
lowest — on the means and counted image by image.

Outputs under ``--out``: ``analysis.csv`` (`CSV_COLUMNS`; one ``image`` row per image, one
``kept`` row per image x method x K), ``erank_vs_entropy.png`` (one point per image, named) and
``kept_erank.png`` (mean kept-token erank per method and K, error bars ± one standard deviation
over the images, as its title says); the summary goes to stdout.  Points that coincide (``cat``
and ``chelsea`` are one photo) share one label, and labels are placed apart from each other.

Images the encoder's input changes more than a downscale would (a side below ``--size``:
upscaled; not square: squeezed to a square, nothing cropped) are named in a warning on stderr.

Input folders: the files directly in DIR (no recursion), in name order; dotfiles and
sub-folders are ignored, any other file PIL cannot open is skipped with a logged warning naming it
(a README or a .json beside the photos should not stop a run), and a folder left without images is
an error naming it.  `UsageError` carries every such input problem; ``run`` prints it and returns 2.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import functional, spec
from .encoders import dinov2
from .params import add_prune_arguments, prune_params

_log = logging.getLogger(__name__)

DEFAULT_KEEPS = (32, 64, 128)
DEFAULT_OUT = "ada-vtp-analysis"  # the same style as photo_demo.DEFAULT_OUT; both are in .gitignore
CSV_NAME, SCATTER_NAME, BARS_NAME = "analysis.csv", "erank_vs_entropy.png", "kept_erank.png"
CSV_COLUMNS = ("row", "image", "method", "keep", "tokens", "entropy", "erank", "kept_erank")


class UsageError(ValueError):
    """Bad command input (a missing or empty folder, a budget larger than the token count...)."""


@dataclass(frozen=True)
class ImageStatistics:
    """Encoder outputs and input statistics of B images at one size and layer.

    names: B image names; features [B, N, 384] fp32; scores [B, N] fp32 ([CLS] attention);
    entropy [B] fp32 (nats); erank [B] fp32 (exact, all N tokens).
    """

    names: list[str]
    features: torch.Tensor
    scores: torch.Tensor
    entropy: torch.Tensor
    erank: torch.Tensor


@dataclass(frozen=True)
class Correlation:
    """Pearson and Spearman correlation of two per-image quantities, with two-sided p-values."""

    pearson: float
    pearson_p: float
    spearman: float
    spearman_p: float


@dataclass(frozen=True)
class Analysis:
    """Everything ``ada-vtp analyze`` reports.

    stats: the per-image statistics; keeps: the budgets K; methods: the method names;
    indices[(method, K)]: [B, K] int64 kept tokens (ascending); kept_erank[(method, K)]: [B] fp32,
    the exact erank of those K tokens; correlation: input erank vs entropy across images, None
    below 3 images or when either is constant.
    """

    stats: ImageStatistics
    keeps: tuple[int, ...]
    methods: tuple[str, ...]
    indices: dict[tuple[str, int], torch.Tensor]
    kept_erank: dict[tuple[str, int], torch.Tensor]
    correlation: Correlation | None

    def mean_kept_erank(self, keep: int) -> dict[str, float]:
        """Mean kept-token erank over the images, per method, at budget `keep`, highest first."""
        means = {m: self.kept_erank[(m, keep)].double().mean().item() for m in self.methods}
        return dict(sorted(means.items(), key=lambda item: -item[1]))


# --- input --------------------------------------------------------------------------------------


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """The image source and encoder options shared by ``analyze`` and ``calibrate``."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", metavar="DIR", help="folder of image files (any format PIL reads)")
    source.add_argument("--sample-photos", nargs="*", metavar="NAME",
                        help="scikit-image's sample photos instead of a folder: the NAMEs given, default all "
                             f"{len(dinov2.PHOTO_NAMES)} real photographs ({', '.join(dinov2.PHOTO_NAMES)})")
    parser.add_argument("--size", type=int, default=336,
                        help="input side in pixels, a multiple of 14; (size/14)^2 tokens per image (default 336: 576)")
    parser.add_argument("--layer", type=int, default=-2,
                        help="hidden_states index of the features, its block's [CLS] attention (default -2)")


def tokens_per_image(size: int) -> int:
    """N, the patch tokens of a size x size input; raises UsageError unless size is a positive multiple of 14."""
    if size <= 0 or size % dinov2.PATCH_SIZE:
        raise UsageError(f"--size {size} is not a positive multiple of the patch size {dinov2.PATCH_SIZE} (e.g. 336)")
    return (size // dinov2.PATCH_SIZE) ** 2


def check_keeps(keeps: Sequence[int], n: int) -> None:
    """Raises UsageError unless every budget K is in [1, n]."""
    for keep in keeps:
        if not 1 <= keep <= n:
            raise UsageError(f"--keep {keep} is outside [1, {n}]: the images have {n} tokens each at this --size")


def read_folder(folder: str | os.PathLike) -> list[tuple[str, np.ndarray]]:
    """The images directly in `folder`, as (file name, [H, W, 3] uint8 RGB), sorted by name.

    Dotfiles and sub-folders are ignored; any other file that PIL cannot open is skipped with a
    logged warning naming it.

    Raises:
        UsageError: `folder` does not exist, is not a folder, or holds no readable image.
    """
    pil = dinov2._require("PIL.Image", "pillow")
    path = Path(folder)
    if not path.exists():
        raise UsageError(f"--images {folder}: no such folder")
    if not path.is_dir():
        raise UsageError(f"--images {folder}: not a folder (pass the folder that holds the images)")
    images = []
    for file in sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            with pil.open(file) as opened:
                images.append((file.name, np.asarray(opened.convert("RGB"))))
        except (pil.UnidentifiedImageError, OSError) as exc:
            _log.warning("skipping %s: not an image PIL can read (%s)", file, exc)
    if not images:
        raise UsageError(f"--images {folder}: no image files in the folder (PIL could open none of its files)")
    return images


def load_images(args: argparse.Namespace) -> list[tuple[str, np.ndarray]]:
    """The (name, [H, W, 3] uint8) images chosen by ``--images`` or ``--sample-photos``."""
    if args.images is not None:
        return read_folder(args.images)
    try:
        return dinov2.sample_photos(args.sample_photos or None)
    except ValueError as exc:
        raise UsageError(f"--sample-photos: {exc}") from exc


def image_statistics(images: list[tuple[str, np.ndarray]], size: int = 336, layer: int = -2,
                     model: Any = None) -> ImageStatistics:
    """Encodes `images` (B (name, array) pairs) and measures entropy and exact erank of each.

    Args:
        images: B (name, image) pairs; an image is anything `encoders.encode` takes.
        size: input side, a multiple of 14 (N = (size/14)² tokens).
        layer: hidden_states index of the features and of the scores' block.
        model: a DINOv2 ``Dinov2Model`` with eager attention; default `encoders.load_dinov2()`.

    Returns:
        ImageStatistics with features [B, N, 384], scores [B, N], entropy [B], erank [B].
    """
    tokens_per_image(size)
    for note in dinov2.resize_notes(images, size):
        print(f"warning: {note}", file=sys.stderr)
    model = dinov2.load_dinov2() if model is None else model
    try:
        out = dinov2.encode([image for _, image in images], layers=(layer,), size=size, model=model, progress=True)
    except ValueError as exc:  # a layer outside the model
        raise UsageError(f"--layer {layer}: {exc}") from exc
    features, scores = out["features"][layer], out["scores"][layer]
    return ImageStatistics(
        names=[name for name, _ in images],
        features=features,
        scores=scores,
        entropy=functional.attention_entropy(scores),
        erank=functional.erank(features, method="exact"),
    )


# --- measurements -------------------------------------------------------------------------------


def correlation(x: torch.Tensor, y: torch.Tensor) -> Correlation | None:
    """Pearson and Spearman correlation of x [B] and y [B] (scipy.stats), None when B < 3 or either is constant."""
    a, b = x.double().numpy(), y.double().numpy()
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    stats = dinov2._require("scipy.stats", "scipy")
    pearson, spearman = stats.pearsonr(a, b), stats.spearmanr(a, b)
    return Correlation(float(pearson.statistic), float(pearson.pvalue),
                       float(spearman.statistic), float(spearman.pvalue))


def analyze(stats: ImageStatistics, keeps: tuple[int, ...] = DEFAULT_KEEPS,
            methods: tuple[str, ...] = tuple(spec.METHODS), **params: Any) -> Analysis:
    """Prunes every image with every method at every budget and measures the kept tokens' exact erank.

    Args:
        stats: from `image_statistics` (features [B, N, D], scores [B, N]).
        keeps: budgets K, each in [1, N].
        methods: names from `spec.METHODS`.
        **params: method parameters passed to `functional.prune` (e.g. ``erank_ref``, ``tau_max``).

    Returns:
        Analysis with indices [B, K] and kept_erank [B] per (method, K).

    Raises:
        UsageError: a K outside [1, N].
    """
    check_keeps(keeps, stats.features.shape[1])
    indices, kept_erank = {}, {}
    for method in methods:
        for keep in keeps:
            idx = functional.prune(stats.features, stats.scores, keep, method, **params).indices
            indices[(method, keep)] = idx
            kept_erank[(method, keep)] = functional.erank(functional.gather(stats.features, idx), method="exact")
    return Analysis(stats, tuple(keeps), tuple(methods), indices, kept_erank, correlation(stats.erank, stats.entropy))


# --- outputs ------------------------------------------------------------------------------------


def write_csv(analysis: Analysis, path: Path) -> None:
    """`CSV_COLUMNS`: per image a ``row=image`` line (method/keep/kept_erank empty), then
    ``row=kept`` lines per method and K (entropy and erank repeated: those of the whole image)."""
    stats = analysis.stats
    n = stats.features.shape[1]
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(CSV_COLUMNS)
        for b, name in enumerate(stats.names):
            entropy, erank = f"{stats.entropy[b].item():.6f}", f"{stats.erank[b].item():.6f}"
            writer.writerow(("image", name, "", "", n, entropy, erank, ""))
            for method in analysis.methods:
                for keep in analysis.keeps:
                    kept = f"{analysis.kept_erank[(method, keep)][b].item():.6f}"
                    writer.writerow(("kept", name, method, keep, n, entropy, erank, kept))


def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    matplotlib = dinov2._require("matplotlib", "matplotlib")
    matplotlib.use("Agg")
    return dinov2._require("matplotlib.pyplot", "matplotlib")


# Label placement of the scatter plot: offsets (points) from the point tried in order, each with the
# text's alignment; the first that overlaps no placed label, no other point and stays in the axes wins.
_LABEL_OFFSETS = tuple(
    (dx * step, dy * step, ha, va)
    for step in (1, 3, 5)
    for dx, dy, ha, va in ((4, 3, "left", "bottom"), (4, -3, "left", "top"), (-4, 3, "right", "bottom"),
                           (-4, -3, "right", "top"), (0, 5, "center", "bottom"), (0, -5, "center", "top"))
)
_POINT_RADIUS = 3.5  # points: the half-width of a scatter marker that labels keep off


def merged_labels(names: Sequence[str], x: Sequence[float], y: Sequence[float],
                  tolerance: float = 1e-3) -> list[tuple[str, float, float]]:
    """(label, x, y) per distinct point: the names of points that coincide joined by ", ".

    Points coincide when both coordinates differ by at most `tolerance` times the spread of
    that coordinate (scikit-image's "cat" and "chelsea" are one photo, so one point).
    """
    span_x = (max(x) - min(x)) or 1.0
    span_y = (max(y) - min(y)) or 1.0
    groups: list[tuple[list[str], float, float]] = []
    for name, px, py in zip(names, x, y):
        for members, gx, gy in groups:
            if abs(px - gx) <= tolerance * span_x and abs(py - gy) <= tolerance * span_y:
                members.append(name)
                break
        else:
            groups.append(([name], px, py))
    return [(", ".join(members), gx, gy) for members, gx, gy in groups]


def _overlap(a: Any, b: Any) -> float:
    """Area shared by two display-space Bboxes (0 when apart)."""
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(width, 0.0) * max(height, 0.0)


def _place_labels(fig: Any, ax: Any, labels: list[tuple[str, float, float]], fontsize: float = 7) -> None:
    """Annotates each (label, x, y) at the first offset of `_LABEL_OFFSETS` whose text overlaps no
    label placed before it and no point marker, inside the axes; failing that, at the offset of
    least overlap.  The axes' layout must be final (the texts are measured on the canvas)."""
    from matplotlib.transforms import Bbox

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    radius = _POINT_RADIUS * fig.dpi / 72
    points = [ax.transData.transform((x, y)) for _, x, y in labels]
    markers = [Bbox.from_extents(px - radius, py - radius, px + radius, py + radius) for px, py in points]
    frame = ax.get_window_extent(renderer)
    placed: list[Any] = []
    for i, (label, x, y) in enumerate(labels):
        best = None
        for dx, dy, ha, va in _LABEL_OFFSETS:
            text = ax.annotate(label, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, va=va,
                               fontsize=fontsize)
            box = text.get_window_extent(renderer)
            outside = box.width * box.height - _overlap(box, frame)
            cost = outside + sum(_overlap(box, other) for other in placed) + sum(
                _overlap(box, marker) for j, marker in enumerate(markers) if j != i)
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, text, box)
            else:
                text.remove()
            if cost == 0:
                break
        placed.append(best[2])


def scatter_figure(analysis: Analysis) -> Any:
    """The figure of `plot_scatter` (a matplotlib Figure; the caller closes it).

    Points that coincide share one label (`merged_labels`), and labels are placed so that they
    overlap neither each other nor the points where the plot has room (`_place_labels`).
    """
    plt = _pyplot()
    stats = analysis.stats
    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    x, y = stats.erank.tolist(), stats.entropy.tolist()
    ax.scatter(x, y)
    ax.margins(0.12, 0.1)  # room for the labels of the outermost points
    corr = analysis.correlation
    title = "input erank vs [CLS] attention entropy"
    if corr is not None:
        title += f"\nPearson r = {corr.pearson:.2f}, Spearman ρ = {corr.spearman:.2f} ({len(stats.names)} images)"
    ax.set(xlabel=f"erank of the {stats.features.shape[1]} tokens (exact)", ylabel="attention entropy (nats)",
           title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _place_labels(fig, ax, merged_labels(stats.names, x, y))
    return fig


def plot_scatter(analysis: Analysis, path: Path) -> None:
    """Input erank (x) against attention entropy (y), one named point per image (`scatter_figure`)."""
    plt = _pyplot()
    fig = scatter_figure(analysis)
    fig.savefig(path)
    plt.close(fig)


def bars_figure(analysis: Analysis) -> Any:
    """The figure of `plot_bars` (a matplotlib Figure; the caller closes it).

    Bars: the mean kept-token erank over the images per method (groups) and K (bars); error bars:
    ± one standard deviation of it over the images (sample standard deviation, n - 1), none for a
    single image.  The title says so.
    """
    plt = _pyplot()
    images = len(analysis.stats.names)
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(analysis.methods)), 4.5), dpi=120)
    width = 0.8 / len(analysis.keeps)
    x = np.arange(len(analysis.methods))
    for i, keep in enumerate(analysis.keeps):
        values = [analysis.kept_erank[(m, keep)].double() for m in analysis.methods]
        means = [v.mean().item() for v in values]
        spread = [v.std().item() for v in values] if images > 1 else None  # torch.std: n - 1
        ax.bar(x + (i - (len(analysis.keeps) - 1) / 2) * width, means, width, yerr=spread, capsize=2,
               label=f"K = {keep}")
    ax.set_xticks(x, analysis.methods, rotation=20)
    bars = (f"error bars: ± one standard deviation over the {images} images" if images > 1
            else "one image: no error bars")
    ax.set(ylabel="erank of the kept tokens (exact)",
           title=f"kept-token erank, mean over {images} image{'s' if images > 1 else ''}\n{bars}")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_bars(analysis: Analysis, path: Path) -> None:
    """Mean kept-token erank per method (groups) and K (bars), ± one standard deviation over the
    images (`bars_figure`)."""
    plt = _pyplot()
    fig = bars_figure(analysis)
    fig.savefig(path)
    plt.close(fig)


def summary(analysis: Analysis) -> str:
    """The printed report: per-image statistics, mean kept-token erank per method and K, the
    ordering of the methods with the paper's two checks, and the erank-entropy correlation."""
    stats, keeps = analysis.stats, analysis.keeps
    width = max(len(n) for n in stats.names + ["image"])
    n = stats.features.shape[1]
    lines = [f"{len(stats.names)} images, {n} tokens x {stats.features.shape[2]} each", "",
             f"{'image':{width}s}  entropy   erank"]
    lines += [f"{name:{width}s}  {h:7.3f}  {e:6.1f}"
              for name, h, e in zip(stats.names, stats.entropy.tolist(), stats.erank.tolist())]
    lines += [f"{'mean':{width}s}  {stats.entropy.double().mean().item():7.3f}  "
              f"{stats.erank.double().mean().item():6.1f}", ""]

    mwidth = max(len(m) for m in analysis.methods + ("method",))
    lines.append("mean kept-token erank (exact) over the images")
    lines.append(f"{'method':{mwidth}s}" + "".join(f"  {'K=' + str(k):>7s}" for k in keeps))
    for method in analysis.methods:
        lines.append(f"{method:{mwidth}s}" + "".join(
            f"  {analysis.kept_erank[(method, k)].double().mean().item():7.1f}" for k in keeps))
    lines.append("")

    for keep in keeps:
        means = analysis.mean_kept_erank(keep)
        lines.append(f"K={keep}: " + " > ".join(f"{m} {v:.1f}" for m, v in means.items()))
        table = torch.stack([analysis.kept_erank[(m, keep)] for m in analysis.methods])  # [methods, B]
        per_image_high = table.argmax(0).tolist()
        per_image_low = table.argmin(0).tolist()
        for name, claim, ranked, picks in (("divprune", "highest", list(means), per_image_high),
                                           ("attention", "lowest", list(means)[::-1], per_image_low)):
            if name not in analysis.methods:
                continue
            holds = "yes" if ranked[0] == name else f"NO ({ranked[0]} is)"
            count = sum(analysis.methods[i] == name for i in picks)
            lines.append(f"  {name} {claim} on the mean: {holds}; {claim} on {count} of {len(picks)} images")
    lines.append("")

    corr = analysis.correlation
    if corr is None:
        lines.append("erank vs entropy correlation: undefined (needs 3 or more images with varying values)")
    else:
        lines.append(f"erank vs entropy across {len(stats.names)} images: Pearson r = {corr.pearson:.3f} "
                     f"(p = {corr.pearson_p:.2g}), Spearman rho = {corr.spearman:.3f} (p = {corr.spearman_p:.2g})")
    return "\n".join(lines)


# --- command ------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``ada-vtp analyze``."""
    add_input_arguments(parser)
    parser.add_argument("--keep", type=int, nargs="+", default=list(DEFAULT_KEEPS), metavar="K",
                        help="token budgets (default: %(default)s)")
    parser.add_argument("--methods", nargs="+", default=list(spec.METHODS), choices=spec.METHODS,
                        metavar="METHOD", help=f"pruning methods (default: all: {', '.join(spec.METHODS)})")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                        help=f"folder for {CSV_NAME}, {SCATTER_NAME}, {BARS_NAME} (default: %(default)s)")
    add_prune_arguments(parser)  # --erank-ref (see: ada-vtp calibrate), --tau-max, ...


def analyze_from_args(args: argparse.Namespace) -> Analysis:
    """Runs ``ada-vtp analyze``: measures, writes the CSV and the plots, prints the summary; returns the Analysis.

    Raises:
        UsageError: bad input (folder, --size, --layer, --keep), before any model is loaded where possible.
    """
    check_keeps(args.keep, tokens_per_image(args.size))
    try:
        params = prune_params(args)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    images = load_images(args)
    stats = image_statistics(images, args.size, args.layer)
    analysis = analyze(stats, tuple(dict.fromkeys(args.keep)), tuple(dict.fromkeys(args.methods)), **params)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(analysis, out / CSV_NAME)
    plot_scatter(analysis, out / SCATTER_NAME)
    plot_bars(analysis, out / BARS_NAME)
    print(summary(analysis))
    print(f"\nwrote {out / CSV_NAME}, {out / SCATTER_NAME}, {out / BARS_NAME}")
    return analysis


def run_reporting_usage_errors(command: str, action: Callable[[argparse.Namespace], Any],
                               args: argparse.Namespace) -> int:
    """Runs ``action(args)`` for ``ada-vtp <command>``: 0 on success, 2 (message on stderr) on a
    UsageError."""
    try:
        action(args)
    except UsageError as exc:
        print(f"ada-vtp {command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


def run(args: argparse.Namespace) -> int:
    """``ada-vtp analyze``: 0 on success, 2 (message on stderr) on bad input."""
    return run_reporting_usage_errors("analyze", analyze_from_args, args)


__all__ = [
    "Analysis", "Correlation", "ImageStatistics", "UsageError", "add_arguments", "analyze", "analyze_from_args",
    "bars_figure", "correlation", "image_statistics", "load_images", "merged_labels", "read_folder", "run",
    "run_reporting_usage_errors", "scatter_figure",
]


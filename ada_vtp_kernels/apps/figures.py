"""Figures of what the pruning methods keep, drawn over the photo the encoder saw.

A ViT with patch size P reads a size x size input as a G x G grid of patches (G = size / P),
token n covering rows ``(n // G) * P`` and columns ``(n % G) * P`` of the input.  The panels
here draw on that same size x size picture: the [CLS] attention as a G x G heat map over it,
and each method's kept tokens as the photo with the pruned patches dimmed and the kept ones
outlined.  Matplotlib is imported on first use with the non-interactive Agg backend (needs the
``[real]`` extras).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

PANEL_WIDTH, PANEL_HEIGHT = 1.95, 2.2  # inches per panel: a square image and its two-line title
HEADER_INCHES = 0.45  # room for the figure's title line
DPI = 175  # a panel's image is then about 330 px wide, the encoder's 336 px input
PRUNED_BRIGHTNESS = 0.25  # pruned patches keep this share of their brightness
KEPT_EDGE = "#ffd400"  # outline of a kept patch


def _pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def grid_side(tokens: int) -> int:
    """G of a square G x G patch grid of `tokens` tokens; ValueError when `tokens` is not a square."""
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"{tokens} tokens do not form a square patch grid")
    return side


def dim_pruned(photo: np.ndarray, kept: Sequence[int], grid: int) -> np.ndarray:
    """The photo with every patch outside `kept` dimmed to PRUNED_BRIGHTNESS.

    Args:
        photo: [S, S, 3] uint8, S divisible by `grid`.
        kept: token indices in [0, grid**2), row-major.
        grid: G, patches per side.

    Returns:
        [S, S, 3] uint8.
    """
    patch = photo.shape[0] // grid
    mask = np.full(grid * grid, PRUNED_BRIGHTNESS, dtype=np.float32)
    mask[np.asarray(kept, dtype=np.int64)] = 1.0
    pixels = np.kron(mask.reshape(grid, grid), np.ones((patch, patch), dtype=np.float32))
    return (photo.astype(np.float32) * pixels[..., None]).round().astype(np.uint8)


def _outline(ax, kept: Sequence[int], grid: int, patch: int) -> None:
    """The four edges of each kept patch as one line collection, in image coordinates."""
    from matplotlib.collections import LineCollection

    kept = np.asarray(kept, dtype=np.int64)
    x0, y0 = (kept % grid) * patch - 0.5, (kept // grid) * patch - 0.5
    x1, y1 = x0 + patch, y0 + patch
    corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
    segments = np.stack([np.stack([np.stack(a, -1), np.stack(b, -1)], 1) for a, b in zip(corners, corners[1:])], 1)
    ax.add_collection(LineCollection(segments.reshape(-1, 2, 2), colors=KEPT_EDGE, linewidths=0.5))


def _bare(ax, title: str) -> None:
    ax.set_title(title, fontsize=8, pad=3)
    ax.set_xticks([])
    ax.set_yticks([])


def save_pruning_grid(
    path: str | os.PathLike,
    photo: np.ndarray,
    scores: np.ndarray,
    panels: Sequence[Sequence[tuple[str, Sequence[int]]]],
    title: str,
    photo_title: str,
    attention_title: str,
) -> tuple[int, int]:
    """Writes one PNG: the photo and its [CLS] attention in the first column, kept tokens in the rest.

    Layout: max(2, rows) rows x (1 + columns) panels of PANEL_WIDTH x PANEL_HEIGHT inches at DPI,
    plus a title line.  Column 0 holds the photo (row 0) and the attention heat map over it (row 1,
    a G x G map of sqrt(score / largest score)); cell (r, 1 + c) holds ``panels[r][c]``: the photo
    with the pruned patches dimmed and the kept ones outlined, titled with the panel's label.

    Args:
        path: PNG file to write (its folder must exist).
        photo: [S, S, 3] uint8, the encoder's input before normalisation.
        scores: [G * G] [CLS] attention of each patch, row-major.
        panels: rows of (label, kept token indices) panels, every row the same length.
        title: the figure's title line.
        photo_title, attention_title: titles of the two panels of column 0.

    Returns:
        (width, height) of the PNG in pixels.
    """
    plt = _pyplot()
    grid = grid_side(len(scores))
    patch = photo.shape[0] // grid
    rows, cols = max(2, len(panels)), 1 + max(len(row) for row in panels)
    fig, axes = plt.subplots(
        rows, cols, figsize=(cols * PANEL_WIDTH, rows * PANEL_HEIGHT + HEADER_INCHES), dpi=DPI, squeeze=False
    )
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - HEADER_INCHES / fig.get_figheight(),
                        wspace=0.04, hspace=0.16)
    fig.suptitle(title, fontsize=10, y=1 - 0.08 * HEADER_INCHES / fig.get_figheight(), va="top")
    for ax in axes.flat:
        ax.set_axis_off()

    axes[0, 0].set_axis_on()
    axes[0, 0].imshow(photo)
    _bare(axes[0, 0], photo_title)
    heat = np.asarray(scores, dtype=np.float32).reshape(grid, grid)
    axes[1, 0].set_axis_on()
    axes[1, 0].imshow(photo, alpha=0.55)
    # square root of the share of the largest score: ViT attention has a few outlier patches that a
    # linear scale would leave alone in a black map
    extent = (-0.5, photo.shape[1] - 0.5, photo.shape[0] - 0.5, -0.5)  # the G x G map stretched over the photo
    axes[1, 0].imshow(np.sqrt(heat / max(float(heat.max()), 1e-30)), cmap="inferno", vmin=0.0, vmax=1.0,
                      alpha=0.75, extent=extent, interpolation="nearest")
    _bare(axes[1, 0], attention_title)

    for r, row in enumerate(panels):
        for c, (label, kept) in enumerate(row):
            ax = axes[r, 1 + c]
            ax.set_axis_on()
            ax.imshow(dim_pruned(photo, kept, grid))
            _outline(ax, kept, grid, patch)
            _bare(ax, label)
    fig.savefig(path, dpi=DPI, pil_kwargs={"compress_level": 3})
    size = fig.canvas.get_width_height()
    plt.close(fig)
    return size

"""Figures of what the pruning methods keep, drawn over the photo the encoder saw.

A ViT with patch size P reads a size x size input as a G x G grid of patches (G = size / P),
token n covering rows ``(n // G) * P`` and columns ``(n % G) * P`` of the input.  The panels
here draw on that same size x size picture: the [CLS] attention as a G x G heat map over it,
and each method's kept tokens as the photo with the pruned patches dimmed and the kept ones
outlined.  Matplotlib is imported on first use with the non-interactive Agg backend (needs the
``[apps]`` extra).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

PANEL_WIDTH, PANEL_HEIGHT = 1.95, 2.2  # inches per panel: a square image and its two-line title
COLORBAR_INCHES = 0.6  # extra width of the attention map's column: its colour bar, ticks and label
HEADER_INCHES = 0.45  # room for the figure's title line
DPI = 175  # a panel's image is then about 330 px wide, the encoder's 336 px input
PRUNED_BRIGHTNESS = 0.25  # pruned patches keep this share of their brightness
KEPT_EDGE = "#ffd400"  # outline of a kept patch
ATTENTION_LABEL = "sqrt(attention / max)"  # the colour bar's label: what the heat map's colours encode


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


def grid_inches(rows: int, columns: int) -> tuple[float, float]:
    """(width, height) in inches of the figure of `save_pruning_grid` for `rows` x `columns` panels.

    Two or more rows: the photo and the attention map stack in a first column, COLORBAR_INCHES
    wider than a panel.  One row: they are the first two columns of that row.
    """
    side = 2 * PANEL_WIDTH if rows == 1 else PANEL_WIDTH
    return side + COLORBAR_INCHES + columns * PANEL_WIDTH, rows * PANEL_HEIGHT + HEADER_INCHES


def _legend(ax, notes: Sequence[str]) -> None:
    """The how-to-read text of the figure, in a cell of its own (axis off)."""
    ax.set_axis_off()
    lines = ["How to read it", *notes,
             "kept patch: yellow outline",
             f"pruned patch: dimmed to {PRUNED_BRIGHTNESS:.0%}",
             "panel title: method, K and the",
             "  erank of the K kept tokens",
             f"heat map: {ATTENTION_LABEL}",
             "  of the [CLS] attention"]
    ax.text(0.0, 1.0, "\n".join(lines), transform=ax.transAxes, va="top", ha="left", fontsize=7, linespacing=1.5)


def _image_part(cell):
    """The left PANEL_WIDTH of a side-column cell, whose remaining COLORBAR_INCHES hold a colour bar."""
    return cell.subgridspec(1, 2, width_ratios=[PANEL_WIDTH, COLORBAR_INCHES], wspace=0)[0, 0]


def pruning_grid_figure(
    photo: np.ndarray,
    scores: np.ndarray,
    panels: Sequence[Sequence[tuple[str, Sequence[int]]]],
    title: str,
    photo_title: str,
    attention_title: str,
    notes: Sequence[str] = (),
):
    """The figure of `save_pruning_grid` (a matplotlib Figure; the caller closes it).

    Layout, every cell filled: with R >= 2 rows of panels, a first column holds the photo
    (row 0), the attention heat map with its colour bar (row 1) and, from R = 3, a legend spanning
    the rows below (how to read the panels, `notes` first); with one row, the photo and the heat
    map are the first two cells of that row.  Cell (r, c) of the panel columns holds
    ``panels[r][c]``: the photo with the pruned patches dimmed and the kept ones outlined, titled
    with the panel's label.
    """
    plt = _pyplot()
    from matplotlib.transforms import ScaledTranslation

    grid = grid_side(len(scores))
    patch = photo.shape[0] // grid
    rows, cols = len(panels), max(len(row) for row in panels)
    width, height = grid_inches(rows, cols)
    fig = plt.figure(figsize=(width, height), dpi=DPI)
    side = [PANEL_WIDTH, PANEL_WIDTH + COLORBAR_INCHES] if rows == 1 else [PANEL_WIDTH + COLORBAR_INCHES]
    layout = fig.add_gridspec(rows, len(side) + cols, width_ratios=side + [PANEL_WIDTH] * cols,
                              left=0.01, right=0.99, bottom=0.01, top=1 - HEADER_INCHES / height,
                              wspace=0.04, hspace=0.16)
    fig.suptitle(title, fontsize=10, y=1 - 0.08 * HEADER_INCHES / height, va="top")

    # the photo's and the heat map's cells: a panel's width for the image, then room for the colour bar
    photo_cell, attention_cell = (layout[0, 0], layout[0, 1]) if rows == 1 else (layout[0, 0], layout[1, 0])
    photo_ax = fig.add_subplot(photo_cell if rows == 1 else _image_part(photo_cell))
    attention_ax = fig.add_subplot(_image_part(attention_cell))
    photo_ax.imshow(photo)
    _bare(photo_ax, photo_title)
    heat = np.asarray(scores, dtype=np.float32).reshape(grid, grid)
    attention_ax.imshow(photo, alpha=0.55)
    # square root of the share of the largest score: ViT attention has a few outlier patches that a
    # linear scale would leave alone in a black map
    extent = (-0.5, photo.shape[1] - 0.5, photo.shape[0] - 0.5, -0.5)  # the G x G map stretched over the photo
    heat_map = attention_ax.imshow(np.sqrt(heat / max(float(heat.max()), 1e-30)), cmap="inferno", vmin=0.0,
                                   vmax=1.0, alpha=0.75, extent=extent, interpolation="nearest")
    _bare(attention_ax, attention_title)
    # the bar follows the heat map's drawn box (an inset of its axes), in the room left beside it
    colorbar = fig.colorbar(heat_map, cax=attention_ax.inset_axes((1.04, 0.0, 0.06, 1.0)), ticks=[0, 0.5, 1])
    colorbar.ax.tick_params(labelsize=6, length=2, pad=1)
    colorbar.set_label(ATTENTION_LABEL, fontsize=7)
    # the label 16 points right of the bar, beyond its tick labels, whatever the bar's width
    beside = colorbar.ax.transAxes + ScaledTranslation(16 / 72, 0, fig.dpi_scale_trans)
    colorbar.ax.yaxis.set_label_coords(1.0, 0.5, transform=beside)
    if rows >= 3:
        _legend(fig.add_subplot(layout[2:, 0]), notes)

    first = len(side)
    for r, row in enumerate(panels):
        for c, (label, kept) in enumerate(row):
            ax = fig.add_subplot(layout[r, first + c])
            ax.imshow(dim_pruned(photo, kept, grid))
            _outline(ax, kept, grid, patch)
            _bare(ax, label)
    return fig


def save_pruning_grid(
    path: str | os.PathLike,
    photo: np.ndarray,
    scores: np.ndarray,
    panels: Sequence[Sequence[tuple[str, Sequence[int]]]],
    title: str,
    photo_title: str,
    attention_title: str,
    notes: Sequence[str] = (),
) -> tuple[int, int]:
    """Writes one PNG: the photo, its [CLS] attention with a colour bar, and the kept tokens.

    Layout (`pruning_grid_figure`): R rows of panels x their columns, PANEL_WIDTH x PANEL_HEIGHT
    inches each at DPI, plus a first column (R >= 2) or two first cells (R = 1) for the photo and
    the attention heat map (a G x G map of sqrt(score / largest score), with its colour bar), a
    legend below them from R = 3, and a title line; `grid_inches` gives the size.

    Args:
        path: PNG file to write (its folder must exist).
        photo: [S, S, 3] uint8, the encoder's input before normalisation.
        scores: [G * G] [CLS] attention of each patch, row-major.
        panels: rows of (label, kept token indices) panels, every row the same length.
        title: the figure's title line.
        photo_title, attention_title: titles of the photo and the heat map.
        notes: first lines of the legend (e.g. what the rows are).

    Returns:
        (width, height) of the PNG in pixels.
    """
    plt = _pyplot()
    fig = pruning_grid_figure(photo, scores, panels, title, photo_title, attention_title, notes)
    fig.savefig(path, dpi=DPI, pil_kwargs={"compress_level": 3})
    size = fig.canvas.get_width_height()
    plt.close(fig)
    return size

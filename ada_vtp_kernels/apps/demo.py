"""Demo: prune synthetic LLaVA-shaped visual tokens with every method and print what each keeps.

    python -m ada_vtp_kernels.apps.demo [--keep 64] [--dim 1024]

Each synthetic "image" is a 24 x 24 grid of 576 tokens (LLaVA-1.5's count) tiled by a number
of regions: the tokens of one region share a direction plus noise, and the [CLS] attention
favours a few salient regions.  Few regions make a simple image (low erank, low entropy), many
a cluttered one.  Three tables, a row per method
and a column per image, give how many distinct regions the kept tokens cover (what diversity
buys), the erank of the kept tokens (the paper's Table 1 measure) and the overlap with plain
attention selection; then one batched call is timed against the pure-PyTorch reference.  Every
line stays within `MAX_COLUMNS` columns.  Real photos through a real encoder come with
`ada-vtp demo`.
"""

import argparse
import time

import torch

from .. import functional, ops, spec

GRID = 24
MAX_COLUMNS = 100  # no printed line is wider


def synthetic_image(regions: int, dim: int, generator: torch.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image: features [576, dim], scores [576] (sum 1), region id of each token [576]."""
    # regions are Voronoi cells of random seed points on the grid
    seeds = torch.rand(regions, 2, generator=generator) * GRID
    ys, xs = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
    cells = torch.stack([ys.flatten(), xs.flatten()], dim=1).float() + 0.5
    region = torch.cdist(cells, seeds).argmin(dim=1)
    directions = torch.randn(regions, dim, generator=generator)
    # within-region variation with a decaying spectrum, as real encoder features have, so the
    # erank follows the number of regions instead of drowning in isotropic noise
    basis = torch.randn(64, dim, generator=generator)
    texture = (torch.randn(GRID * GRID, 64, generator=generator) / torch.arange(1, 65)) @ basis
    features = directions[region] + 0.3 * texture + 0.01 * torch.randn(GRID * GRID, dim, generator=generator)
    salience = torch.rand(regions, generator=generator) ** 4  # a few regions draw most attention
    scores = salience[region] * torch.rand(GRID * GRID, generator=generator) + 1e-4
    return features, scores / scores.sum(), region


def table(title: str, cells: dict[str, list[str]]) -> str:
    """`title`, then a row per method (the keys) and a column per image (``img0``, ``img1``, ...)."""
    images = len(next(iter(cells.values())))
    width = max(7, *(len(cell) for row in cells.values() for cell in row))
    header = f"  {'method':<13}" + "".join(f"  {f'img{b}':>{width}}" for b in range(images))
    lines = [title, header, "  " + "-" * (len(header) - 2)]
    lines += [f"  {method:<13}" + "".join(f"  {cell:>{width}}" for cell in row) for method, row in cells.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ada_vtp_kernels.apps.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=int, default=64, help="tokens kept per image (default 64)")
    parser.add_argument("--dim", type=int, default=1024, help="feature width (default 1024, CLIP ViT-L)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    backend = "cpu" if ops.extension_loaded() else "reference"
    generator = torch.Generator().manual_seed(args.seed)
    region_counts = (3, 12, 48, 160)
    images = [synthetic_image(r, args.dim, generator) for r in region_counts]
    features = torch.stack([f for f, _, _ in images])
    scores = torch.stack([s for _, s, _ in images])
    regions = torch.stack([g for _, _, g in images])

    stats = functional.prune(features, scores, args.keep, "attention", compute_erank=True, backend=backend)
    attention_idx = stats.indices
    print(f"ada_vtp_kernels demo: {len(images)} synthetic images, 576 tokens x {args.dim}, keep {args.keep}, "
          f"backend={backend!r}\n")
    for b, count in enumerate(region_counts):
        print(f"image {b}: {count} regions, attention entropy {stats.entropy[b]:.3f} nats, "
              f"erank {stats.erank[b]:.1f}")
    print()
    covered, kept_eranks, overlaps = {}, {}, {}  # method -> one cell per image
    for method in spec.METHODS:
        result = functional.prune(features, scores, args.keep, method, backend=backend)
        kept_erank = functional.erank(functional.gather(features, result.indices), backend=backend)
        covered[method] = [f"{regions[b, result.indices[b]].unique().numel()}/{count}"
                           for b, count in enumerate(region_counts)]
        kept_eranks[method] = [f"{kept_erank[b]:.1f}" for b in range(len(images))]
        overlaps[method] = [f"{len(set(result.indices[b].tolist()) & set(attention_idx[b].tolist()))}/{args.keep}"
                            for b in range(len(images))]
    print(table(f"regions covered by the {args.keep} kept tokens (of the image's regions)", covered))
    print(table(f"erank of the {args.keep} kept tokens", kept_eranks))
    print(table(f"kept tokens that attention selection (FasterVLM) also keeps, of {args.keep}", overlaps))

    print(f"one batched call per method ({len(images)} images), median of 5:")
    for method in spec.METHODS:
        timings = {}
        for name in dict.fromkeys((backend, "reference")):
            runs = []
            for _ in range(5 if name == backend else 1):  # the reference, when compared: once
                start = time.perf_counter()
                functional.prune(features, scores, args.keep, method, backend=name)
                runs.append(time.perf_counter() - start)
            timings[name] = sorted(runs)[len(runs) // 2] * 1e3
        line = f"  {method:<13} {backend} {timings[backend]:8.2f} ms"
        if backend != "reference":
            line += f"   reference {timings['reference']:8.1f} ms   ({timings['reference'] / timings[backend]:.0f}x)"
        print(line)


if __name__ == "__main__":
    main()

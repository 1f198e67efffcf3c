"""Reproduce the measurements behind `ada_vtp_kernels.defaults` (ERANK_REF, ENTROPY_REF, TAU_MAX).

    python benchmarks/calibrate_defaults.py [--golden PATH] [--keep 64] [--backend auto|cpu|reference]

On real encoder features (default: tests/data/golden/peers_real.pt, eight scikit-image photos
through DINOv2 ViT-S/14, 576 tokens x 384 channels) it prints, per photo, the exact erank and
the [CLS] attention entropy and their means (what ERANK_REF and ENTROPY_REF are rounded from),
then, for agile at K = --keep and each tau_max of TAU_MAXES, how many tokens the score order
supplies before it runs out (K when it does not: the max-min fill then plays no part) and how
many of agile's K tokens attention selection also keeps.

The run-out count is recomputed here from the reference's building blocks (score order, snapped
cosine distance of the rescaled features, the tau_r schedule), independently of the op, whose
selection is what the overlap column measures.
"""

import argparse
import sys
from pathlib import Path

import torch

from ada_vtp_kernels import functional, ops, reference, spec

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "data" / "golden" / "peers_real.pt"

TAU_MAXES = (0.1, 0.2, 0.3, 0.4, 0.6, 1.0)


def supplied_by_score_order(dist: torch.Tensor, scores: torch.Tensor, keep: int, complexity: float,
                            tau_max: float) -> int:
    """How many tokens agile's suppression pass (`reference.agile_walk`) selects, at most `keep`,
    before the order runs out, given one image's snapped cosine distances [n, n] and scores [n]."""
    order = reference.score_order(scores).tolist()
    return len(reference.agile_walk(dist, order, keep, complexity, spec.DEFAULTS.tau_scale, tau_max))


def overlap(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many indices two selections share."""
    return len(set(a.tolist()) & set(b.tolist()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--golden", default=str(GOLDEN.resolve()),
                        help="a .pt with names, features [B, N, D] and scores [B, N] (default: %(default)s)")
    parser.add_argument("--keep", type=int, default=64, help="K for the agile columns (default: %(default)s)")
    parser.add_argument("--backend", default="auto", choices=("auto", "cpu", "reference"),
                        help="backend of erank, entropy and prune; auto = the C++ op when built, else the reference")
    args = parser.parse_args(argv)
    backend = args.backend
    if backend == "auto" and not ops.extension_loaded():
        backend = "reference"

    data = torch.load(args.golden)
    names, features, scores = data["names"], data["features"], data["scores"]
    keep = args.keep
    eranks = functional.erank(features, backend=backend)
    entropies = functional.attention_entropy(scores, backend=backend)

    print(f"{args.golden}: {features.shape[0]} images, N={features.shape[1]}, D={features.shape[2]}, "
          f"{features.dtype}; backend={backend}")
    print(f"defaults: ERANK_REF={spec.DEFAULTS.erank_ref}, ENTROPY_REF={spec.DEFAULTS.entropy_ref}, "
          f"TAU_SCALE={spec.DEFAULTS.tau_scale}, TAU_MAX={spec.DEFAULTS.tau_max}\n")

    attention = functional.prune(features, scores, keep, "attention", backend=backend).indices
    agile = {tau: functional.prune(features, scores, keep, "agile", tau_max=tau, backend=backend).indices
             for tau in TAU_MAXES}

    taus = " ".join(f"{tau:>9}" for tau in TAU_MAXES)
    width = max(len(n) for n in names)
    print(f"agile, K={keep}: tokens supplied by the score order before it runs out / overlap with attention's {keep}")
    print(f"{'image':{width}s}  erank  entropy    c | tau_max {taus}")
    supplied = {tau: [] for tau in TAU_MAXES}
    for b, name in enumerate(names):
        c = float(eranks[b]) / spec.DEFAULTS.erank_ref
        dist = reference.cosine_distance(reference.rescale(features[b]))
        cells = []
        for tau in TAU_MAXES:
            count = supplied_by_score_order(dist, scores[b], keep, c, tau)
            supplied[tau].append(count)
            cells.append(f"{count}/{overlap(agile[tau][b], attention[b])}")
        print(f"{name:{width}s} {float(eranks[b]):6.1f} {float(entropies[b]):8.2f} {c:4.2f} |         "
              + " ".join(f"{cell:>9}" for cell in cells))
    print(f"{'mean':{width}s} {float(eranks.mean()):6.1f} {float(entropies.mean()):8.2f}")
    print(f"{'range':{width}s} {float(eranks.min()):.1f}-{float(eranks.max()):.1f}, "
          f"entropy {float(entropies.min()):.2f}-{float(entropies.max()):.2f} (ln N = "
          f"{torch.log(torch.tensor(float(features.shape[1]))):.2f})\n")

    for tau in TAU_MAXES:
        short = [s for s in supplied[tau] if s < keep]
        summary = f"runs out on {len(short)}/{len(names)} images"
        if short:
            summary += f", after {min(short)} to {max(short)} selections"
        print(f"tau_max {tau}: the score order supplies all {keep} on {len(names) - len(short)} images; {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

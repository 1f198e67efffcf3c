"""Accuracy and speed of the erank methods on the CPU.

Prints, all measured in this one process:
- accuracy: relative error of the C++ op, "exact" (the default) and "fast", against the
  reference's exact fp64 erank, per spectrum family (ada_vtp_kernels.apps.spectra: exponential,
  power law, knee, two-level step, low rank with and without a noise floor, flat) with parameters
  drawn at random (seeded), N in {64, 576, 1024, 2880} x D in {384, 1024, 4096}, the dtype cycling
  through fp32/fp16/bf16; and real DINOv2 ViT-S/14 features of scikit-image's photos at every
  layer (1-12).  Per family: cases, median, max and the worst case;
- speed at N=576, D=1024 fp32 (one image): torch.linalg.svdvals, the Gram matrix product, Gram +
  eigvalsh, the exact op, the fast op, and their ratios;
- AgilePruner's selections with the fast vs the exact erank on the photos (K = 32, 64, 128):
  mean overlap and the share of identical selections.

Usage: python benchmarks/bench_erank.py [--quick] [--draws K] [--csv PATH]
(--quick: N in {64, 576}, D in {384, 1024} and one draw per family and shape.)
"""

import argparse
import csv
import random
import re
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ada_vtp_kernels as vtp  # noqa: E402
from ada_vtp_kernels import reference  # noqa: E402
from ada_vtp_kernels.apps.spectra import FAMILIES, draw_params, family_features  # noqa: E402

from _common import RESULTS_DIR, cpu_name, environment, measure  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
METHODS = ("exact", "fast")


def exact(x: torch.Tensor) -> float:
    return reference.erank_one(reference.rescale(x))


def errors(x: torch.Tensor) -> dict[str, float]:
    """{method: relative error of the C++ op} for one image [n, D]."""
    want = exact(x)
    return {m: abs(float(torch.ops.ada_vtp.erank(x[None], None, m)) / want - 1) for m in METHODS}


def real_features() -> dict[str, dict[int, torch.Tensor]]:
    """DINOv2 features [20, 576, 384] and [CLS] scores of the sample photos at layers 1-12 (11 is
    LLaVA's -2), or {} without the apps extra."""
    try:
        from ada_vtp_kernels.apps.encoders import encode, sample_photos
        return encode([img for _, img in sample_photos()], layers=tuple(range(1, 13)), size=336)
    except (ImportError, FileNotFoundError) as err:
        print(f"(no real features: {err})")
        return {}


def accuracy(quick: bool, draws: int, photos: dict[int, torch.Tensor]) -> list[dict]:
    sizes = [64, 576] + ([] if quick else [1024, 2880])
    dims = [384, 1024] + ([] if quick else [4096])
    rng = random.Random(16)
    rows = []
    case = 0
    for family in FAMILIES:
        for n in sizes:
            for dim in dims:
                for _ in range(1 if quick else draws):
                    params = draw_params(family, rng)
                    dtype = list(DTYPES)[case % 3]
                    x = family_features(n, dim, family, params, seed=case, dtype=DTYPES[dtype])
                    label = ", ".join(f"{k}={v:.3g}" for k, v in params.items())
                    rows.append({"family": family, "n": n, "dim": dim, "dtype": dtype, "params": label,
                                 **errors(x)})
                    case += 1
    for layer, feats in photos.get("features", {}).items():
        for b in range(feats.shape[0]):
            dtype = list(DTYPES)[b % 3]
            rows.append({"family": "dinov2", "n": feats.shape[1], "dim": feats.shape[2], "dtype": dtype,
                         "params": f"layer {layer}, photo {b}", **errors(feats[b].to(DTYPES[dtype]))})
    return rows


def speed() -> dict:
    x = torch.randn(1, 576, 1024)
    x0 = x[0]
    t = {}
    t["svdvals"] = measure(lambda: torch.linalg.svdvals(x0))[0].p50
    t["gram"] = measure(lambda: x0 @ x0.T)[0].p50
    t["gram_eigvalsh"] = measure(lambda: torch.linalg.eigvalsh(x0 @ x0.T))[0].p50
    t["exact_op"] = measure(lambda: torch.ops.ada_vtp.erank(x, None, "exact"))[0].p50
    t["fast_op"] = measure(lambda: torch.ops.ada_vtp.erank(x, None, "fast"), min_repeats=10)[0].p50
    scores = torch.rand(1, 576)
    t["prune_agile_exact"] = measure(lambda: vtp.prune(x, scores, 64, method="agile"))[0].p50
    t["prune_agile_fast"] = measure(lambda: vtp.prune(x, scores, 64, method="agile", erank_method="fast"))[0].p50
    t["prune_agile_no_erank"] = measure(lambda: vtp.prune(x, scores, 64, method="agile", complexity="entropy"))[0].p50
    return t


def agile_overlap(features: torch.Tensor, scores: torch.Tensor) -> tuple[float, float, int]:
    overlaps, identical = [], 0
    for keep in (32, 64, 128):
        a = vtp.prune(features, scores, keep, method="agile", erank_method="fast").indices
        b = vtp.prune(features, scores, keep, method="agile", erank_method="exact").indices
        for ra, rb in zip(a.tolist(), b.tolist()):
            overlaps.append(len(set(ra) & set(rb)) / keep)
            identical += ra == rb
    return statistics.mean(overlaps), identical / len(overlaps), len(overlaps)


def summary(rows: list[dict], method: str) -> None:
    print(f"\naccuracy of erank {method!r} vs the exact fp64 reference (relative error, %)")
    print(f"{'family':10s} {'cases':>5s} {'median':>8s} {'max':>8s}  worst case")
    for family in [*FAMILIES, "dinov2", "all"]:
        chosen = [r for r in rows if family in ("all", r["family"])]
        if not chosen:
            continue
        errs = [r[method] for r in chosen]
        worst = max(chosen, key=lambda r: r[method])
        print(f"{family:10s} {len(errs):5d} {100 * statistics.median(errs):8.2g} {100 * max(errs):8.2g}  "
              f"{worst['n']}x{worst['dim']} {worst['dtype']} {worst['params']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, one draw per family and shape")
    parser.add_argument("--draws", type=int, default=3, help="parameter draws per family and shape")
    parser.add_argument("--csv", type=Path, default=None, help="CSV of the accuracy rows and timings")
    args = parser.parse_args()

    photos = real_features()
    rows = accuracy(args.quick, args.draws, photos)
    for method in METHODS:
        summary(rows, method)

    t = speed()
    print("\nspeed at N=576, D=1024 fp32, one image (median ms)")
    for key, value in t.items():
        print(f"  {key:22s} {value:8.2f}")
    marginal = t["prune_agile_fast"] - t["prune_agile_no_erank"]
    print(f"  svdvals / exact op        {t['svdvals'] / t['exact_op']:.2f}x")
    print(f"  svdvals / fast op         {t['svdvals'] / t['fast_op']:.2f}x  (issue 16: >= 10)")
    print(f"  exact op / gram           {t['exact_op'] / t['gram']:.2f}")
    print(f"  fast op / gram            {t['fast_op'] / t['gram']:.2f}")
    print(f"  inside prune: the fast erank adds {marginal:.2f} ms = {marginal / t['gram']:.2f} of the Gram")
    if photos:
        mean, same, count = agile_overlap(photos["features"][11], photos["scores"][11])
        print(f"\nagile fast vs exact erank on {count} photo selections (layer 11 = -2, K=32/64/128): "
              f"mean overlap {mean:.4f}, identical {same:.2%}")

    path = args.csv or RESULTS_DIR / ("erank_cpu_" + re.sub(r"[^a-z0-9]+", "-", cpu_name().lower()).strip("-") + ".csv")
    env = environment()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["kind", "family", "params", "n", "dim", "dtype", "value", *env])
        writer.writeheader()
        for r in rows:
            for method in METHODS:
                writer.writerow({"kind": f"relative_error_{method}",
                                 **{k: r[k] for k in ("family", "params", "n", "dim", "dtype")},
                                 "value": r[method], **env})
        for key, value in t.items():
            writer.writerow({"kind": "ms", "family": key, "params": "", "n": 576, "dim": 1024, "dtype": "fp32",
                             "value": value, **env})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

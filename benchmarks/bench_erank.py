"""Accuracy and speed of the SVD-free erank estimator (erank method "fast") on the CPU.

Prints, all measured in this one process:
- accuracy: relative error of the C++ "fast" op against the exact fp64 erank, per case family
  (median, max): synthetic spectra (ada_vtp_kernels.apps.spectra) for N in {64, 576, 2880},
  D in {384, 1024, 4096}, fp32/fp16/bf16, and the real DINOv2 features of tests/data/golden;
- speed at N=576, D=1024 fp32 (one image): torch.linalg.svdvals, the Gram matrix product, Gram +
  eigvalsh, the exact op, the fast op, and the ratios the issue asks for;
- inside prune: agile with the fast erank minus agile with the entropy complexity (no erank),
  against the Gram product;
- AgilePruner's selections with the fast vs the exact erank on the golden photos: mean overlap
  and the share of identical selections.

Usage: python benchmarks/bench_erank.py [--quick] [--csv PATH]
(--quick skips N=2880 and D=4096, whose exact references take minutes.)
"""

import argparse
import csv
import re
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ada_vtp_kernels as vtp  # noqa: E402
from ada_vtp_kernels import reference  # noqa: E402
from ada_vtp_kernels.apps.spectra import SPECTRA, synthetic_features  # noqa: E402

from _common import RESULTS_DIR, cpu_name, environment, measure  # noqa: E402

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "data" / "golden" / "peers_real.pt"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def exact(x: torch.Tensor) -> float:
    return reference.erank_one(reference.rescale(x))


def fast(x: torch.Tensor) -> torch.Tensor:
    return torch.ops.ada_vtp.erank(x, None, "fast")


def accuracy(quick: bool) -> list[dict]:
    sizes = [64, 576] + ([] if quick else [2880])
    dims = [384, 1024] + ([] if quick else [4096])
    rows = []
    for spectrum in SPECTRA:
        for n in sizes:
            for dim in dims:
                base = synthetic_features(n, dim, spectrum, seed=n + dim)
                for name, dtype in DTYPES.items():
                    x = base.to(dtype)
                    rows.append({"family": spectrum, "n": n, "dim": dim, "dtype": name,
                                 "error": abs(float(fast(x[None])) / exact(x) - 1)})
    if GOLDEN.exists():
        feats = torch.load(GOLDEN, weights_only=True)["features"]
        for name, dtype in DTYPES.items():
            x = feats.to(dtype)
            est = fast(x)
            for b in range(x.shape[0]):
                rows.append({"family": "dinov2-golden", "n": 576, "dim": 384, "dtype": name,
                             "error": abs(float(est[b]) / exact(x[b]) - 1)})
    return rows


def speed() -> dict:
    x = torch.randn(1, 576, 1024)
    x0 = x[0]
    t = {}
    t["svdvals"] = measure(lambda: torch.linalg.svdvals(x0))[0].p50
    t["gram"] = measure(lambda: x0 @ x0.T)[0].p50
    t["gram_eigvalsh"] = measure(lambda: torch.linalg.eigvalsh(x0 @ x0.T))[0].p50
    t["exact_op"] = measure(lambda: torch.ops.ada_vtp.erank(x, None, "exact"))[0].p50
    t["fast_op"] = measure(lambda: fast(x), min_repeats=10)[0].p50
    scores = torch.rand(1, 576)
    t["prune_agile_fast"] = measure(lambda: vtp.prune(x, scores, 64, method="agile", erank_method="fast"))[0].p50
    t["prune_agile_no_erank"] = measure(lambda: vtp.prune(x, scores, 64, method="agile", complexity="entropy"))[0].p50
    return t


def agile_overlap() -> tuple[float, float, int]:
    data = torch.load(GOLDEN, weights_only=True)
    overlaps, identical = [], 0
    for keep in (32, 64, 128):
        a = vtp.prune(data["features"], data["scores"], keep, method="agile", erank_method="fast").indices
        b = vtp.prune(data["features"], data["scores"], keep, method="agile", erank_method="exact").indices
        for ra, rb in zip(a.tolist(), b.tolist()):
            overlaps.append(len(set(ra) & set(rb)) / keep)
            identical += ra == rb
    return statistics.mean(overlaps), identical / len(overlaps), len(overlaps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip N=2880 and D=4096")
    parser.add_argument("--csv", type=Path, default=None, help="CSV of the accuracy rows and timings")
    args = parser.parse_args()

    rows = accuracy(args.quick)
    print("accuracy of erank 'fast' vs exact fp64 (relative error)")
    print(f"{'family':16s} {'cases':>5s} {'median':>8s} {'max':>8s}")
    families = sorted({r["family"] for r in rows}, key=lambda f: (f.startswith("dinov2"), f))
    for family in families + ["all"]:
        errs = [r["error"] for r in rows if family in ("all", r["family"])]
        print(f"{family:16s} {len(errs):5d} {statistics.median(errs):8.4f} {max(errs):8.4f}")
    by_size = sorted({(r["n"], r["dim"]) for r in rows})
    for n, dim in by_size:
        errs = [r["error"] for r in rows if (r["n"], r["dim"]) == (n, dim)]
        print(f"  N={n:5d} D={dim:5d}: median {statistics.median(errs):.4f} max {max(errs):.4f}")

    t = speed()
    print("\nspeed at N=576, D=1024 fp32, one image (median ms)")
    for key, value in t.items():
        print(f"  {key:22s} {value:8.2f}")
    marginal = t["prune_agile_fast"] - t["prune_agile_no_erank"]
    print(f"  svdvals / fast            {t['svdvals'] / t['fast_op']:.2f}x  (target >= 8)")
    print(f"  (gram+eigvalsh) / fast    {t['gram_eigvalsh'] / t['fast_op']:.2f}x  (target >= 3)")
    print(f"  exact op / fast op        {t['exact_op'] / t['fast_op']:.2f}x")
    print(f"  fast op / gram            {t['fast_op'] / t['gram']:.2f}")
    print(f"  inside prune: marginal {marginal:.2f} ms = {marginal / t['gram']:.2f} of the Gram (target < 0.25)")
    if GOLDEN.exists():
        mean, same, count = agile_overlap()
        print(f"\nagile fast vs exact erank on {count} golden selections (K=32/64/128): mean overlap {mean:.4f}, "
              f"identical {same:.2%}")

    path = args.csv or RESULTS_DIR / ("erank_cpu_" + re.sub(r"[^a-z0-9]+", "-", cpu_name().lower()).strip("-") + ".csv")
    env = environment()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["kind", "family", "n", "dim", "dtype", "value", *env])
        writer.writeheader()
        for r in rows:
            writer.writerow({"kind": "relative_error", **{k: r[k] for k in ("family", "n", "dim", "dtype")},
                             "value": r["error"], **env})
        for key, value in t.items():
            writer.writerow({"kind": "ms", "family": key, "n": 576, "dim": 1024, "dtype": "fp32", "value": value,
                             **env})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

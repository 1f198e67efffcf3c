"""The Triton kernels on a GPU: erank "fast" and attention entropy, against the paper's erank.

On CUDA (B=10, N=576, D=4096 bf16, the issue's shape): CUDA-event medians of
- the Triton fast erank and the Triton attention entropy (ada_vtp_kernels.triton),
- the paper's erank: torch.linalg.svdvals image by image (its 33.4 ms for 10 images on an RTX
  4090), and one batched torch.linalg.svdvals call,
and the ratios; CSV rows go to benchmarks/results/gpu_<gpu name>.csv.  The fused prune is not in
Triton yet (the fused GPU pass issue), so it is not timed here.

Without a GPU, ``--smoke`` runs every kernel once under the Triton interpreter on a tiny shape
and checks it against the C++ op, so that this script cannot rot (tests/test_bench_gpu.py runs it).

Usage: python benchmarks/bench_gpu.py [--smoke] [--csv PATH]
"""

import argparse
import csv
import os
import re
import statistics
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernel modules are imported

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ada_vtp_kernels as vtp  # noqa: E402
from ada_vtp_kernels.triton.entropy import attention_entropy  # noqa: E402
from ada_vtp_kernels.triton.erank_fast import erank_fast  # noqa: E402

from _common import RESULTS_DIR, environment  # noqa: E402


def cuda_ms(fn, repeats: int = 50) -> float:
    """Median milliseconds of fn() between CUDA events, after warm-up."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def erank_from_singular_values(sigma: torch.Tensor) -> torch.Tensor:
    """The paper's erank from singular values [..., m]."""
    q = sigma / sigma.sum(-1, keepdim=True)
    return torch.exp(-torch.xlogy(q, q).sum(-1))


def smoke() -> None:
    """Every Triton kernel once, under the interpreter, on a tiny shape, against the C++ op."""
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(2, 80, 72, generator=gen)
    scores = torch.rand(2, 80, generator=gen)
    lengths = torch.tensor([80, 50])
    got = {"erank_fast": erank_fast(features, lengths), "attention_entropy": attention_entropy(scores, lengths)}
    want = {"erank_fast": vtp.erank(features, lengths, "fast", backend="cpu"),
            "attention_entropy": vtp.attention_entropy(scores, lengths, backend="cpu")}
    for name in got:
        rel = float(((got[name] - want[name]).abs() / want[name].abs()).max())
        print(f"{name:18s} interpreter vs C++: max relative difference {rel:.2e}")
        if rel > 1e-4:
            raise SystemExit(f"{name}: the Triton kernel disagrees with the C++ op by {rel:.2e} (> 1e-4)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shape under the Triton interpreter (no GPU)")
    parser.add_argument("--csv", type=Path, default=None, help="CSV of the timings (GPU only)")
    args = parser.parse_args()
    if args.smoke or not torch.cuda.is_available():
        smoke()
        return

    batch, n, dim = 10, 576, 4096
    gen = torch.Generator(device="cuda").manual_seed(0)
    features = torch.randn(batch, n, dim, device="cuda", generator=gen).bfloat16()
    scores = torch.rand(batch, n, device="cuda", generator=gen)
    x32 = features.float()
    t = {
        "triton_erank_fast": cuda_ms(lambda: erank_fast(features)),
        "triton_attention_entropy": cuda_ms(lambda: attention_entropy(scores)),
        "svdvals_per_image": cuda_ms(lambda: [erank_from_singular_values(torch.linalg.svdvals(x)) for x in x32],
                                     repeats=10),
        "svdvals_batched": cuda_ms(lambda: erank_from_singular_values(torch.linalg.svdvals(x32)), repeats=10),
    }
    name = torch.cuda.get_device_name()
    print(f"{name}, B={batch}, N={n}, D={dim} bf16 (median ms)")
    for key, value in t.items():
        print(f"  {key:26s} {value:9.3f}")
    print(f"  svdvals per image / Triton fast erank   {t['svdvals_per_image'] / t['triton_erank_fast']:.1f}x")
    print(f"  batched svdvals / Triton fast erank     {t['svdvals_batched'] / t['triton_erank_fast']:.1f}x")

    path = args.csv or RESULTS_DIR / ("gpu_" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") + ".csv")
    env = environment()
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["case", "B", "N", "D", "dtype", "ms", "gpu", *env])
        writer.writeheader()
        for key, value in t.items():
            writer.writerow({"case": key, "B": batch, "N": n, "D": dim, "dtype": "bf16", "ms": value, "gpu": name,
                             **env})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Runs the C++ op under another of MKL's code paths, in a child process: the probe behind
tests/test_blas_paths.py (``python tests/support/blas_paths.py OUT.pt`` writes its results).

MKL picks its kernels by CPU: AVX-512 ones on an Intel Xeon, AVX2 ones on an AMD EPYC (MKL
checks the vendor), and they round differently.  A test machine is one or the other, so the
child runs with the other path forced:

- ``intel``: LD_PRELOAD of a two-function shim whose ``mkl_serv_intel_cpu_true`` answers yes,
  so that MKL takes its Intel (AVX-512) kernels on an AMD CPU too (a no-op on Intel);
- ``avx2``: ``MKL_ENABLE_INSTRUCTIONS=AVX2``, MKL's own switch, which keeps an Intel CPU off its
  AVX-512 kernels.

torch's x86 wheels link MKL statically but export its symbols, which is what lets the shim
interpose; `shim_source` is the whole shim.  The probe itself also asserts, on its path, that
the thread count and the batch's composition change no bit.
"""

import hashlib
import sys
from pathlib import Path

import torch

from ada_vtp_kernels import spec

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from peers import GOLDEN  # noqa: E402

SHIM_SOURCE = "int mkl_serv_intel_cpu_true(void) { return 1; }\nint mkl_serv_intel_cpu(void) { return 1; }\n"
METHODS = tuple(spec.METHODS)
THREADS = (1, 2, 3)


def inputs() -> dict:
    """Named batches: (features, scores, relevance, lengths, keep).  Real DINOv2 features when
    the golden file is there, a ragged LLaVA-sized Gaussian batch, and one sparse 178 x 201 image."""
    g = torch.Generator().manual_seed(0)
    out = {
        "gaussian-577x1024": (torch.randn(3, 577, 1024, generator=g), torch.rand(3, 577, generator=g),
                              torch.rand(3, 577, generator=g), torch.tensor([577, 300, 577]), 64),
    }
    # sparse {-1, 0, 1} rows: with Intel's kernels the fast erank of this one image took other bits
    # on 2 threads than on 1 before the products were tiled (149.71599 / 149.71597)
    g = torch.Generator().manual_seed(1)
    sparse = torch.randint(-1, 2, (1, 178, 201), generator=g).float() * (torch.rand(1, 178, 201, generator=g) < 0.1)
    out["sparse-178x201"] = (sparse, torch.rand(1, 178, generator=g), torch.rand(1, 178, generator=g), None, 32)
    if GOLDEN.exists():
        data = torch.load(GOLDEN, weights_only=True)
        out["golden"] = (data["features"], data["scores"], data["relevance"], None, 128)
    return out


def run(features, scores, relevance, lengths, keep: int, method: str, erank_method: str):
    rel = relevance if method == "dpp" else None
    return torch.ops.ada_vtp.prune(features, scores, keep, method, lengths, rel, erank_method=erank_method,
                                   compute_erank=True)


def gemm_fingerprint() -> str:
    """Digest of one sgemm whose bits differ between MKL's AVX2 and AVX-512 kernels (a [64, 1024]
    by [1024, 576] product on two threads): tells which path a process took."""
    g = torch.Generator().manual_seed(1)
    a = torch.randn(576, 1024, generator=g)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    digest = hashlib.sha1(torch.mm(a[:64], a.T).numpy().tobytes()).hexdigest()
    torch.set_num_threads(before)
    return digest


def probe() -> dict:
    """{(batch name, method, erank method): (indices, erank, entropy)} and {"gemm": fingerprint},
    after checking that every thread count, and every image alone at every thread count (the
    fast erank then runs its products on all threads), give the same bits."""
    results = {"gemm": gemm_fingerprint()}
    before = torch.get_num_threads()
    for name, (features, scores, relevance, lengths, keep) in inputs().items():
        for method in METHODS:
            for erank_method in ("fast", "exact"):
                label = f"{name} {method} erank={erank_method}"
                want = run(features, scores, relevance, lengths, keep, method, erank_method)
                for threads in THREADS:
                    torch.set_num_threads(threads)
                    got = run(features, scores, relevance, lengths, keep, method, erank_method)
                    assert all(map(torch.equal, got, want)), f"{label}: {threads} threads change bits"
                    for b in (0, features.shape[0] - 1):
                        n = features.shape[1] if lengths is None else int(lengths[b])
                        alone = run(features[b:b + 1, :n], scores[b:b + 1, :n], relevance[b:b + 1, :n], None,
                                    keep, method, erank_method)
                        same = all(torch.equal(x[0], y[b]) for x, y in zip(alone, want))
                        assert same, f"{label}: image {b} alone on {threads} threads differs from the batch"
                torch.set_num_threads(before)
                results[name, method, erank_method] = want
    return results


if __name__ == "__main__":
    torch.save(probe(), sys.argv[1])

"""Synthetic feature matrices with a prescribed singular-value spectrum, for testing and
benchmarking erank estimators (tests/test_erank_fast.py, benchmarks/bench_erank.py).

``X = U diag(sigma) Vᵀ`` with U [n, r], V [D, r] Haar-random orthonormal columns (QR of Gaussian
matrices, seeded), r = min(n, D), scaled so that the root-mean-square entry is 1 (fp16 and bf16
inputs then neither underflow nor overflow).
"""

import torch

#: spectrum name -> sigma_i for i = 1..r (before scaling)
SPECTRA = ("pow0.5", "pow1", "pow2", "exp", "flat", "rank1", "rank10")


def singular_values(name: str, r: int) -> torch.Tensor:
    """[r] float64 singular values of the named spectrum, largest first.

    ``powA``: sigma_i = i**-A; ``exp``: sigma_i = 10**(-2 (i - 1) / (r - 1)), two decades from the
    first to the last; ``flat``: all 1; ``rankK``: K ones, the rest 0.
    """
    i = torch.arange(1, r + 1, dtype=torch.float64)
    if name.startswith("pow"):
        return i ** -float(name[3:])
    if name == "exp":
        return 10.0 ** (-2.0 * (i - 1) / max(r - 1, 1))
    if name == "flat":
        return torch.ones(r, dtype=torch.float64)
    if name.startswith("rank"):
        return (i <= int(name[4:])).to(torch.float64)
    raise ValueError(f"spectrum must be one of {SPECTRA}, got {name!r}")


def synthetic_features(n: int, dim: int, spectrum: str, seed: int = 0,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[n, dim] matrix with the singular values of `spectrum` (see `singular_values`), in `dtype`."""
    generator = torch.Generator().manual_seed(seed)
    r = min(n, dim)
    sigma = singular_values(spectrum, r)
    u, _ = torch.linalg.qr(torch.randn(n, r, generator=generator, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(dim, r, generator=generator, dtype=torch.float64))
    x = (u * sigma) @ v.T
    return (x * ((n * dim) ** 0.5 / torch.linalg.vector_norm(sigma))).to(dtype)

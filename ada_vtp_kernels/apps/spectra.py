"""Synthetic feature matrices with a prescribed singular-value spectrum, for testing and
benchmarking erank estimators (tests/test_erank_fast.py, tests/test_erank_accuracy.py,
benchmarks/bench_erank.py).

``X = U diag(sigma) Vᵀ`` with U [n, r], V [D, r] random orthonormal columns (QR of seeded Gaussian
matrices), r = min(n, D), scaled so that the root-mean-square entry is 1 (fp16 and bf16 inputs
then neither underflow nor overflow).

Families (`FAMILIES`; sigma_i for i = 1..r, largest first), with the parameter ranges that
`draw_params` samples:

- ``exp``: exp(-(i - 1) / s), s in [5, 300];
- ``pow``: i**-a, a in [0.3, 2.5];
- ``knee``: i**-a up to the knee k, then k**-a exp(-(i - k) / s): a in [0.3, 1], k in [10, 150],
  s in [5, 80] (a slow power law, then an exponential tail);
- ``step``: 1 for i <= k, then h: k in [1, 150], h in [0.01, 0.3];
- ``lowrank``: 1 for i <= k, then `noise`: k in [1, 20], noise 0 or 1e-3;
- ``flat``: all 1.
"""

import math
import random

import torch

FAMILIES = ("exp", "pow", "knee", "step", "lowrank", "flat")

#: named spectra of the older tests: "powA", "exp" (two decades from first to last), "flat",
#: "rankK" (K ones, the rest 0)
SPECTRA = ("pow0.5", "pow1", "pow2", "exp", "flat", "rank1", "rank10")


def family_sigma(family: str, r: int, **params: float) -> torch.Tensor:
    """[r] float64 singular values of `family` (see the module docstring), largest first."""
    i = torch.arange(1, r + 1, dtype=torch.float64)
    if family == "exp":
        return torch.exp(-(i - 1) / params["s"])
    if family == "pow":
        return i ** -params["a"]
    if family == "knee":
        k, a, s = params["knee"], params["a"], params["s"]
        return torch.where(i <= k, i ** -a, k ** -a * torch.exp(-(i - k) / s))
    if family == "step":
        return torch.where(i <= params["block"], 1.0, params["low"])
    if family == "lowrank":
        return torch.where(i <= params["rank"], 1.0, params["noise"])
    if family == "flat":
        return torch.ones(r, dtype=torch.float64)
    raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")


def draw_params(family: str, rng: random.Random) -> dict[str, float]:
    """Parameters of `family` drawn from the ranges in the module docstring (log-uniform where
    the range spans a decade or more)."""
    def log_uniform(low: float, high: float) -> float:
        return math.exp(rng.uniform(math.log(low), math.log(high)))

    if family == "exp":
        return {"s": log_uniform(5, 300)}
    if family == "pow":
        return {"a": rng.uniform(0.3, 2.5)}
    if family == "knee":
        return {"knee": rng.randint(10, 150), "a": rng.uniform(0.3, 1.0), "s": log_uniform(5, 80)}
    if family == "step":
        return {"block": rng.randint(1, 150), "low": log_uniform(0.01, 0.3)}
    if family == "lowrank":
        return {"rank": rng.randint(1, 20), "noise": rng.choice((0.0, 1e-3))}
    if family == "flat":
        return {}
    raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")


def singular_values(name: str, r: int) -> torch.Tensor:
    """[r] float64 singular values of a named spectrum (`SPECTRA`), largest first."""
    if name.startswith("pow"):
        return family_sigma("pow", r, a=float(name[3:]))
    if name == "exp":
        return family_sigma("exp", r, s=max(r - 1, 1) / (2 * math.log(10)))
    if name == "flat":
        return family_sigma("flat", r)
    if name.startswith("rank"):
        return family_sigma("lowrank", r, rank=int(name[4:]), noise=0.0)
    raise ValueError(f"spectrum must be one of {SPECTRA}, got {name!r}")


def features_with_sigma(n: int, dim: int, sigma: torch.Tensor, seed: int = 0,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[n, dim] matrix with singular values proportional to `sigma` [min(n, dim)], in `dtype`."""
    generator = torch.Generator().manual_seed(seed)
    r = min(n, dim)
    u, _ = torch.linalg.qr(torch.randn(n, r, generator=generator, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(dim, r, generator=generator, dtype=torch.float64))
    x = (u * sigma) @ v.T
    return (x * ((n * dim) ** 0.5 / torch.linalg.vector_norm(sigma))).to(dtype)


def synthetic_features(n: int, dim: int, spectrum: str, seed: int = 0,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[n, dim] matrix with the singular values of a named spectrum (see `singular_values`)."""
    return features_with_sigma(n, dim, singular_values(spectrum, min(n, dim)), seed, dtype)


def family_features(n: int, dim: int, family: str, params: dict[str, float], seed: int = 0,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[n, dim] matrix with the singular values of `family` with `params`."""
    return features_with_sigma(n, dim, family_sigma(family, min(n, dim), **params), seed, dtype)

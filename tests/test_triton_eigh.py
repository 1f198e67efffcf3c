"""The Triton Jacobi eigensolver (ada_vtp_kernels.kernels.eigh) against torch.linalg.eigh in float64.

Without CUDA the kernel runs under the Triton interpreter (TRITON_INTERPRET=1, set by tests/conftest.py
before triton is imported), about 1000x slower than a GPU: the sizes are kept small, and the two 64 x 64
cases that need the most sweeps (rank-deficient Grams, clusters) share one batch.

Accuracy targets: eigenvalues within 1e-12 max|λ| of torch.linalg.eigh, eigenvectors orthonormal to
1e-12, residual ||A V - V diag(λ)||_max <= 1e-12 max|λ|.
"""


import pytest
import torch

pytest.importorskip("triton")

from ada_vtp_kernels.kernels import triton_device as _device  # noqa: E402
from ada_vtp_kernels.kernels.erank.triton_eigh import jacobi_eigh  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
F64 = torch.float64
TOL = 1e-12


def symmetric(batch: int, k: int) -> torch.Tensor:
    x = torch.randn(batch, k, k, dtype=F64)
    return x + x.mT


def gram(k: int, rank: int) -> torch.Tensor:
    b = torch.randn(k, rank, dtype=F64)
    return b @ b.T


def with_spectrum(eigenvalues: torch.Tensor) -> torch.Tensor:
    """Q diag(λ) Qᵀ, Q Haar-random."""
    k = eigenvalues.shape[0]
    q, _ = torch.linalg.qr(torch.randn(k, k, dtype=F64))
    return q @ torch.diag(eigenvalues.to(F64)) @ q.T


def tridiagonal(k: int) -> torch.Tensor:
    """A Lanczos T: positive diagonal, positive off-diagonal."""
    alpha = 1.0 + torch.rand(k, dtype=F64)
    beta = 0.1 + torch.rand(k - 1, dtype=F64)
    return torch.diag(alpha) + torch.diag(beta, 1) + torch.diag(beta, -1)


def check(a: torch.Tensor, w: torch.Tensor, v: torch.Tensor) -> None:
    """w, v against torch.linalg.eigh of a ([B, k, k] float64), with the sign convention."""
    batch, k, _ = a.shape
    assert w.shape == (batch, k) and w.dtype == F64 and v.shape == (batch, k, k) and v.dtype == F64
    expected = torch.linalg.eigvalsh(a)
    scale = expected.abs().amax(dim=-1, keepdim=True)
    assert ((w - expected).abs() <= TOL * scale).all(), f"eigenvalue error {(w - expected).abs().max():.3g}"
    eye = torch.eye(k, dtype=F64, device=a.device)
    assert ((v.mT @ v - eye).abs() <= TOL).all(), f"orthonormality error {(v.mT @ v - eye).abs().max():.3g}"
    residual = (a @ v - v * w[:, None, :]).abs().amax(dim=1)
    assert (residual <= TOL * scale).all(), f"residual {residual.max():.3g}"
    # sign: the largest-magnitude component of each column (the first on ties) is positive
    mag = v.abs()
    first = (mag == mag.amax(dim=1, keepdim=True)).to(torch.int8).argmax(dim=1, keepdim=True)
    assert (v.gather(1, first) > 0).all()


@pytest.mark.parametrize("k", [1, 2, 7, 8, 33, 64])
def test_random_symmetric(k):
    a = symmetric(3, k).to(DEVICE)
    check(a, *jacobi_eigh(a))


@pytest.mark.slow
def test_largest_block():
    """128 x 128, the Rayleigh-Ritz size of erank "fast" above min(n, D) = 768: a rank-100 Gram."""
    a = gram(128, 100)[None].to(DEVICE)
    check(a, *jacobi_eigh(a))


def test_rank_deficient_grams_and_clusters():
    """64 x 64: rank-1 and rank-10 Grams (clusters of zeros), eigenvalues of multiplicity 3."""
    clusters = with_spectrum(torch.arange(64, dtype=F64).div(3, rounding_mode="floor") - 10.0)
    a = torch.stack([gram(64, 1), gram(64, 10), clusters]).to(DEVICE)
    check(a, *jacobi_eigh(a))


@pytest.mark.parametrize("k", [7, 8])
def test_repeated_and_tridiagonal(k):
    repeated = with_spectrum(torch.tensor([-2.0, -2.0, 1.0, 1.0, 1.0, 3.0, 3.0, 5.0][:k]))
    a = torch.stack([repeated, tridiagonal(k), tridiagonal(k)]).to(DEVICE)
    check(a, *jacobi_eigh(a))


def test_diagonal_is_exact():
    """No rotation happens: eigenvalues are the sorted diagonal, eigenvectors a permutation."""
    d = torch.randn(3, 64, dtype=F64)
    d[0, ::2] = d[0, 1::2]  # ties: the lower index comes first
    a = torch.diag_embed(d).to(DEVICE)
    w, v = jacobi_eigh(a)
    sorted_d, order = torch.sort(d, dim=-1, stable=True)
    assert torch.equal(w.cpu(), sorted_d)
    assert torch.equal(v.cpu(), torch.eye(64, dtype=F64)[:, order].permute(1, 0, 2))


@pytest.mark.parametrize("k", [1, 64])
def test_zero_matrix(k):
    w, v = jacobi_eigh(torch.zeros(3, k, k, dtype=F64, device=DEVICE))
    assert torch.equal(w.cpu(), torch.zeros(3, k, dtype=F64))
    assert torch.equal(v.cpu(), torch.eye(k, dtype=F64).expand(3, k, k))


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_extreme_scales(scale):
    a = (symmetric(3, 8) * scale).to(DEVICE)
    check(a, *jacobi_eigh(a))


def test_power_of_two_scaling_is_exact():
    a = symmetric(3, 7).to(DEVICE)
    w, v = jacobi_eigh(a)
    for e in (-600, 600):
        ws, vs = jacobi_eigh(a * 2.0**e)
        assert torch.equal(ws, w * 2.0**e) and torch.equal(vs, v)


def test_deterministic_and_batch_independent():
    a = symmetric(3, 8).to(DEVICE)
    w, v = jacobi_eigh(a)
    w1, v1 = jacobi_eigh(a[1:2])
    assert torch.equal(w[1:2], w1) and torch.equal(v[1:2], v1)
    w2, v2 = jacobi_eigh(a)
    assert torch.equal(w, w2) and torch.equal(v, v2)


def test_values_only_and_float32():
    a = symmetric(3, 8).to(DEVICE)
    w, v = jacobi_eigh(a)
    w_only, none = jacobi_eigh(a, vectors=False)
    assert none is None and torch.equal(w_only, w)
    w32, v32 = jacobi_eigh(a.float())
    check(a.float().double(), w32, v32)


def test_uses_the_symmetric_part():
    a = symmetric(3, 7).to(DEVICE)
    skew = torch.randn(3, 7, 7, dtype=F64, device=DEVICE)
    w, _ = jacobi_eigh(a + skew - skew.mT)
    assert ((w - torch.linalg.eigvalsh(a)).abs() <= TOL * w.abs().amax()).all()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy, under the interpreter
def test_non_finite_gives_nan():
    a = symmetric(3, 7).to(DEVICE)
    a[0, 1, 2] = float("nan")
    a[1, 0, 0] = float("inf")
    w, v = jacobi_eigh(a)
    assert w[:2].isnan().all() and v[:2].isnan().all()
    check(a[2:], w[2:], v[2:])


def test_empty_batch():
    w, v = jacobi_eigh(torch.zeros(0, 5, 5, dtype=F64, device=DEVICE))
    assert w.shape == (0, 5) and v.shape == (0, 5, 5)


@pytest.mark.parametrize(
    "a, match",
    [
        ([[1.0]], "must be a torch.Tensor"),
        (torch.zeros(4, 4, dtype=F64), r"shape \[B, k, k\].*\(4, 4\)"),
        (torch.zeros(2, 3, 4, dtype=F64), r"shape \[B, k, k\].*\(2, 3, 4\)"),
        (torch.zeros(2, 3, 3, dtype=torch.float16), "float64 or float32, got torch.float16"),
        (torch.zeros(2, 3, 3, dtype=torch.int64), "float64 or float32, got torch.int64"),
        (torch.zeros(2, 0, 0, dtype=F64), "1 <= k <= 128, got k = 0"),
        (torch.zeros(2, 129, 129, dtype=F64), "1 <= k <= 128, got k = 129"),
        (torch.zeros(2, 3, 3, dtype=F64, device="meta"), "CUDA device.*got meta"),
    ],
)
def test_bad_inputs(a, match):
    with pytest.raises(ValueError, match=match):
        jacobi_eigh(a)


def test_cpu_tensor_needs_the_interpreter(monkeypatch):
    monkeypatch.setattr(_device, "INTERPRETED", False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        jacobi_eigh(torch.eye(3, dtype=F64)[None])

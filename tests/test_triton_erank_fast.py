"""The Triton "fast" erank (ada_vtp_kernels.triton.erank_fast) against the reference and the C++ op.

Without CUDA the kernels run under the Triton interpreter (TRITON_INTERPRET=1, set by tests/conftest.py
before triton is imported), about 1000x slower than a GPU, so the shapes stay small.  The interpreted
Jacobi eigensolver costs seconds per matrix: under the interpreter the small eigenproblems
(Rayleigh-Ritz, tridiagonals) go through torch.linalg.eigh, except in the tests that take the
`jacobi` fixture, which run the whole device pipeline.

Agreement target: 1e-4 relative on every case, against both the reference (fp64) and the C++
kernel (fp32 products, fp64 reductions, like the Triton kernels).
"""

import functools

import pytest
import torch

pytest.importorskip("triton")

import ada_vtp_kernels as vtp  # noqa: E402
from ada_vtp_kernels import ops, reference  # noqa: E402
from ada_vtp_kernels.apps.spectra import synthetic_features  # noqa: E402
from ada_vtp_kernels.triton import _device  # noqa: E402
from ada_vtp_kernels.triton import erank_fast as ef  # noqa: E402

from conftest import lapack_eigh  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRETED = DEVICE == "cpu"
RTOL = 1e-4


@pytest.fixture
def jacobi():
    """Requested by the tests that run the Jacobi eigensolver kernel under the interpreter too."""


@pytest.fixture(autouse=True)
def _eigensolver(request, monkeypatch):
    if INTERPRETED and "jacobi" not in request.fixturenames:
        monkeypatch.setattr(ef, "jacobi_eigh", lapack_eigh)


def scaled_randn(batch: int, n: int, dim: int, seed: int) -> torch.Tensor:
    """Gaussian features with channel scales from 0.2 to 3 (a non-flat spectrum)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, n, dim, generator=g) * torch.linspace(0.2, 3.0, dim)


def ragged_batch():
    """N = 150 > D = 100: a = X (n = 150, and n = D = 100), a = Xᵀ (n = 99), exact (n = 40 <= 64)."""
    return scaled_randn(4, 150, 100, seed=1), torch.tensor([150, 100, 99, 40])


def spectra_batch():
    names = ["rank1", "rank10", "pow2", "flat"]
    return torch.stack([synthetic_features(80, 72, s, seed=i) for i, s in enumerate(names)]), None


def magnitudes_batch():
    """1e30 and 1e-30 scaled fp32 (rescaled by powers of two), and an all-zero image (erank 0)."""
    x = scaled_randn(3, 90, 70, seed=2)
    x[0] *= 1e30
    x[1] *= 1e-30
    x[2] = 0
    return x, None


CASES = {
    # [2, 123, 96] with the tokens contiguous in memory (stride 1 along N): any strides
    "N>D-strided": lambda: (scaled_randn(2, 96, 123, seed=3).transpose(1, 2), None),
    "N<D": lambda: (scaled_randn(2, 70, 200, seed=4), None),
    "N>D-577x65": lambda: (scaled_randn(1, 577, 65, seed=5), None),
    "all-exact": lambda: (scaled_randn(3, 50, 30, seed=6), torch.tensor([50, 20, 1])),
    "ragged": ragged_batch,
    "fp16": lambda: (scaled_randn(1, 90, 80, seed=7).half(), None),
    "bf16": lambda: (scaled_randn(1, 80, 90, seed=8).bfloat16(), None),
    "spectra": spectra_batch,
    "magnitudes": magnitudes_batch,
}


@functools.cache
def run_case(name: str):
    """(features, lengths, Triton erank on the CPU), computed once per case for both comparisons."""
    x, lengths = CASES[name]()
    got = ef.erank_fast(x.to(DEVICE), None if lengths is None else lengths.to(DEVICE))
    return x, lengths, got.cpu()


def assert_agrees(got: torch.Tensor, want: torch.Tensor, label: str) -> None:
    rel = ((got.double() - want.double()).abs() / want.double().abs().clamp_min(1e-30)).max()
    print(f"{label}: max relative difference {float(rel):.2e}")
    torch.testing.assert_close(got, want, rtol=RTOL, atol=0)


@pytest.mark.parametrize("name", list(CASES))
def test_matches_reference(name):
    x, lengths, got = run_case(name)
    assert_agrees(got, reference.erank_ref(x, lengths, "fast"), f"{name} vs reference")


@pytest.mark.requires_ext
@pytest.mark.parametrize("name", list(CASES))
def test_matches_cpp(name):
    x, lengths, got = run_case(name)
    assert_agrees(got, torch.ops.ada_vtp.erank(x.contiguous(), lengths, "fast"), f"{name} vs C++")


def test_zero_image_is_zero():
    assert run_case("magnitudes")[2][2] == 0


def test_jacobi_pipeline(jacobi):
    """The whole device pipeline, Jacobi eigensolver included: one estimated image, one exact."""
    x, lengths = scaled_randn(2, 90, 70, seed=9), torch.tensor([90, 50])
    got = ef.erank_fast(x.to(DEVICE), lengths.to(DEVICE)).cpu()
    assert_agrees(got, reference.erank_ref(x, lengths, "fast"), "jacobi vs reference")


def test_deterministic_batch_independent_and_padding_unread():
    """Another call, on one image of the ragged batch with NaN padding, gives the same bits."""
    x, lengths, batched = run_case("ragged")
    one = x[2:3].clone()
    one[0, int(lengths[2]):] = float("nan")
    again = ef.erank_fast(one.to(DEVICE), lengths[2:3].to(DEVICE)).cpu()
    assert torch.equal(again, batched[2:3])


def test_block_columns_follow_reference():
    m = torch.arange(1, 3000)
    want = torch.tensor([reference.fast_erank_block(int(v)) for v in m], dtype=torch.int32)
    assert torch.equal(ef._block_columns(m), want)


@pytest.mark.parametrize("stream,constant", [(0, ef.STREAM_BLOCK), (1, ef.STREAM_PROBES)])
def test_probes_follow_reference(stream, constant):
    m, cols = 70, 16
    out = torch.full((1, m, cols), float("nan"), device=DEVICE)
    lengths = torch.tensor([m], dtype=torch.int32, device=DEVICE)
    ef._erank_probes_kernel[(1, 1)](out, out.stride(0), lengths, torch.tensor([cols - 3], dtype=torch.int32,
                                    device=DEVICE), 100, m, STREAM=constant, C=cols, BLOCK_R=128)
    want = reference.probe_signs(m, cols, stream).float()
    want[:, cols - 3:] = 0
    assert torch.equal(out[0].cpu(), want)


def test_bad_inputs():
    x = torch.randn(2, 80, 70, device=DEVICE)
    with pytest.raises(ValueError, match=r"features must have shape \[B, N, D\], got 2 dims"):
        ef.erank_fast(x[0])
    with pytest.raises(ValueError, match="features must be float32, float16 or bfloat16, got torch.int32"):
        ef.erank_fast(x.to(torch.int32))
    with pytest.raises(ValueError, match=r"lengths\[1\] = 81 is outside \[1, N=80\]"):
        ef.erank_fast(x, torch.tensor([80, 81], device=DEVICE))
    with pytest.raises(ValueError, match="lengths must have an integer dtype"):
        ef.erank_fast(x, torch.tensor([80.0, 3.0], device=DEVICE))
    bad = x.clone()
    bad[1, 5, 7] = float("inf")
    with pytest.raises(ValueError, match=r"features\[1, 5, 7\] = inf is not finite"):
        ef.erank_fast(bad)
    with pytest.raises(ValueError, match="on a CUDA device"):
        ef.erank_fast(torch.randn(1, 4, 4, device="meta"))


def test_functional_backend():
    """erank(backend="triton") runs these kernels."""
    x, lengths, got = run_case("ragged")
    assert torch.equal(vtp.erank(x.to(DEVICE), lengths.to(DEVICE), backend="triton").cpu(), got)


def test_cpu_tensor_needs_the_interpreter(monkeypatch):
    monkeypatch.setattr(_device, "INTERPRETED", False)
    with pytest.raises(RuntimeError, match="set TRITON_INTERPRET=1 before importing"):
        ef.erank_fast(torch.randn(1, 4, 4))


@pytest.mark.slow
@pytest.mark.parametrize("n,dim,lengths", [(576, 1024, [576]), (800, 776, [800, 700])],
                         ids=["llava-576x1024", "block128-800x776"])
def test_large(n, dim, lengths):
    """LLaVA-1.5's 576 x 1024 (64-column block); min(n, D) = 776 > 768 (128 columns) batched with
    min(n, D) = 700 (64 columns in the 128-wide buffers).  The C++ comparison where the extension
    is loaded (one Triton run for both)."""
    x, lengths = scaled_randn(len(lengths), n, dim, seed=n), torch.tensor(lengths)
    got = ef.erank_fast(x.to(DEVICE), lengths.to(DEVICE)).cpu()
    assert_agrees(got, reference.erank_ref(x, lengths, "fast"), f"{n}x{dim} vs reference")
    if ops.extension_loaded():
        assert_agrees(got, torch.ops.ada_vtp.erank(x, lengths, "fast"), f"{n}x{dim} vs C++")

"""The Triton "fast" erank (ada_vtp_kernels.kernels.erank.triton_fast) itself: its pieces against
the reference's, the whole pipeline with the Jacobi eigensolver kernel, bits.  Its results against
the reference, shared with the C++ kernel, are tests/test_conformance.py (test_erank).

Without CUDA the kernels run under the Triton interpreter (TRITON_INTERPRET=1, set by
tests/conftest.py before triton is imported), about 1000x slower than a GPU, so the shapes stay
small.  The interpreted Jacobi eigensolver costs seconds per matrix: under the interpreter the
small eigenproblems (Rayleigh-Ritz, tridiagonals) go through torch.linalg.eigh, except in the
tests that take the `jacobi` fixture, which run the whole device pipeline.  The launcher
(`kernels.erank.triton.erank`) takes validated inputs (lengths int64 on the features' device) and
checks nothing but where it runs.
"""

import pytest
import torch

pytest.importorskip("triton")

import ada_vtp_kernels as vtp  # noqa: E402
from ada_vtp_kernels import reference, spec  # noqa: E402
from ada_vtp_kernels.kernels import triton_device as _device  # noqa: E402
from ada_vtp_kernels.kernels.erank import triton as erank_triton  # noqa: E402
from ada_vtp_kernels.kernels.erank import triton_fast as ef  # noqa: E402

from support.data import lapack_eigh  # noqa: E402

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


def fast_erank(x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """The launcher's [B] fp64 erank "fast", on the CPU."""
    lengths = torch.full((x.shape[0],), x.shape[1]) if lengths is None else lengths
    return erank_triton.erank(x.to(DEVICE), lengths.to(DEVICE, torch.int64), "fast").cpu()


def test_jacobi_pipeline(jacobi):
    """The whole device pipeline, Jacobi eigensolver included: one estimated image, one exact."""
    x, lengths = scaled_randn(2, 90, 70, seed=9), torch.tensor([90, 50])
    torch.testing.assert_close(fast_erank(x, lengths).float(), reference.erank_ref(x, lengths, "fast"),
                               rtol=RTOL, atol=0)


def test_deterministic_batch_independent_and_padding_unread():
    """Another call, on one image of a ragged batch with NaN padding, gives the same bits."""
    # N = 150 > D = 100: a = X (n = 150, and n = D = 100), a = Xᵀ (n = 99), exact (n = 40 <= 64)
    x, lengths = scaled_randn(4, 150, 100, seed=1), torch.tensor([150, 100, 99, 40])
    batched = fast_erank(x, lengths)
    one = x[2:3].clone()
    one[0, int(lengths[2]):] = float("nan")
    assert torch.equal(fast_erank(one, lengths[2:3]), batched[2:3])


def test_block_columns_follow_reference():
    m = torch.arange(1, 3000)
    want = torch.tensor([spec.fast_erank_block(int(v)) for v in m], dtype=torch.int32)
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


@pytest.mark.parametrize("method", spec.ERANK_METHODS)
def test_functional_backend_is_the_launcher(method):
    """erank(backend="triton") is the launcher's fp64 result rounded once to fp32."""
    x, lengths = scaled_randn(2, 90, 70, seed=10), torch.tensor([90, 61])
    full = erank_triton.erank(x.to(DEVICE), lengths.to(DEVICE), method)
    assert full.dtype == torch.float64 and full.shape == (2,)
    got = vtp.erank(x.to(DEVICE), lengths.to(DEVICE), method, backend="triton")
    assert torch.equal(got, full.to(torch.float32))


def test_cpu_tensor_needs_the_interpreter(monkeypatch):
    monkeypatch.setattr(_device, "INTERPRETED", False)
    with pytest.raises(RuntimeError, match="set TRITON_INTERPRET=1 before importing"):
        erank_triton.erank(torch.randn(1, 4, 4), torch.tensor([4]), "fast")

"""The Triton attention entropy (ada_vtp_kernels.triton.entropy) against the reference and the C++ op.

Without CUDA the kernel runs under the Triton interpreter (TRITON_INTERPRET=1, set by tests/conftest.py
before triton is imported).  All three compute in fp64 and round once to fp32; only the summation order
differs, so the fp32 results agree to an ulp (asserted: 1e-6 relative, the issue allows 1e-4).
"""

import math

import pytest
import torch

pytest.importorskip("triton")

import ada_vtp_kernels as vtp  # noqa: E402
from ada_vtp_kernels import reference  # noqa: E402
from ada_vtp_kernels.triton import _device  # noqa: E402
from ada_vtp_kernels.triton.entropy import attention_entropy  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
RTOL = 1e-6


def cases():
    g = torch.Generator().manual_seed(0)
    peaked = torch.rand(2, 577, generator=g) ** 8  # [CLS]-attention-like: a few large scores
    peaked[1, 100:] = 0  # trailing zeros inside the valid length
    ragged = torch.rand(3, 2880, generator=g)
    zeros = torch.zeros(2, 123)
    zeros[1, 5] = 1.0  # one non-zero score: entropy 0
    strided = torch.rand(123, 4, generator=g).t()  # [4, 123] with stride 1 along the batch
    scale = torch.tensor([[1e-300], [1e300]], dtype=torch.float64)
    extreme = torch.rand(2, 50, generator=g, dtype=torch.float64) * scale
    return {
        "peaked-577": (peaked, None),
        "ragged-2880": (ragged, torch.tensor([2880, 1025, 1])),
        "zeros-and-one-hot": (zeros, None),
        "strided": (strided, torch.tensor([123, 64, 7, 1])),
        "fp16": (torch.rand(2, 576, generator=g).half(), None),
        "bf16": (torch.rand(2, 576, generator=g).bfloat16(), None),
        "fp64-tiny-and-huge": (extreme, None),
    }


@pytest.mark.parametrize("name", list(cases()))
def test_matches_reference_and_cpp(name):
    scores, lengths = cases()[name]
    got = attention_entropy(scores.to(DEVICE), None if lengths is None else lengths.to(DEVICE)).cpu()
    assert got.dtype == torch.float32 and got.shape == (scores.shape[0],)
    torch.testing.assert_close(got, reference.attention_entropy_ref(scores, lengths), rtol=RTOL, atol=1e-7)
    if vtp.ops.extension_loaded():
        torch.testing.assert_close(got, torch.ops.ada_vtp.attention_entropy(scores, lengths), rtol=RTOL, atol=1e-7)


def test_edge_values():
    scores = torch.zeros(3, 40)
    scores[1, 3] = 2.0
    scores[2] = 1.0
    got = attention_entropy(scores.to(DEVICE)).cpu()
    assert got[0] == pytest.approx(math.log(40)) and got[1] == 0 and got[2] == pytest.approx(math.log(40))


def test_padding_is_not_read():
    scores = torch.rand(2, 300)
    lengths = torch.tensor([300, 120])
    padded = scores.clone()
    padded[1, 120:] = float("nan")
    a = attention_entropy(scores.to(DEVICE), lengths.to(DEVICE))
    b = attention_entropy(padded.to(DEVICE), lengths.to(DEVICE))
    assert torch.equal(a, b)


def test_functional_backend():
    scores = torch.rand(2, 64)
    assert torch.equal(vtp.attention_entropy(scores.to(DEVICE), backend="triton"), attention_entropy(scores.to(DEVICE)))


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"scores must be a non-empty tensor \[B, N\], got \(4,\)"):
        attention_entropy(torch.rand(4, device=DEVICE))
    with pytest.raises(ValueError, match=r"scores\[0, 2\] = -1 is negative"):
        attention_entropy(torch.tensor([[1.0, 2.0, -1.0]], device=DEVICE))
    with pytest.raises(ValueError, match=r"lengths\[0\] = 4 is outside \[1, N=3\]"):
        attention_entropy(torch.rand(1, 3, device=DEVICE), torch.tensor([4], device=DEVICE))


def test_cpu_tensor_needs_the_interpreter(monkeypatch):
    monkeypatch.setattr(_device, "INTERPRETED", False)
    with pytest.raises(RuntimeError, match="set TRITON_INTERPRET=1 before importing"):
        attention_entropy(torch.rand(1, 4))

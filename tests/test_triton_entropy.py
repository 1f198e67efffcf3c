"""The Triton attention-entropy launcher (ada_vtp_kernels.kernels.entropy.triton) itself; its
results against the reference, shared with the C++ op, are tests/test_conformance.py.

Without CUDA the kernel runs under the Triton interpreter (TRITON_INTERPRET=1, set by
tests/conftest.py before triton is imported).  The launcher takes validated inputs (lengths int64
on the scores' device) and checks nothing but where it runs.
"""

import pytest
import torch

pytest.importorskip("triton")

import ada_vtp_kernels as vtp  # noqa: E402
from ada_vtp_kernels.kernels import triton_device as _device  # noqa: E402
from ada_vtp_kernels.kernels.entropy.triton import attention_entropy  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def test_padding_is_not_read():
    scores = torch.rand(2, 300, device=DEVICE)
    lengths = torch.tensor([300, 120], device=DEVICE)
    padded = scores.clone()
    padded[1, 120:] = float("nan")
    assert torch.equal(attention_entropy(scores, lengths), attention_entropy(padded, lengths))


def test_functional_backend_is_the_launcher():
    """attention_entropy(backend="triton") is the launcher's fp64 result rounded once to fp32."""
    scores = torch.rand(2, 64, device=DEVICE)
    full = attention_entropy(scores, torch.tensor([64, 64], device=DEVICE))
    assert full.dtype == torch.float64 and full.shape == (2,)
    assert torch.equal(vtp.attention_entropy(scores, backend="triton"), full.to(torch.float32))


def test_cpu_tensor_needs_the_interpreter(monkeypatch):
    monkeypatch.setattr(_device, "INTERPRETED", False)
    with pytest.raises(RuntimeError, match="set TRITON_INTERPRET=1 before importing"):
        attention_entropy(torch.rand(1, 4), torch.tensor([4]))

"""The CUDA path of every op makes no host synchronisation, counted under the Triton interpreter.

On CUDA, a host synchronisation is a Python call that needs a tensor's value on the host: `.item()`,
`.tolist()`, `bool()` / `int()` / `float()` of a tensor, `.nonzero()`, a copy to the CPU, a
boolean-mask index (its size is data-dependent), `torch.equal`.  `SyncCounter` records every such
call made by our code (the Triton interpreter's own frames, which stand in for the GPU, are not
ours) while the ops run on the path the CUDA kernels run: `ops.prune_forward(ops.triton_stages(),
...)` with its device-side value checks.  The one known synchronisation is torch's fp64 `eigvalsh`
of `erank_method="exact"`, the default (cuSOLVER's error check), which the counter lists as such;
with `erank_method="fast"` no call synchronises.
"""

import sys
from pathlib import Path

import pytest
import torch
import triton
from torch.overrides import TorchFunctionMode

import ada_vtp_kernels as vtp
from ada_vtp_kernels import ops, spec, validation

from support.data import distinct_scores

TRITON_DIR = str(Path(triton.__file__).resolve().parent)

# the calls that wait for the device (CUDA's `torch.cuda.set_sync_debug_mode` needs a GPU)
SYNCING = {
    torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__int__,
    torch.Tensor.__float__, torch.Tensor.__index__, torch.Tensor.nonzero, torch.nonzero, torch.Tensor.cpu,
    torch.Tensor.numpy, torch.equal, torch.Tensor.__len__, torch.linalg.eigvalsh, torch.linalg.eigh,
}


class SyncCounter(TorchFunctionMode):
    """Records the host synchronisations made outside the Triton interpreter."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._syncs(func, args, kwargs) and not self._in_triton():
            self.calls.append(getattr(func, "__qualname__", str(func)))
        return func(*args, **kwargs)

    @staticmethod
    def _syncs(func, args, kwargs) -> bool:
        if func in SYNCING:
            return True
        if func is torch.Tensor.to:  # a copy to the host
            target = args[1] if len(args) > 1 else kwargs.get("device")
            return isinstance(target, (str, torch.device)) and torch.device(target).type == "cpu"
        if func is torch.Tensor.__getitem__:  # a boolean mask's result size is data-dependent
            index = args[1] if len(args) > 1 else None
            parts = index if isinstance(index, tuple) else (index,)
            return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in parts)
        return False

    @staticmethod
    def _in_triton() -> bool:
        frame = sys._getframe(2)
        while frame is not None:
            if frame.f_code.co_filename.startswith(TRITON_DIR):
                return True
            frame = frame.f_back
        return False


def inputs(method: str):
    g = torch.Generator().manual_seed(1)
    features = torch.randn(3, 40, 16, generator=g)
    scores = distinct_scores(3, 40, generator=g)
    lengths = torch.tensor([40, 23, 31])
    relevance = torch.rand(3, 40, generator=g) if method == "dpp" else None
    return features, scores, lengths, relevance


@pytest.mark.parametrize("method", list(spec.METHODS))
def test_prune_on_the_cuda_path_never_synchronises(method):
    features, scores, lengths, relevance = inputs(method)
    p = spec.PruneParams.of(method, compute_erank=True, erank_method="fast")
    stages = ops.triton_stages()
    with SyncCounter() as counter:
        indices, erank, entropy = ops.prune_forward(stages, features, scores, 8, lengths, relevance, p)
    assert counter.calls == [], f"host synchronisations: {counter.calls}"
    want = vtp.prune(features, scores, 8, method, lengths=lengths, relevance=relevance, compute_erank=True,
                     erank_method="fast")
    assert torch.equal(indices, want.indices)  # the counted run computed the real selection


@pytest.mark.parametrize("method", list(spec.METHODS))
def test_prune_with_the_default_erank_synchronises_only_in_eigvalsh(method):
    features, scores, lengths, relevance = inputs(method)
    p = spec.PruneParams.of(method)
    with SyncCounter() as counter:
        ops.prune_forward(ops.triton_stages(), features, scores, 8, lengths, relevance, p)
    assert counter.calls == (["linalg_eigvalsh"] if p.needs_erank() else [])


def test_erank_and_entropy_on_the_cuda_path_never_synchronise():
    features, scores, lengths, _ = inputs("agile")
    stages = ops.triton_stages()
    with SyncCounter() as counter:
        ops.erank_forward(stages, features, lengths, "fast")
        ops.entropy_forward(stages, scores, lengths)
    assert counter.calls == []


def test_the_exact_erank_synchronises_once_in_eigvalsh():
    features, scores, lengths, _ = inputs("agile")
    with SyncCounter() as counter:
        ops.erank_forward(ops.triton_stages(), features, lengths, "exact")
    assert counter.calls == ["linalg_eigvalsh"]


def test_the_counter_sees_the_host_checks():
    """The host value checks (the C++ kernels' path) do read values: the counter must see them,
    or its zeros above would prove nothing."""
    features, scores, lengths, _ = inputs("agile")
    with SyncCounter() as counter:
        validation.check_prune(features, scores, 8, lengths, None, spec.DEFAULTS, on_device=False)
    assert len(counter.calls) >= 3, counter.calls

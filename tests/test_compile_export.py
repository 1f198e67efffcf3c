"""The compiler stack: torch.library.opcheck on drawn inputs (dynamic shapes included),
torch.compile(fullgraph=True, dynamic=True) with inductor, and torch.export.export with dynamic
batch and token dimensions (of the functional API), each against eager bits."""

import math

import pytest
import torch
from hypothesis import given
from torch.export import Dim

import ada_vtp_kernels as vtp

from support.strategies import examples, prune_cases

pytestmark = pytest.mark.requires_ext

# every opcheck test, aot_dispatch_dynamic (the op under symbolic shapes) included
OPCHECK_UTILS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def finite_copy(t):
    """opcheck compares inputs before and after the call; NaN padding would never compare equal."""
    return None if t is None else t.nan_to_num(0.0, 0.0, 0.0)


@examples(0.25)
@given(case=prune_cases(max_n=64, max_dim=32))
def test_opcheck_prune_on_drawn_inputs(case):
    kwargs = dict(case.params, lengths=case.lengths, relevance=finite_copy(case.relevance))
    args = (finite_copy(case.features), finite_copy(case.scores), case.keep, case.method)
    torch.library.opcheck(torch.ops.ada_vtp.prune.default, args, kwargs, test_utils=OPCHECK_UTILS)


@examples(0.25)
@given(case=prune_cases(max_n=64, max_dim=32, methods=("attention",)))
def test_opcheck_statistics_on_drawn_inputs(case):
    method = case.params.get("erank_method", "exact")
    torch.library.opcheck(torch.ops.ada_vtp.erank.default, (finite_copy(case.features), case.lengths, method),
                          test_utils=OPCHECK_UTILS)
    torch.library.opcheck(torch.ops.ada_vtp.attention_entropy.default, (finite_copy(case.scores), case.lengths),
                          test_utils=OPCHECK_UTILS)


class Pruner(torch.nn.Module):
    """What a model's code does: prune (through the registered op, or the functional API), then
    gather the kept tokens and project them."""

    def __init__(self, keep: int, method: str, dim: int, api: str = "functional"):
        super().__init__()
        self.keep, self.method, self.api = keep, method, api
        self.proj = torch.nn.Linear(dim, 8)

    def forward(self, features, scores, lengths):
        if self.api == "op":
            indices, erank, entropy = torch.ops.ada_vtp.prune(features, scores, self.keep, self.method,
                                                              lengths=lengths, compute_erank=True)
        else:
            indices, erank, entropy = vtp.prune(features, scores, self.keep, self.method, lengths=lengths,
                                                compute_erank=True)
        return self.proj(vtp.gather(features, indices)), indices, erank, entropy


def inputs(batch: int, n: int, dim: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(max(n // 2, 8), n + 1, (batch,), generator=g)
    return torch.randn(batch, n, dim, generator=g), torch.rand(batch, n, generator=g), lengths


# batch 1 is left out: torch specialises sizes 0 and 1 (one more graph, by design)
SHAPES = [(2, 40), (3, 57), (2, 123), (4, 33)]


def assert_same_outputs(got, want, label):
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=label)


@pytest.mark.parametrize("method", ["agile", "dpp", "random"])
def test_torch_compile_inductor_dynamic(method):
    """One graph for every batch size and token count (no recompilation), the eager bits out."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    model = Pruner(8, method, 16, api="op").eval()
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend=counter)
    graphs = []
    with torch.no_grad():
        for batch, n in SHAPES:
            x, s, lengths = inputs(batch, n)
            assert_same_outputs(compiled(x, s, lengths), model(x, s, lengths), f"{method} {batch}x{n}")
            graphs.append(counter.frame_count)
    assert graphs == graphs[:1] * len(SHAPES), f"recompiled for a new shape: graphs after each call {graphs}"


def test_torch_compile_functional_api():
    torch._dynamo.reset()
    model = Pruner(8, "dpp", 16).eval()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        x, s, lengths = inputs(2, 40)
        assert_same_outputs(compiled(x, s, lengths), model(x, s, lengths), "dpp 2x40")


@pytest.mark.parametrize("method", ["agile", "divprune", "mix_adaptive"])
def test_torch_export_dynamic_batch_and_tokens(method):
    keep = 8
    model = Pruner(keep, method, 16).eval()
    batch, tokens = Dim("batch", min=1, max=64), Dim("tokens", min=keep, max=4096)
    dynamic = {"features": {0: batch, 1: tokens}, "scores": {0: batch, 1: tokens}, "lengths": {0: batch}}
    exported = torch.export.export(model, inputs(2, 40), dynamic_shapes=dynamic)
    assert any(node.target == torch.ops.ada_vtp.prune.default for node in exported.graph.nodes)
    runnable = exported.module()
    with torch.no_grad():
        for b, n in SHAPES:
            x, s, lengths = inputs(b, n, seed=b * n)
            assert_same_outputs(runnable(x, s, lengths), model(x, s, lengths), f"{method} {b}x{n}")
    x, s, lengths = inputs(2, 40)
    with pytest.raises(Exception, match=r"features.size\(\)\[1\] >= 8"):  # N < keep: outside the exported range
        runnable(x[:, :5], s[:, :5], lengths.clamp_max(5))


def test_export_rejects_keep_above_tokens_at_trace_time():
    """The fake kernel checks keep against N while tracing: a ValueError, not a [B, K] graph."""
    model = Pruner(50, "agile", 16).eval()
    with pytest.raises(ValueError, match=r"keep = 50 is outside \[1, N=40\]"):
        torch.export.export(model, inputs(2, 40))


def test_empty_outputs_are_poisoned():
    """The conftest fixture is active: uninitialised memory (Python's torch.empty and the C++
    kernels' at::empty alike) holds NaN or the largest integer, so an element a kernel forgets to
    write cannot pass for a result."""
    assert torch.isnan(torch.empty(5)).all()
    assert (torch.empty(3, dtype=torch.int64) == torch.iinfo(torch.int64).max).all()
    assert torch.isnan(torch.ops.aten.empty.memory_format([4], dtype=torch.float32)).all()
    assert math.isnan(float(torch.empty_like(torch.zeros(2))[0]))

"""bench_cpu.py's comparisons as a pytest-benchmark suite, on a reduced shape set.

    pytest benchmarks --benchmark-only [--benchmark-group-by=group]

For every method (and agile with complexity="entropy") at N = 576, D = 1024, K = 64 and
B in {1, 8}: the C++ op (``op``, skipped when the extension is not built), the peer's official
loop (``peer``, methods that have one, see peers.py), the matrix-product bound as one GEMM
(``bound_mm``) and as sequential row products (``bound_mv``, greedy row-by-row methods only),
and the pure-PyTorch reference (``reference``, B = 1 only: it runs image by image and takes up
to seconds).  Each benchmark group is one method at one shape, so pytest-benchmark's table
compares the providers directly.  Rounds are fixed and few, to keep the suite under a minute or
two on 2 cores; bench_cpu.py is the full sweep.
"""

import functools

import bench_cpu
import pytest

from ada_vtp_kernels import functional, ops

import _common
import peers

SHAPES = [(1, 576, 1024, 64), (8, 576, 1024, 64)]  # (B, N, D, K)
PROVIDERS = ("op", "peer", "bound_mm", "bound_mv", "reference")
ROUNDS = {"op": 5, "peer": 3, "bound_mm": 5, "bound_mv": 5, "reference": 1}


@functools.cache
def inputs(batch: int, n: int, dim: int):
    """features, scores, relevance, unit rows and erank of one shape (computed once per session)."""
    features, scores, relevance = _common.make_inputs(batch, n, dim)
    eranks = functional.erank(features, backend="cpu" if ops.extension_loaded() else "reference")
    return features, scores, relevance, bench_cpu.normalised(features), eranks


def workload(case: bench_cpu.Case, provider: str, batch: int, n: int, dim: int, keep: int):
    """The call that `provider` times for `case`, or a reason to skip."""
    features, scores, relevance, xn, eranks = inputs(batch, n, dim)
    if provider == "op":
        if not ops.extension_loaded():
            return "the C++ extension is not built"
        return lambda: case.prune(features, scores, relevance, keep, "cpu")
    if provider == "peer":
        if case.label not in peers.PEER_OF_METHOD:
            return f"{case.label} has no published selection loop"
        _, peer = peers.PEER_OF_METHOD[case.label]
        return lambda: peer(features, scores, relevance, keep)
    if provider == "reference":
        if batch != 1:
            return "the reference is timed at B=1 only"
        return lambda: case.prune(features, scores, relevance, keep, "reference")
    plan = bench_cpu.work_plan(case, keep, eranks)
    if plan is None:
        return f"{case.label} does no matrix products"
    if provider == "bound_mv" and bench_cpu.plan_name(plan) == "gram":
        return "a Gram has no sequential form"
    return lambda: bench_cpu.product_work(xn, plan, keep, sequential=provider == "bound_mv")


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-N{}-D{}-K{}".format(*s))
@pytest.mark.parametrize("case", bench_cpu.CASES, ids=lambda c: c.label)
def test_prune_latency(benchmark, case, shape, provider):
    batch, n, dim, keep = shape
    fn = workload(case, provider, batch, n, dim, keep)
    if isinstance(fn, str):
        pytest.skip(fn)
    benchmark.group = f"{case.label}-B{batch}-D{dim}-K{keep}"
    benchmark.extra_info.update(provider=provider, method=case.label, B=batch, N=n, D=dim, K=keep)
    benchmark.pedantic(fn, rounds=ROUNDS[provider], warmup_rounds=1, iterations=1)


@pytest.mark.parametrize("provider", ("op", "bound", "reference"))
@pytest.mark.parametrize("batch", (1, 8))
def test_erank_latency(benchmark, batch, provider):
    n, dim = 576, 1024
    features = inputs(batch, n, dim)[0]
    if provider == "op":
        if not ops.extension_loaded():
            pytest.skip("the C++ extension is not built")
        fn = functools.partial(functional.erank, features, backend="cpu")
    elif provider == "bound":
        x64 = features.double()
        fn = functools.partial(bench_cpu.erank_work, x64)
    else:
        if batch != 1:
            pytest.skip("the reference is timed at B=1 only")
        fn = functools.partial(functional.erank, features, backend="reference")
    benchmark.group = f"erank-B{batch}-D{dim}"
    benchmark.extra_info.update(provider=provider, B=batch, N=n, D=dim)
    benchmark.pedantic(fn, rounds=ROUNDS.get(provider, 5), warmup_rounds=1, iterations=1)

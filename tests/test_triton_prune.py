"""What is specific to the Triton prune (ada_vtp_kernels.kernels.prune.triton); its results against
the reference, shared with the C++ op, are tests/test_conformance.py.

Without CUDA the kernels run under the Triton interpreter (TRITON_INTERPRET=1, set by
tests/conftest.py).  Here:

- VisPruner, which re-sorts near-equal similarities every round, equals
  `reference.select_vispruner` run on the kernel's own distances;
- the whole pipeline with the Jacobi eigensolver kernel (elsewhere LAPACK stands in for it under
  the interpreter, `lapack_eigh`), the tiles compiled for the GPU, batch independence;
- the value checks run as device-side assertions (tests/test_host_syncs.py: no host
  synchronisation), the ops' CUDA kernels take the dispatcher's arguments;
- on a GPU: the registered CUDA op, CUDA graphs and torch.compile.
"""

import math

import pytest
import torch

pytest.importorskip("triton")

import ada_vtp_kernels as vtp  # noqa: E402
from ada_vtp_kernels import ops, reference, spec  # noqa: E402
from ada_vtp_kernels.kernels.erank import triton_fast as ef  # noqa: E402
from ada_vtp_kernels.kernels.prune import triton as tp  # noqa: E402

from support import near_ties as nt  # noqa: E402
from support.data import distinct_scores, exact_features, lapack_eigh, ragged_lengths  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRETED = DEVICE == "cpu"
RTOL = 1e-4
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@pytest.fixture(autouse=True)
def _eigensolver(request, monkeypatch):
    if INTERPRETED and "jacobi" not in request.fixturenames:
        monkeypatch.setattr(ef, "jacobi_eigh", lapack_eigh)


@pytest.fixture
def jacobi():
    """Requested by the tests that run the Jacobi eigensolver kernel under the interpreter too."""


# (B, N, D, K, shortest length): ragged batches; N < D and N > D; K = N
SHAPES = {
    "ragged-123x64": (3, 123, 64, 17, 40),
    "wide-50x200": (2, 50, 200, 9, 9),
    "k-equals-n": (1, 33, 16, 33, 33),
    "llava-577x1024": (3, 577, 1024, 64, 300),
}


def make_case(shape: str, dtype, gaussian: bool, seed: int = 0):
    """(features with NaN padding, scores with NaN padding, lengths, keep)."""
    batch, n, dim, keep, shortest = SHAPES[shape]
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, n, dim, generator=g) if gaussian else exact_features(batch, n, dim, generator=g)
    scores = distinct_scores(batch, n, generator=g)
    lengths = ragged_lengths(batch, n, shortest, generator=g)
    for b in range(batch):
        features[b, int(lengths[b]):] = math.nan  # padding is never read
        scores[b, int(lengths[b]):] = math.nan
    return features.to(dtype), scores, lengths, keep


def run_triton(features, scores, keep, method, lengths, relevance=None, **params):
    res = vtp.prune(features.to(DEVICE), scores.to(DEVICE), keep, method, lengths=lengths.to(DEVICE),
                    relevance=None if relevance is None else relevance.to(DEVICE), backend="triton", **params)
    return spec.PruneResult(*(None if t is None else t.cpu() for t in res))


def assert_same_or_near_ties(got, want, label: str, features, scores, keep: int, method: str, lengths,
                             **params) -> None:
    """The kernels' fp32 sums and the reference's fp64 dots round the cosines differently: the
    indices are identical except where the near-tie checker proves that the rounding decides."""
    for tie in nt.assert_same_or_near_ties(features, scores, keep, method, got, want,
                                           roundings=(nt.FP32_SUMS, nt.ROUNDED_ONCE), names=("triton", "reference"),
                                           lengths=lengths, label=label, **params):
        print(f"\n{label}: {tie}")


def vispruner_shapes():
    """Every small shape in every dtype; the LLaVA size in fp32, and in fp16/bf16 with
    --interpreter-full."""
    for shape in SHAPES:
        for dtype in DTYPES:
            marks = [pytest.mark.interpreter_full] if shape.startswith("llava") and dtype != torch.float32 else []
            yield pytest.param(shape, dtype, marks=marks, id=f"{shape}-{str(dtype)[6:]}")


@pytest.mark.parametrize("shape,dtype", list(vispruner_shapes()))
def test_gaussian_vispruner_follows_its_distances(shape, dtype):
    features, scores, lengths, keep = make_case(shape, dtype, gaussian=True, seed=2)
    got = run_triton(features, scores, keep, "vispruner", lengths)
    x, len32 = features.to(DEVICE), lengths.to(DEVICE, torch.int32)
    dist = tp._distances(x, len32, tp._rescale_factors(x, len32)).cpu()
    k_imp = math.floor(keep * spec.DEFAULTS.important_ratio)
    for b in range(features.shape[0]):
        n = int(lengths[b])
        order = reference.score_order(scores[b, :n].float()).tolist()
        own = reference.select_vispruner(dist[b, :n, :n], order, keep, k_imp)
        assert got.indices[b].tolist() == sorted(own), f"image {b}"
    want = vtp.prune(features, scores, keep, "vispruner", lengths=lengths, backend="reference")
    assert_same_or_near_ties(got, want, f"vispruner {shape} {dtype}", features, scores, keep, "vispruner", lengths)


def test_fast_erank_with_jacobi(jacobi):
    """The whole device pipeline, Jacobi included: agile on the estimated erank (m = 100 > 64)."""
    g = torch.Generator().manual_seed(4)
    features, scores = torch.randn(2, 150, 100, generator=g), distinct_scores(2, 150, generator=g)
    lengths = torch.tensor([150, 90])
    got = run_triton(features, scores, 20, "agile", lengths, tau_max=0.5)
    want = vtp.prune(features, scores, 20, "agile", lengths=lengths, backend="reference", tau_max=0.5)
    assert_same_or_near_ties(got, want, "agile with the fast erank", features, scores, 20, "agile", lengths,
                             tau_max=0.5)
    torch.testing.assert_close(got.erank, want.erank, rtol=RTOL, atol=0)


@pytest.mark.parametrize("method", ["divprune", "vispruner", "agile", "dpp"])
def test_gpu_tile_sizes(method, monkeypatch):
    """The tile sizes compiled for the GPU, whose loops take several tiles at N=200 (VisPruner's
    A holds 96 tokens: two similarity tiles and two rank-count chunks of 64)."""
    monkeypatch.setattr(tp, "TILES", tp.GPU_TILES)
    g = torch.Generator().manual_seed(10)
    features, scores = exact_features(2, 200, 48, generator=g), distinct_scores(2, 200, generator=g)
    lengths = torch.tensor([200, 150])
    got = run_triton(features, scores, 16, method, lengths)
    want = vtp.prune(features, scores, 16, method, lengths=lengths, backend="reference")
    assert torch.equal(got.indices, want.indices), method


def test_batch_independent():
    """An image alone gives the same result as inside the ragged batch."""
    features, scores, lengths, keep = make_case("ragged-123x64", torch.float32, gaussian=True, seed=7)
    batched = run_triton(features, scores, keep, "agile", lengths)
    alone = run_triton(features[2:3], scores[2:3], keep, "agile", lengths[2:3])
    for a, b in zip(alone, batched):
        assert torch.equal(a, b[2:3])


def test_values_checked_by_device_asserts():
    """The Triton backend checks values with device-side assertions (no host synchronisation);
    on CPU tensors under the interpreter they raise at once."""
    features, scores, lengths, keep = make_case("ragged-123x64", torch.float32, gaussian=True)
    padded_nan = features.clone()  # NaN after each length: not checked
    features, scores = features.nan_to_num(), scores.nan_to_num()
    run_triton(padded_nan, scores, keep, "agile", lengths)
    bad_scores = scores.clone()
    bad_scores[0, 5] = -1.0
    bad_features = features.clone()
    bad_features[2, 10, 0] = math.nan
    for (x, s, k, ls), message in [
        ((features, scores, keep, torch.tensor([123, 0, 40])), r"lengths outside \[1, N=123\]"),
        ((features, scores, 41, lengths), "keep = 41 exceeds a row's length"),
        ((features, bad_scores, keep, lengths), "scores must be finite and >= 0"),
        ((bad_features, scores, keep, lengths), "features must be finite"),
    ]:
        with pytest.raises(RuntimeError, match=message):
            run_triton(x, s, k, "agile", ls)


def test_cuda_kernels_registered():
    """The ops' CUDA kernels exist, and take the arguments in the order the dispatcher passes them
    (every schema argument, positionally)."""
    for op in ("prune", "erank", "attention_entropy"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"ada_vtp::{op}", "CUDA"), op
    features, scores, lengths, keep = make_case("ragged-123x64", torch.float32, gaussian=False, seed=9)
    p = spec.PruneParams.of("mix", attention_ratio=0.25, erank_method="exact", compute_erank=True)
    schema_args = (features, scores, keep, p.method, lengths, None, *p.as_dict().values())
    got = ops._prune_kernel(ops.triton_stages)(*schema_args)
    want = vtp.prune(features, scores, keep, p.method, lengths=lengths, backend="reference", **p.as_dict())
    assert torch.equal(got[0], want.indices)
    torch.testing.assert_close(got[1], want.erank, rtol=RTOL, atol=0)
    torch.testing.assert_close(ops._erank_kernel(ops.triton_stages)(features, lengths, "exact"),
                               reference.erank_ref(features, lengths, "exact"), rtol=RTOL, atol=0)
    torch.testing.assert_close(ops._entropy_kernel(ops.triton_stages)(scores, lengths),
                               reference.attention_entropy_ref(scores, lengths), rtol=RTOL, atol=0)


# --------------------------------------------------------------------------------------------
# GPU tier: the registered CUDA kernels


cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda_only
@pytest.mark.requires_ext
@pytest.mark.parametrize("method", list(spec.METHODS))
def test_cuda_op_matches_cpu(method):
    features, scores, lengths, keep = make_case("llava-577x1024", torch.bfloat16, gaussian=False)
    got = torch.ops.ada_vtp.prune(features.cuda(), scores.cuda(), keep, method, lengths.cuda())
    want = torch.ops.ada_vtp.prune(features, scores, keep, method, lengths)
    assert torch.equal(got[0].cpu(), want[0]), method
    for g, w in zip(got[1:], want[1:]):
        torch.testing.assert_close(g.cpu(), w, rtol=RTOL, atol=0)


@cuda_only
def test_cuda_graph_capture_and_compile():
    features, scores, lengths, keep = make_case("llava-577x1024", torch.bfloat16, gaussian=False)
    features, scores, lengths = features.cuda(), scores.cuda(), lengths.cuda()
    # the fast erank: the default exact one waits for cuSOLVER's error check, which capture forbids
    eager = torch.ops.ada_vtp.prune(features, scores, keep, "agile", lengths, erank_method="fast")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = torch.ops.ada_vtp.prune(features, scores, keep, "agile", lengths, erank_method="fast")
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(captured, eager):
        assert torch.equal(a, b)
    compiled = torch.compile(lambda f, s: torch.ops.ada_vtp.prune(f, s, keep, "agile", lengths, erank_method="fast"),
                             fullgraph=True)
    for a, b in zip(compiled(features, scores), eager):
        assert torch.equal(a, b)

"""The Triton prune (ada_vtp_kernels.triton.prune) against the C++ op and the reference.

Without CUDA the kernels run under the Triton interpreter (TRITON_INTERPRET=1, set by
tests/conftest.py).  The statistics agree within 1e-4 relative, and the indices:

- on `exact_features` (cosines exact in fp32, duplicate and zero rows), for every method, dtype
  and shape, equal the C++ op's exactly: both backends see bit-identical distances;
- on Gaussian features equal the C++ op's except where the near-tie checker (tests/near_ties.py)
  proves that a cosine's rounding decides: the kernels sum in fp32, the C++ op rounds fp64 dot
  products once;
- VisPruner, which re-sorts near-equal similarities every round, must moreover equal
  `reference.select_vispruner` run on the kernel's own distances.

The LLaVA-sized case (B=3, N=577, D=1024, ragged) runs for every method in fp32 in CI; fp16,
bf16 and the fast erank at that size are marked ``interpreter_full`` (pytest --interpreter-full).
The erank's small eigenproblems go through LAPACK under the interpreter (`lapack_eigh`), except
in `test_fast_erank_with_jacobi`.
"""

from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

import ada_vtp_kernels as vtp  # noqa: E402
from ada_vtp_kernels import ops, reference  # noqa: E402
from ada_vtp_kernels.triton import erank_fast as ef  # noqa: E402
from ada_vtp_kernels.triton import prune as tp  # noqa: E402

import near_ties as nt  # noqa: E402
from conftest import distinct_scores, exact_features, lapack_eigh, ragged_lengths  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRETED = DEVICE == "cpu"
RTOL = 1e-4
METHODS = ("attention", "divprune", "dpp", "vispruner", "mix", "mix_adaptive", "agile")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)

pytestmark = pytest.mark.requires_ext


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
        features[b, int(lengths[b]):] = float("nan")  # padding is never read
        scores[b, int(lengths[b]):] = float("nan")
    return features.to(dtype), scores, lengths, keep


def method_params(method: str, shape: str) -> dict:
    """The fast erank under the interpreter costs about 30 s per LLaVA-sized batch: that size takes
    the exact erank, except in the interpreter_full test of the fast one."""
    return {"erank_method": "exact"} if shape.startswith("llava") and INTERPRETED else {}


def run_both(features, scores, keep, method, lengths, **params):
    got = tp.prune(features.to(DEVICE), scores.to(DEVICE), keep, method, lengths.to(DEVICE), **params)
    want = torch.ops.ada_vtp.prune(features, scores, keep, method, lengths, **params)
    return [t.cpu() for t in got], want


def assert_same(got, want, label: str = "") -> None:
    """Identical indices (exact features: both backends see the same cosines), statistics close."""
    assert torch.equal(got[0], want[0]), f"{label}: indices differ in rows " \
        f"{[b for b in range(want[0].shape[0]) if not torch.equal(got[0][b], want[0][b])]}"
    assert_same_statistics(got, want)


def assert_same_or_near_ties(got, want, label: str, features, scores, keep: int, method: str, lengths,
                             relevance=None, **params) -> None:
    """Gaussian features: the kernels' fp32 sums and the C++ op's fp64 dots round the cosines
    differently, so the indices are identical except where the near-tie checker proves that the
    rounding decides."""
    for tie in nt.assert_same_or_near_ties(features.float(), scores, keep, method, got, want,
                                           roundings=(nt.FP32_SUMS, nt.ROUNDED_ONCE), names=("triton", "cpu"),
                                           lengths=lengths, relevance=relevance, label=label, **params):
        print(f"\n{label}: {tie}")
    assert_same_statistics(got, want)


def assert_same_statistics(got, want) -> None:
    assert got[1].shape == want[1].shape
    torch.testing.assert_close(got[1], want[1], rtol=RTOL, atol=0)
    torch.testing.assert_close(got[2], want[2], rtol=RTOL, atol=0)


def full_matrix():
    """(shape, dtype) pairs: every small shape in every dtype; the LLaVA size in fp32 in CI and in
    fp16/bf16 with --interpreter-full."""
    for shape in SHAPES:
        for dtype in DTYPES:
            large = shape.startswith("llava")
            marks = [pytest.mark.interpreter_full] if large and dtype != torch.float32 else []
            yield pytest.param(shape, dtype, marks=marks, id=f"{shape}-{str(dtype)[6:]}")


FULL_MATRIX = list(full_matrix())


@pytest.mark.parametrize("shape,dtype", FULL_MATRIX)
@pytest.mark.parametrize("method", METHODS)
def test_exact_cosines_identical(method, shape, dtype):
    features, scores, lengths, keep = make_case(shape, dtype, gaussian=False)
    got, want = run_both(features, scores, keep, method, lengths, compute_erank=True,
                         **method_params(method, shape))
    assert_same(got, want, f"{method} {shape} {dtype}")


@pytest.mark.parametrize("shape,dtype", FULL_MATRIX)
@pytest.mark.parametrize("method", [m for m in METHODS if m != "vispruner"])
def test_gaussian_identical(method, shape, dtype):
    features, scores, lengths, keep = make_case(shape, dtype, gaussian=True, seed=1)
    params = method_params(method, shape)
    got, want = run_both(features, scores, keep, method, lengths, **params)
    assert_same_or_near_ties(got, want, f"{method} {shape} {dtype}", features, scores, keep, method, lengths,
                             **params)


@pytest.mark.parametrize("shape,dtype", FULL_MATRIX)
def test_gaussian_vispruner_follows_its_distances(shape, dtype):
    features, scores, lengths, keep = make_case(shape, dtype, gaussian=True, seed=2)
    got = tp.prune(features.to(DEVICE), scores.to(DEVICE), keep, "vispruner", lengths.to(DEVICE))[0].cpu()
    len32 = lengths.to(DEVICE, torch.int32)
    dist = tp._distances(features.to(DEVICE), len32, tp._rescale_factors(features.to(DEVICE), len32)).cpu()
    want = torch.ops.ada_vtp.prune(features, scores, keep, "vispruner", lengths)
    for b in range(features.shape[0]):
        n = int(lengths[b])
        own = reference.select_vispruner(dist[b, :n, :n], scores[b, :n].float(), keep, 0.5)
        assert got[b].tolist() == sorted(own)
    # the statistics are the other tests' business: only the indices are compared here
    assert_same_or_near_ties((got, *want[1:]), want, f"vispruner {shape} {dtype}", features, scores, keep,
                             "vispruner", lengths)


@pytest.mark.interpreter_full
def test_llava_fast_erank_agile():
    features, scores, lengths, keep = make_case("llava-577x1024", torch.bfloat16, gaussian=True, seed=3)
    got, want = run_both(features, scores, keep, "agile", lengths, tau_max=0.5)
    assert_same_or_near_ties(got, want, "agile, fast erank, 577x1024 bf16", features, scores, keep, "agile",
                             lengths, tau_max=0.5)


def test_fast_erank_with_jacobi(jacobi):
    """The whole device pipeline, Jacobi included: agile on the estimated erank (m = 100 > 64)."""
    g = torch.Generator().manual_seed(4)
    features, scores = torch.randn(2, 150, 100, generator=g), distinct_scores(2, 150, generator=g)
    lengths = torch.tensor([150, 90])
    got, want = run_both(features, scores, 20, "agile", lengths, tau_max=0.5)
    assert_same_or_near_ties(got, want, "agile with the fast erank", features, scores, 20, "agile", lengths,
                             tau_max=0.5)


@pytest.mark.parametrize("method", ["divprune", "vispruner", "agile", "dpp"])
def test_gpu_tile_sizes(method, monkeypatch):
    """The tile sizes compiled for the GPU, whose loops take several tiles at N=200 (VisPruner's
    A holds 96 tokens: two similarity tiles and two rank-count chunks of 64)."""
    monkeypatch.setattr(tp, "TILES", tp.GPU_TILES)
    g = torch.Generator().manual_seed(10)
    features = exact_features(2, 200, 48, generator=g)
    got, want = run_both(features, distinct_scores(2, 200, generator=g), 16, method, torch.tensor([200, 150]))
    assert_same(got, want, method)


def tied_scores(batch: int, n: int) -> torch.Tensor:
    """Scores from 4 levels: most tokens tie, so the lowest-index rule decides."""
    return torch.randint(0, 4, (batch, n)).float() / 4


@pytest.mark.parametrize("method", METHODS)
def test_tied_scores_and_duplicate_tokens(method):
    features = exact_features(2, 90, 32, duplicate_rows=0.3)
    got, want = run_both(features, tied_scores(2, 90), 25, method, torch.tensor([90, 61]))
    assert_same(got, want, method)


@pytest.mark.parametrize(
    "method,params",
    [
        ("agile", {"tau_max": 0.0}),
        ("agile", {"tau_max": 2.0, "tau_scale": 1.0}),
        ("agile", {"complexity": "entropy", "tau_max": 0.6}),
        ("mix", {"attention_ratio": 0.0}),
        ("mix", {"attention_ratio": 1.0}),
        ("mix_adaptive", {"gain": 4.0}),
        ("vispruner", {"important_ratio": 0.0}),
        ("vispruner", {"important_ratio": 1.0}),
        ("dpp", {}),
    ],
    ids=lambda v: v if isinstance(v, str) else ",".join(f"{k}={x}" for k, x in v.items()),
)
def test_parameters(method, params):
    features, scores, lengths, keep = make_case("ragged-123x64", torch.float32, gaussian=True, seed=5)
    got, want = run_both(features, scores, keep, method, lengths, **params)
    assert_same_or_near_ties(got, want, f"{method} {params}", features, scores, keep, method, lengths, **params)


def test_dpp_relevance_and_spent_rank():
    """K > D: the DPP kernel's rank runs out and the rest is taken by relevance (with ties)."""
    g = torch.Generator().manual_seed(6)
    features = torch.randn(2, 40, 4, generator=g)
    relevance = torch.randint(1, 5, (2, 40), generator=g).float()
    relevance[1, 30:] = float("nan")
    scores = torch.rand(2, 40, generator=g)
    lengths = torch.tensor([40, 30])
    got = tp.prune(features.to(DEVICE), scores.to(DEVICE), 20, "dpp", lengths.to(DEVICE), relevance.to(DEVICE))
    want = torch.ops.ada_vtp.prune(features, scores, 20, "dpp", lengths, relevance)
    assert_same_or_near_ties([t.cpu() for t in got], want, "dpp with relevance", features, scores, 20, "dpp",
                             lengths, relevance)


def test_strided_inputs_and_magnitudes():
    """Transposed features and sliced scores; 1e30 and 1e-30 images (rescaled by powers of two)."""
    base = exact_features(3, 70, 48).transpose(1, 2).contiguous().transpose(1, 2)
    base[0] *= 1e30
    base[1] *= 1e-30
    scores = distinct_scores(3, 140)[:, ::2]
    for method in ("divprune", "agile", "dpp"):
        got, want = run_both(base, scores, 12, method, torch.tensor([70, 70, 50]))
        assert_same(got, want, method)


def test_batch_independent():
    """An image alone gives the same result as inside the ragged batch."""
    features, scores, lengths, keep = make_case("ragged-123x64", torch.float32, gaussian=True, seed=7)
    batched = tp.prune(features, scores, keep, "agile", lengths)
    alone = tp.prune(features[2:3], scores[2:3], keep, "agile", lengths[2:3])
    assert torch.equal(batched[0][2:3], alone[0])
    assert torch.equal(batched[1][2:3], alone[1])


def test_functional_backend_and_exact_erank():
    features, scores, lengths, keep = make_case("ragged-123x64", torch.float32, gaussian=True, seed=8)
    res = vtp.prune(features, scores, keep, "mix_adaptive", lengths=lengths, backend="triton")
    want = vtp.prune(features, scores, keep, "mix_adaptive", lengths=lengths, backend="cpu")
    assert_same_or_near_ties(res, want, "mix_adaptive", features, scores, keep, "mix_adaptive", lengths)
    assert vtp.prune(features, scores, keep, "attention", lengths=lengths, backend="triton").erank is None
    for method in ("exact", "fast"):
        torch.testing.assert_close(vtp.erank(features, lengths, method, backend="triton"),
                                   vtp.erank(features, lengths, method, backend="cpu"), rtol=RTOL, atol=0)


def test_bad_inputs_match_cpp_messages():
    features, scores, lengths, keep = make_case("ragged-123x64", torch.float32, gaussian=True)
    cases = [
        (dict(keep=41), r"keep = 41 is outside \[1, the shortest row's length 40\]"),
        (dict(method="nope"), "unknown method 'nope'"),
        (dict(lengths=torch.tensor([123, 124, 40])), r"lengths\[1\] = 124 is outside \[1, N=123\]"),
        (dict(relevance=torch.ones(3, 123)), "relevance is only used by method='dpp'"),
        (dict(tau_max=-1.0), "tau_max = -1; expected a finite number >= 0"),
    ]
    base = dict(features=features, scores=scores, keep=keep, method="agile", lengths=lengths)
    for change, message in cases:
        args = {**base, **change}
        with pytest.raises(ValueError, match=message):
            tp.prune(**args)
        with pytest.raises(ValueError, match=message):
            torch.ops.ada_vtp.prune(**args)
    bad = features.clone()
    bad[1, 3, 5] = float("inf")
    with pytest.raises(ValueError, match=r"features\[1, 3, 5\] = inf is not finite"):
        tp.prune(bad, scores, keep, "agile", lengths)


def test_assert_on_device():
    """The checks used while a CUDA graph is captured: device asserts (on CPU they raise at once)."""
    features, scores, lengths, keep = make_case("ragged-123x64", torch.float32, gaussian=True)
    features, scores = features.nan_to_num(), scores.nan_to_num()
    tp.assert_on_device(features, scores, keep, lengths, None)
    bad_scores = scores.clone()
    bad_scores[0, 5] = -1.0
    bad_features = features.clone()
    bad_features[2, 10, 0] = float("nan")
    for args, message in [
        ((features, scores, keep, torch.tensor([123, 0, 40]), None), "lengths outside"),
        ((features, scores, 41, lengths, None), "keep = 41 exceeds"),
        ((features, bad_scores, keep, lengths, None), "scores must be finite and >= 0"),
        ((bad_features, scores, keep, lengths, None), "features must be finite"),
    ]:
        with pytest.raises(RuntimeError, match=message):
            tp.assert_on_device(*args)
    padded_nan = features.clone()
    padded_nan[2, 60:] = float("nan")  # after the length: not checked
    tp.assert_on_device(padded_nan, scores, keep, lengths, None)


def test_no_host_synchronisation(monkeypatch):
    """After the checks, no line of the package reads a tensor's value on the host (.item(), bool(),
    int(), float(), .tolist(), indexing by a tensor): on CUDA each would synchronise and break a
    CUDA graph's capture.  Calls from triton's interpreter itself are its business."""
    import traceback

    package = str(Path(tp.__file__).resolve().parents[1])
    reads = []

    def recorder(name):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            caller = traceback.extract_stack(limit=2)[0]
            if caller.filename.startswith(package):
                reads.append(f"{name} at {caller.filename}:{caller.lineno}")
            return original(self, *args, **kwargs)

        return read

    for name in ("item", "__bool__", "__int__", "__float__", "tolist", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, recorder(name))
    features, scores, lengths, keep = make_case("ragged-123x64", torch.float32, gaussian=True, seed=11)
    for method in METHODS:
        p = reference.default_params(method=method, compute_erank=True)
        tp._prune_fwd(features, scores, keep, method, lengths, None, p)
    assert not reads, reads


def test_cuda_kernels_registered():
    """The ops' CUDA kernels exist, and the launcher they call takes the arguments in the order the
    dispatcher passes them (every schema argument, positionally)."""
    for op in ("prune", "erank", "attention_entropy"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"ada_vtp::{op}", "CUDA"), op
    features, scores, lengths, keep = make_case("ragged-123x64", torch.float32, gaussian=True, seed=9)
    schema_args = (features, scores, keep, "mix", lengths, None, 0.5, 0.25, 0.5, 90.0, 5.75, 0.2, 0.01, "erank",
                   "exact", True)
    got = ops._triton_launcher("prune", "prune")(*schema_args)
    assert_same(got, torch.ops.ada_vtp.prune(*schema_args), "schema-positional call")
    torch.testing.assert_close(ops._triton_launcher("erank", "prune")(features, lengths, "exact"),
                               torch.ops.ada_vtp.erank(features, lengths, "exact"), rtol=RTOL, atol=0)
    torch.testing.assert_close(ops._triton_launcher("attention_entropy", "entropy")(scores, lengths),
                               torch.ops.ada_vtp.attention_entropy(scores, lengths), rtol=RTOL, atol=0)


# --------------------------------------------------------------------------------------------
# GPU tier: the registered CUDA kernels


cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda_only
@pytest.mark.parametrize("method", METHODS)
def test_cuda_op_matches_cpu(method):
    features, scores, lengths, keep = make_case("llava-577x1024", torch.bfloat16, gaussian=False)
    got = torch.ops.ada_vtp.prune(features.cuda(), scores.cuda(), keep, method, lengths.cuda())
    want = torch.ops.ada_vtp.prune(features, scores, keep, method, lengths)
    assert_same([t.cpu() for t in got], want, method)


@cuda_only
def test_cuda_graph_capture_and_compile():
    features, scores, lengths, keep = make_case("llava-577x1024", torch.bfloat16, gaussian=False)
    features, scores, lengths = features.cuda(), scores.cuda(), lengths.cuda()
    eager = torch.ops.ada_vtp.prune(features, scores, keep, "agile", lengths)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = torch.ops.ada_vtp.prune(features, scores, keep, "agile", lengths)
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(captured, eager):
        assert torch.equal(a, b)
    compiled = torch.compile(lambda f, s: torch.ops.ada_vtp.prune(f, s, keep, "agile", lengths), fullgraph=True)
    for a, b in zip(compiled(features, scores), eager):
        assert torch.equal(a, b)

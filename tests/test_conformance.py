"""Conformance: every backend's prune, erank and attention_entropy against the reference.

The backends (the ``backend`` parameter of every test):

- ``cpu``: the registered op on CPU tensors (the C++ kernels), ``vtp.prune(..., backend="cpu")``;
- ``triton``: the Triton kernels, ``vtp.prune(..., backend="triton")``: CUDA tensors on a GPU, CPU
  tensors under the Triton interpreter without one (tests/conftest.py sets TRITON_INTERPRET=1);

each against ``backend="reference"`` (kernels/*/reference.py), which defines the results.  The
contract (docs/DESIGN.md, reproducibility):

- features whose cosines are exact in fp32 (`support.data.exact_features`): identical indices;
- Gaussian and degenerate features: identical indices except where `support.near_ties` proves that
  a cosine's rounding decides, with each backend's rounding (`PROFILES`): the C++ op rounds fp64
  dot products once, like the reference; the Triton kernels sum in fp32;
- erank and entropy within each backend's tolerance; the erank None on both sides where the
  method computes none.

The cases are pairwise (`support.pairwise`): every pair of values of two axes (shape, K, dtype,
method, parameter setting) appears in some case, not every combination.  Under the interpreter
(about 1000x slower than a GPU) Triton gets the shapes it runs in about a second, and the erank
"exact" where the "fast" one would run its Lanczos loops (min(n, D) > 64): `test_erank` checks
the fast erank on shapes sized for it.  The LLaVA-sized case (B=3, N=577, D=1024, ragged) runs
every method in fp32 on both backends; fp16, bf16 and the fast erank at that size are marked
``interpreter_full`` for Triton without a GPU.  What is specific to one backend (thread counts,
the C++ op's rows-vs-Gram paths, Triton's tiles and the interpreter) is in test_prune_cpu.py and
test_triton_*.py.
"""

import functools
import importlib.util
import itertools
import math

import pytest
import torch

import ada_vtp_kernels as vtp
from ada_vtp_kernels import spec
from ada_vtp_kernels.apps.spectra import synthetic_features

from support import near_ties as nt
from support import pairwise
from support.data import distinct_scores, exact_features, lapack_eigh, ragged_lengths

GPU = torch.cuda.is_available()
INTERPRETED = not GPU
TRITON_DEVICE = "cuda" if GPU else "cpu"

BACKEND_MARKS = {
    "cpu": [pytest.mark.requires_ext],
    "triton": [pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")],
}


class Profile:
    """What a backend is held to: how it rounds a cosine (its side in the near-tie checker) and
    its statistics' (rtol, atol) against the reference."""

    def __init__(self, rounding: nt.Rounding, erank: tuple[float, float], entropy: tuple[float, float]):
        self.rounding, self.erank, self.entropy = rounding, erank, entropy


PROFILES = {
    # the "fast" erank: fp32 products against the reference's fp64 (measured 3e-5 at 576 x 4096)
    "cpu": Profile(nt.ROUNDED_ONCE, erank=(1e-4, 1e-6), entropy=(1e-5, 1e-6)),
    # the entropy: fp64 sums in another order, one rounding to fp32
    "triton": Profile(nt.FP32_SUMS, erank=(1e-4, 0.0), entropy=(1e-6, 1e-7)),
}
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DTYPE_ID = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}

# every method's parameter settings; "relevance": True passes random relevance (dpp)
SETTINGS = {
    "attention": {"default": {}, "alt": {"compute_erank": True}},
    "divprune": {"default": {}, "alt": {"compute_erank": True, "erank_method": "exact"}},
    "dpp": {"default": {}, "alt": {"relevance": True}},
    "vispruner": {"default": {}, "alt": {"important_ratio": 0.75}, "low": {"important_ratio": 0.0},
                  "high": {"important_ratio": 1.0}},
    "mix": {"default": {}, "alt": {"attention_ratio": 0.3}, "low": {"attention_ratio": 0.0},
            "high": {"attention_ratio": 1.0}},
    "mix_adaptive": {"default": {}, "alt": {"erank_method": "exact"}, "low": {"gain": -2.0, "erank_ref": 20.0},
                     "high": {"gain": 4.0}},
    "agile": {"default": {}, "alt": {"complexity": "entropy"}, "low": {"tau_max": 0.0},
              "high": {"tau_max": 0.6, "erank_ref": 40.0}, "max": {"tau_max": 2.0, "tau_scale": 1.0}},
    "random": {"default": {}, "alt": {"seed": 7, "compute_erank": True}},
}
METHOD_SETTINGS = [(method, setting) for method in SETTINGS for setting in SETTINGS[method]]


@pytest.fixture(autouse=True)
def _lapack_for_jacobi(request, monkeypatch):
    """Under the interpreter the Jacobi eigensolver kernel costs seconds per matrix: the fast
    erank's small eigenproblems go through LAPACK (test_triton_eigh.py checks the kernel,
    test_triton_prune.py and test_triton_erank_fast.py the pipeline with it)."""
    callspec = getattr(request.node, "callspec", None)
    if INTERPRETED and callspec is not None and callspec.params.get("backend") == "triton":
        from ada_vtp_kernels.kernels.erank import triton_fast

        monkeypatch.setattr(triton_fast, "jacobi_eigh", lapack_eigh)


# --------------------------------------------------------------------------------------------
# running a backend and the reference


def split(params: dict) -> tuple[bool, dict]:
    """(whether the case passes relevance, the prune parameters)."""
    params = dict(params)
    return params.pop("relevance", False), params


def interpreter_params(backend: str, n: int, dim: int, method: str, params: dict, full: bool = False) -> dict:
    """`params`, with the erank "exact" for Triton under the interpreter where the "fast" one would
    run its Lanczos loops (min(n, D) > 64), unless the case is `full` (interpreter_full)."""
    costly = backend == "triton" and INTERPRETED and not full and min(n, dim) > spec.FAST_ERANK_BLOCK
    if costly and "erank_method" not in params and spec.PruneParams.of(method, **split(params)[1]).needs_erank():
        return {**params, "erank_method": "exact"}
    return params


def run(backend: str, features, scores, keep: int, method: str, params: dict, lengths=None, relevance=None):
    """vtp.prune on `backend`, its outputs on the CPU."""
    use_relevance, params = split(params)
    device = TRITON_DEVICE if backend == "triton" else "cpu"

    def on(t):
        return None if t is None else t.to(device)

    res = vtp.prune(on(features), on(scores), keep, method, lengths=on(lengths),
                    relevance=on(relevance) if use_relevance else None, backend=backend, **params)
    return spec.PruneResult(*(None if t is None else t.cpu() for t in res))


def assert_statistics(backend: str, got, want, label: str) -> None:
    assert (got.erank is None) == (want.erank is None), f"{label}: erank computed by one side only"
    profile = PROFILES[backend]
    for name, (rtol, atol) in (("erank", profile.erank), ("entropy", profile.entropy)):
        g, w = getattr(got, name), getattr(want, name)
        if w is None:
            continue
        assert g.dtype == torch.float32 and g.shape == w.shape, f"{label}: {name} {g.dtype} {tuple(g.shape)}"
        torch.testing.assert_close(g, w, rtol=rtol, atol=atol, msg=lambda m, n=name: f"{label}: {n}: {m}")


def assert_identical(backend: str, got, want, label: str) -> None:
    """Exact cosines: every backend sees the same distances, so the indices are identical."""
    assert got.indices.dtype == torch.int64 and got.indices.shape == want.indices.shape, label
    if not torch.equal(got.indices, want.indices):
        rows = [b for b in range(want.indices.shape[0]) if not torch.equal(got.indices[b], want.indices[b])]
        b = rows[0]
        only_got = sorted(set(got.indices[b].tolist()) - set(want.indices[b].tolist()))
        only_want = sorted(set(want.indices[b].tolist()) - set(got.indices[b].tolist()))
        pytest.fail(f"{label}: indices differ in rows {rows}; row {b}: {backend} only {only_got}, "
                    f"reference only {only_want}")
    assert_statistics(backend, got, want, label)


def assert_same_or_near_ties(backend: str, got, want, label: str, features, scores, keep: int, method: str,
                             params: dict, lengths=None, relevance=None) -> None:
    """Identical indices except where a proven near-tie decides, statistics close."""
    use_relevance, params = split(params)
    assert got.indices.dtype == torch.int64 and got.indices.shape == want.indices.shape, label
    for tie in nt.assert_same_or_near_ties(features, scores, keep, method, got, want,
                                           roundings=(PROFILES[backend].rounding, nt.ROUNDED_ONCE),
                                           names=(backend, "reference"), lengths=lengths,
                                           relevance=relevance if use_relevance else None, label=label, **params):
        print(f"\n{label}: {tie}")
    assert_statistics(backend, got, want, label)


def backend_params(rows_of, id_of, full_of=lambda backend, row: False) -> list:
    """pytest params (backend, *row) for every backend's rows; a `full` row of Triton without a
    GPU is marked interpreter_full."""
    out = []
    for backend in PROFILES:
        for row in rows_of(backend):
            marks = list(BACKEND_MARKS[backend])
            if backend == "triton" and full_of(backend, row):
                marks.append(pytest.mark.interpreter_full)
            out.append(pytest.param(backend, *row, marks=marks, id=f"{backend}-{id_of(row)}"))
    return out


# --------------------------------------------------------------------------------------------
# shapes


class Case:
    """B images of N tokens and D channels; `keeps`: the K it runs with ("one", "some", "all" of
    the shortest row); ragged when `shortest` < N (the last row that long, NaN padding after every
    length); scores with `tie_levels` distinct values (0: all distinct); `interpreter`: whether
    Triton runs it under the interpreter."""

    def __init__(self, name, batch, n, dim, keeps, *, shortest=None, tie_levels=0, duplicate_rows=0.05, seed=0,
                 interpreter=True):
        self.name, self.batch, self.n, self.dim, self.keeps = name, batch, n, dim, keeps
        self.shortest, self.tie_levels, self.duplicate_rows = shortest or n, tie_levels, duplicate_rows
        self.seed, self.interpreter = seed, interpreter

    def __repr__(self):
        return self.name


@functools.cache
def make_inputs(case: Case, kind: str):
    """(features fp32, scores, relevance, lengths or None) of `kind` "exact" or "gaussian"."""
    g = torch.Generator().manual_seed((1000 if kind == "exact" else 2000) + case.seed)
    b, n, d = case.batch, case.n, case.dim
    if kind == "exact":
        x = exact_features(b, n, d, duplicate_rows=case.duplicate_rows, generator=g)
    else:
        x = torch.randn(b, n, d, generator=g)
    s = distinct_scores(b, n, generator=g)
    if case.tie_levels:
        s = torch.floor(s * case.tie_levels) / case.tie_levels  # ties everywhere, zeros included
    rel = torch.rand(b, n, generator=g) + 0.01
    lengths = None
    if case.shortest < n:
        lengths = ragged_lengths(b, n, case.shortest, generator=g)
        for i, length in enumerate(lengths.tolist()):  # padding is never read
            x[i, length:], s[i, length:], rel[i, length:] = math.nan, math.nan, math.nan
    return x, s, rel, lengths


EXACT_CASES = [
    Case("b1-n576-d64", 1, 576, 64, {"one": 1, "some": 64, "all": 576}),
    Case("b5-n576-d1024-ragged", 5, 576, 1024, {"one": 1, "some": 100, "all": 301}, shortest=301, seed=1,
         interpreter=False),
    Case("b2-n576-d4096", 2, 576, 4096, {"one": 1, "some": 64}, seed=2, interpreter=False),
    Case("b5-n123-d100-ragged-tied", 5, 123, 100, {"one": 1, "some": 17, "all": 40}, shortest=40, tie_levels=6,
         seed=3),
    Case("b2-n577-d256", 2, 577, 256, {"one": 1, "some": 77, "all": 577}, seed=4, interpreter=False),
    Case("b3-n7-d3", 3, 7, 3, {"one": 1, "some": 3, "all": 7}, seed=5),
    Case("b2-n1-d5", 2, 1, 5, {"one": 1}, seed=6),
    Case("b3-n123-d64-ragged", 3, 123, 64, {"one": 1, "some": 17, "all": 40}, shortest=40, seed=7),
    Case("b2-n50-d200-ragged", 2, 50, 200, {"one": 1, "some": 4, "all": 9}, shortest=9, seed=8),
    Case("b1-n33-d16", 1, 33, 16, {"one": 1, "all": 33}, seed=9),
    # most tokens duplicate another and most scores tie: the lowest-index rules decide
    Case("b2-n90-d32-ragged-duplicates-tied", 2, 90, 32, {"some": 25}, shortest=61, tie_levels=4,
         duplicate_rows=0.3, seed=10),
]
GAUSSIAN_CASES = [
    Case("b2-n576-d64", 2, 576, 64, {"some": 64}, seed=11),
    Case("b2-n576-d1024-ragged", 2, 576, 1024, {"some": 64}, shortest=400, seed=12, interpreter=False),
    Case("b3-n123-d100", 3, 123, 100, {"some": 20}, seed=13),
    Case("b3-n123-d64-ragged", 3, 123, 64, {"one": 1, "some": 17, "all": 40}, shortest=40, seed=14),
    Case("b2-n50-d200-ragged", 2, 50, 200, {"some": 9}, shortest=9, seed=15),
    Case("b1-n33-d16", 1, 33, 16, {"all": 33}, seed=16),
]
LLAVA = Case("llava-b3-n577-d1024-ragged", 3, 577, 1024, {"some": 64}, shortest=300, seed=17)


def candidates(cases: list[Case], backend: str) -> list[tuple]:
    """Every (case, K kind, dtype, method, setting) of the cases `backend` runs."""
    usable = [c for c in cases if backend == "cpu" or not INTERPRETED or c.interpreter]
    return [(c, k, d, m, s) for c in usable for k in c.keeps for d in DTYPES for m, s in METHOD_SETTINGS]


def plan(cases: list[Case], backend: str) -> list[tuple]:
    """The pairwise rows of `candidates`."""
    return pairwise.cover(candidates(cases, backend))


def row_id(row) -> str:
    case, keep_kind, dtype, method, setting = row
    return f"{case.name}-k{case.keeps[keep_kind]}-{DTYPE_ID[dtype]}-{method}-{setting}"


@functools.cache
def reference(case: Case, kind: str, keep: int, dtype, method: str, params: tuple):
    """The reference's result, once for every backend."""
    x, s, rel, lengths = make_inputs(case, kind)
    return run("reference", x.to(dtype), s, keep, method, dict(params), lengths, rel)


def check_case(backend, case, kind, keep, dtype, method, params, full=False):
    params = interpreter_params(backend, case.n, case.dim, method, params, full)
    x, s, rel, lengths = make_inputs(case, kind)
    want = reference(case, kind, keep, dtype, method, tuple(sorted(params.items())))
    got = run(backend, x.to(dtype), s, keep, method, params, lengths, rel)
    label = f"{backend} {case.name} {kind} K={keep} {DTYPE_ID[dtype]} {method} {params}"
    if kind == "exact":
        assert_identical(backend, got, want, label)
    else:
        assert_same_or_near_ties(backend, got, want, label, x.to(dtype), s, keep, method, params, lengths, rel)


@pytest.mark.parametrize("backend, case, keep_kind, dtype, method, setting",
                         backend_params(lambda b: plan(EXACT_CASES, b), row_id))
def test_exact_features_identical(backend, case, keep_kind, dtype, method, setting):
    check_case(backend, case, "exact", case.keeps[keep_kind], dtype, method, SETTINGS[method][setting])


@pytest.mark.parametrize("backend, case, keep_kind, dtype, method, setting",
                         backend_params(lambda b: plan(GAUSSIAN_CASES, b), row_id))
def test_gaussian_features_identical_or_near_ties(backend, case, keep_kind, dtype, method, setting):
    check_case(backend, case, "gaussian", case.keeps[keep_kind], dtype, method, SETTINGS[method][setting])


def llava_rows(backend: str) -> list[tuple]:
    """Every method in fp32 on exact and Gaussian features; fp16 and bf16 pairwise."""
    rows = [(torch.float32, kind, m) for kind in ("exact", "gaussian") for m in SETTINGS]
    return rows + pairwise.product((torch.float16, torch.bfloat16), ("exact", "gaussian"), tuple(SETTINGS))


@pytest.mark.parametrize(
    "backend, dtype, kind, method",
    backend_params(llava_rows, lambda r: f"{DTYPE_ID[r[0]]}-{r[1]}-{r[2]}",
                   full_of=lambda backend, row: row[0] != torch.float32),
)
def test_llava_sized(backend, dtype, kind, method):
    """B=3, N=577, D=1024, ragged, K=64: fp16 and bf16 run the fast erank on Triton too."""
    check_case(backend, LLAVA, kind, 64, dtype, method, {}, full=dtype != torch.float32)


def test_plans_cover_every_pair():
    """Every method of spec.METHODS has settings, and each plan holds every pair of values that
    its candidates combine (counted here, not by the generator)."""
    assert set(SETTINGS) == set(spec.METHODS), "a method of spec.METHODS has no conformance settings"
    for backend in PROFILES:
        for cases in (EXACT_CASES, GAUSSIAN_CASES):
            every, rows = candidates(cases, backend), plan(cases, backend)
            assert set(rows) <= set(every) and len(rows) < len(every) / 10
            for i, j in itertools.combinations(range(5), 2):
                assert {(r[i], r[j]) for r in rows} == {(r[i], r[j]) for r in every}, (backend, i, j)


# --------------------------------------------------------------------------------------------
# inputs: padding, integer lengths, score dtypes, strides and magnitudes

N123 = EXACT_CASES[3]
TINY = EXACT_CASES[5]
PADDING_METHODS = [("attention", "alt"), ("divprune", "default"), ("dpp", "default"), ("dpp", "alt"),
                   ("vispruner", "default"), ("mix", "default"), ("mix_adaptive", "default"), ("agile", "default"),
                   ("agile", "alt"), ("random", "default")]


@pytest.mark.parametrize("backend, method, setting", backend_params(lambda b: PADDING_METHODS, "-".join))
def test_padding_content_is_ignored(backend, method, setting):
    """NaN features, negative or infinite scores and NaN relevance after each length change
    nothing: the result equals the reference's and the backend's own with zero padding."""
    x, s, rel, lengths = make_inputs(N123, "exact")
    params = interpreter_params(backend, N123.n, N123.dim, method, SETTINGS[method][setting])
    valid = torch.arange(N123.n)[None, :] < lengths[:, None]
    zeros = run(backend, torch.where(valid[..., None], x, 0.0), torch.where(valid, s, 0.0), 30, method, params,
                lengths, torch.where(valid, rel, 0.0))
    fill = torch.tensor([-1.0 if b % 2 else math.inf for b in range(N123.batch)])[:, None]
    s2 = torch.where(valid, s, fill)
    got = run(backend, x, s2, 30, method, params, lengths, rel)
    assert_identical(backend, got, run("reference", x, s2, 30, method, params, lengths, rel), f"{method} {setting}")
    assert torch.equal(zeros.indices, got.indices)
    assert (got.indices < lengths[:, None]).all()


@pytest.mark.parametrize("backend, lengths_dtype",
                         backend_params(lambda b: [(torch.int32,), (torch.int64,), (torch.int16,)],
                                        lambda r: str(r[0]).removeprefix("torch.")))
def test_lengths_integer_dtypes(backend, lengths_dtype):
    x, s, rel, lengths = make_inputs(N123, "exact")
    params = interpreter_params(backend, N123.n, N123.dim, "agile", {})
    lengths = lengths.to(lengths_dtype)
    assert_identical(backend, run(backend, x, s, 17, "agile", params, lengths),
                     run("reference", x, s, 17, "agile", params, lengths), str(lengths_dtype))


@pytest.mark.parametrize("backend, dtype, method",
                         backend_params(lambda b: [(d, m) for d in (torch.float16, torch.bfloat16, torch.float64)
                                                   for m in ("attention", "agile")],
                                        lambda r: f"{DTYPE_ID[r[0]]}-{r[1]}"))
def test_scores_other_float_dtypes(backend, dtype, method):
    x, s, _, _ = make_inputs(TINY, "exact")
    s = s.to(dtype)
    assert_identical(backend, run(backend, x, s, 3, method, {}), run("reference", x, s, 3, method, {}),
                     f"{method} scores {dtype}")


FLOAT64_SCORES = {
    "fp64-huge": [1e300, 2e300, 1.0, 0.5, 0.25, 3.0, 0.0],  # beyond fp32's range
    "fp64-tiny": [1e-50, 3e-50, 2e-50, 0.0, 5e-50, 4e-50, 1e-50],  # below fp32's smallest subnormal
    "fp64-near-tie": [1.0, 1.0 + 1e-12, 0.5, 0.25, 0.1, 0.2, 0.3],  # equal once rounded to fp32
}


@pytest.mark.parametrize("backend, values, method",
                         backend_params(lambda b: [(v, m) for v in FLOAT64_SCORES
                                                   for m in ("attention", "agile", "vispruner")], "-".join))
def test_float64_scores_outside_float32(backend, values, method):
    """float64 scores are ordered as fp32 values, and their entropy computed in float64."""
    x, _, _, _ = make_inputs(TINY, "exact")
    s = torch.tensor([FLOAT64_SCORES[values]] * 3, dtype=torch.float64)
    got = run(backend, x, s, 3, method, {})
    assert_identical(backend, got, run("reference", x, s, 3, method, {}), f"{method} {values}")
    device = TRITON_DEVICE if backend == "triton" else "cpu"
    torch.testing.assert_close(got.entropy, vtp.attention_entropy(s.to(device), backend=backend).cpu(),
                               rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend, method", backend_params(lambda b: [("divprune",), ("agile",), ("dpp",)],
                                                           lambda r: r[0]))
def test_strided_inputs_and_magnitudes(backend, method):
    """Transposed features and sliced scores; 1e30 and 1e-30 images (rescaled by powers of two)."""
    g = torch.Generator().manual_seed(20)
    x = exact_features(3, 70, 48, generator=g).transpose(1, 2).contiguous().transpose(1, 2)
    x[0] *= 1e30
    x[1] *= 1e-30
    s = distinct_scores(3, 140, generator=g)[:, ::2]
    lengths = torch.tensor([70, 70, 50])
    assert not x.is_contiguous() and not s.is_contiguous()
    assert_identical(backend, run(backend, x, s, 12, method, {}, lengths),
                     run("reference", x, s, 12, method, {}, lengths), method)


@pytest.mark.parametrize("backend", backend_params(lambda b: [()], lambda r: "dpp"))
def test_dpp_relevance_and_spent_rank(backend):
    """K > D: the DPP kernel's rank runs out and the rest is taken by relevance (with ties)."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 40, 4, generator=g)
    rel = torch.randint(1, 5, (2, 40), generator=g).float()
    rel[1, 30:] = math.nan
    s = torch.rand(2, 40, generator=g)
    lengths = torch.tensor([40, 30])
    params = {"relevance": True}
    assert_same_or_near_ties(backend, run(backend, x, s, 20, "dpp", params, lengths, rel),
                             run("reference", x, s, 20, "dpp", params, lengths, rel), "dpp with relevance",
                             x, s, 20, "dpp", params, lengths, rel)


# --------------------------------------------------------------------------------------------
# degenerate images and a seeded sweep of small random configurations


def degenerate_images(n=24, dim=8):
    """[5, n, dim]: all zero; all rows identical; one non-zero row; rows 1e-7 times others (below
    the 1e-6 norm clamp once rescaled); opposite pairs (cos = -1, d = 2)."""
    g = torch.Generator().manual_seed(7)
    x = torch.zeros(5, n, dim)
    x[1] = torch.randn(dim, generator=g)
    x[2, 5] = torch.randn(dim, generator=g)
    base = torch.randn(n, dim, generator=g)
    x[3] = base
    x[3, ::3] = base[::3] * 1e-7
    half = torch.randn(n // 2, dim, generator=g)
    x[4] = torch.cat([half, -half])
    return x


DEGENERATE_ROWS = pairwise.cover((k, m, s) for k in (1, 5, 24) for m, s in METHOD_SETTINGS)


@pytest.mark.parametrize("backend, keep, method, setting",
                         backend_params(lambda b: DEGENERATE_ROWS, lambda r: f"k{r[0]}-{r[1]}-{r[2]}"))
def test_degenerate_images(backend, keep, method, setting):
    x = degenerate_images()
    g = torch.Generator().manual_seed(8)
    s = distinct_scores(5, 24, generator=g)
    s[1] = 0.0  # all-zero scores on one image too
    rel = torch.rand(5, 24, generator=g)
    rel[2] = 0.0
    params = SETTINGS[method][setting]
    assert_same_or_near_ties(backend, run(backend, x, s, keep, method, params, relevance=rel),
                             run("reference", x, s, keep, method, params, relevance=rel), f"{method} {setting} k{keep}",
                             x, s, keep, method, params, relevance=rel)


def sweep_case(seed: int) -> dict:
    g = torch.Generator().manual_seed(5000 + seed)

    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=g))]

    batch, n, dim = pick([1, 2, 3]), pick([1, 2, 5, 16, 33, 64, 130]), pick([1, 2, 3, 8, 17, 64, 100])
    (method, setting), dtype = pick(METHOD_SETTINGS), pick(DTYPES)
    ragged = batch > 1 and n > 2 and bool(torch.randint(2, (1,), generator=g))
    lengths = torch.randint(max(1, n // 3), n + 1, (batch,), generator=g) if ragged else None
    shortest = n if lengths is None else int(lengths.min())
    keep = pick(sorted({1, max(1, shortest // 4), max(1, shortest // 2), shortest}))
    tied = bool(torch.randint(3, (1,), generator=g) == 0)
    kind = "gaussian" if seed % 4 == 3 else "exact"  # a quarter on plain randn features
    return dict(seed=seed, batch=batch, n=n, dim=dim, method=method, setting=setting, dtype=dtype, lengths=lengths,
                keep=keep, tied=tied, kind=kind, g=g)


SWEEP = [sweep_case(seed) for seed in range(400)]
# the interpreter runs every 5th (a fifth of the cost, every axis still drawn)
TRITON_SWEEP = SWEEP if GPU else SWEEP[::5]


def sweep_id(row) -> str:
    c = row[0]
    ragged = "-ragged" if c["lengths"] is not None else ""
    tied = "-tied" if c["tied"] else ""
    return (f"s{c['seed']}-{c['kind']}-{c['method']}-{c['setting']}-b{c['batch']}-n{c['n']}-d{c['dim']}-k{c['keep']}-"
            f"{DTYPE_ID[c['dtype']]}{ragged}{tied}")


@pytest.mark.parametrize("backend, c", backend_params(
    lambda b: [(c,) for c in (SWEEP if b == "cpu" else TRITON_SWEEP)], sweep_id))
def test_random_sweep(backend, c):
    g = torch.Generator().manual_seed(6000 + c["seed"])
    if c["kind"] == "exact":
        x = exact_features(c["batch"], c["n"], c["dim"], generator=g).to(c["dtype"])
    else:
        x = torch.randn(c["batch"], c["n"], c["dim"], generator=g).to(c["dtype"])
    s = distinct_scores(c["batch"], c["n"], generator=g)
    if c["tied"]:
        s = torch.floor(s * 3) / 3
    rel = torch.rand(c["batch"], c["n"], generator=g)
    method, keep, lengths = c["method"], c["keep"], c["lengths"]
    params = interpreter_params(backend, c["n"], c["dim"], method, SETTINGS[method][c["setting"]])
    got = run(backend, x, s, keep, method, params, lengths, rel)
    want = run("reference", x, s, keep, method, params, lengths, rel)
    label = sweep_id((c,))
    if c["kind"] == "exact":
        assert_identical(backend, got, want, label)
    else:
        assert_same_or_near_ties(backend, got, want, label, x, s, keep, method, params, lengths, rel)


# --------------------------------------------------------------------------------------------
# erank


def scaled_randn(batch: int, n: int, dim: int, seed: int) -> torch.Tensor:
    """Gaussian features with channel scales from 0.2 to 3 (a non-flat spectrum)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, n, dim, generator=g) * torch.linspace(0.2, 3.0, dim)


def _magnitudes():
    """1e30 and 1e-30 scaled fp32 (rescaled by powers of two), and an all-zero image (erank 0)."""
    x = scaled_randn(3, 90, 70, seed=2)
    x[0] *= 1e30
    x[1] *= 1e-30
    x[2] = 0
    return x, None


def _exact_features(index: int, dtype):
    def build():
        x, _, _, lengths = make_inputs(EXACT_CASES[index], "exact")
        return x.to(dtype), lengths

    return build


class ErankCase:
    """features [B, N, D] and lengths or None from `build`, run with each of `methods`; `rtol`
    against the reference (None: the backend's); `interpreter`: whether Triton runs it under the
    interpreter; `slow`: LLaVA-sized."""

    def __init__(self, name, build, *, methods=spec.ERANK_METHODS, rtol=None, interpreter=True, slow=False):
        self.name, self.build, self.methods, self.rtol = name, build, methods, rtol
        self.interpreter, self.slow = interpreter, slow

    def __repr__(self):
        return self.name


ERANK_CASES = [
    # [2, 123, 96] with the tokens contiguous in memory (stride 1 along N): any strides
    ErankCase("N>D-strided", lambda: (scaled_randn(2, 96, 123, seed=3).transpose(1, 2), None)),
    ErankCase("N<D", lambda: (scaled_randn(2, 70, 200, seed=4), None)),
    ErankCase("N>D-577x65", lambda: (scaled_randn(1, 577, 65, seed=5), None)),
    ErankCase("all-exact", lambda: (scaled_randn(3, 50, 30, seed=6), torch.tensor([50, 20, 1]))),
    # N = 150 > D = 100: a = X (n = 150, and n = D = 100), a = Xᵀ (n = 99), exact (n = 40 <= 64)
    ErankCase("ragged", lambda: (scaled_randn(4, 150, 100, seed=1), torch.tensor([150, 100, 99, 40]))),
    ErankCase("fp16", lambda: (scaled_randn(1, 90, 80, seed=7).half(), None)),
    ErankCase("bf16", lambda: (scaled_randn(1, 80, 90, seed=8).bfloat16(), None)),
    ErankCase("spectra", lambda: (torch.stack([synthetic_features(80, 72, s, seed=i)
                                              for i, s in enumerate(["rank1", "rank10", "pow2", "flat"])]), None)),
    ErankCase("magnitudes", _magnitudes),
    # plain fp32 Gaussian features: the C++ kernel measured within 1e-5
    ErankCase("randn-3x576x1024", lambda: (torch.randn(3, 576, 1024, generator=torch.Generator().manual_seed(30)),
                                           None), rtol=1e-5, interpreter=False),
    ErankCase("randn-2x50x600", lambda: (torch.randn(2, 50, 600, generator=torch.Generator().manual_seed(31)), None),
              rtol=1e-5),
    ErankCase("randn-1x600x40", lambda: (torch.randn(1, 600, 40, generator=torch.Generator().manual_seed(32)), None),
              rtol=1e-5),
    # LLaVA-1.5's 576 x 1024 (64-column block); min(n, D) = 776 > 768 (128 columns) batched with
    # min(n, D) = 700 (64 columns in the 128-wide buffers)
    ErankCase("llava-576x1024", lambda: (scaled_randn(1, 576, 1024, seed=576), None), slow=True),
    ErankCase("block128-800x776", lambda: (scaled_randn(2, 800, 776, seed=800), torch.tensor([800, 700])),
              slow=True),
]
# exact features (NaN padding on the ragged ones) in every dtype, pairwise with the estimator
ERANK_EXACT_ROWS = pairwise.cover(
    (i, dtype, method) for i in (0, 2, 3, 4, 5, 6) for dtype in DTYPES for method in spec.ERANK_METHODS)
ERANK_CASES += [ErankCase(f"exact-{EXACT_CASES[i].name}-{DTYPE_ID[dtype]}", _exact_features(i, dtype),
                          methods=(method,), interpreter=EXACT_CASES[i].interpreter)
                for i, dtype, method in ERANK_EXACT_ROWS]
# scaled Gaussian features of LLaVA-like widths in every dtype, pairwise with the estimator;
# Triton under the interpreter takes the ones that run in a few seconds
SCALED_SHAPES = {(64, 384): True, (123, 384): True, (577, 1024): False, (300, 200): False, (65, 4096): False}
ERANK_CASES += [
    ErankCase(f"scaled-2x{n}x{dim}-{DTYPE_ID[dtype]}",
              lambda n=n, dim=dim, dtype=dtype: (scaled_randn(2, n, dim, seed=n + dim).to(dtype), None),
              methods=(method,), interpreter=SCALED_SHAPES[n, dim])
    for (n, dim), dtype, method in pairwise.product(list(SCALED_SHAPES), DTYPES, spec.ERANK_METHODS)
]


def _synthetic_ragged():
    """Three synthetic spectra, ragged, the padding 1e30 (never read)."""
    x = synthetic_features(200, 96, "pow1")[None].repeat(3, 1, 1)
    x[1] = synthetic_features(200, 96, "exp", seed=1)
    lengths = torch.tensor([200, 131, 70])
    for b, length in enumerate(lengths.tolist()):
        x[b, length:] = 1e30
    return x, lengths


ERANK_CASES.append(ErankCase("synthetic-ragged", _synthetic_ragged))


def erank_params() -> list:
    out = []
    for backend in PROFILES:
        for case in ERANK_CASES:
            if backend == "triton" and INTERPRETED and not case.interpreter:
                continue
            marks = [*BACKEND_MARKS[backend], *([pytest.mark.slow] if case.slow else [])]
            out += [pytest.param(backend, case, m, marks=marks, id=f"{backend}-{case.name}-{m}") for m in case.methods]
    return out


@functools.cache
def erank_reference(case: ErankCase, method: str) -> torch.Tensor:
    x, lengths = case.build()
    return vtp.erank(x, lengths, method, backend="reference")


@pytest.mark.parametrize("backend, case, method", erank_params())
def test_erank(backend, case, method):
    x, lengths = case.build()
    device = TRITON_DEVICE if backend == "triton" else "cpu"
    got = vtp.erank(x.to(device), None if lengths is None else lengths.to(device), method, backend=backend).cpu()
    want = erank_reference(case, method)
    assert got.dtype == torch.float32 and got.shape == (x.shape[0],)
    rtol, atol = PROFILES[backend].erank if case.rtol is None else (case.rtol, 0.0)
    rel = ((got.double() - want.double()).abs() / want.double().abs().clamp_min(1e-30)).max()
    print(f"{case.name} {method} {backend}: max relative difference {float(rel):.2e}")
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol)
    if case.name == "magnitudes":
        assert got[2] == 0, "an all-zero image has erank 0"


# --------------------------------------------------------------------------------------------
# attention entropy


def entropy_cases() -> dict:
    """name: (scores, lengths or None, the known entropies or None)."""
    g = torch.Generator().manual_seed(0)
    rand = torch.rand(4, 577, generator=g)
    one_hot = torch.zeros(4, 577)
    one_hot[torch.arange(4), torch.tensor([0, 5, 576, 100])] = 2.0
    padded = rand.clone()
    padded[1:, 400:] = math.nan  # padding only (row 0 is full)
    peaked = torch.rand(2, 577, generator=g) ** 8  # [CLS]-attention-like: a few large scores
    peaked[1, 100:] = 0  # trailing zeros inside the valid length
    zeros = torch.zeros(2, 123)
    zeros[1, 5] = 1.0  # one non-zero score: entropy 0
    scale = torch.tensor([[1e-300], [1e300]], dtype=torch.float64)
    uniform = torch.full((4,), math.log(577))
    return {
        "rand": (rand, None, None),
        "uniform": (torch.full((4, 577), 0.3), None, uniform),
        "all-zero": (torch.zeros(4, 577), None, uniform),
        "one-hot": (one_hot, None, torch.zeros(4)),
        "ragged": (padded, torch.tensor([577, 1, 2, 300]), None),
        "tied": (torch.floor(rand * 3) / 3, None, None),
        "huge": (rand * 1e37, None, None),
        "tiny": (rand * 1e-37, None, None),
        "peaked-577": (peaked, None, None),
        "ragged-2880": (torch.rand(3, 2880, generator=g), torch.tensor([2880, 1025, 1]), None),
        "zeros-and-one-hot": (zeros, None, torch.tensor([math.log(123), 0.0])),
        "strided": (torch.rand(123, 4, generator=g).t(), torch.tensor([123, 64, 7, 1]), None),
        "fp16": (torch.rand(2, 576, generator=g).half(), None, None),
        "bf16": (torch.rand(2, 576, generator=g).bfloat16(), None, None),
        "fp64-tiny-and-huge": (torch.rand(2, 50, generator=g, dtype=torch.float64) * scale, None, None),
    }


@pytest.mark.parametrize("backend, name", backend_params(lambda b: [(n,) for n in entropy_cases()], lambda r: r[0]))
def test_attention_entropy(backend, name):
    scores, lengths, known = entropy_cases()[name]
    device = TRITON_DEVICE if backend == "triton" else "cpu"
    got = vtp.attention_entropy(scores.to(device), None if lengths is None else lengths.to(device),
                                backend=backend).cpu()
    assert got.dtype == torch.float32 and got.shape == (scores.shape[0],)
    rtol, atol = PROFILES[backend].entropy
    torch.testing.assert_close(got, vtp.attention_entropy(scores, lengths, backend="reference"), rtol=rtol, atol=atol)
    if known is not None:
        torch.testing.assert_close(got, known, rtol=1e-6, atol=0)

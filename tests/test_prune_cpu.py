"""The C++ CPU op (backend="cpu") against the reference (backend="reference").

On exact features (conftest.exact_features: every cosine exact in fp32) the two must return
identical indices; on Gaussian and degenerate features identical indices except where the
near-tie checker (tests/near_ties.py) proves that the rounding of a cosine decides; erank and
entropy agree to 1e-5 relative (erank None in both where not computed).
The reference is slow Python, so the parametrisation is a list of hand-picked cases rather than
the full cross product (the widest shapes run fewer dtypes and methods).
"""

import functools
import math

import pytest
import torch

import ada_vtp_kernels as vtp

import near_ties as nt
from conftest import distinct_scores, exact_features, ragged_lengths

pytestmark = pytest.mark.requires_ext

ALL_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_ID = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}

# method variants: the keyword arguments of vtp.prune; "relevance": True means random relevance
VARIANTS = {
    "attention": dict(method="attention"),
    "attention+erank": dict(method="attention", compute_erank=True),
    "divprune": dict(method="divprune"),
    "dpp": dict(method="dpp"),
    "dpp-relevance": dict(method="dpp", relevance=True),
    "vispruner": dict(method="vispruner"),
    "vispruner-0.75": dict(method="vispruner", important_ratio=0.75),
    "mix": dict(method="mix"),
    "mix-0.3": dict(method="mix", attention_ratio=0.3),
    "mix_adaptive": dict(method="mix_adaptive", compute_erank=True),
    "agile": dict(method="agile"),
    "agile-entropy": dict(method="agile", complexity="entropy"),
    "agile-tau0.6": dict(method="agile", tau_max=0.6, erank_ref=40.0),
}
CORE = ["attention+erank", "divprune", "dpp-relevance", "vispruner", "mix_adaptive", "agile", "agile-entropy"]


class Case:
    """One input shape: batch, tokens, channels, ragged lengths or not, tied scores or not."""

    def __init__(self, name, batch, n, dim, *, ragged=False, min_len=None, tied=False, seed=0):
        self.name, self.batch, self.n, self.dim = name, batch, n, dim
        self.ragged, self.min_len, self.tied, self.seed = ragged, min_len or n, tied, seed

    def __repr__(self):
        return self.name


@functools.cache
def exact_inputs(case: Case):
    """(features fp32, scores, relevance, lengths or None), cached per case."""
    g = torch.Generator().manual_seed(1000 + case.seed)
    x = exact_features(case.batch, case.n, case.dim, generator=g)
    s = distinct_scores(case.batch, case.n, generator=g)
    if case.tied:
        s = torch.floor(s * 6) / 6  # few distinct values: ties everywhere, zeros included
    rel = torch.rand(case.batch, case.n, generator=g) + 0.01
    lengths = ragged_lengths(case.batch, case.n, case.min_len, generator=g) if case.ragged else None
    return x, s, rel, lengths


def run_both(features, scores, keep, variant, relevance=None, lengths=None):
    kw = dict(VARIANTS[variant])
    rel = relevance if kw.pop("relevance", False) else None
    want = vtp.prune(features, scores, keep, lengths=lengths, relevance=rel, backend="reference", **kw)
    got = vtp.prune(features, scores, keep, lengths=lengths, relevance=rel, backend="cpu", **kw)
    return got, want


def assert_same(got, want, context=""):
    """Identical indices (exact features: every backend sees the same cosines), statistics close."""
    assert got.indices.dtype == torch.int64 and got.indices.shape == want.indices.shape, context
    if not torch.equal(got.indices, want.indices):
        rows = [b for b in range(want.indices.shape[0]) if not torch.equal(got.indices[b], want.indices[b])]
        b = rows[0]
        only_got = sorted(set(got.indices[b].tolist()) - set(want.indices[b].tolist()))
        only_want = sorted(set(want.indices[b].tolist()) - set(got.indices[b].tolist()))
        pytest.fail(f"{context}: indices differ in rows {rows}; row {b}: cpu only {only_got}, "
                    f"reference only {only_want}")
    assert_same_statistics(got, want, context)


def assert_same_or_near_ties(got, want, context, features, scores, keep, variant, relevance=None, lengths=None):
    """Gaussian features: identical indices except where a proven near-tie decides (the two
    backends' fp64 dot products may round once to different fp32 neighbours), statistics close."""
    kw = dict(VARIANTS[variant])
    rel = relevance if kw.pop("relevance", False) else None
    assert got.indices.dtype == torch.int64 and got.indices.shape == want.indices.shape, context
    for tie in nt.assert_same_or_near_ties(features, scores, keep, kw.pop("method"), got, want,
                                           roundings=(nt.ROUNDED_ONCE, nt.ROUNDED_ONCE), names=("cpu", "reference"),
                                           lengths=lengths, relevance=rel, label=context, **kw):
        print(f"\n{context}: {tie}")
    assert_same_statistics(got, want, context)


def assert_same_statistics(got, want, context):
    assert (got.erank is None) == (want.erank is None), f"{context}: erank computed by one backend only"
    for name in ("erank", "entropy"):
        g, w = getattr(got, name), getattr(want, name)
        if w is None:
            continue
        assert g.dtype == torch.float32 and g.shape == w.shape, (context, name)
        # the default "fast" erank: fp32 products on the CPU, fp64 in the reference
        rtol = 1e-4 if name == "erank" else 1e-5
        torch.testing.assert_close(g, w, rtol=rtol, atol=1e-6, msg=f"{context}: {name}")


# --------------------------------------------------------------------------------------------
# exact features: identical indices

N576_D64 = Case("b1-n576-d64", 1, 576, 64)
N576_D1024 = Case("b5-n576-d1024-ragged", 5, 576, 1024, ragged=True, min_len=301, seed=1)
N576_D4096 = Case("b2-n576-d4096", 2, 576, 4096, seed=2)
N123 = Case("b5-n123-d100-ragged-tied", 5, 123, 100, ragged=True, min_len=40, tied=True, seed=3)
N577 = Case("b2-n577-d256", 2, 577, 256, seed=4)
TINY = Case("b3-n7-d3", 3, 7, 3, seed=5)
ONE = Case("b2-n1-d5", 2, 1, 5, seed=6)


def plan():
    """(case, keep, dtype, variant) tuples, chosen to cover every axis at a bounded cost."""
    out = []

    def add(case, keeps, dtypes, variants):
        out.extend((case, k, dt, v) for k in keeps for dt in dtypes for v in variants)

    add(N576_D64, [1, 64], ALL_DTYPES, VARIANTS)
    add(N576_D64, [576], [torch.float32], VARIANTS)
    add(N576_D64, [576], [torch.bfloat16], ["dpp-relevance", "vispruner", "agile"])
    add(N576_D1024, [1, 100, 301], [torch.float32], VARIANTS)
    add(N576_D1024, [100], [torch.float16, torch.bfloat16], CORE)
    add(N576_D4096, [64], [torch.float32, torch.bfloat16], VARIANTS)
    add(N576_D4096, [1], [torch.float16], CORE)
    add(N123, [1, 17, 40], ALL_DTYPES, VARIANTS)
    add(N577, [1, 77], [torch.float32], VARIANTS)
    add(N577, [577], [torch.float32], CORE)
    add(N577, [77], [torch.float16], CORE)
    add(TINY, [1, 3, 7], [torch.float32], VARIANTS)
    add(ONE, [1], [torch.float32, torch.bfloat16], VARIANTS)
    return out


def plan_id(p):
    case, keep, dtype, variant = p
    return f"{case.name}-k{keep}-{DTYPE_ID[dtype]}-{variant}"


@pytest.mark.parametrize("case, keep, dtype, variant", plan(), ids=[plan_id(p) for p in plan()])
def test_exact_features_match_reference(case, keep, dtype, variant):
    x, s, rel, lengths = exact_inputs(case)
    got, want = run_both(x.to(dtype), s, keep, variant, relevance=rel, lengths=lengths)
    assert_same(got, want, plan_id((case, keep, dtype, variant)))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_auto_backend_is_the_cpu_op(variant):
    x, s, rel, lengths = exact_inputs(N123)
    kw = dict(VARIANTS[variant])
    r = rel if kw.pop("relevance", False) else None
    a = vtp.prune(x, s, 17, lengths=lengths, relevance=r, backend="auto", **kw)
    c = torch.ops.ada_vtp.prune(x, s, 17, kw.pop("method"), lengths, r, **kw)
    assert torch.equal(a.indices, c[0])
    if a.erank is None:
        assert c[1].shape == (0,), "the op returns a [0] erank where none is computed"
    else:
        assert torch.equal(a.erank, c[1])
    assert torch.equal(a.entropy, c[2])


# --------------------------------------------------------------------------------------------
# strides: non-contiguous inputs give the same result as contiguous ones


def non_contiguous(x, s, rel, lengths):
    """Same values, other strides: features transposed storage + sliced tokens, scores and
    relevance sliced every other element, lengths a strided slice."""
    b, n, d = x.shape
    xt = torch.empty(b, d, 2 * n, dtype=x.dtype)
    xt[:, :, ::2] = x.transpose(1, 2)
    xs = xt.transpose(1, 2)[:, ::2]  # [b, n, d] with strides (2nd, 1, 2n)
    ss = torch.empty(b, 2 * n)
    ss[:, 1::2] = s
    rs = torch.empty(b, n, 3)
    rs[:, :, 2] = rel
    ls = None
    if lengths is not None:
        ls = torch.empty(2 * b, dtype=lengths.dtype)
        ls[::2] = lengths
        ls = ls[::2]
    out = xs, ss[:, 1::2], rs[:, :, 2], ls
    assert not any(t.is_contiguous() for t in out if t is not None)
    assert torch.equal(out[0], x) and torch.equal(out[1], s)
    return out


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=DTYPE_ID.get)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_non_contiguous_inputs(variant, dtype):
    x, s, rel, lengths = exact_inputs(N123)
    x = x.to(dtype)
    kw = dict(VARIANTS[variant])
    use_rel = kw.pop("relevance", False)
    contiguous = vtp.prune(x, s, 17, lengths=lengths, relevance=rel if use_rel else None, backend="cpu", **kw)
    xs, ss, rs, ls = non_contiguous(x, s, rel, lengths)
    strided = vtp.prune(xs, ss, 17, lengths=ls, relevance=rs if use_rel else None, backend="cpu", **kw)
    assert torch.equal(strided.indices, contiguous.indices)
    assert torch.equal(strided.entropy, contiguous.entropy)
    assert (strided.erank is None) == (contiguous.erank is None)
    if contiguous.erank is not None:
        assert torch.equal(strided.erank, contiguous.erank)


@pytest.mark.parametrize("variant", ["divprune", "dpp-relevance", "agile", "vispruner"])
def test_broadcast_batch_stride_zero(variant):
    x, s, rel, _ = exact_inputs(TINY)
    xb = x[:1].expand(4, -1, -1)  # batch stride 0
    got = vtp.prune(xb, s[:1].expand(4, -1), 3, relevance=rel[:1].expand(4, -1) if "relevance" in variant else None,
                    backend="cpu", **{k: v for k, v in VARIANTS[variant].items() if k != "relevance"})
    assert (got.indices == got.indices[:1]).all()
    one = vtp.prune(x[:1], s[:1], 3, relevance=rel[:1] if "relevance" in variant else None,
                    backend="cpu", **{k: v for k, v in VARIANTS[variant].items() if k != "relevance"})
    assert torch.equal(got.indices[:1], one.indices)


# --------------------------------------------------------------------------------------------
# padding content never matters on the op either


@pytest.mark.parametrize("variant", CORE + ["dpp", "mix"])
def test_padding_content_is_ignored(variant):
    x, s, rel, lengths = exact_inputs(N123)
    x2, s2, rel2 = x.clone(), s.clone(), rel.clone()
    for b in range(x.shape[0]):
        x2[b, lengths[b]:] = float("nan")
        s2[b, lengths[b]:] = -1.0 if b % 2 else float("inf")
        rel2[b, lengths[b]:] = float("nan")
    a, _ = run_both(x, s, 30, variant, relevance=rel, lengths=lengths)
    got, want = run_both(x2, s2, 30, variant, relevance=rel2, lengths=lengths)
    assert_same(got, want, variant)
    assert torch.equal(a.indices, got.indices)
    assert all((got.indices[b] < lengths[b]).all() for b in range(x.shape[0]))


@pytest.mark.parametrize("lengths_dtype", [torch.int32, torch.int64, torch.int16], ids=str)
def test_lengths_integer_dtypes(lengths_dtype):
    x, s, rel, lengths = exact_inputs(N123)
    got, want = run_both(x, s, 17, "agile", lengths=lengths.to(lengths_dtype))
    assert_same(got, want)


# --------------------------------------------------------------------------------------------
# plain torch.randn features (no exactness guarantee: near-ties could part the backends)

RANDN = [
    Case("randn-b2-n576-d64", 2, 576, 64, seed=10),
    Case("randn-b2-n576-d1024-ragged", 2, 576, 1024, ragged=True, min_len=400, seed=11),
    Case("randn-b3-n123-d100", 3, 123, 100, seed=12),
]


@functools.cache
def randn_inputs(case: Case):
    g = torch.Generator().manual_seed(2000 + case.seed)
    x = torch.randn(case.batch, case.n, case.dim, generator=g)
    s = distinct_scores(case.batch, case.n, generator=g)
    rel = torch.rand(case.batch, case.n, generator=g) + 0.01
    lengths = ragged_lengths(case.batch, case.n, case.min_len, generator=g) if case.ragged else None
    return x, s, rel, lengths


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=DTYPE_ID.get)
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("case", RANDN, ids=repr)
def test_randn_features_match_reference(case, variant, dtype):
    x, s, rel, lengths = randn_inputs(case)
    keep = 64 if case.n > 200 else 20
    got, want = run_both(x.to(dtype), s, keep, variant, relevance=rel, lengths=lengths)
    assert_same_or_near_ties(got, want, f"{case.name}-{variant}-{DTYPE_ID[dtype]}", x.to(dtype), s, keep, variant,
                             rel, lengths)


# --------------------------------------------------------------------------------------------
# statistics ops


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=DTYPE_ID.get)
@pytest.mark.parametrize("case", [N576_D64, N576_D4096, N123, N577, TINY, ONE], ids=repr)
def test_erank_matches_reference(case, dtype):
    x, _, _, lengths = exact_inputs(case)
    x = x.to(dtype)
    want = vtp.erank(x, lengths, backend="reference")
    got = vtp.erank(x, lengths, backend="cpu")
    assert got.dtype == torch.float32 and got.shape == (case.batch,)
    # the default "fast" erank: fp32 products against the fp64 reference (measured 3e-5 at 576 x 4096)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("shape", [(3, 576, 1024), (2, 50, 600), (1, 600, 40)], ids=str)
def test_erank_randn_matches_reference(shape):
    x = torch.randn(*shape)
    torch.testing.assert_close(vtp.erank(x, backend="cpu"), vtp.erank(x, backend="reference"), rtol=1e-5, atol=0)


@pytest.mark.parametrize("scale", [2.0**-120, 1e-30, 1.0, 1e30, 2.0**120],
                         ids=["2^-120", "1e-30", "1", "1e30", "2^120"])
def test_erank_scale_invariance(scale):
    x = torch.randn(2, 64, 48)
    base = vtp.erank(x, backend="cpu")
    scaled = x * scale
    assert torch.isfinite(scaled).all()
    got = vtp.erank(scaled, backend="cpu")
    torch.testing.assert_close(got, base, rtol=1e-5, atol=0)
    torch.testing.assert_close(got, vtp.erank(scaled, backend="reference"), rtol=1e-5, atol=0)
    if math.log2(scale).is_integer():
        assert torch.equal(got, base), "a power-of-two scale must not change the result at all"


@pytest.mark.parametrize(
    "kind", ["zero", "rank1", "orthonormal", "single-entry"],
)
def test_erank_special_matrices(kind):
    if kind == "zero":
        x, expected = torch.zeros(2, 9, 4), [0.0, 0.0]
    elif kind == "rank1":
        x = (torch.rand(1, 30, 1) + 0.1) * torch.randn(1, 1, 20)
        expected = [1.0]
    elif kind == "orthonormal":
        x = torch.linalg.qr(torch.randn(32, 32, dtype=torch.float64))[0][:12].float()[None]
        expected = [12.0]
    else:
        x = torch.zeros(1, 10, 10)
        x[0, 3, 3] = 5.0
        expected = [1.0]
    got = vtp.erank(x, backend="cpu")
    torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kind", ["rand", "uniform", "all-zero", "one-hot", "ragged", "tied", "huge", "tiny"],
)
def test_attention_entropy_matches_reference(kind):
    s, lengths = torch.rand(4, 577), None
    if kind == "uniform":
        s = torch.full((4, 577), 0.3)
    elif kind == "all-zero":
        s = torch.zeros(4, 577)
    elif kind == "one-hot":
        s = torch.zeros(4, 577)
        s[torch.arange(4), torch.tensor([0, 5, 576, 100])] = 2.0
    elif kind == "ragged":
        lengths = torch.tensor([577, 1, 2, 300])
        s[1:, 400:] = float("nan")  # padding only (row 0 is full)
    elif kind == "tied":
        s = torch.floor(s * 3) / 3
    elif kind == "huge":
        s = s * 1e37
    elif kind == "tiny":
        s = s * 1e-37
    got = vtp.attention_entropy(s, lengths, backend="cpu")
    want = vtp.attention_entropy(s, lengths, backend="reference")
    assert got.dtype == torch.float32 and got.shape == (4,)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    if kind in ("uniform", "all-zero"):
        torch.testing.assert_close(got, torch.full((4,), math.log(577)), rtol=1e-6, atol=0)
    if kind == "one-hot":
        assert got.tolist() == [0.0] * 4


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_scores_other_float_dtypes(dtype):
    """Scores in other float dtypes: whatever the op accepts must equal the reference."""
    x, s, _, _ = exact_inputs(TINY)
    s = s.to(dtype)
    for method in ("attention", "agile"):
        try:
            want = vtp.prune(x, s, 3, method, backend="reference")
        except ValueError:
            with pytest.raises(ValueError, match="scores"):
                vtp.prune(x, s, 3, method, backend="cpu")
            continue
        assert_same(vtp.prune(x, s, 3, method, backend="cpu"), want, f"{method} scores {dtype}")


def test_defaults_match_reference_defaults():
    x, s, _, _ = exact_inputs(N123)
    got = torch.ops.ada_vtp.prune(x, s, 17)
    want = vtp.prune(x, s, 17, backend="reference")
    assert torch.equal(got[0], want.indices)
    torch.testing.assert_close(got[1], want.erank, rtol=1e-5, atol=0)
    torch.testing.assert_close(got[2], want.entropy, rtol=1e-5, atol=0)


@pytest.mark.parametrize(
    "values",
    [
        [1e300, 2e300, 1.0, 0.5, 0.25, 3.0, 0.0],  # beyond fp32's range
        [1e-50, 3e-50, 2e-50, 0.0, 5e-50, 4e-50, 1e-50],  # below fp32's smallest subnormal
        [1.0, 1.0 + 1e-12, 0.5, 0.25, 0.1, 0.2, 0.3],  # equal once rounded to fp32
    ],
    ids=["fp64-huge", "fp64-tiny", "fp64-near-tie"],
)
@pytest.mark.parametrize("method", ["attention", "agile", "vispruner"])
def test_float64_scores_outside_float32(values, method):
    """float64 scores are accepted (only the features' dtype is restricted): the op's entropy and
    selection must still equal the reference's, which computes the entropy in float64."""
    x, _, _, _ = exact_inputs(TINY)
    s = torch.tensor([values] * 3, dtype=torch.float64)
    assert_same(vtp.prune(x, s, 3, method, backend="cpu"), vtp.prune(x, s, 3, method, backend="reference"), method)
    torch.testing.assert_close(vtp.prune(x, s, 3, method, backend="cpu").entropy,
                               vtp.attention_entropy(s, backend="cpu"), rtol=1e-6, atol=0)


# --------------------------------------------------------------------------------------------
# a seeded sweep of small random configurations (every axis at once, cheap per case)


def sweep_case(seed):
    g = torch.Generator().manual_seed(5000 + seed)
    pick = lambda options: options[int(torch.randint(len(options), (1,), generator=g))]  # noqa: E731
    batch, n, dim = pick([1, 2, 3]), pick([1, 2, 5, 16, 33, 64, 130]), pick([1, 2, 3, 8, 17, 64, 100])
    variant, dtype = pick(list(VARIANTS)), pick(ALL_DTYPES)
    ragged = batch > 1 and n > 2 and bool(torch.randint(2, (1,), generator=g))
    lengths = torch.randint(max(1, n // 3), n + 1, (batch,), generator=g) if ragged else None
    shortest = n if lengths is None else int(lengths.min())
    keep = pick(sorted({1, max(1, shortest // 4), max(1, shortest // 2), shortest}))
    tied = bool(torch.randint(3, (1,), generator=g) == 0)
    kind = "randn" if seed % 4 == 3 else "exact"  # a quarter on plain randn features
    return dict(seed=seed, batch=batch, n=n, dim=dim, variant=variant, dtype=dtype, lengths=lengths, keep=keep,
                tied=tied, kind=kind, g=g)


SWEEP = [sweep_case(seed) for seed in range(400)]


def sweep_id(c):
    ragged = "-ragged" if c["lengths"] is not None else ""
    tied = "-tied" if c["tied"] else ""
    return (f"s{c['seed']}-{c['kind']}-{c['variant']}-b{c['batch']}-n{c['n']}-d{c['dim']}-k{c['keep']}-"
            f"{DTYPE_ID[c['dtype']]}{ragged}{tied}")


@pytest.mark.parametrize("c", SWEEP, ids=[sweep_id(c) for c in SWEEP])
def test_random_sweep_matches_reference(c):
    if c["kind"] == "exact":
        x = exact_features(c["batch"], c["n"], c["dim"], generator=c["g"]).to(c["dtype"])
    else:
        x = torch.randn(c["batch"], c["n"], c["dim"], generator=c["g"]).to(c["dtype"])
    s = distinct_scores(c["batch"], c["n"], generator=c["g"])
    if c["tied"]:
        s = torch.floor(s * 3) / 3
    rel = torch.rand(c["batch"], c["n"], generator=c["g"])
    got, want = run_both(x, s, c["keep"], c["variant"], relevance=rel, lengths=c["lengths"])
    if c["kind"] == "exact":
        assert_same(got, want, sweep_id(c))
    else:
        assert_same_or_near_ties(got, want, sweep_id(c), x, s, c["keep"], c["variant"], rel, c["lengths"])


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


@pytest.mark.parametrize("keep", [1, 5, 24], ids=lambda k: f"k{k}")
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_degenerate_images_match_reference(variant, keep):
    x = degenerate_images()
    s = distinct_scores(5, 24)
    s[1] = 0.0  # all-zero scores on one image too
    rel = torch.rand(5, 24)
    rel[2] = 0.0
    got, want = run_both(x, s, keep, variant, relevance=rel)
    assert_same_or_near_ties(got, want, f"{variant} k{keep}", x, s, keep, variant, rel)

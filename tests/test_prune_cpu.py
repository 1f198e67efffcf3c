"""What is specific to the C++ CPU op (backend="cpu"); its results against the reference, shared
with the Triton backend, are tests/test_conformance.py.

- ``backend="auto"`` on CPU tensors and the op's schema defaults are the C++ op;
- any strides, a batch stride of 0;
- the two ways the op serves distance rows (K rows of fp64 dot products, or the whole Gram once
  8 K >= n) give the reference's indices on both sides of the threshold;
- the erank's power-of-two rescale and its special matrices.
"""

import math

import pytest
import torch

import ada_vtp_kernels as vtp

from support import near_ties as nt
from support.data import distinct_scores, exact_features, ragged_lengths

pytestmark = pytest.mark.requires_ext

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
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
    "mix_adaptive": dict(method="mix_adaptive"),
    "agile": dict(method="agile"),
    "agile-entropy": dict(method="agile", complexity="entropy"),
    "agile-tau0.6": dict(method="agile", tau_max=0.6, erank_ref=40.0),
    "random": dict(method="random", seed=3),
}


def inputs(batch=5, n=123, dim=100, shortest=40, seed=3):
    """(exact features, tied scores, relevance, ragged lengths)."""
    g = torch.Generator().manual_seed(1000 + seed)
    x = exact_features(batch, n, dim, generator=g)
    s = torch.floor(distinct_scores(batch, n, generator=g) * 6) / 6  # ties everywhere, zeros included
    rel = torch.rand(batch, n, generator=g) + 0.01
    return x, s, rel, ragged_lengths(batch, n, shortest, generator=g)


def prune(variant, features, scores, keep, relevance=None, lengths=None, backend="cpu"):
    kw = dict(VARIANTS[variant])
    rel = relevance if kw.pop("relevance", False) else None
    return vtp.prune(features, scores, keep, lengths=lengths, relevance=rel, backend=backend, **kw)


def assert_same_result(a, b, label=""):
    assert torch.equal(a.indices, b.indices), label
    assert torch.equal(a.entropy, b.entropy), label
    assert (a.erank is None) == (b.erank is None), label
    if a.erank is not None:
        assert torch.equal(a.erank, b.erank), label


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_auto_backend_is_the_cpu_op(variant):
    x, s, rel, lengths = inputs()
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


def test_defaults_match_reference_defaults():
    x, s, _, _ = inputs()
    got = torch.ops.ada_vtp.prune(x, s, 17)
    want = vtp.prune(x, s, 17, backend="reference")
    assert torch.equal(got[0], want.indices)
    torch.testing.assert_close(got[1], want.erank, rtol=1e-4, atol=0)
    torch.testing.assert_close(got[2], want.entropy, rtol=1e-5, atol=0)


# --------------------------------------------------------------------------------------------
# strides: non-contiguous inputs give the same result as contiguous ones


def strided(x, s, rel):
    """Same values, other strides: features transposed storage + sliced tokens, scores and
    relevance sliced every other element."""
    b, n, d = x.shape
    xt = torch.empty(b, d, 2 * n, dtype=x.dtype)
    xt[:, :, ::2] = x.transpose(1, 2)
    xs = xt.transpose(1, 2)[:, ::2]  # [b, n, d] with strides (2nd, 1, 2n)
    ss = torch.empty(b, 2 * n)
    ss[:, 1::2] = s
    rs = torch.empty(b, n, 3)
    rs[:, :, 2] = rel
    out = xs, ss[:, 1::2], rs[:, :, 2]
    assert not any(t.is_contiguous() for t in out)
    assert torch.equal(out[0], x) and torch.equal(out[1], s)
    return out


def strided_lengths(lengths):
    ls = torch.empty(2 * lengths.shape[0], dtype=lengths.dtype)
    ls[::2] = lengths
    ls = ls[::2]
    assert not ls.is_contiguous() and torch.equal(ls, lengths)
    return ls


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_ID.get)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_non_contiguous_inputs(variant, dtype):
    x, s, rel, lengths = inputs()
    x = x.to(dtype)
    contiguous = prune(variant, x, s, 17, rel, lengths)
    xs, ss, rs = strided(x, s, rel)
    assert_same_result(prune(variant, xs, ss, 17, rs, lengths), contiguous, variant)


@pytest.mark.parametrize("lengths_dtype", [torch.int64, torch.int32], ids=str)
@pytest.mark.parametrize("op", ["prune", "erank", "attention_entropy"])
def test_non_contiguous_lengths(op, lengths_dtype):
    x, s, _, lengths = inputs()
    lengths = lengths.to(lengths_dtype)
    calls = {
        "prune": lambda ls: vtp.prune(x, s, 17, "agile", lengths=ls, backend="cpu"),
        "erank": lambda ls: vtp.erank(x, ls, backend="cpu"),
        "attention_entropy": lambda ls: vtp.attention_entropy(s, ls, backend="cpu"),
    }
    got, want = calls[op](strided_lengths(lengths)), calls[op](lengths)
    for a, b in zip(got if op == "prune" else [got], want if op == "prune" else [want]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("variant", ["divprune", "dpp-relevance", "agile", "vispruner"])
def test_broadcast_batch_stride_zero(variant):
    x, s, rel, _ = inputs(3, 7, 3, 7, seed=5)
    got = prune(variant, x[:1].expand(4, -1, -1), s[:1].expand(4, -1), 3, rel[:1].expand(4, -1))  # batch stride 0
    assert (got.indices == got.indices[:1]).all()
    assert torch.equal(got.indices[:1], prune(variant, x[:1], s[:1], 3, rel[:1]).indices)


# --------------------------------------------------------------------------------------------
# the rows-vs-Gram threshold (csrc/cpu/prune_cpu.cpp, kRowVsGramCost = 8): K rows of fp64 dot
# products while 8 K < n, else the whole Gram; divprune (first pick) and vispruner always read
# the Gram

N_GRAM = 576
ROWS_GRAM_KEEPS = {"rows": N_GRAM // 8 - 1, "gram": N_GRAM // 8}


@pytest.mark.parametrize("kind", ["exact", "gaussian"])
@pytest.mark.parametrize("path", list(ROWS_GRAM_KEEPS))
@pytest.mark.parametrize("variant", ["mix", "mix_adaptive", "dpp-relevance", "agile", "agile-tau0.6"])
def test_rows_and_gram_paths_match_reference(variant, path, kind):
    keep = ROWS_GRAM_KEEPS[path]
    g = torch.Generator().manual_seed(40)
    x = exact_features(2, N_GRAM, 256, generator=g) if kind == "exact" else torch.randn(2, N_GRAM, 256, generator=g)
    s, rel = distinct_scores(2, N_GRAM, generator=g), torch.rand(2, N_GRAM, generator=g) + 0.01
    got, want = prune(variant, x, s, keep, rel), prune(variant, x, s, keep, rel, backend="reference")
    label = f"{variant} K={keep} ({path}) {kind}"
    if kind == "exact":
        assert torch.equal(got.indices, want.indices), label
    else:
        kw = dict(VARIANTS[variant])
        r = rel if kw.pop("relevance", False) else None
        for tie in nt.assert_same_or_near_ties(x, s, keep, kw.pop("method"), got, want,
                                               roundings=(nt.ROUNDED_ONCE, nt.ROUNDED_ONCE),
                                               names=("cpu", "reference"), relevance=r, label=label, **kw):
            print(f"\n{label}: {tie}")
    torch.testing.assert_close(got.entropy, want.entropy, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# erank


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


@pytest.mark.parametrize("kind", ["zero", "rank1", "orthonormal", "single-entry"])
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

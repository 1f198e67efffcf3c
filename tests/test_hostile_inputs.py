"""Hostile inputs on every entry point: a clear ValueError naming the argument, the same message
from the C++ op, the reference, the Triton launchers and the fake (meta) kernels; never a crash,
a hang or a silently wrong shape.

Entry points: ``torch.ops.ada_vtp.*`` on CPU tensors (the C++ kernels), on meta tensors and under
FakeTensorMode (the fake kernels: metadata checks only), ``vtp.prune(..., backend="reference")``
and the Triton launchers (under TRITON_INTERPRET=1 on CPU tensors).  tests/test_bad_inputs.py
holds the catalogue of single-fault cases (CASES); this module runs it through the fake kernels
and the Triton launchers, and adds: every torch dtype for every tensor argument, NaN/inf/negative
values at any valid position (hypothesis), empty tensors, broadcast (stride-0) tensors, meta and
fake tensors, tensors on different devices, sparse tensors and non-tensors.
"""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch._subclasses.fake_tensor import FakeTensorMode

import ada_vtp_kernels as vtp

from prune_strategies import examples
from test_bad_inputs import CASE_IDS, CASES, call_raw

pytestmark = pytest.mark.requires_ext

try:
    from ada_vtp_kernels.triton import prune as triton_prune
except ImportError:  # triton not installed: the launcher cases skip
    triton_prune = None

needs_triton = pytest.mark.skipif(triton_prune is None, reason="needs the triton package")



def is_value_fault(case_id: str) -> bool:
    """The CASES whose fault is in a tensor's values (a NaN, a negative score, a length): the fake
    kernels cannot see them and must return the output shapes."""
    in_values = case_id.split("-")[0] in ("features", "scores", "relevance") and any(
        word in case_id for word in ("nan", "inf", "negative"))
    return in_values or case_id in ("lengths-zero", "lengths-negative", "lengths-above-n", "keep-above-a-length")


def message(fn, errors=ValueError) -> str:
    with pytest.raises(errors) as info:
        fn()
    return str(info.value)


def call_fake(kw):
    """The raw op with every tensor argument a FakeTensor."""
    with FakeTensorMode() as mode:
        fake = {k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
        return call_raw(fake)


def call_meta(kw):
    return call_raw({k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in kw.items()})


def call_triton(kw):
    return call_raw(kw, triton_prune.prune)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("call", [call_fake, call_meta], ids=["fake", "meta"])
def test_fake_kernel_checks_metadata(case, call):
    """Faults in shapes, dtypes, keep > N, unknown names and parameter ranges fail in the fake
    kernel with the C++ op's message (so torch.compile, torch.export and meta-device code fail
    where eager would); faults in values pass there and fail when the op runs."""
    name, make, arg = case
    inputs = make()
    if not all(isinstance(v, torch.Tensor) or v is None for k, v in inputs.items()
               if k in ("features", "scores", "lengths", "relevance")):
        pytest.skip("not a tensor")
    if is_value_fault(name):
        indices, _, entropy = call(inputs)
        assert indices.shape == (inputs["features"].shape[0], inputs["keep"])
        return
    assert message(lambda: call(make())) == message(lambda: call_raw(make()))


@needs_triton
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_triton_launcher_rejects(case):
    """Every single-fault case: the Triton launcher's message is the C++ op's."""
    _, make, arg = case
    got = message(lambda: call_triton(make()))
    assert arg in got
    assert got == message(lambda: call_raw(make()))


# --------------------------------------------------------------------------------------------
# every dtype torch has, in every tensor argument


def all_dtypes():
    seen, out = set(), []
    for name in sorted(dir(torch)):
        dtype = getattr(torch, name)
        if isinstance(dtype, torch.dtype) and dtype not in seen:
            seen.add(dtype)
            out.append(dtype)
    return out


def tensor_of(shape, dtype, values: torch.Tensor):
    """`values` converted to `dtype`, or a tensor of that dtype holding what torch can put there
    (zeros, or uninitialised for the quantized and bit dtypes), or None where torch cannot make one."""
    try:
        return values.to(dtype)
    except (RuntimeError, TypeError):
        pass
    for make in (torch.zeros, torch.empty):
        try:
            return make(shape, dtype=dtype)
        except (RuntimeError, TypeError):
            continue
    return None


def dtype_inputs(role: str, dtype):
    torch.manual_seed(0)
    kw = dict(features=torch.randn(2, 10, 4), scores=torch.rand(2, 10) + 0.01, keep=3, method="dpp",
              lengths=torch.tensor([10, 7]), relevance=torch.rand(2, 10))
    made = tensor_of(kw[role].shape, dtype, kw[role])
    if made is None:
        pytest.skip(f"torch cannot make a {dtype} tensor")
    kw[role] = made
    return kw


ACCEPTED = {
    "features": (torch.float32, torch.float16, torch.bfloat16),
    "scores": (torch.float16, torch.bfloat16, torch.float32, torch.float64),
    "relevance": (torch.float16, torch.bfloat16, torch.float32, torch.float64),
    "lengths": (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64),
}


@pytest.mark.parametrize("dtype", all_dtypes(), ids=str)
@pytest.mark.parametrize("role", list(ACCEPTED))
def test_every_dtype(role, dtype):
    """Accepted dtypes give the same indices on every backend; every other dtype is a ValueError
    naming the argument and the dtype, with one message on every backend."""
    kw = dtype_inputs(role, dtype)
    backends = {"cpu": lambda: call_raw(dtype_inputs(role, dtype)),
                "reference": lambda: vtp.prune(**{**dtype_inputs(role, dtype), "backend": "reference"}),
                "fake": lambda: call_fake(dtype_inputs(role, dtype))}
    if triton_prune is not None:
        backends["triton"] = lambda: call_triton(dtype_inputs(role, dtype))
    if dtype in ACCEPTED[role]:
        want = call_raw(kw)[0]
        assert torch.equal(vtp.prune(**kw, backend="reference").indices, want)
        if triton_prune is not None:
            assert torch.equal(call_triton(kw)[0], want)
        return
    if kw[role].is_quantized:  # the dispatcher stops these before any kernel: QuantizedCPU has none
        assert "QuantizedCPU" in message(backends.pop("cpu"), NotImplementedError)
        backends.pop("fake")  # FakeTensorMode cannot hold quantized tensors (torch's own limit)
    messages = {name: message(call) for name, call in backends.items()}
    some = next(iter(messages.values()))
    assert role in some and str(dtype) in some, messages
    assert len(set(messages.values())) == 1, messages


# --------------------------------------------------------------------------------------------
# a bad value anywhere among the valid tokens


@st.composite
def bad_value_cases(draw):
    batch, n, dim = draw(st.integers(1, 3)), draw(st.integers(1, 30)), draw(st.integers(1, 8))
    lengths = [draw(st.integers(1, n)) for _ in range(batch)]
    role = draw(st.sampled_from(["features", "scores", "relevance"]))
    b = draw(st.integers(0, batch - 1))
    j = draw(st.integers(0, lengths[b] - 1))
    d = draw(st.integers(0, dim - 1))
    bad = draw(st.sampled_from([math.nan, math.inf, -math.inf] + ([] if role == "features" else [-1e-30, -2.0])))
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
    return batch, n, dim, lengths, role, (b, j, d), bad, dtype


def expected_message(role, position, bad) -> str:
    b, j, d = position
    where = f"{role}[{b}, {j}, {d}]" if role == "features" else f"{role}[{b}, {j}]"
    value = {math.inf: "inf", -math.inf: "-inf"}.get(bad, "nan" if math.isnan(bad) else f"{bad:g}")
    tail = "is not finite" if not math.isfinite(bad) else "is negative; expected values >= 0"
    return f"{where} = {value} {tail}"


@examples(1.0)
@given(spec=bad_value_cases())
def test_bad_value_anywhere_is_named(spec):
    """NaN, inf or a negative score at any valid position: every backend names that position; the
    same value in the padding is ignored."""
    batch, n, dim, lengths, role, (b, j, d), bad, dtype = spec
    g = torch.Generator().manual_seed(0)
    kw = dict(features=torch.randn(batch, n, dim, generator=g).to(dtype), scores=torch.rand(batch, n, generator=g),
              keep=1, method="dpp", lengths=torch.tensor(lengths), relevance=torch.rand(batch, n, generator=g))
    clean = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    if role == "features":
        kw[role][b, j, d] = bad
    else:
        kw[role][b, j] = bad
    want = expected_message(role, (b, j, d), bad)
    assert message(lambda: call_raw(kw)) == want
    assert message(lambda: vtp.prune(**kw, backend="reference")) == want
    if triton_prune is not None and n <= 16:
        assert message(lambda: call_triton(kw)) == want
    if lengths[b] < n:  # the same value after the row's length is never read
        padded = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in clean.items()}
        if role == "features":
            padded[role][b, lengths[b]:, d] = bad
        else:
            padded[role][b, lengths[b]:] = bad
        assert torch.equal(call_raw(padded)[0], call_raw(clean)[0])


# --------------------------------------------------------------------------------------------
# empty tensors, broadcast tensors, meta and fake tensors, devices, layouts, non-tensors


EMPTY = {
    "batch": dict(features=torch.zeros(0, 5, 3), scores=torch.zeros(0, 5)),
    "tokens": dict(features=torch.zeros(2, 0, 3), scores=torch.zeros(2, 0)),
    "channels": dict(features=torch.zeros(2, 5, 0), scores=torch.ones(2, 5)),
    "batch-with-lengths": dict(features=torch.zeros(0, 5, 3), scores=torch.zeros(0, 5),
                               lengths=torch.zeros(0, dtype=torch.int64)),
}


@pytest.mark.parametrize("name", list(EMPTY))
def test_empty_tensors(name):
    kw = dict(keep=1, method="agile", lengths=None, relevance=None)
    kw.update(EMPTY[name])
    want = message(lambda: call_raw(kw))
    assert "features" in want or "scores" in want
    assert message(lambda: vtp.prune(**kw, backend="reference")) == want
    assert message(lambda: call_fake(kw)) == want
    if triton_prune is not None:
        assert message(lambda: call_triton(kw)) == want
    features = kw["features"]
    assert "features" in message(lambda: torch.ops.ada_vtp.erank(features))
    if features.shape[0] == 0 or features.shape[1] == 0:
        assert "scores" in message(lambda: torch.ops.ada_vtp.attention_entropy(kw["scores"]))


BROADCASTS = {
    "batch": lambda x, s: (x[:1].expand(3, -1, -1), s[:1].expand(3, -1)),
    "tokens": lambda x, s: (x[:, :1].expand(-1, 12, -1), s),
    "channels": lambda x, s: (x[:, :, :1].expand(-1, -1, 6), s),
    "scalar": lambda x, s: (torch.ones(()).expand(3, 12, 6), torch.ones(()).expand(3, 12)),
}


@pytest.mark.parametrize("method", vtp.defaults.METHODS)
@pytest.mark.parametrize("name", list(BROADCASTS))
def test_stride_zero_tensors(name, method):
    """Broadcast views (stride 0 along any dimension, or all of them) are valid inputs: on every
    backend, the same bits as their contiguous copies.  (Across backends these are near-tie inputs:
    rows equal up to sign have cosines of +-1 up to rounding, so no cross-backend equality here.)"""
    x, s = BROADCASTS[name](torch.randn(3, 12, 6), torch.rand(3, 12))
    assert 0 in x.stride()
    lengths = torch.tensor([12]).expand(3) if name == "batch" else None
    for backend in ["cpu", "reference"] + (["triton"] if triton_prune is not None else []):
        want = vtp.prune(x.contiguous(), s.contiguous(), 4, method, lengths=lengths, backend=backend)
        got = vtp.prune(x, s, 4, method, lengths=lengths, backend=backend)
        assert torch.equal(got.indices, want.indices), backend
        assert torch.equal(got.entropy, want.entropy), backend


def test_meta_tensors():
    """The registered op infers shapes on the meta device, after the metadata checks; the backends
    that read values say that a meta tensor has none."""
    x, s = torch.empty(2, 10, 4, device="meta"), torch.empty(2, 10, device="meta")
    indices, erank, entropy = torch.ops.ada_vtp.prune(x, s, 3, "agile")
    assert (indices.shape, erank.shape, entropy.shape) == ((2, 3), (2,), (2,))
    assert indices.device.type == "meta" and indices.dtype == torch.int64
    assert torch.ops.ada_vtp.erank(x).shape == (2,)
    assert torch.ops.ada_vtp.attention_entropy(s).shape == (2,)
    assert message(lambda: torch.ops.ada_vtp.prune(x, s, 11)) == "keep = 11 is outside [1, N=10]"
    assert "meta tensor" in message(lambda: vtp.prune(x, s, 3, backend="reference"))
    assert "meta tensor" in message(lambda: vtp.erank(x, backend="reference"))
    assert "meta tensor" in message(lambda: vtp.attention_entropy(s, backend="reference"))
    assert "needs CPU tensors" in message(lambda: vtp.prune(x, s, 3, backend="cpu"))
    if triton_prune is not None:
        assert "features must be on a CUDA device" in message(lambda: triton_prune.prune(x, s, 3))


def test_fake_tensors():
    with FakeTensorMode() as mode:
        x, s = mode.from_tensor(torch.randn(2, 10, 4)), mode.from_tensor(torch.rand(2, 10))
        indices, _, _ = torch.ops.ada_vtp.prune(x, s, 3, "dpp", relevance=s)
        assert indices.shape == (2, 3)
        assert message(lambda: torch.ops.ada_vtp.prune(x, s, 0)) == "keep = 0 is outside [1, N=10]"
        assert "must have shape [B, N]=[2, 10]" in message(lambda: torch.ops.ada_vtp.prune(x, s[:, :9], 3))
        assert "relevance is only used" in message(lambda: torch.ops.ada_vtp.prune(x, s, 3, "agile", relevance=s))
        assert "unknown erank method" in message(lambda: torch.ops.ada_vtp.erank(x, None, "svd"))


@pytest.mark.parametrize("role", ["scores", "lengths", "relevance"])
def test_tensors_on_different_devices(role):
    """One argument on another device than the features: a ValueError naming it, whichever device
    the dispatcher picks (a meta argument sends a CPU call to the fake kernel)."""
    kw = dict(features=torch.randn(2, 10, 4), scores=torch.rand(2, 10), keep=3, method="dpp",
              lengths=torch.tensor([10, 8]), relevance=torch.rand(2, 10))
    on_cpu = kw[role]
    kw[role] = on_cpu.to("meta")
    want = f"{role} is on meta but features is on cpu"
    assert message(lambda: call_raw(kw)) == want
    assert message(lambda: vtp.prune(**kw, backend="reference")) == want
    if triton_prune is not None:
        assert message(lambda: call_triton(kw)) == want
    reversed_kw = {k: (v.to("meta") if isinstance(v, torch.Tensor) and k != role else v) for k, v in kw.items()}
    reversed_kw[role] = on_cpu
    assert message(lambda: call_raw(reversed_kw)) == f"{role} is on cpu but features is on meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("role", ["scores", "lengths", "relevance"])
def test_tensors_on_cpu_and_cuda(role):
    kw = dict(features=torch.randn(2, 10, 4).cuda(), scores=torch.rand(2, 10).cuda(), keep=3, method="dpp",
              lengths=torch.tensor([10, 8]).cuda(), relevance=torch.rand(2, 10).cuda())
    kw[role] = kw[role].cpu()
    assert message(lambda: call_raw(kw)) == f"{role} is on cpu but features is on cuda:0"


def test_sparse_tensors():
    x, s = torch.randn(2, 10, 4), torch.rand(2, 10)
    with pytest.raises(NotImplementedError, match="SparseCPU"):  # the dispatcher's own message
        torch.ops.ada_vtp.prune(x.to_sparse(), s, 3)
    assert "dense (strided)" in message(lambda: vtp.prune(x.to_sparse(), s, 3, backend="reference"))
    assert "dense (strided)" in message(lambda: vtp.prune(x, s.to_sparse(), 3, backend="reference"))


@pytest.mark.parametrize("keep", [0, -1, 11, 2**62, -(2**62)])
def test_keep_out_of_range_everywhere(keep):
    x, s = torch.randn(2, 10, 4), torch.rand(2, 10)
    want = f"keep = {keep} is outside [1, N=10]"
    assert message(lambda: torch.ops.ada_vtp.prune(x, s, keep)) == want
    assert message(lambda: vtp.prune(x, s, keep, backend="reference")) == want
    assert message(lambda: call_fake(dict(features=x, scores=s, keep=keep, method="agile", lengths=None,
                                          relevance=None))) == want
    if triton_prune is not None:
        assert message(lambda: triton_prune.prune(x, s, keep)) == want


@pytest.mark.parametrize("value", [2**62, -(2**62), 0, 11], ids=str)
def test_lengths_out_of_range_everywhere(value):
    x, s = torch.randn(2, 10, 4), torch.rand(2, 10)
    lengths = torch.tensor([10, value])
    want = f"lengths[1] = {value} is outside [1, N=10]"
    assert message(lambda: torch.ops.ada_vtp.prune(x, s, 1, "agile", lengths)) == want
    assert message(lambda: vtp.prune(x, s, 1, lengths=lengths, backend="reference")) == want
    assert message(lambda: torch.ops.ada_vtp.erank(x, lengths)) == want
    assert message(lambda: torch.ops.ada_vtp.attention_entropy(s, lengths)) == want
    if triton_prune is not None:
        assert message(lambda: triton_prune.prune(x, s, 1, "agile", lengths)) == want

"""The argument rules of the ops: each checked once through the public API, then shown to hold on
every entry point, then fuzzed.

Validation is one layer (ada_vtp_kernels/validation.py for the tensors, spec.PruneParams for the
parameters) that every backend and the fake kernels call before any kernel runs.  So:

1. every rule is checked once through vtp.prune / vtp.erank / vtp.attention_entropy with the
   default backend (the registered op on CPU tensors), pinning the whole message: the bad value
   and what was expected;
2. a handful of representative cases (a metadata, a value and a parameter error) go through every
   entry point (each backend, the raw op, the fake kernel, meta tensors, torch.compile) with the
   same message; the Triton kernels check values with device-side asserts, which under the
   interpreter raise a RuntimeError naming the rule;
3. hypothesis draws hostile calls (any dtype, shape, value, keep, parameter) for each backend: a
   ValueError naming an argument, or a valid result, never another exception.
"""

import importlib.util
import math
import re
import warnings

import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st
from torch._subclasses.fake_tensor import FakeTensorMode

import ada_vtp_kernels as vtp
from ada_vtp_kernels import spec

from support.strategies import every_dtype, examples, hostile_calls, tensor_of

NAN, INF = math.nan, math.inf
HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="needs the triton package")
G = torch.Generator().manual_seed(0)
X = torch.randn(2, 10, 4, generator=G)
S = torch.rand(2, 10, generator=G) + 0.01
R = torch.rand(2, 10, generator=G)
METHOD_CHOICES = ", ".join(map(repr, spec.METHODS))


def put(t: torch.Tensor, index, value) -> torch.Tensor:
    t = t.clone()
    t[index] = value
    return t


def qint8(t: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # torch deprecates quantized tensors; a caller may still pass one
        warnings.simplefilter("ignore", UserWarning)
        return torch.quantize_per_tensor(t, 0.1, 0, torch.qint8)


def exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


def prune(backend: str = "auto", **changes):
    """vtp.prune on the baseline call (2 images, 10 tokens, 4 channels, keep 3, agile) with `changes`."""
    kw = dict(features=X, scores=S, keep=3, method="agile", backend=backend) | changes
    return vtp.prune(kw.pop("features"), kw.pop("scores"), kw.pop("keep"), kw.pop("method"), **kw)


# --------------------------------------------------------------------------------------------
# 1. every rule, once, through the public API


def case(id_, changes, message, marks=()):
    return pytest.param(changes, message, id=id_, marks=marks)


PRUNE_RULES = [
    # features
    case("features-not-a-tensor", dict(features=X.tolist()), "features must be a torch.Tensor [B, N, D], got list"),
    case("features-dims", dict(features=X[0]), "features must have shape [B, N, D], got 2 dims (10, 4)"),
    case("features-dtype", dict(features=X.double()),
         "features must be float32, float16 or bfloat16, got torch.float64"),
    case("features-empty", dict(features=X[:, :, :0]), "features must be non-empty, got shape (2, 10, 0)"),
    case("features-sparse", dict(features=X.to_sparse()),
         "features must be a dense (strided) tensor, got layout torch.sparse_coo"),
    case("features-quantized", dict(features=qint8(X)),
         "features must be float32, float16 or bfloat16, got torch.qint8"),
    case("features-not-finite", dict(features=put(X, (1, 4, 2), NAN)), "features[1, 4, 2] = nan is not finite"),
    case("features-not-finite-in-a-ragged-row", dict(features=put(X, (1, 4, 0), -INF), lengths=torch.tensor([10, 5])),
         "features[1, 4, 0] = -inf is not finite"),
    # scores
    case("scores-not-a-tensor", dict(scores=S.tolist()), "scores must be a torch.Tensor [B, N], got list"),
    case("scores-shape", dict(scores=S[:, :9]), "scores must have shape [B, N]=[2, 10], got (2, 9)"),
    case("scores-dtype", dict(scores=S.long()),
         "scores must have a floating dtype (float16, bfloat16, float32 or float64), got torch.int64"),
    case("scores-device", dict(scores=S.to("meta")), "scores is on meta but features is on cpu"),
    case("scores-not-finite", dict(scores=put(S, (0, 7), INF)), "scores[0, 7] = inf is not finite"),
    case("scores-negative", dict(scores=put(S, (1, 3), -0.5)), "scores[1, 3] = -0.5 is negative; expected values >= 0"),
    # lengths
    case("lengths-not-a-tensor", dict(lengths=[10, 10]), "lengths must be an integer torch.Tensor [B], got list"),
    case("lengths-dtype", dict(lengths=torch.tensor([10.0, 10.0])),
         "lengths must have an integer dtype (uint8, int8, int16, int32 or int64), got torch.float32"),
    case("lengths-bool", dict(lengths=torch.tensor([True, True])),
         "lengths must have an integer dtype (uint8, int8, int16, int32 or int64), got torch.bool"),
    case("lengths-shape", dict(lengths=torch.tensor([10, 10, 10])), "lengths must have shape [B]=[2], got (3,)"),
    case("lengths-device", dict(lengths=torch.tensor([10, 10], device="meta")),
         "lengths is on meta but features is on cpu"),
    case("lengths-sparse", dict(lengths=torch.tensor([10, 10]).to_sparse()),
         "lengths must be a dense (strided) tensor, got layout torch.sparse_coo"),
    case("lengths-zero", dict(lengths=torch.tensor([10, 0])), "lengths[1] = 0 is outside [1, N=10]"),
    case("lengths-above-n", dict(lengths=torch.tensor([10, 11])), "lengths[1] = 11 is outside [1, N=10]"),
    case("lengths-negative-int8", dict(lengths=torch.tensor([-1, 10], dtype=torch.int8)),
         "lengths[0] = -1 is outside [1, N=10]"),
    # keep
    case("keep-zero", dict(keep=0), "keep = 0 is outside [1, N=10]"),
    case("keep-above-n", dict(keep=11), "keep = 11 is outside [1, N=10]"),
    case("keep-huge", dict(keep=2**62), f"keep = {2**62} is outside [1, N=10]"),
    case("keep-above-a-length", dict(keep=6, lengths=torch.tensor([10, 5])),
         "keep = 6 is outside [1, the shortest row's length 5]"),
    case("keep-bool", dict(keep=True), "keep must be an int, got bool"),
    case("keep-float", dict(keep=3.0), "keep must be an int, got float"),
    # relevance (the rule that only dpp reads it: test_relevance_only_with_dpp)
    case("relevance-shape", dict(method="dpp", relevance=R[:1]),
         "relevance must have shape [B, N]=[2, 10], got (1, 10)"),
    case("relevance-dtype", dict(method="dpp", relevance=R.int()),
         "relevance must have a floating dtype (float16, bfloat16, float32 or float64), got torch.int32"),
    case("relevance-not-finite", dict(method="dpp", relevance=put(R, (0, 5), NAN)),
         "relevance[0, 5] = nan is not finite"),
    case("relevance-negative", dict(method="dpp", relevance=put(R, (1, 1), -0.25)),
         "relevance[1, 1] = -0.25 is negative; expected values >= 0"),
    # names
    case("method-unknown", dict(method="fastv"), f"unknown method 'fastv'; expected one of {METHOD_CHOICES}"),
    case("parameter-unknown", dict(tau=0.1),
         f"unknown parameter(s) ['tau']; expected some of {sorted(spec.PARAM_NAMES)}"),
    case("complexity-unknown", dict(complexity="rank"),
         "unknown complexity 'rank'; expected one of 'erank', 'entropy'"),
    case("erank_method-unknown", dict(erank_method="svd"),
         "unknown erank_method 'svd'; expected one of 'exact', 'fast'"),
    case("backend-unknown", dict(backend="gpu"),
         "unknown backend 'gpu'; expected one of 'auto', 'cpu', 'reference', 'triton'"),
    # parameter ranges and types
    case("important_ratio-above-1", dict(method="vispruner", important_ratio=1.5),
         "important_ratio = 1.5; expected a finite number >= 0 and <= 1"),
    case("attention_ratio-negative", dict(method="mix", attention_ratio=-0.1),
         "attention_ratio = -0.1; expected a finite number >= 0 and <= 1"),
    case("gain-nan", dict(method="mix_adaptive", gain=NAN), "gain = nan; expected a finite number"),
    case("erank_ref-zero", dict(erank_ref=0.0), "erank_ref = 0; expected a finite number > 0"),
    case("entropy_ref-negative", dict(entropy_ref=-5.75), "entropy_ref = -5.75; expected a finite number > 0"),
    case("tau_max-inf", dict(tau_max=INF), "tau_max = inf; expected a finite number >= 0"),
    case("tau_scale-negative", dict(tau_scale=-0.01), "tau_scale = -0.01; expected a finite number >= 0"),
    case("number-as-text", dict(tau_max="0.2"), "tau_max = '0.2'; expected a finite number >= 0"),
    case("number-as-bool", dict(gain=True), "gain = True; expected a finite number"),
    case("compute_erank-not-bool", dict(compute_erank=1), "compute_erank = 1; expected True or False"),
    case("seed-negative", dict(method="random", seed=-1), "seed = -1; expected an int in [0, 2**31 - 1]"),
    case("seed-too-large", dict(method="random", seed=2**31), "seed = 2147483648; expected an int in [0, 2**31 - 1]"),
    case("seed-float", dict(method="random", seed=1.0), "seed = 1.0; expected an int in [0, 2**31 - 1]"),
    case("seed-bool", dict(method="random", seed=True), "seed = True; expected an int in [0, 2**31 - 1]"),
    # backends
    case("backend-cpu-with-meta-tensors", dict(features=X.to("meta"), scores=S.to("meta"), backend="cpu"),
         "backend='cpu' needs CPU tensors, got tensors on meta"),
    case("meta-tensors-hold-no-values", dict(features=X.to("meta"), scores=S.to("meta"), backend="reference"),
         "features is a meta tensor, which holds no values; this backend needs real tensors (the registered op "
         "torch.ops.ada_vtp.* infers meta shapes)"),
]


@pytest.mark.requires_ext
@pytest.mark.parametrize("changes, message", PRUNE_RULES)
def test_prune_rejects(changes, message):
    with pytest.raises(ValueError, match=exactly(message)):
        prune(**changes)


@pytest.mark.requires_ext
def test_relevance_only_with_dpp():
    """relevance is the DPP's r: every other method rejects it (and dpp takes it)."""
    assert prune(method="dpp", relevance=R).indices.shape == (2, 3)
    for method in spec.METHODS.keys() - {"dpp"}:
        with pytest.raises(ValueError, match=exactly(f"relevance is only used by method='dpp', got method={method!r}")):
            prune(method=method, relevance=R)


STATISTICS_RULES = [
    case("erank-method-unknown", lambda: vtp.erank(X, None, "svd"),
         "unknown erank method 'svd'; expected one of 'exact', 'fast'"),
    case("erank-features-dtype", lambda: vtp.erank(X.int()),
         "features must be float32, float16 or bfloat16, got torch.int32"),
    case("erank-features-not-finite", lambda: vtp.erank(put(X, (0, 9, 3), NAN), torch.tensor([10, 3])),
         "features[0, 9, 3] = nan is not finite"),
    case("erank-lengths-above-n", lambda: vtp.erank(X, torch.tensor([3, 11])), "lengths[1] = 11 is outside [1, N=10]"),
    case("entropy-scores-not-a-tensor", lambda: vtp.attention_entropy(S.tolist()),
         "scores must be a non-empty tensor [B, N], got list"),
    case("entropy-scores-dims", lambda: vtp.attention_entropy(S[0]),
         "scores must be a non-empty tensor [B, N], got (10,)"),
    case("entropy-scores-empty", lambda: vtp.attention_entropy(S[:, :0]),
         "scores must be a non-empty tensor [B, N], got (2, 0)"),
    case("entropy-scores-dtype", lambda: vtp.attention_entropy(S.bool()),
         "scores must have a floating dtype (float16, bfloat16, float32 or float64), got torch.bool"),
    case("entropy-scores-negative", lambda: vtp.attention_entropy(put(S, (0, 2), -1.0)),
         "scores[0, 2] = -1 is negative; expected values >= 0"),
    case("entropy-lengths-shape", lambda: vtp.attention_entropy(S, torch.tensor([3, 3, 3])),
         "lengths must have shape [B]=[2], got (3,)"),
]


@pytest.mark.requires_ext
@pytest.mark.parametrize("call, message", STATISTICS_RULES)
def test_statistics_reject(call, message):
    with pytest.raises(ValueError, match=exactly(message)):
        call()


BACKENDS = ["reference", pytest.param("auto", marks=pytest.mark.requires_ext),
            pytest.param("triton", marks=needs_triton)]


def on_backend_device(backend: str, *tensors):
    """The Triton backend's tensors on the GPU when there is one (else the interpreter runs them)."""
    move = backend == "triton" and torch.cuda.is_available()
    return [t.cuda() if move and isinstance(t, torch.Tensor) else t for t in tensors]


@pytest.mark.parametrize("backend", BACKENDS)
def test_padding_may_hold_anything(backend):
    """NaN, inf and negative values after a row's length are never read: every method returns
    what it returns on a clean padding."""
    lengths = torch.tensor([10, 4])
    dirty_x, dirty_s, dirty_r = X.clone(), S.clone(), R.clone()
    dirty_x[1, 4:] = NAN
    dirty_x[1, 5, 1] = INF
    dirty_s[1, 4:] = NAN
    dirty_s[1, 6] = -3.0
    dirty_r[1, 4:] = -INF
    clean_x, clean_s, clean_r = (put(t, (1, slice(4, None)), 0.0) for t in (X, S, R))

    def run(method, x, s, r):
        x, s, r, n = on_backend_device(backend, x, s, r if method == "dpp" else None, lengths)
        return vtp.prune(x, s, 3, method, lengths=n, relevance=r, backend=backend)

    for method in spec.METHODS:
        dirty, clean = run(method, dirty_x, dirty_s, dirty_r), run(method, clean_x, clean_s, clean_r)
        assert torch.equal(dirty.indices, clean.indices), method
        assert torch.equal(dirty.entropy, clean.entropy), method
        assert (dirty.indices[1] < 4).all(), method



@pytest.mark.parametrize("backend", BACKENDS)
def test_features_are_read_only_where_the_method_reads_them(backend):
    """Top-K by score or seed reads no feature value: NaN features change nothing there (their
    metadata is still checked), and fail every method that compares tokens or computes the erank."""
    x, s = put(X, (0, 2, 1), NAN), S
    x, s = on_backend_device(backend, x, s)
    clean_x, _ = on_backend_device(backend, X, S)
    error = RuntimeError if backend == "triton" else ValueError
    for method, selection in ((m, spec.METHODS[m].selection) for m in spec.METHODS):
        if selection is spec.Selection.TOPK:
            got = vtp.prune(x, s, 3, method, backend=backend)
            assert torch.equal(got.indices, vtp.prune(clean_x, s, 3, method, backend=backend).indices), method
            with pytest.raises(error, match="features"):
                vtp.prune(x, s, 3, method, compute_erank=True, backend=backend)
        elif method != "dpp":
            with pytest.raises(error, match="features"):
                vtp.prune(x, s, 3, method, backend=backend)
    with pytest.raises(ValueError, match="features must be float32"):
        vtp.prune(x.double(), s, 3, "attention", backend=backend)

BROADCASTS = {
    "batch": lambda x, s: (x[:1].expand(3, -1, -1), s[:1].expand(3, -1)),
    "tokens": lambda x, s: (x[:, :1].expand(-1, 12, -1), s),
    "channels": lambda x, s: (x[:, :, :1].expand(-1, -1, 6), s),
    "scalar": lambda x, s: (torch.ones(()).expand(3, 12, 6), torch.ones(()).expand(3, 12)),
}


@pytest.mark.requires_ext
def test_stride_zero_tensors():
    """Broadcast views (stride 0 along any dimension, or all of them) are valid inputs: the same bits
    as their contiguous copies, for every method, on the C++ op and the reference."""
    g = torch.Generator().manual_seed(1)
    for name, broadcast in BROADCASTS.items():
        x, s = broadcast(torch.randn(3, 12, 6, generator=g), torch.rand(3, 12, generator=g))
        assert 0 in x.stride()
        for method in spec.METHODS:
            for backend in ("auto", "reference"):
                want = vtp.prune(x.contiguous(), s.contiguous(), 4, method, backend=backend)
                got = vtp.prune(x, s, 4, method, backend=backend)
                assert torch.equal(got.indices, want.indices), (name, method, backend)
                assert torch.equal(got.entropy, want.entropy), (name, method, backend)


ACCEPTED = {  # the dtypes docs/DESIGN.md promises for each tensor argument
    "features": (torch.float32, torch.float16, torch.bfloat16),
    "scores": (torch.float16, torch.bfloat16, torch.float32, torch.float64),
    "relevance": (torch.float16, torch.bfloat16, torch.float32, torch.float64),
    "lengths": (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64),
}
DTYPE_MESSAGES = {
    "features": "features must be float32, float16 or bfloat16, got {}",
    "scores": "scores must have a floating dtype (float16, bfloat16, float32 or float64), got {}",
    "relevance": "relevance must have a floating dtype (float16, bfloat16, float32 or float64), got {}",
    "lengths": "lengths must have an integer dtype (uint8, int8, int16, int32 or int64), got {}",
}


@pytest.mark.requires_ext
def test_every_dtype():
    """Every dtype torch has, in every tensor argument: the accepted ones give the reference's
    indices on the C++ op; any other is a ValueError naming the argument and the dtype (the
    quantized ones on backend="reference" only: test_prune_rejects[features-quantized])."""
    base = dict(features=X, scores=S, relevance=R, lengths=torch.tensor([10, 7]))
    for role, accepted in ACCEPTED.items():
        for dtype in every_dtype():
            made = tensor_of(base[role], dtype)
            if made is None:
                continue  # torch cannot make a tensor of it (the bit dtypes, say)
            kw = base | {role: made, "keep": 3, "method": "dpp"}
            if dtype in accepted:
                assert torch.equal(prune("auto", **kw).indices, prune("reference", **kw).indices), (role, dtype)
                continue
            for backend in ("reference",) if made.is_quantized else ("reference", "auto"):
                with pytest.raises(ValueError, match=exactly(DTYPE_MESSAGES[role].format(dtype))):
                    prune(backend, **kw)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tensors_on_cpu_and_cuda():
    for role in ("scores", "lengths", "relevance"):
        kw = dict(features=X.cuda(), scores=S.cuda(), method="dpp", lengths=torch.tensor([10, 8]).cuda(),
                  relevance=R.cuda())
        kw[role] = kw[role].cpu()
        with pytest.raises(ValueError, match=exactly(f"{role} is on cpu but features is on cuda:0")):
            prune(**kw)


# --------------------------------------------------------------------------------------------
# 2. every entry point goes through the same layer

# (op, arguments, the error's tier, the host check's message, the device assert's message)
SAME_LAYER = {
    "prune-metadata": ("prune", dict(scores=S[:, :9]), "metadata", "scores must have shape [B, N]=[2, 10], got (2, 9)",
                       None),
    "prune-value": ("prune", dict(lengths=torch.tensor([10, 0])), "value", "lengths[1] = 0 is outside [1, N=10]",
                    "ada_vtp: lengths outside [1, N=10]"),
    "prune-parameter": ("prune", dict(tau_max=-1.0), "parameter", "tau_max = -1; expected a finite number >= 0", None),
    "erank-metadata": ("erank", dict(method="svd"), "metadata",
                       "unknown erank method 'svd'; expected one of 'exact', 'fast'", None),
    "entropy-value": ("attention_entropy", dict(scores=put(S, (1, 2), NAN)), "value",
                      "scores[1, 2] = nan is not finite",
                      "ada_vtp: scores must be finite and >= 0 on the valid tokens"),
}
BASELINE = {
    "prune": dict(features=X, scores=S, keep=3, method="agile", lengths=None),
    "erank": dict(features=X, lengths=None, method="exact"),
    "attention_entropy": dict(scores=S, lengths=None),
}


def functional(op: str, kw: dict, backend: str):
    kw = dict(kw)
    if op == "prune":
        return vtp.prune(kw.pop("features"), kw.pop("scores"), kw.pop("keep"), kw.pop("method"), backend=backend, **kw)
    return getattr(vtp, op)(*kw.values(), backend=backend)


def raw(op: str, kw: dict):
    if op == "prune":
        kw = dict(kw)
        return torch.ops.ada_vtp.prune(kw.pop("features"), kw.pop("scores"), kw.pop("keep"), kw.pop("method"), **kw)
    return getattr(torch.ops.ada_vtp, op)(*kw.values())


def compiled(op: str, kw: dict):
    """The raw op inside torch.compile(fullgraph=True): the fake kernel's checks run while tracing
    (Dynamo re-raises their ValueError inside its TorchRuntimeError), the value checks in the graph."""
    torch._dynamo.reset()
    tensors = {k: v for k, v in kw.items() if isinstance(v, torch.Tensor)}
    rest = {k: v for k, v in kw.items() if k not in tensors}
    return torch.compile(lambda t: raw(op, t | rest), fullgraph=True, backend="aot_eager")(tensors)


def with_fake_tensors(op: str, kw: dict):
    with FakeTensorMode() as mode:
        return raw(op, {k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in kw.items()})


def with_meta_tensors(op: str, kw: dict):
    return raw(op, {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in kw.items()})


ENTRY_POINTS = {
    "reference": lambda op, kw: functional(op, kw, "reference"),
    "cpu": lambda op, kw: functional(op, kw, "cpu"),
    "triton": lambda op, kw: functional(op, {k: on_backend_device("triton", v)[0] for k, v in kw.items()}, "triton"),
    "op": raw,
    "fake": with_fake_tensors,
    "meta": with_meta_tensors,
    "compile": compiled,
}
ENTRY_MARKS = {"cpu": pytest.mark.requires_ext, "op": pytest.mark.requires_ext, "compile": pytest.mark.requires_ext,
               "triton": needs_triton}


@pytest.mark.parametrize("entry", [pytest.param(e, marks=ENTRY_MARKS.get(e, ())) for e in ENTRY_POINTS])
@pytest.mark.parametrize("name", list(SAME_LAYER))
def test_every_entry_point_has_the_same_checks(name, entry):
    """The same message on every entry point; the fake kernels (FakeTensor, meta tensors) see no
    values, so a value error passes there and the output shapes come back."""
    op, changes, tier, message, device_message = SAME_LAYER[name]
    kw = BASELINE[op] | changes
    call = ENTRY_POINTS[entry]
    if tier == "value" and entry in ("fake", "meta"):
        out = call(op, kw)
        indices = out[0] if op == "prune" else out
        assert indices.shape == ((2, 3) if op == "prune" else (2,))
        return
    if tier == "value" and entry == "triton":
        if torch.cuda.is_available():
            pytest.skip("a device-side assert ends the CUDA context; the interpreter run checks this case")
        with pytest.raises(RuntimeError, match=exactly(device_message)):
            call(op, kw)
        return
    if entry == "compile" and tier != "value":
        with pytest.raises(torch._dynamo.exc.TorchRuntimeError, match=re.escape(repr(ValueError(message)))):
            call(op, kw)
        return
    with pytest.raises(ValueError, match=exactly(message)):
        call(op, kw)


# --------------------------------------------------------------------------------------------
# 3. hostile calls: a clear ValueError or a valid result

# what a ValueError's message starts with: the argument or parameter at fault, or "unknown <name>"
FIRST_WORDS = ("features", "scores", "keep", "lengths", "relevance", "backend", "method", "parameter", "erank",
               *spec.PARAM_NAMES)


def check_error(error: Exception, backend: str, label: str) -> None:
    message = str(error)
    if isinstance(error, ValueError):
        first = re.match(r"(?:unknown )?(\w+)", message)
        assert first and first.group(1) in FIRST_WORDS and "\n" not in message, f"{message!r}: {label}"
        return
    # the Triton kernels' value checks are device asserts: under the interpreter, a RuntimeError
    assert backend == "triton" and isinstance(error, RuntimeError) and message.startswith("ada_vtp: "), \
        f"{type(error).__name__}: {message!r}: {label}"


def check_rows(indices: torch.Tensor, lengths: list[int], keep: int, label: str) -> None:
    assert indices.dtype == torch.int64 and indices.shape == (len(lengths), keep), label
    for b, length in enumerate(lengths):
        row = indices[b]
        assert 0 <= int(row.min()) and int(row.max()) < length and bool((row[1:] > row[:-1]).all()), label


HOSTILE = {
    "reference": dict(),
    "auto": dict(),
    "triton": dict(max_n=8, max_dim=4),
}


@pytest.mark.parametrize("backend", BACKENDS)
@examples(1.0)
@given(data=st.data())
def test_hostile_calls(backend, data):
    """prune, erank and attention_entropy on a drawn hostile call (support.strategies.hostile_calls):
    each raises a ValueError whose message starts with the argument at fault (the Triton kernels'
    value checks: a RuntimeError "ada_vtp: <rule>"), or returns well-formed results."""
    call = data.draw(hostile_calls(**HOSTILE[backend]), label="call")
    if backend == "triton":
        call.features, call.scores, call.lengths, call.relevance = on_backend_device(
            backend, call.features, call.scores, call.lengths, call.relevance)
    for op in ("prune", "erank", "attention_entropy"):
        try:
            out = getattr(call, op)(backend)
        except (ValueError, RuntimeError) as error:
            check_error(error, backend, f"{op}: {call.label}")
            event(f"{op}: {type(error).__name__}")
            continue
        event(f"{op}: a result")
        rows = call.scores if op == "attention_entropy" else call.features
        lengths = rows.shape[0] * [rows.shape[1]] if call.lengths is None else call.lengths.tolist()
        if op == "prune":
            check_rows(out.indices.cpu(), lengths, call.keep, call.label)
            assert torch.isfinite(out.entropy).all(), call.label
        else:
            assert out.shape == (len(lengths),) and out.dtype == torch.float32, call.label
            assert torch.isfinite(out).all(), call.label


@st.composite
def bad_values(draw):
    """A NaN, inf or negative value at any valid position of features, scores or relevance."""
    batch, n, dim = draw(st.integers(1, 3)), draw(st.integers(1, 30)), draw(st.integers(1, 8))
    lengths = [draw(st.integers(1, n)) for _ in range(batch)]
    role = draw(st.sampled_from(["features", "scores", "relevance"]))
    b = draw(st.integers(0, batch - 1))
    position = (b, draw(st.integers(0, lengths[b] - 1)))
    if role == "features":
        position += (draw(st.integers(0, dim - 1)),)
    bad = draw(st.sampled_from([NAN, INF, -INF] + ([] if role == "features" else [-1e-30, -2.0])))
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
    return batch, n, dim, lengths, role, position, bad, dtype


@pytest.mark.parametrize("backend", BACKENDS)
@examples(0.5)
@given(drawn=bad_values())
def test_bad_value_anywhere_is_named(backend, drawn):
    """A bad value at any valid position: the host checks name that position and value (the first
    bad element: here the only one); the Triton kernels' device assert names the rule."""
    batch, n, dim, lengths, role, position, bad, dtype = drawn
    g = torch.Generator().manual_seed(0)
    kw = dict(features=torch.randn(batch, n, dim, generator=g).to(dtype), scores=torch.rand(batch, n, generator=g),
              relevance=torch.rand(batch, n, generator=g))
    kw[role][position] = bad
    where = f"{role}[{', '.join(map(str, position))}] = {spec.number_text(bad)}"
    message = f"{where} is not finite" if not math.isfinite(bad) else f"{where} is negative; expected values >= 0"
    if backend == "triton":
        rule = "features must be finite" if role == "features" else f"{role} must be finite and >= 0"
        error, message = RuntimeError, f"ada_vtp: {rule} on the valid tokens"
    else:
        error = ValueError
    x, s, r, n_ = on_backend_device(backend, kw["features"], kw["scores"], kw["relevance"], torch.tensor(lengths))
    with pytest.raises(error, match=exactly(message)):
        vtp.prune(x, s, 1, "dpp", lengths=n_, relevance=r, backend=backend)

"""Every bad input raises ValueError naming the argument, on every backend.

Each case is a function of a valid baseline call (2 images, 10 tokens, 4 channels, keep 3,
method "agile") that breaks one thing.  It runs through vtp.prune with backend="reference" and
backend="cpu", and through the raw torch.ops.ada_vtp.prune; the C++ checks promise the same
messages as ada_vtp_kernels/_validation.py, which `test_cpu_message_equals_reference` pins.
"""

import pytest
import torch

import ada_vtp_kernels as vtp
from ada_vtp_kernels import defaults

NAN, INF = float("nan"), float("inf")
PARAM_NAMES = ["important_ratio", "attention_ratio", "gain", "erank_ref", "entropy_ref", "tau_max",
               "tau_scale", "complexity", "erank_method", "compute_erank"]


def baseline():
    torch.manual_seed(0)
    return dict(features=torch.randn(2, 10, 4), scores=torch.rand(2, 10) + 0.01, keep=3, method="agile",
                lengths=None, relevance=None)


def with_(**changes):
    def make():
        kw = baseline()
        kw.update({k: (v() if callable(v) else v) for k, v in changes.items()})
        return kw
    return make


def set_value(name, index, value, **more):
    def make():
        kw = baseline()
        kw.update(more)
        t = kw[name].clone()
        t[index] = value
        kw[name] = t
        return kw
    return make


DPP_HALF = dict(method="dpp", relevance=torch.full((2, 10), 0.5))

# (id, input maker, the argument name the message must contain)
CASES = [
    # features
    ("features-2d", with_(features=lambda: torch.randn(10, 4)), "features"),
    ("features-4d", with_(features=lambda: torch.randn(2, 10, 4, 1)), "features"),
    ("features-float64", with_(features=lambda: torch.randn(2, 10, 4, dtype=torch.float64)), "features"),
    ("features-int32", with_(features=lambda: torch.ones(2, 10, 4, dtype=torch.int32)), "features"),
    ("features-int64", with_(features=lambda: torch.ones(2, 10, 4, dtype=torch.int64)), "features"),
    ("features-bool", with_(features=lambda: torch.ones(2, 10, 4, dtype=torch.bool)), "features"),
    ("features-empty-batch",
     with_(features=lambda: torch.randn(0, 10, 4), scores=lambda: torch.rand(0, 10)), "features"),
    ("features-empty-tokens",
     with_(features=lambda: torch.randn(2, 0, 4), scores=lambda: torch.rand(2, 0)), "features"),
    ("features-empty-channels", with_(features=lambda: torch.randn(2, 10, 0)), "features"),
    ("features-nan", set_value("features", (1, 4, 2), NAN), "features"),
    ("features-inf", set_value("features", (0, 0, 0), INF), "features"),
    ("features-neg-inf", set_value("features", (1, 9, 3), -INF), "features"),
    ("features-nan-fp16", with_(features=lambda: torch.full((2, 10, 4), NAN, dtype=torch.float16)), "features"),
    ("features-inf-bf16", with_(features=lambda: torch.full((2, 10, 4), INF, dtype=torch.bfloat16)), "features"),
    ("features-nan-in-valid-row-of-ragged", set_value("features", (1, 4, 0), NAN, lengths=torch.tensor([10, 5])),
     "features"),
    # scores
    ("scores-short", with_(scores=lambda: torch.rand(2, 9)), "scores"),
    ("scores-batch", with_(scores=lambda: torch.rand(3, 10)), "scores"),
    ("scores-1d", with_(scores=lambda: torch.rand(20)), "scores"),
    ("scores-3d", with_(scores=lambda: torch.rand(2, 10, 1)), "scores"),
    ("scores-empty", with_(scores=lambda: torch.rand(2, 0)), "scores"),
    ("scores-int", with_(scores=lambda: torch.ones(2, 10, dtype=torch.int64)), "scores"),
    ("scores-bool", with_(scores=lambda: torch.ones(2, 10, dtype=torch.bool)), "scores"),
    ("scores-negative", set_value("scores", (1, 3), -0.5), "scores"),
    ("scores-negative-fp32-value", set_value("scores", (0, 2), -0.1), "scores"),
    ("scores-negative-whole", set_value("scores", (0, 2), -1.0), "scores"),
    ("scores-nan", set_value("scores", (0, 7), NAN), "scores"),
    ("scores-inf", set_value("scores", (1, 0), INF), "scores"),
    ("scores-neg-inf", set_value("scores", (1, 0), -INF), "scores"),
    ("scores-negative-before-nan", set_value("scores", (0, slice(1, 3)), torch.tensor([-1.0, NAN])), "scores"),
    # lengths
    ("lengths-2d", with_(lengths=lambda: torch.tensor([[10], [10]])), "lengths"),
    ("lengths-too-many", with_(lengths=lambda: torch.tensor([10, 10, 10])), "lengths"),
    ("lengths-scalar", with_(lengths=lambda: torch.tensor(10)), "lengths"),
    ("lengths-float", with_(lengths=lambda: torch.tensor([10.0, 10.0])), "lengths"),
    ("lengths-bool", with_(lengths=lambda: torch.tensor([True, True])), "lengths"),
    ("lengths-zero", with_(lengths=lambda: torch.tensor([10, 0])), "lengths"),
    ("lengths-negative", with_(lengths=lambda: torch.tensor([-1, 10])), "lengths"),
    ("lengths-above-n", with_(lengths=lambda: torch.tensor([10, 11])), "lengths"),
    # keep
    ("keep-zero", with_(keep=0), "keep"),
    ("keep-negative", with_(keep=-2), "keep"),
    ("keep-above-n", with_(keep=11), "keep"),
    ("keep-above-a-length", with_(keep=6, lengths=lambda: torch.tensor([10, 5])), "keep"),
    # relevance
    ("relevance-shape", with_(method="dpp", relevance=lambda: torch.rand(2, 9)), "relevance"),
    ("relevance-1d", with_(method="dpp", relevance=lambda: torch.rand(10)), "relevance"),
    ("relevance-int", with_(method="dpp", relevance=lambda: torch.ones(2, 10, dtype=torch.int32)), "relevance"),
    ("relevance-negative", set_value("relevance", (1, 1), -0.25, **DPP_HALF), "relevance"),
    ("relevance-nan", set_value("relevance", (0, 5), NAN, **DPP_HALF), "relevance"),
    ("relevance-inf", set_value("relevance", (0, 5), INF, **DPP_HALF), "relevance"),
    *[(f"relevance-with-{m}", with_(method=m, relevance=lambda: torch.rand(2, 10)), "relevance")
      for m in defaults.METHODS if m != "dpp"],
    # choices
    ("method-unknown", with_(method="fastv"), "method"),
    ("method-case", with_(method="Agile"), "method"),
    ("complexity-unknown", with_(complexity="rank"), "complexity"),
    ("erank_method-unknown", with_(erank_method="svd"), "erank_method"),
    # ranges
    ("important_ratio-negative", with_(important_ratio=-0.1), "important_ratio"),
    ("important_ratio-above-one", with_(important_ratio=1.5), "important_ratio"),
    ("important_ratio-nan", with_(important_ratio=NAN), "important_ratio"),
    ("attention_ratio-above-one", with_(attention_ratio=2.0), "attention_ratio"),
    ("attention_ratio-negative", with_(attention_ratio=-1e-9), "attention_ratio"),
    ("gain-inf", with_(gain=INF), "gain"),
    ("gain-nan", with_(gain=NAN), "gain"),
    ("erank_ref-zero", with_(erank_ref=0.0), "erank_ref"),
    ("erank_ref-negative", with_(erank_ref=-90.0), "erank_ref"),
    ("erank_ref-inf", with_(erank_ref=INF), "erank_ref"),
    ("entropy_ref-zero", with_(entropy_ref=0.0), "entropy_ref"),
    ("tau_max-negative", with_(tau_max=-0.1), "tau_max"),
    ("tau_max-inf", with_(tau_max=INF), "tau_max"),
    ("tau_max-nan", with_(tau_max=NAN), "tau_max"),
    ("tau_scale-negative", with_(tau_scale=-0.01), "tau_scale"),
]
CASE_IDS = [c[0] for c in CASES]


def call_functional(kw, backend):
    kw = dict(kw)
    return vtp.prune(kw.pop("features"), kw.pop("scores"), kw.pop("keep"), kw.pop("method"), backend=backend, **kw)


def call_raw(kw, op=torch.ops.ada_vtp.prune):
    """`op` (the raw op, or a launcher with its signature) with the case's arguments positionally."""
    kw = dict(kw)
    args = [kw.pop(k) for k in ("features", "scores", "keep", "method", "lengths", "relevance")]
    return op(*args, **kw)


def raises_naming(fn, name) -> str:
    with pytest.raises(ValueError) as info:
        fn()
    message = str(info.value)
    assert name in message, f"message does not name {name!r}: {message}"
    return message


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_reference_rejects(case):
    _, make, name = case
    raises_naming(lambda: call_functional(make(), "reference"), name)


@pytest.mark.requires_ext
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_cpu_rejects(case):
    _, make, name = case
    raises_naming(lambda: call_functional(make(), "cpu"), name)
    raises_naming(lambda: call_raw(make()), name)


@pytest.mark.requires_ext
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_cpu_message_equals_reference(case):
    """The C++ checks promise _validation.py's messages word for word."""
    _, make, name = case
    ref = raises_naming(lambda: call_functional(make(), "reference"), name)
    cpu = raises_naming(lambda: call_raw(make()), name)
    assert cpu == ref


def test_reference_rejects_non_tensors():
    kw = baseline()
    with pytest.raises(ValueError, match="features"):
        vtp.prune([[[1.0]]], kw["scores"], 1, backend="reference")
    with pytest.raises(ValueError, match="scores"):
        vtp.prune(kw["features"], [0.1] * 10, 1, backend="reference")
    with pytest.raises(ValueError, match="lengths"):
        vtp.prune(kw["features"], kw["scores"], 1, lengths=[10, 10], backend="reference")
    with pytest.raises(ValueError, match="keep"):
        vtp.prune(kw["features"], kw["scores"], 2.0, backend="reference")
    with pytest.raises(ValueError, match="keep"):
        vtp.prune(kw["features"], kw["scores"], True, backend="reference")


@pytest.mark.parametrize("backend", ["gpu", "CPU", "", "triton2"])
def test_unknown_backend(backend):
    kw = baseline()
    with pytest.raises(ValueError, match="backend"):
        vtp.prune(kw["features"], kw["scores"], 3, backend=backend)
    with pytest.raises(ValueError, match="backend"):
        vtp.erank(kw["features"], backend=backend)
    with pytest.raises(ValueError, match="backend"):
        vtp.attention_entropy(kw["scores"], backend=backend)


# --------------------------------------------------------------------------------------------
# padding may hold anything, NaN included


def padded_with_garbage():
    kw = baseline()
    kw["lengths"] = torch.tensor([10, 4])
    kw["features"][1, 4:] = NAN
    kw["features"][1, 5, 1] = INF
    kw["scores"][1, 4:] = NAN
    kw["scores"][1, 6] = -3.0
    return kw


def backends():
    return ["reference", pytest.param("cpu", marks=pytest.mark.requires_ext)]


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("method", defaults.METHODS)
def test_nan_in_padding_is_allowed(method, backend):
    kw = padded_with_garbage()
    if method == "dpp":
        kw["relevance"] = torch.rand(2, 10)
        kw["relevance"][1, 4:] = NAN
    res = call_functional(dict(kw, method=method), backend)
    clean = dict(kw, method=method)
    clean["features"] = kw["features"].nan_to_num(0.0, 0.0, 0.0)
    clean["scores"] = kw["scores"].nan_to_num(0.0).clamp_min(0)
    if method == "dpp":
        clean["relevance"] = kw["relevance"].nan_to_num(0.0)
    assert torch.equal(res.indices, call_functional(clean, backend).indices)
    assert (res.indices[1] < 4).all()
    assert torch.isfinite(res.entropy).all()


# --------------------------------------------------------------------------------------------
# erank and attention_entropy


ERANK_CASES = [
    ("features-2d", dict(features=lambda: torch.randn(10, 4)), "features"),
    ("features-float64", dict(features=lambda: torch.randn(2, 10, 4, dtype=torch.float64)), "features"),
    ("features-int", dict(features=lambda: torch.ones(2, 10, 4, dtype=torch.int32)), "features"),
    ("features-empty", dict(features=lambda: torch.randn(2, 0, 4)), "features"),
    ("features-nan", dict(features=lambda: torch.full((2, 10, 4), NAN)), "features"),
    ("lengths-shape", dict(lengths=lambda: torch.tensor([3])), "lengths"),
    ("lengths-float", dict(lengths=lambda: torch.tensor([3.0, 3.0])), "lengths"),
    ("lengths-zero", dict(lengths=lambda: torch.tensor([0, 3])), "lengths"),
    ("lengths-above-n", dict(lengths=lambda: torch.tensor([3, 11])), "lengths"),
    ("method-unknown", dict(method="svd"), "method"),
]


def erank_call(spec, backend):
    torch.manual_seed(0)
    kw = dict(features=torch.randn(2, 10, 4), lengths=None, method="exact")
    kw.update({k: (v() if callable(v) else v) for k, v in spec.items()})
    if backend == "raw":
        return lambda: torch.ops.ada_vtp.erank(kw["features"], kw["lengths"], kw["method"])
    return lambda: vtp.erank(kw["features"], kw["lengths"], kw["method"], backend=backend)


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=pytest.mark.requires_ext),
                                     pytest.param("raw", marks=pytest.mark.requires_ext)])
@pytest.mark.parametrize("case", ERANK_CASES, ids=[c[0] for c in ERANK_CASES])
def test_erank_rejects(case, backend):
    _, spec, name = case
    raises_naming(erank_call(spec, backend), name)


ENTROPY_CASES = [
    ("scores-1d", dict(scores=lambda: torch.rand(10)), "scores"),
    ("scores-3d", dict(scores=lambda: torch.rand(2, 10, 1)), "scores"),
    ("scores-empty", dict(scores=lambda: torch.rand(2, 0)), "scores"),
    ("scores-int", dict(scores=lambda: torch.ones(2, 10, dtype=torch.int64)), "scores"),
    ("scores-negative", dict(scores=lambda: -torch.rand(2, 10)), "scores"),
    ("scores-nan", dict(scores=lambda: torch.full((2, 10), NAN)), "scores"),
    ("scores-inf", dict(scores=lambda: torch.full((2, 10), INF)), "scores"),
    ("lengths-shape", dict(lengths=lambda: torch.tensor([3, 3, 3])), "lengths"),
    ("lengths-zero", dict(lengths=lambda: torch.tensor([3, 0])), "lengths"),
    ("lengths-above-n", dict(lengths=lambda: torch.tensor([3, 11])), "lengths"),
]


def entropy_call(spec, backend):
    torch.manual_seed(0)
    kw = dict(scores=torch.rand(2, 10), lengths=None)
    kw.update({k: (v() if callable(v) else v) for k, v in spec.items()})
    if backend == "raw":
        return lambda: torch.ops.ada_vtp.attention_entropy(kw["scores"], kw["lengths"])
    return lambda: vtp.attention_entropy(kw["scores"], kw["lengths"], backend=backend)


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=pytest.mark.requires_ext),
                                     pytest.param("raw", marks=pytest.mark.requires_ext)])
@pytest.mark.parametrize("case", ENTROPY_CASES, ids=[c[0] for c in ENTROPY_CASES])
def test_attention_entropy_rejects(case, backend):
    _, spec, name = case
    raises_naming(entropy_call(spec, backend), name)


@pytest.mark.requires_ext
@pytest.mark.parametrize("case", ERANK_CASES + ENTROPY_CASES,
                         ids=[f"erank-{c[0]}" for c in ERANK_CASES] + [f"entropy-{c[0]}" for c in ENTROPY_CASES])
def test_statistics_cpu_message_equals_reference(case):
    _, spec, name = case
    call = erank_call if case in ERANK_CASES else entropy_call
    assert raises_naming(call(spec, "raw"), name) == raises_naming(call(spec, "reference"), name)


def test_every_range_parameter_has_a_case():
    covered = {name for _, _, name in CASES}
    assert set(PARAM_NAMES) - {"compute_erank"} <= covered

"""Registration of the torch.ops.ada_vtp ops: opcheck, torch.compile, FakeTensor, schema defaults,
and importing without the extension."""

import inspect
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import ada_vtp_kernels as vtp
from ada_vtp_kernels import defaults, functional, ops


def prune_inputs():
    """(args, kwargs) sets for ada_vtp::prune covering dtypes, lengths, relevance, parameters."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 20, 8, generator=g)
    s = torch.rand(2, 20, generator=g)
    lengths = torch.tensor([20, 11])
    return {
        "agile-fp32": ((x, s, 5, "agile"), {}),
        "attention-k1": ((x, s, 1, "attention"), {}),
        "dpp-fp16-lengths-relevance": ((x.half(), s, 7, "dpp"),
                                       dict(lengths=lengths, relevance=torch.rand(2, 20, generator=g))),
        "vispruner-bf16-erank": ((x.bfloat16(), s, 6, "vispruner"), dict(important_ratio=0.25, compute_erank=True)),
        "mix_adaptive-int32-lengths": ((x, s, 4, "mix_adaptive"), dict(lengths=lengths.int(), gain=1.0)),
        "agile-entropy-keep-n": ((x[:, :9], s[:, :9], 9, "agile"), dict(complexity="entropy", tau_max=0.5)),
        "strided": ((x.transpose(1, 2).contiguous().transpose(1, 2)[:, ::2], s[:, ::2], 3, "divprune"), {}),
    }


PRUNE_INPUTS = prune_inputs()

@pytest.mark.requires_ext
@pytest.mark.parametrize("name", list(PRUNE_INPUTS))
def test_opcheck_prune(name):
    args, kwargs = PRUNE_INPUTS[name]
    torch.library.opcheck(torch.ops.ada_vtp.prune.default, args, kwargs)


@pytest.mark.requires_ext
@pytest.mark.parametrize(
    "args",
    [
        (torch.randn(3, 17, 5),),
        (torch.randn(2, 30, 40).half(), torch.tensor([30, 4])),
        (torch.randn(1, 9, 3).bfloat16(), None, "exact"),
        (torch.zeros(2, 4, 4),),
        (torch.randn(2, 90, 70), torch.tensor([90, 77]), "fast"),
    ],
    ids=["fp32", "fp16-lengths", "bf16-method", "zeros", "fast-deflated"],
)
def test_opcheck_erank(args):
    torch.library.opcheck(torch.ops.ada_vtp.erank.default, args)


@pytest.mark.requires_ext
@pytest.mark.parametrize(
    "args",
    [
        (torch.rand(3, 17),),
        (torch.rand(2, 30), torch.tensor([30, 4])),
        (torch.zeros(1, 5),),
        (torch.rand(2, 8, dtype=torch.float64),),
    ],
    ids=["fp32", "lengths", "zeros", "fp64"],
)
def test_opcheck_attention_entropy(args):
    torch.library.opcheck(torch.ops.ada_vtp.attention_entropy.default, args)


@pytest.mark.requires_ext
@pytest.mark.parametrize(
    "op, args",
    [
        ("prune", lambda x, s: (x, s, 5, "agile")),
        ("erank", lambda x, s: (x,)),
        ("attention_entropy", lambda x, s: (s,)),
    ],
    ids=["prune", "erank", "attention_entropy"],
)
def test_opcheck_inputs_requiring_grad(op, args):
    """Inputs that require grad (a model's activations): the autograd fallthrough makes every
    output a non-differentiable tensor, and every opcheck test passes.  N = 100 > 8 K makes agile
    compute its K distance rows one by one (mv_out, which rejects inputs requiring grad unless the
    kernel dispatches below autograd)."""
    x = torch.randn(2, 100, 6, requires_grad=True)
    s = torch.rand(2, 100).requires_grad_()
    overload = getattr(torch.ops.ada_vtp, op).default
    torch.library.opcheck(overload, args(x, s))
    outputs = overload(*args(x, s))
    for out in outputs if isinstance(outputs, tuple) else (outputs,):
        assert not out.requires_grad


# --------------------------------------------------------------------------------------------
# torch.compile


def prune_and_gather(features, scores):
    indices, erank, entropy = torch.ops.ada_vtp.prune(features, scores, 8, "agile", compute_erank=True)
    kept = vtp.gather(features, indices)
    return kept, indices, erank, entropy


@pytest.mark.requires_ext
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_torch_compile_fullgraph(dynamic):
    torch._dynamo.reset()
    compiled = torch.compile(prune_and_gather, fullgraph=True, backend="aot_eager", dynamic=dynamic)
    for shape in [(2, 40, 16), (3, 57, 16)]:
        x, s = torch.randn(*shape), torch.rand(*shape[:2])
        eager = prune_and_gather(x, s)
        got = compiled(x, s)
        assert got[0].shape == (shape[0], 8, shape[2])
        for a, b in zip(got, eager):
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


@pytest.mark.requires_ext
def test_torch_compile_functional_api():
    def f(x, s, lengths):
        res = vtp.prune(x, s, 4, "dpp", lengths=lengths)
        return vtp.gather(x, res.indices), res.entropy

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    x, s, lengths = torch.randn(2, 30, 8), torch.rand(2, 30), torch.tensor([30, 12])
    for a, b in zip(compiled(x, s, lengths), f(x, s, lengths)):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------
# FakeTensor / meta shape inference


@pytest.mark.requires_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_fake_tensor_shapes(dtype):
    with FakeTensorMode():
        x = torch.empty(3, 50, 16, dtype=dtype)
        s = torch.empty(3, 50)
        indices, no_erank, entropy = torch.ops.ada_vtp.prune(x, s, 7, "dpp", relevance=torch.empty(3, 50))
        _, erank, _ = torch.ops.ada_vtp.prune(x, s, 7, "dpp", compute_erank=True)
        e = torch.ops.ada_vtp.erank(x)
        h = torch.ops.ada_vtp.attention_entropy(s, torch.empty(3, dtype=torch.int64))
    assert indices.shape == (3, 7) and indices.dtype == torch.int64
    assert no_erank.shape == (0,), "dpp needs no erank: the op returns a [0] tensor"
    for t in (erank, entropy, e, h):
        assert t.shape == (3,) and t.dtype == torch.float32


@pytest.mark.requires_ext
def test_meta_device_shapes():
    x, s = torch.empty(2, 10, 4, device="meta"), torch.empty(2, 10, device="meta")
    indices, erank, entropy = torch.ops.ada_vtp.prune(x, s, 3)
    assert indices.device.type == "meta" and indices.shape == (2, 3) and indices.dtype == torch.int64
    assert erank.shape == entropy.shape == (2,)


@pytest.mark.requires_ext
def test_fake_matches_real_metadata():
    x, s = torch.randn(4, 25, 6), torch.rand(4, 25)
    real = torch.ops.ada_vtp.prune(x, s, 9, "mix")
    with FakeTensorMode() as mode:
        fake = torch.ops.ada_vtp.prune(mode.from_tensor(x), mode.from_tensor(s), 9, "mix")
    for r, f in zip(real, fake):
        assert (r.shape, r.dtype, r.device) == (f.shape, f.dtype, f.device)


# --------------------------------------------------------------------------------------------
# schema defaults = ada_vtp_kernels.defaults = functional.prune defaults

EXPECTED_PRUNE_DEFAULTS = {
    "method": "agile",
    "lengths": None,
    "relevance": None,
    "important_ratio": defaults.IMPORTANT_RATIO,
    "attention_ratio": defaults.MIX_ATTENTION_RATIO,
    "gain": defaults.MIX_GAIN,
    "erank_ref": defaults.ERANK_REF,
    "entropy_ref": defaults.ENTROPY_REF,
    "tau_max": defaults.TAU_MAX,
    "tau_scale": defaults.TAU_SCALE,
    "complexity": defaults.COMPLEXITY,
    "erank_method": defaults.ERANK_METHOD,
    "compute_erank": False,
}


def schema_defaults(op):
    return {a.name: a.default_value for a in op.default._schema.arguments if a.has_default_value()}


@pytest.mark.requires_ext
def test_prune_schema_defaults_equal_defaults_module():
    got = schema_defaults(torch.ops.ada_vtp.prune)
    assert got == EXPECTED_PRUNE_DEFAULTS
    names = [a.name for a in torch.ops.ada_vtp.prune.default._schema.arguments]
    assert names[:3] == ["features", "scores", "keep"]
    assert set(names[3:]) == set(EXPECTED_PRUNE_DEFAULTS)


@pytest.mark.requires_ext
def test_statistics_schema_defaults():
    assert schema_defaults(torch.ops.ada_vtp.erank) == {"lengths": None, "method": defaults.ERANK_METHOD}
    assert schema_defaults(torch.ops.ada_vtp.attention_entropy) == {"lengths": None}


def test_functional_defaults_equal_defaults_module():
    params = inspect.signature(functional.prune).parameters
    got = {name: params[name].default for name in EXPECTED_PRUNE_DEFAULTS}
    assert got == EXPECTED_PRUNE_DEFAULTS
    assert inspect.signature(functional.erank).parameters["method"].default == defaults.ERANK_METHOD


@pytest.mark.requires_ext
def test_prune_schema_returns_three_named_tensors():
    returns = torch.ops.ada_vtp.prune.default._schema.returns
    assert [r.name for r in returns] == ["indices", "erank", "entropy"]


# --------------------------------------------------------------------------------------------
# importing without the extension

SKIP_SCRIPT = textwrap.dedent(
    """
    import torch
    import ada_vtp_kernels as vtp
    assert not vtp.ops.extension_loaded(), "the extension was loaded despite ADA_VTP_SKIP_EXTENSION=1"
    x, s = torch.randn(2, 12, 4), torch.rand(2, 12)
    res = vtp.prune(x, s, 3, backend="reference")
    assert res.indices.shape == (2, 3)
    assert vtp.erank(x, backend="reference").shape == (2,)
    calls = {
        "prune-auto": lambda: vtp.prune(x, s, 3),
        "prune-cpu": lambda: vtp.prune(x, s, 3, backend="cpu"),
        "erank-auto": lambda: vtp.erank(x),
        "entropy-auto": lambda: vtp.attention_entropy(s),
    }
    for name, call in calls.items():
        try:
            call()
        except RuntimeError as exc:
            assert "pip install -e . --no-build-isolation" in str(exc), (name, str(exc))
        else:
            raise AssertionError(name + " did not raise")
    print("SKIP-OK")
    """
)


def test_import_without_extension():
    env = dict(os.environ, ADA_VTP_SKIP_EXTENSION="1")
    proc = subprocess.run([sys.executable, "-c", SKIP_SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "SKIP-OK" in proc.stdout


def test_require_extension_message():
    if ops.extension_loaded():
        ops.require_extension()  # no error when loaded
    else:
        with pytest.raises(RuntimeError, match="pip install -e . --no-build-isolation"):
            ops.require_extension()

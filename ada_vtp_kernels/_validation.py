"""Argument checks shared by the Python backends (reference, Triton launchers, fake kernels).

The C++ op repeats the same checks with the same messages (csrc/cpu/checks.cpp), because it can
be called directly as ``torch.ops.ada_vtp.*``.  Every failure is a ``ValueError`` that names the
argument, the bad value and what was expected.

Two tiers: the ``*_metadata`` checks read only types, shapes, dtypes and devices, so the fake
(meta) kernels and a CUDA graph's capture can run them; the others also read values (lengths,
finiteness, signs), which needs real tensors.
"""

import math

import torch

from . import defaults

FEATURE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# per-token values (scores, relevance): every float dtype that converts exactly to float64
VALUE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# the integer dtypes every backend converts to int64 (the narrow and bit dtypes do not)
LENGTH_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _fail(msg: str):
    raise ValueError(msg)


def _num(value) -> str:
    """A number as the C++ checks print it (6 significant digits, like %g)."""
    return f"{value:g}" if isinstance(value, (int, float)) else repr(value)


def _names(dtypes) -> str:
    names = [str(d).removeprefix("torch.") for d in dtypes]
    return ", ".join(names[:-1]) + " or " + names[-1]


def check_dense(name: str, tensor: torch.Tensor) -> None:
    if tensor.layout != torch.strided:
        _fail(f"{name} must be a dense (strided) tensor, got layout {tensor.layout}")


def check_holds_values(name: str, tensor) -> None:
    """The value checks and the reference read elements: a meta tensor has none."""
    if isinstance(tensor, torch.Tensor) and tensor.device.type == "meta":
        _fail(f"{name} is a meta tensor, which holds no values; this backend needs real tensors (the registered "
              f"op torch.ops.ada_vtp.* infers meta shapes)")


def check_features(features) -> None:
    if not isinstance(features, torch.Tensor):
        _fail(f"features must be a torch.Tensor [B, N, D], got {type(features).__name__}")
    check_dense("features", features)
    if features.dim() != 3:
        _fail(f"features must have shape [B, N, D], got {features.dim()} dims {tuple(features.shape)}")
    if features.dtype not in FEATURE_DTYPES:
        _fail(f"features must be float32, float16 or bfloat16, got {features.dtype}")
    if features.numel() == 0:
        _fail(f"features must be non-empty, got shape {tuple(features.shape)}")


def check_lengths(lengths, batch: int, n: int, device) -> torch.Tensor:
    """Returns lengths as an int64 CPU tensor [B] (N for every row when None)."""
    if lengths is None:
        return torch.full((batch,), n, dtype=torch.int64)
    check_lengths_metadata(lengths, batch, device)
    check_holds_values("lengths", lengths)
    lengths = lengths.to("cpu", torch.int64)
    bad = ((lengths < 1) | (lengths > n)).nonzero()
    if bad.numel():
        b = int(bad[0, 0])
        _fail(f"lengths[{b}] = {int(lengths[b])} is outside [1, N={n}]")
    return lengths


def check_lengths_metadata(lengths, batch: int, device) -> None:
    """The checks of `check_lengths` that read no values (type, dtype, shape, device)."""
    if not isinstance(lengths, torch.Tensor):
        _fail(f"lengths must be an integer torch.Tensor [B], got {type(lengths).__name__}")
    check_dense("lengths", lengths)
    if lengths.dtype not in LENGTH_DTYPES:
        _fail(f"lengths must have an integer dtype ({_names(LENGTH_DTYPES)}), got {lengths.dtype}")
    if lengths.shape != (batch,):
        _fail(f"lengths must have shape [B]=[{batch}], got {tuple(lengths.shape)}")
    if lengths.device != device:
        _fail(f"lengths is on {lengths.device} but features is on {device}")


def check_row_values(name: str, values, batch: int, n: int, device, lengths: torch.Tensor) -> None:
    """Checks a [B, N] per-token tensor (scores, relevance): finite and >= 0 on valid tokens."""
    check_row_metadata(name, values, batch, n, device)
    check_holds_values(name, values)
    for b in range(batch):
        row = values[b, : int(lengths[b])]
        if not torch.isfinite(row).all():
            j = int((~torch.isfinite(row)).nonzero()[0, 0])
            _fail(f"{name}[{b}, {j}] = {_num(row[j].item())} is not finite")
        if (row < 0).any():
            j = int((row < 0).nonzero()[0, 0])
            _fail(f"{name}[{b}, {j}] = {_num(row[j].item())} is negative; expected values >= 0")


def check_row_metadata(name: str, values, batch: int, n: int, device) -> None:
    """The checks of `check_row_values` that read no values (type, shape, dtype, device)."""
    if not isinstance(values, torch.Tensor):
        _fail(f"{name} must be a torch.Tensor [B, N], got {type(values).__name__}")
    check_dense(name, values)
    if values.shape != (batch, n):
        _fail(f"{name} must have shape [B, N]=[{batch}, {n}], got {tuple(values.shape)}")
    if values.dtype not in VALUE_DTYPES:
        _fail(f"{name} must have a floating dtype ({_names(VALUE_DTYPES)}), got {values.dtype}")
    if values.device != device:
        _fail(f"{name} is on {values.device} but features is on {device}")


def check_scores(scores) -> None:
    """scores: a non-empty [B, N] tensor (the attention entropy's input; values: check_row_values)."""
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2 or scores.numel() == 0:
        got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        _fail(f"scores must be a non-empty tensor [B, N], got {got}")


def check_finite_features(features: torch.Tensor, lengths: torch.Tensor) -> None:
    check_holds_values("features", features)
    for b in range(features.shape[0]):
        rows = features[b, : int(lengths[b])]
        finite = torch.isfinite(rows)
        if not finite.all():
            j, d = (int(v) for v in (~finite).nonzero()[0])
            _fail(f"features[{b}, {j}, {d}] = {_num(rows[j, d].item())} is not finite")


def check_keep(keep, n: int, lengths: torch.Tensor) -> None:
    if isinstance(keep, bool) or not isinstance(keep, int):
        _fail(f"keep must be an int, got {type(keep).__name__}")
    shortest = int(lengths.min())
    if keep < 1 or keep > shortest:
        where = f"N={n}" if shortest == n else f"the shortest row's length {shortest}"
        _fail(f"keep = {keep} is outside [1, {where}]")


def check_keep_metadata(keep, n) -> None:
    """keep in [1, N]: what can be checked without the lengths' values (N may be symbolic)."""
    if isinstance(keep, bool) or not isinstance(keep, (int, torch.SymInt)):
        _fail(f"keep must be an int, got {type(keep).__name__}")
    if keep < 1 or keep > n:
        _fail(f"keep = {keep} is outside [1, N={n}]")


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        _fail(f"unknown {name} {value!r}; expected one of {', '.join(map(repr, choices))}")


def _check_range(name: str, value, lo: float, hi: float = math.inf, lo_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value > lo if lo_open else value >= lo) and value <= hi
    if not ok:
        lo_txt = f"> {_num(lo)}" if lo_open else f">= {_num(lo)}"
        hi_txt = "" if hi == math.inf else f" and <= {_num(hi)}"
        _fail(f"{name} = {_num(value)}; expected a finite number {lo_txt}{hi_txt}")


def check_params(p: dict) -> None:
    _check_choice("method", p["method"], defaults.METHODS)
    _check_choice("complexity", p["complexity"], defaults.COMPLEXITIES)
    _check_choice("erank_method", p["erank_method"], defaults.ERANK_METHODS)
    _check_range("important_ratio", p["important_ratio"], 0.0, 1.0)
    _check_range("attention_ratio", p["attention_ratio"], 0.0, 1.0)
    _check_range("gain", p["gain"], -math.inf)
    _check_range("erank_ref", p["erank_ref"], 0.0, lo_open=True)
    _check_range("entropy_ref", p["entropy_ref"], 0.0, lo_open=True)
    _check_range("tau_max", p["tau_max"], 0.0)
    _check_range("tau_scale", p["tau_scale"], 0.0)


def check_prune_metadata(features, scores, keep, lengths, relevance, params: dict) -> None:
    """The checks of `check_prune_inputs` that read no values: what the fake kernel and a CUDA
    graph's capture can check (keep against N, not against the lengths)."""
    check_params(params)
    check_features(features)
    batch, n, _ = features.shape
    if lengths is not None:
        check_lengths_metadata(lengths, batch, features.device)
    check_keep_metadata(keep, n)
    check_row_metadata("scores", scores, batch, n, features.device)
    check_relevance_method(relevance, params["method"])
    if relevance is not None:
        check_row_metadata("relevance", relevance, batch, n, features.device)


def check_relevance_method(relevance, method: str) -> None:
    if relevance is not None and method != "dpp":
        _fail(f"relevance is only used by method='dpp', got method={method!r}")


def check_erank_metadata(features, lengths, method: str) -> None:
    _check_choice("erank method", method, defaults.ERANK_METHODS)
    check_features(features)
    if lengths is not None:
        check_lengths_metadata(lengths, features.shape[0], features.device)


def check_entropy_metadata(scores, lengths) -> None:
    check_scores(scores)
    batch, n = scores.shape
    if lengths is not None:
        check_lengths_metadata(lengths, batch, scores.device)
    check_row_metadata("scores", scores, batch, n, scores.device)


def check_prune_inputs(features, scores, keep, lengths, relevance, params: dict) -> torch.Tensor:
    """All checks of `prune`; returns the lengths as an int64 CPU tensor [B]."""
    check_params(params)
    check_features(features)
    batch, n, _ = features.shape
    lengths = check_lengths(lengths, batch, n, features.device)
    check_keep(keep, n, lengths)
    check_row_values("scores", scores, batch, n, features.device, lengths)
    check_relevance_method(relevance, params["method"])
    if relevance is not None:
        check_row_values("relevance", relevance, batch, n, features.device, lengths)
    check_finite_features(features, lengths)
    return lengths

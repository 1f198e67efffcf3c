"""Every argument check of the ops, in one layer, before any kernel runs.

Every failure is a ``ValueError`` that names the argument, the bad value and what was expected
(the method parameters are checked by `spec.PruneParams` itself).  Two tiers:

- metadata (types, shapes, dtypes, devices, keep against N): `check_prune_metadata`,
  `check_erank_metadata`, `check_entropy_metadata`.  The fake (meta) kernels run them too, so a
  wrong call fails under torch.compile and torch.export with the same message.
- values (lengths in [1, N], keep <= every length, finite features where the method reads them,
  finite non-negative scores and relevance on the valid tokens): `check_values`, either on the
  host, where each failure names the first bad element, or as device-side assertions
  (`on_device=True`, what the CUDA kernels use), which need no host synchronisation: a bad value
  then fails at the next synchronisation (or graph replay) with a device assert that names the
  rule.  The C++ kernels check only their internal invariants.
"""

import math

import torch

from . import spec

FEATURE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# per-token values (scores, relevance): every float dtype that converts exactly to float64
VALUE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# the integer dtypes every backend converts to int64 (the narrow and bit dtypes do not)
LENGTH_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _fail(msg: str):
    raise ValueError(msg)


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


def check_lengths_metadata(lengths, batch: int, device) -> None:
    """lengths: an integer tensor [B] on the features' device (its values: `check_values`)."""
    if not isinstance(lengths, torch.Tensor):
        _fail(f"lengths must be an integer torch.Tensor [B], got {type(lengths).__name__}")
    check_dense("lengths", lengths)
    if lengths.dtype not in LENGTH_DTYPES:
        _fail(f"lengths must have an integer dtype ({_names(LENGTH_DTYPES)}), got {lengths.dtype}")
    if lengths.shape != (batch,):
        _fail(f"lengths must have shape [B]=[{batch}], got {tuple(lengths.shape)}")
    if lengths.device != device:
        _fail(f"lengths is on {lengths.device} but features is on {device}")


def check_row_metadata(name: str, values, batch: int, n: int, device) -> None:
    """A [B, N] per-token tensor (scores, relevance): type, shape, dtype, device (its values: `check_values`)."""
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
    """scores: a non-empty [B, N] tensor (the attention entropy's input)."""
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2 or scores.numel() == 0:
        got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        _fail(f"scores must be a non-empty tensor [B, N], got {got}")


def check_keep_metadata(keep, n) -> None:
    """keep in [1, N]: what can be checked without the lengths' values (N may be symbolic)."""
    if isinstance(keep, bool) or not isinstance(keep, (int, torch.SymInt)):
        _fail(f"keep must be an int, got {type(keep).__name__}")
    if keep < 1 or keep > n:
        _fail(f"keep = {keep} is outside [1, N={n}]")


def check_prune_metadata(features, scores, keep, lengths, relevance, params: spec.PruneParams) -> None:
    """The checks of `prune` that read no values: what the fake kernel and a CUDA graph's capture
    can check (keep against N, not against the lengths)."""
    check_features(features)
    batch, n, _ = features.shape
    if lengths is not None:
        check_lengths_metadata(lengths, batch, features.device)
    check_keep_metadata(keep, n)
    check_row_metadata("scores", scores, batch, n, features.device)
    if relevance is not None:
        if params.spec.selection != spec.Selection.DPP:
            _fail(f"relevance is only used by method='dpp', got method={params.method!r}")
        check_row_metadata("relevance", relevance, batch, n, features.device)


def check_erank_metadata(features, lengths, method: str) -> None:
    if method not in spec.ERANK_METHODS:
        _fail(f"unknown erank method {method!r}; expected one of {', '.join(map(repr, spec.ERANK_METHODS))}")
    check_features(features)
    if lengths is not None:
        check_lengths_metadata(lengths, features.shape[0], features.device)


def check_entropy_metadata(scores, lengths) -> None:
    check_scores(scores)
    batch, n = scores.shape
    if lengths is not None:
        check_lengths_metadata(lengths, batch, scores.device)
    check_row_metadata("scores", scores, batch, n, scores.device)


def valid_tokens(lengths: torch.Tensor, n: int) -> torch.Tensor:
    """[B, N] bool: position j of row b is a valid token (j < lengths[b])."""
    return torch.arange(n, device=lengths.device)[None, :] < lengths[:, None]


def check_values(features: torch.Tensor | None, rows: dict[str, torch.Tensor | None], keep: int | None,
                 lengths: torch.Tensor | None, n: int, on_device: bool, read_features: bool = True) -> torch.Tensor:
    """The value checks of an op whose metadata passed; returns the lengths as int64 [B] on the
    tensors' device (N for every row when None).

    features: [B, N, D] or None (attention_entropy); rows: the [B, N] per-token tensors by name
    (scores, relevance; None entries skipped); keep: K or None (erank, attention_entropy);
    read_features: whether the op reads the features' values (else only that they hold some).
    On the host each failure names the first bad element; ``on_device=True`` turns every rule into
    a device-side assertion instead (no host synchronisation).
    """
    device = features.device if features is not None else next(r for r in rows.values() if r is not None).device
    batch = features.shape[0] if features is not None else next(r for r in rows.values() if r is not None).shape[0]
    for name, t in (("features", features), *rows.items(), ("lengths", lengths)):
        if t is not None:
            check_holds_values(name, t)
    if lengths is None:  # every token is valid and no length can be wrong
        lengths, valid = torch.full((batch,), n, dtype=torch.int64, device=device), None
    else:
        lengths = lengths.to(torch.int64).contiguous()
        valid = valid_tokens(lengths, n)
    checked = features if read_features else None
    if on_device:
        _assert_on_device(checked, rows, keep, lengths, valid, n)
    else:
        _check_on_host(checked, rows, keep, lengths, valid, n)
    return lengths


def _finite_and_nonnegative(values: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """[B, N] bool: the rule of scores and relevance, which the padding need not follow."""
    ok = (values >= 0) & (values < math.inf)  # NaN fails both
    return ok if valid is None else ok | ~valid


def _assert_on_device(features, rows, keep, lengths, valid: torch.Tensor | None, n: int) -> None:
    if valid is not None:
        torch._assert_async(((lengths >= 1) & (lengths <= n)).all(), f"ada_vtp: lengths outside [1, N={n}]")
        if keep is not None:
            torch._assert_async((lengths >= keep).all(), f"ada_vtp: keep = {keep} exceeds a row's length")
    for name, values in rows.items():
        if values is not None:
            torch._assert_async(_finite_and_nonnegative(values, valid).all(),
                                f"ada_vtp: {name} must be finite and >= 0 on the valid tokens")
    if features is not None:
        finite = torch.isfinite(features).all(dim=2)
        finite = finite if valid is None else finite | ~valid
        torch._assert_async(finite.all(), "ada_vtp: features must be finite on the valid tokens")


def _first(bad: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(v) for v in bad.nonzero()[0])


def _check_on_host(features, rows, keep, lengths, valid: torch.Tensor | None, n: int) -> None:
    # each rule is first checked by one cheap reduction; only a failure searches for the element
    if valid is not None:
        bad = (lengths < 1) | (lengths > n)
        if bad.any():
            (b,) = _first(bad)
            _fail(f"lengths[{b}] = {int(lengths[b])} is outside [1, N={n}]")
        shortest = int(lengths.min())
        if keep is not None and keep > shortest:
            where = f"N={n}" if shortest == n else f"the shortest row's length {shortest}"
            _fail(f"keep = {keep} is outside [1, {where}]")
    for name, values in rows.items():
        if values is None or bool(_finite_and_nonnegative(values, valid).all()):
            continue
        mask = valid_tokens(lengths, n) if valid is None else valid
        not_finite = ~torch.isfinite(values) & mask
        if not_finite.any():
            b, j = _first(not_finite)
            _fail(f"{name}[{b}, {j}] = {spec.number_text(values[b, j].item())} is not finite")
        b, j = _first((values < 0) & mask)
        _fail(f"{name}[{b}, {j}] = {spec.number_text(values[b, j].item())} is negative; expected values >= 0")
    if features is not None:
        # max and min are NaN or infinite exactly where some element is (two reductions at memory
        # speed, no temporary); only then are that image's valid rows searched (the padding may
        # hold anything)
        finite = torch.isfinite(features.amax(dim=(1, 2))) & torch.isfinite(features.amin(dim=(1, 2)))
        if bool(finite.all()):
            return
        for b in (~finite).nonzero()[:, 0].tolist():
            rows_b = features[b, : int(lengths[b])]
            not_finite = ~torch.isfinite(rows_b)
            if not_finite.any():
                j, d = _first(not_finite)
                _fail(f"features[{b}, {j}, {d}] = {spec.number_text(rows_b[j, d].item())} is not finite")


def check_prune(features, scores, keep, lengths, relevance, params: spec.PruneParams, on_device: bool
                ) -> torch.Tensor:
    """Every check of `prune`; returns the lengths as int64 [B] on the features' device.

    A method that reads no feature value (top-K by score or by seed, without the erank) gets its
    features' metadata checked but not their values: its result cannot depend on them, and
    reading [B, N, D] to check them would cost many times its top-K."""
    check_prune_metadata(features, scores, keep, lengths, relevance, params)
    return check_values(features, {"scores": scores, "relevance": relevance}, keep, lengths, features.shape[1],
                        on_device, read_features=params.reads_features())


def check_erank(features, lengths, method: str, on_device: bool) -> torch.Tensor:
    """Every check of `erank`; returns the lengths as int64 [B] on the features' device."""
    check_erank_metadata(features, lengths, method)
    return check_values(features, {}, None, lengths, features.shape[1], on_device)


def check_entropy(scores, lengths, on_device: bool) -> torch.Tensor:
    """Every check of `attention_entropy`; returns the lengths as int64 [B] on the scores' device."""
    check_entropy_metadata(scores, lengths)
    return check_values(None, {"scores": scores}, None, lengths, scores.shape[1], on_device)

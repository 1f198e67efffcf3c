"""Hypothesis strategies for `prune` inputs, shared by the property tests.

`prune_cases` draws one whole call: batch, tokens N, channels D, keep K, method and its
parameters, dtypes, ragged lengths (and what fills the padding after them), the tensors' layout,
and the values: duplicate and zero tokens, tied or all-zero scores, image and row magnitudes.
Hypothesis draws the structure and one seed; torch's generator, seeded with it, draws the bulk
values (so a failing case shrinks in its sizes and parameters and prints a seed that rebuilds it).

Two kinds of features:

- ``exact``: `support.data.exact_features` (cosines exact in fp32) times powers of two per image and
  per row.  Every backend computes bit-identical distances on them, so every backend must return
  exactly the reference's indices (docs/DESIGN.md).
- ``gaussian``: plain torch.randn, optionally low-rank, at any magnitude including 1e-30 and 1e30
  where the dtype holds them.  Backends may round a cosine differently here, so these feed the
  invariants that hold on one backend (valid ascending indices, the method equivalences, batch and
  padding independence, determinism), not cross-backend equality.
"""

import dataclasses
import math

import torch
from hypothesis import settings
from hypothesis import strategies as st

import ada_vtp_kernels as vtp
from ada_vtp_kernels import spec, validation
from ada_vtp_kernels.spec import PARAM_NAMES

from support.data import exact_features

METHODS = spec.METHODS
FEATURE_DTYPES = validation.FEATURE_DTYPES
# image magnitudes, as powers of two: exact features stay exact (every dtype holds these with room
# for the per-row factors up to 2**6)
POW2_IMAGE_EXPONENTS = {torch.float32: (0, -100, 100, -60, 60), torch.bfloat16: (0, -100, 100),
                        torch.float16: (0, -6, 8)}
# gaussian magnitudes: 1e-30 and 1e30 where the dtype holds them (fp16's range is about 6e-8..65504)
GAUSSIAN_SCALES = {torch.float32: (1.0, 1e-30, 1e30, 3e-7), torch.bfloat16: (1.0, 1e-30, 1e30),
                   torch.float16: (1.0, 1e-3, 1e3)}
LAYOUTS = ("contiguous", "transposed", "sliced", "expanded")
PADDINGS = ("zeros", "nan", "inf", "huge", "copy")


def examples(share: float) -> settings:
    """Settings for a property test: `share` of the loaded profile's max_examples (at least 1),
    so that one profile (tests/conftest.py) sizes the whole tier."""
    return settings(max_examples=max(1, round(settings.default.max_examples * share)))


@dataclasses.dataclass
class PruneCase:
    """One `prune` call; `label` says how it was drawn (printed when a test fails)."""

    features: torch.Tensor
    scores: torch.Tensor
    keep: int
    method: str
    lengths: torch.Tensor | None
    relevance: torch.Tensor | None
    params: dict
    label: str

    def run(self, backend: str = "cpu", **overrides) -> vtp.PruneResult:
        """vtp.prune on `backend` ("cpu", "reference", "triton"); `overrides` replace fields or
        parameters (method=..., tau_max=...)."""
        fields = {k: overrides.pop(k) for k in ("features", "scores", "keep", "method", "lengths", "relevance")
                  if k in overrides}
        call = dataclasses.replace(self, **fields) if fields else self
        params = {**call.params, **overrides}
        if call.method != "dpp":
            call = dataclasses.replace(call, relevance=None)
        return vtp.prune(call.features, call.scores, call.keep, call.method, lengths=call.lengths,
                         relevance=call.relevance, backend=backend, **params)

    def valid_lengths(self) -> list[int]:
        n = self.features.shape[1]
        return [n] * self.features.shape[0] if self.lengths is None else [int(v) for v in self.lengths]


# the parameters' validation rules (spec.Range, Choice, Flag, Seed), read from spec.PruneParams
RULES = {f.name: f.metadata["rule"] for f in dataclasses.fields(spec.PruneParams)}
# where an unbounded range is drawn (intersected with the rule's own bounds): the region where the
# parameter changes a selection.  A valid but extreme value (erank_ref = 5e-324, say) is for
# `hostile_calls`, whose test checks a valid result and no agreement between backends.
TYPICAL = {"gain": (-4.0, 4.0), "erank_ref": (1.0, 120.0), "entropy_ref": (1.0, 8.0), "tau_max": (0.0, 2.0),
           "tau_scale": (0.0, 1.0)}
SEEDS = (0, 2**31 - 1)  # spec.Seed's range (the rule has no bounds to read): both ends must pass it
for _end in SEEDS:
    RULES["seed"].check("seed", _end)


def _range_values(name: str, rule: spec.Range) -> st.SearchStrategy:
    low, high = TYPICAL.get(name, (rule.low, rule.high))
    low, high = max(low, rule.low), min(high, rule.high)
    exclude_low = rule.low_open and low == rule.low
    special = [v for v in (getattr(spec.DEFAULTS, name), low, (low + high) / 2, high) if not (exclude_low and v == low)]
    for v in special:
        rule.check(name, v)
    return st.one_of(st.sampled_from(special), st.floats(low, high, exclude_min=exclude_low))


def param_values(name: str) -> st.SearchStrategy:
    """Valid values of the parameter `name`, from its spec rule: every choice, both flags, seeds
    across the whole range, numbers across the rule's range (`TYPICAL` where it is unbounded) with
    the default, the ends and the midpoint drawn often."""
    rule = RULES[name]
    if isinstance(rule, spec.Choice):
        return st.sampled_from(rule.choices)
    if isinstance(rule, spec.Flag):
        return st.booleans()
    if isinstance(rule, spec.Seed):
        return st.one_of(st.sampled_from(SEEDS), st.integers(*SEEDS))
    return _range_values(name, rule)


def _method_params(draw, method: str, erank_methods) -> dict:
    """The method's own parameters (spec.METHODS[method].params), compute_erank, and the erank
    estimator where an erank is computed."""
    params = {name: draw(param_values(name)) for name in METHODS[method].params}
    params["compute_erank"] = draw(st.booleans())
    if spec.PruneParams.of(method, **params).needs_erank():
        params["erank_method"] = draw(st.sampled_from(erank_methods))
    return params


def _features(draw, g, batch, n, dim, dtype, kind, row_spreads) -> tuple[torch.Tensor, str]:
    if kind == "exact":
        zero_rows = draw(st.sampled_from([0.0, 0.05, 0.3]))
        duplicate_rows = draw(st.sampled_from([0.0, 0.05, 0.3, 0.9]))
        x = exact_features(batch, n, dim, zero_rows=zero_rows, duplicate_rows=duplicate_rows, generator=g)
        image_exp = draw(st.sampled_from(POW2_IMAGE_EXPONENTS[dtype]))
        row_spread = draw(st.sampled_from(row_spreads))
        row_exp = torch.randint(-row_spread, row_spread + 1, (batch, n, 1), generator=g)
        x = x * torch.pow(2.0, row_exp + image_exp)
        return x.to(dtype), f"exact(zero={zero_rows}, dup={duplicate_rows}, 2^{image_exp}, rows 2^+-{row_spread})"
    rank = draw(st.sampled_from([None, 1, 3]))
    if rank is None:
        x = torch.randn(batch, n, dim, generator=g)
    else:
        x = torch.randn(batch, n, rank, generator=g) @ torch.randn(batch, rank, dim, generator=g)
    scale = draw(st.sampled_from(GAUSSIAN_SCALES[dtype]))
    return (x * scale).to(dtype), f"gaussian(rank={rank}, x{scale:g})"


def _scores(draw, g, batch, n) -> tuple[torch.Tensor, str]:
    kind = draw(st.sampled_from(["distinct", "tied", "zeros-some", "all-zero"]))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]))
    s = torch.rand(batch, n, generator=g, dtype=torch.float64) + 1e-3
    if kind == "tied":
        s = torch.floor(s * draw(st.integers(1, 4))) / 4
    elif kind == "zeros-some":
        s = torch.where(torch.rand(batch, n, generator=g) < 0.5, 0.0, s)
    elif kind == "all-zero":
        s = torch.zeros(batch, n, dtype=torch.float64)
    exponent = draw(st.sampled_from([0, -40, 40] if dtype != torch.float16 else [0, -8, 8]))
    if dtype == torch.float64:
        exponent = draw(st.sampled_from([exponent, 1000, -1060]))  # beyond fp32: inf / 0 when ordered
    return (s * 2.0**exponent).to(dtype), f"scores({kind}, {str(dtype)[6:]}, 2^{exponent})"


def _relevance(draw, g, batch, n) -> tuple[torch.Tensor | None, str]:
    kind = draw(st.sampled_from(["none", "rand", "tied", "zeros-some"]))
    if kind == "none":
        return None, "relevance(none)"
    r = torch.rand(batch, n, generator=g) + 0.01
    if kind == "tied":
        r = torch.randint(1, 4, (batch, n), generator=g).float()
    elif kind == "zeros-some":
        r = torch.where(torch.rand(batch, n, generator=g) < 0.3, 0.0, r)
    return r, f"relevance({kind})"


def _lay_out(t: torch.Tensor, layout: str, g: torch.Generator) -> torch.Tensor:
    """The same values with other strides: transposed storage or strided slices of a larger tensor
    (the "expanded" layout, one image broadcast over the batch with stride 0, is drawn as one image)."""
    if layout == "contiguous":
        return t.contiguous()
    if layout == "transposed":
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    big = torch.randn(*[2 * s + 1 for s in t.shape], generator=g).to(t.dtype)
    view = big[tuple(slice(1, None, 2) for _ in t.shape)]
    view.copy_(t)
    return view


def _pad(t: torch.Tensor, lengths: list[int], padding: str) -> torch.Tensor:
    """Fill every position after a row's length: its content must never matter."""
    t = t.clone()
    for b, length in enumerate(lengths):
        if padding == "copy":
            t[b, length:] = t[b, :1]
        else:
            value = {"zeros": 0.0, "nan": math.nan, "inf": math.inf, "huge": 6e4}[padding]
            t[b, length:] = value
    return t


@st.composite
def prune_cases(draw, *, max_batch: int = 3, max_n: int = 700, max_dim: int = 512, methods=METHODS,
                dtypes=FEATURE_DTYPES, kinds=("exact", "gaussian"), erank_methods=spec.ERANK_METHODS,
                layouts=LAYOUTS, row_spreads=(0, 6)) -> PruneCase:
    """One `prune` call (see the module docstring); `kinds=("exact",)` for cross-backend equality.
    `row_spreads`: exact features' rows are scaled by 2**e, e uniform in [-spread, spread]."""
    method = draw(st.sampled_from(list(methods)))
    dtype = draw(st.sampled_from(dtypes))
    kind = draw(st.sampled_from(kinds))
    batch = draw(st.integers(1, max_batch))
    n = draw(st.integers(1, max_n))
    dim = draw(st.integers(1, max_dim))
    shortest = draw(st.integers(1, n)) if draw(st.booleans()) else n
    keep = draw(st.one_of(st.just(1), st.just(shortest), st.integers(1, shortest)))
    rows = [n] + [draw(st.integers(shortest, n)) for _ in range(batch - 1)]
    rows[-1] = shortest
    layout = draw(st.sampled_from(layouts))
    seed = draw(st.integers(0, 2**32 - 1))
    g = torch.Generator().manual_seed(seed)

    drawn_batch = 1 if layout == "expanded" else batch
    features, features_label = _features(draw, g, drawn_batch, n, dim, dtype, kind, row_spreads)
    scores, scores_label = _scores(draw, g, drawn_batch, n)
    relevance, relevance_label = _relevance(draw, g, drawn_batch, n) if method == "dpp" else (None, "")
    tensors = [features, scores, relevance]
    lengths, padding = None, ""
    if shortest < n or draw(st.booleans()):
        fits = [d for d in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
                if n <= torch.iinfo(d).max]
        lengths = torch.tensor(rows, dtype=draw(st.sampled_from(fits)))
        if layout != "expanded":  # one image broadcast over the batch holds real tokens there
            padding = draw(st.sampled_from(PADDINGS))
            tensors = [None if t is None else _pad(t, rows, padding) for t in tensors]
    if layout == "expanded":
        tensors = [None if t is None else t.expand(batch, *t.shape[1:]) for t in tensors]
    else:
        tensors = [None if t is None else _lay_out(t, layout, g) for t in tensors]
    features, scores, relevance = tensors
    params = _method_params(draw, method, erank_methods)
    shown_rows = rows if lengths is not None else None
    label = (f"{method} {params} B={batch} N={n} D={dim} K={keep} {str(dtype)[6:]} lengths={shown_rows}"
             f" padding={padding or '-'} layout={layout} seed={seed} {features_label} {scores_label} {relevance_label}")
    return PruneCase(features, scores, keep, method, lengths, relevance, params, label)


# --------------------------------------------------------------------------------------------
# hostile calls: anything may be wrong


def every_dtype() -> list[torch.dtype]:
    """Every dtype torch defines, each once (aliases such as torch.float and torch.float32 are one)."""
    seen: list[torch.dtype] = []
    for name in sorted(dir(torch)):
        dtype = getattr(torch, name)
        if isinstance(dtype, torch.dtype) and dtype not in seen:
            seen.append(dtype)
    return seen


def tensor_of(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """`values` converted to `dtype`, or a tensor of its shape and dtype holding what torch can put
    there (zeros, or uninitialised memory for the quantized and bit dtypes), or None where torch
    cannot make one."""
    try:
        return values.to(dtype)
    except (RuntimeError, TypeError):
        pass
    for make in (torch.zeros, torch.empty):
        try:
            return make(values.shape, dtype=dtype)
        except (RuntimeError, TypeError):
            continue
    return None


BAD_VALUES = (math.nan, math.inf, -math.inf, -1.0, -1e-30)
# what a parameter may be: anything at all
ANY_PARAM = st.one_of(st.floats(), st.integers(-(2**40), 2**40), st.booleans(), st.none(), st.text(max_size=5),
                      st.sampled_from([math.nan, math.inf, -math.inf, 5e-324, 1e300, -1e300, 2**31, -1]))
# what `hostile_calls` may break, a few at once
FAULTS = ("empty", "features-dtype", "scores-dtype", "relevance-dtype", "lengths-dtype", "row-shape", "lengths-shape",
          "bad-value", "lengths-value", "keep-value", "relevance-without-dpp", "method", "parameter",
          "unknown-parameter")


@dataclasses.dataclass
class HostileCall:
    """One call of vtp.prune (and, with the same tensors, vtp.erank and vtp.attention_entropy)
    that may break any rule; `label` says what was drawn."""

    features: torch.Tensor
    scores: torch.Tensor
    keep: int
    method: str
    lengths: torch.Tensor | None
    relevance: torch.Tensor | None
    params: dict
    label: str

    def prune(self, backend: str) -> vtp.PruneResult:
        return vtp.prune(self.features, self.scores, self.keep, self.method, lengths=self.lengths,
                         relevance=self.relevance, backend=backend, **self.params)

    def erank(self, backend: str) -> torch.Tensor:
        """vtp.erank with the drawn erank_method where it is a str (any other type is the op's argument
        parser's to reject; tests/test_validation.py pins that case)."""
        method = self.params.get("erank_method")
        return vtp.erank(self.features, self.lengths, method if isinstance(method, str) else spec.DEFAULTS.erank_method,
                         backend=backend)

    def attention_entropy(self, backend: str) -> torch.Tensor:
        return vtp.attention_entropy(self.scores, self.lengths, backend=backend)


def _extreme_values(name: str) -> st.SearchStrategy:
    """Valid values anywhere in the rule's range, the extremes included (5e-324, 1e308)."""
    rule = RULES[name]
    if not isinstance(rule, spec.Range):
        return param_values(name)
    return st.floats(max(rule.low, -1e308), min(rule.high, 1e308), exclude_min=rule.low_open)


def _broadcast(t: torch.Tensor | None) -> torch.Tensor | None:
    """Row 0 of `t` repeated along the batch with stride 0 (where `t` has a batch to repeat)."""
    if t is None or t.dim() < 2 or not t.shape[0] or t.is_quantized:
        return t
    return t[:1].expand(t.shape)


def _as(draw, t: torch.Tensor, wrong: bool, accepted, dtypes) -> torch.Tensor:
    """`t` in an accepted dtype, or (`wrong`) in any other of `dtypes` that torch can make."""
    others = [d for d in dtypes if d not in accepted]
    if wrong and others:
        first = draw(st.integers(0, len(others) - 1))
        for dtype in others[first:] + others[:first]:  # the drawn one, or the next that torch can make
            made = tensor_of(t, dtype)
            if made is not None:
                return made
    return t.to(draw(st.sampled_from(accepted)))


@st.composite
def hostile_calls(draw, *, max_batch: int = 3, max_n: int = 12, max_dim: int = 6, dtypes=None) -> HostileCall:
    """A small call that breaks a few rules at once (`FAULTS`; often none) among hostile valid
    inputs: magnitudes 1e-30 and 1e30, NaN, inf and negative values in the padding, stride-0
    tensors, every accepted dtype, valid parameters up to their extremes (erank_ref = 5e-324).
    The faults: an empty dimension, a dtype from `dtypes` (default every dtype torch has) that the
    argument does not accept, a scores/relevance or lengths shape off by one or by a dimension, a
    bad value anywhere (valid tokens or padding), lengths or keep anywhere in [-2**40, 2**40],
    relevance without dpp, an unknown method, a parameter that is anything at all, an unknown
    parameter."""
    dtypes = every_dtype() if dtypes is None else dtypes
    faults = draw(st.sets(st.sampled_from(FAULTS), max_size=3))
    batch, n, dim = draw(st.integers(1, max_batch)), draw(st.integers(1, max_n)), draw(st.integers(1, max_dim))
    if "empty" in faults:
        batch, n, dim = draw(st.sampled_from([(0, n, dim), (batch, 0, dim), (batch, n, 0)]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    method = "bogus" if "method" in faults else draw(st.sampled_from(list(METHODS)))
    lengths = [n] * batch
    if draw(st.booleans()) or "lengths-value" in faults or "lengths-shape" in faults:
        lengths = [draw(st.integers(min(1, n), n)) for _ in range(batch)]
    keep = draw(st.integers(min(1, n), max(min(lengths, default=1), 1)))
    if "keep-value" in faults:
        keep = draw(st.sampled_from([-(2**40), -1, 0, n + 1, 2**40, max(lengths, default=0) + 1]))

    features = torch.randn(batch, n, dim, generator=g) * draw(st.sampled_from([1.0, 1e-30, 1e30]))
    row_shape = (batch, n)
    if "row-shape" in faults:
        row_shape = draw(st.sampled_from([(batch, n + 1), (batch + 1, n), (n,), (batch, n, 1)]))
    scores = torch.rand(row_shape, generator=g)
    relevance = None
    if method == "dpp" and draw(st.booleans()) or "relevance-without-dpp" in faults:
        relevance = torch.rand(row_shape, generator=g)
    rows = [t for t in (features, scores, relevance) if t is not None and t.dim() >= 2]
    garbage = draw(st.sampled_from(BAD_VALUES))
    for t in rows:  # the padding may hold anything
        for b, length in enumerate(lengths[: t.shape[0]]):
            t[b, length:] = garbage
    if "bad-value" in faults:
        t = draw(st.sampled_from([t for t in (features, scores, relevance) if t is not None and t.numel()] or [None]))
        if t is not None:
            t.view(-1)[draw(st.integers(0, t.numel() - 1))] = draw(st.sampled_from(BAD_VALUES))

    features = _as(draw, features, "features-dtype" in faults, FEATURE_DTYPES, dtypes)
    scores = _as(draw, scores, "scores-dtype" in faults, validation.VALUE_DTYPES, dtypes)
    if relevance is not None:
        relevance = _as(draw, relevance, "relevance-dtype" in faults, validation.VALUE_DTYPES, dtypes)
    if draw(st.integers(0, 4)) == 0:  # stride 0 along the batch: one image broadcast, its length for every row
        features, scores, relevance = (_broadcast(t) for t in (features, scores, relevance))
        lengths = lengths[:1] * len(lengths)

    length_tensor = None
    if lengths != [n] * batch or "lengths-dtype" in faults or draw(st.booleans()):
        if "lengths-value" in faults and lengths:
            lengths[draw(st.integers(0, len(lengths) - 1))] = draw(st.sampled_from([-(2**40), -1, 0, n + 1, 2**40]))
        wide = torch.tensor(lengths, dtype=torch.int64)
        if "lengths-shape" in faults:
            wide = draw(st.sampled_from([wide[:-1], torch.cat([wide, wide[:1]]), wide[:, None], wide.sum()]))
        fits = [d for d in validation.LENGTH_DTYPES if torch.iinfo(d).min <= min(lengths, default=0)
                and max(lengths, default=0) <= torch.iinfo(d).max]
        length_tensor = _as(draw, wide, "lengths-dtype" in faults, fits or [torch.int64], dtypes)

    params = {name: draw(st.one_of(param_values(name), _extreme_values(name)))
              for name in draw(st.sets(st.sampled_from(PARAM_NAMES), max_size=3))}
    if "parameter" in faults:
        params[draw(st.sampled_from(PARAM_NAMES))] = draw(ANY_PARAM)
    if "unknown-parameter" in faults:
        params["tau"] = 0.1
    label = (f"faults={sorted(faults)} B={batch} N={n} D={dim} K={keep} method={method} lengths={lengths} "
             f"features={str(features.dtype)[6:]}{tuple(features.stride())} scores={str(scores.dtype)[6:]}"
             f"{tuple(scores.shape)} relevance={None if relevance is None else str(relevance.dtype)[6:]} "
             f"params={params}")
    return HostileCall(features, scores, keep, method, length_tensor, relevance, params, label)

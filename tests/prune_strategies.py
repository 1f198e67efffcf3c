"""Hypothesis strategies for `prune` inputs, shared by the property tests.

`prune_cases` draws one whole call: batch, tokens N, channels D, keep K, method and its
parameters, dtypes, ragged lengths (and what fills the padding after them), the tensors' layout,
and the values: duplicate and zero tokens, tied or all-zero scores, image and row magnitudes.
Hypothesis draws the structure and one seed; torch's generator, seeded with it, draws the bulk
values (so a failing case shrinks in its sizes and parameters and prints a seed that rebuilds it).

Two kinds of features:

- ``exact``: `conftest.exact_features` (cosines exact in fp32) times powers of two per image and
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
from ada_vtp_kernels import defaults

from conftest import exact_features

METHODS = defaults.METHODS
FEATURE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
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


def _method_params(draw, method: str, erank_methods) -> dict:
    ratio = st.one_of(st.sampled_from([0.0, 0.25, 0.5, 1.0]), st.floats(0.0, 1.0))
    params = {"compute_erank": draw(st.booleans())}
    if method == "vispruner":
        params["important_ratio"] = draw(ratio)
    elif method == "mix":
        params["attention_ratio"] = draw(ratio)
    elif method == "mix_adaptive":
        params.update(attention_ratio=draw(ratio), gain=draw(st.sampled_from([0.0, 0.5, -2.0, 4.0])),
                      erank_ref=draw(st.sampled_from([1.0, 20.0, 90.0])))
    elif method == "agile":
        params.update(
            complexity=draw(st.sampled_from(defaults.COMPLEXITIES)),
            tau_max=draw(st.one_of(st.sampled_from([0.0, 0.2, 2.0]), st.floats(0.0, 2.0))),
            tau_scale=draw(st.sampled_from([0.0, 0.01, 0.1, 1.0])),
            erank_ref=draw(st.sampled_from([1.0, 20.0, 90.0])),
            entropy_ref=draw(st.sampled_from([1.0, 5.75])),
        )
    if method in ("agile", "mix_adaptive") or params["compute_erank"]:
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
                dtypes=FEATURE_DTYPES, kinds=("exact", "gaussian"), erank_methods=("exact", "fast"),
                layouts=LAYOUTS, row_spreads=(0, 6)) -> PruneCase:
    """One `prune` call (see the module docstring); `kinds=("exact",)` for cross-backend equality.
    `row_spreads`: exact features' rows are scaled by 2**e, e uniform in [-spread, spread]."""
    method = draw(st.sampled_from(methods))
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

"""The specification of the pruning methods: every method and every parameter declared once.

Each backend (the C++ CPU kernels, the Triton kernels, the pure-PyTorch reference), the fake
kernels, the op schema, the functional API, the integrations and the command line read their
method list, parameter defaults, ranges and validation rules here.  The C++ kernels receive a
selection id and a plain struct; `csrc/spec.h` is generated from this module
(``python -m ada_vtp_kernels.spec > csrc/spec.h``) and tests/test_spec.py checks that it is current.

A method is a visit order, a selection and the rules that derive its per-image inputs:

- the **order**: the tokens by descending score, or by a seeded hash (`visit_order`);
- the **selection** (`Selection`): one of five greedy kernels, each in every backend;
- the **attention count**: how many tokens the order supplies before the selection continues
  (`Method.attention_count`), and the **complexity** c that scales agile's radius
  (`Method.complexity`); both are computed from the image's statistics by torch operations on
  [B] tensors, the same on every device, so no backend restates them.

Calibration: AgilePruner does not publish ``erank_ref`` or ``tau_max``.  The defaults were measured
on real encoder features, the eight DINOv2 ViT-S/14 photos of tests/data/golden (layer -2, 576
tokens at 336 px, 384 channels):

- ``erank_ref = 90.0``: their exact erank spans 68.8 (moon) to 111.7 (cat; chelsea is the same
  photo), mean 89.8.  erank_ref is "the complexity of a typical image", so the round number at the
  mean makes ``c = erank / erank_ref`` about 1 for an average photo, below 1 for simple ones, above
  1 for cluttered ones.
- ``entropy_ref = 5.75``: the [CLS] attention entropy of the same photos, 5.11 to 6.19 nats, mean
  5.75 (ln 576 = 6.36 would be uniform attention).
- ``tau_max = 0.2``: the suppression radius grows as ``r * c * 0.01`` along the score order,
  reaching the cap around rank 20 for an average image.  With K=64 and tau_max 0.2 the score order
  supplies all 64 tokens on 3 of the 8 photos and runs out after 18 to 61 selections on the others,
  so suppression and the max-min fill both shape the result; at 0.1 the order runs out on 2 photos
  only (the selection stays close to attention), at 0.4 and above on all of them after 13 to 32
  selections (the fill dominates).  Reproduce with ``benchmarks/calibrate_defaults.py``.
- ``attention_ratio = 0.5``, ``gain = 0.5``: at ``erank == erank_ref`` mix_adaptive keeps half
  attention and half diverse tokens (the paper's balanced mix); an image at half the reference
  erank gets 75 % attention tokens, one at 1.5x gets 25 %, one at 3x or more gets pure diversity.

``ada-vtp calibrate`` recomputes erank_ref and entropy_ref for another encoder.  On all 20
scikit-image photos (same encoder and layer) it gives mean erank 87.25 (55.1 to 126.1) and mean
entropy 5.770 (5.11 to 6.23): within 3 % and 0.3 % of the values above, far inside the spread
between photos, so the defaults (and the tau_max measurements made with them) are kept.
"""

import dataclasses
import enum
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

# --------------------------------------------------------------------------------------------
# numerical constants of docs/DESIGN.md (csrc/spec.h carries them to C++)

NORM_EPS = 1e-6  # norms are clamped to this before dividing
DISTANCE_SNAP = 1e-6  # cosine distances below this are exact ties (0)
DPP_STOP = 1e-6  # dpp stops when the largest remaining gain is below this times the first
VISPRUNER_ROUND = 8  # tokens vispruner drops per matching round
# features whose largest magnitude lies outside [SAFE_MIN, SAFE_MAX] are rescaled by a power of
# two first: a sum of up to 2**15 squares of 2**56 stays below fp32's 2**128, and (2**-56)**2 is
# still a normal fp32 number
SAFE_MIN = 2.0**-56
SAFE_MAX = 2.0**56

# the SVD-free erank estimator (kernels/erank/reference.py, erank_fast_one, documents the method)
FAST_ERANK_BLOCK = 64  # deflated top eigen-space; images with min(n, D) <= 64 are solved exactly
# larger spectra leave too much mass below a 64-column block for 8 quadrature nodes (measured at
# 2880 x 1024: 4.3 % max error with 64 columns, 0.9 % with 128)
FAST_ERANK_LARGE_BLOCK = 128
FAST_ERANK_LARGE_ABOVE = 768  # min(n, D) above which the large block is used
FAST_ERANK_POWER_STEPS = 2  # block power steps before the Rayleigh-Ritz step
FAST_ERANK_PROBES = 8  # Rademacher probes of the deflated remainder
FAST_ERANK_LANCZOS_STEPS = 8  # Lanczos steps per probe: a 7-node Gauss and an 8-node anti-Gauss rule
# a column that keeps less than this share of its norm after orthogonalisation is dropped (zero)
FAST_ERANK_ORTH_DROP = 1e-5


def fast_erank_block(m: int) -> int:
    """Columns of the fast estimator's deflation block for an image with min(n, D) = m."""
    return FAST_ERANK_LARGE_BLOCK if m > FAST_ERANK_LARGE_ABOVE else FAST_ERANK_BLOCK


ERANK_METHODS = ("exact", "fast")
COMPLEXITIES = ("erank", "entropy")

# --------------------------------------------------------------------------------------------
# parameters


@dataclass(frozen=True)
class Range:
    """Valid values of a numeric parameter: finite, ``low <= v`` (``low < v`` when low_open),
    ``v <= high``."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False

    def describe(self) -> str:
        low = "" if self.low == -math.inf else f"{'>' if self.low_open else '>='} {number_text(self.low)}"
        high = "" if self.high == math.inf else f"<= {number_text(self.high)}"
        bounds = " and ".join(b for b in (low, high) if b)
        return f"a finite number{' ' + bounds if bounds else ''}"

    def check(self, name: str, value) -> None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (value > self.low if self.low_open else value >= self.low) and value <= self.high
        if not ok:
            raise ValueError(f"{name} = {number_text(value)}; expected {self.describe()}")


@dataclass(frozen=True)
class Choice:
    """Valid values of a string parameter."""

    choices: tuple[str, ...]

    def describe(self) -> str:
        return f"one of {', '.join(map(repr, self.choices))}"

    def check(self, name: str, value) -> None:
        if value not in self.choices:
            raise ValueError(f"unknown {name} {value!r}; expected {self.describe()}")


@dataclass(frozen=True)
class Flag:
    """A bool."""

    def describe(self) -> str:
        return "True or False"

    def check(self, name: str, value) -> None:
        if not isinstance(value, bool):
            raise ValueError(f"{name} = {value!r}; expected {self.describe()}")


@dataclass(frozen=True)
class Seed:
    """An int in [0, 2**31 - 1]."""

    def describe(self) -> str:
        return "an int in [0, 2**31 - 1]"

    def check(self, name: str, value) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
            raise ValueError(f"{name} = {value!r}; expected {self.describe()}")


def _param(default, rule, doc: str):
    return field(default=default, metadata={"rule": rule, "doc": doc})


def number_text(value) -> str:
    """A number as the messages print it (6 significant digits)."""
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else repr(value)


# --------------------------------------------------------------------------------------------
# methods


class Selection(enum.IntEnum):
    """The greedy selection kernels; every backend implements each (csrc/cpu/select.cpp, the
    Triton kernels of kernels/prune/triton.py, kernels/prune/reference.py)."""

    TOPK = 0  # the first K of the visit order
    MAXMIN = 1  # the first `attention_count` of the order, then max-min diversity up to K
    DPP = 2  # greedy MAP of a DPP with kernel diag(r) S diag(r)
    VISPRUNER = 3  # the first `attention_count` of the order, the rest deduplicated in rounds
    AGILE = 4  # suppression along the order with radius min(r c tau_scale, tau_max), then max-min


def _ratio_count(keep: int, ratio: torch.Tensor) -> torch.Tensor:
    """round(keep * ratio), halves up, as int64."""
    return torch.floor(keep * ratio + 0.5).to(torch.int64)


def _fill(like: torch.Tensor, value: float) -> torch.Tensor:
    """`value` in the shape, dtype and device of `like`: a tensor operand, because a division by a
    Python scalar may become a multiplication by its reciprocal (one ulp off) on some devices."""
    return torch.full_like(like, value)


@dataclass(frozen=True)
class Method:
    """One selection method.

    name: as passed to ``prune(method=...)``.  summary: one line for help texts.
    selection: the kernel that selects.  order: how `visit_order` orders the tokens (``"scores"`` or
    ``"random"``).
    params: the parameters it reads (besides erank_method and compute_erank, which every method
    accepts).
    needs_erank(p): whether its selection reads the erank (then `prune` computes it).
    attention_count(p, keep, erank, entropy): [B] int64, tokens taken from the order first.
    complexity(p, erank, entropy): [B] fp64, agile's c.
    """

    name: str
    summary: str
    selection: Selection
    order: str = "scores"
    params: tuple[str, ...] = ()
    needs_erank: Callable[["PruneParams"], bool] = lambda p: False
    attention_count: Callable[["PruneParams", int, torch.Tensor, torch.Tensor], torch.Tensor] = (
        lambda p, keep, erank, entropy: torch.zeros_like(entropy, dtype=torch.int64))
    complexity: Callable[["PruneParams", torch.Tensor, torch.Tensor], torch.Tensor] = (
        lambda p, erank, entropy: torch.zeros_like(entropy))


def _adaptive_ratio(p: "PruneParams", erank: torch.Tensor) -> torch.Tensor:
    """mix_adaptive: clamp(attention_ratio + gain * (1 - erank / erank_ref), 0, 1)."""
    return (p.attention_ratio + p.gain * (1.0 - erank / _fill(erank, p.erank_ref))).clamp(0.0, 1.0)


def _agile_complexity(p: "PruneParams", erank: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
    """c = erank / erank_ref, or entropy / entropy_ref with complexity="entropy"."""
    if p.complexity == "erank":
        return erank / _fill(erank, p.erank_ref)
    return entropy / _fill(entropy, p.entropy_ref)


_METHOD_LIST = (
    Method("attention", "FasterVLM: the K highest scores", Selection.TOPK,
           attention_count=lambda p, keep, erank, entropy: torch.full_like(entropy, keep, dtype=torch.int64)),
    Method("divprune", "DivPrune: max-min diversity", Selection.MAXMIN),
    Method("dpp", "CDPruner: greedy MAP of a DPP with kernel diag(r) S diag(r)", Selection.DPP),
    Method("vispruner", "VisPruner: floor(K important_ratio) by score, the rest deduplicated in rounds",
           Selection.VISPRUNER, params=("important_ratio",),
           attention_count=lambda p, keep, erank, entropy: torch.full_like(
               entropy, math.floor(keep * p.important_ratio), dtype=torch.int64)),
    Method("mix", "round(K attention_ratio) by score, then max-min diversity", Selection.MAXMIN,
           params=("attention_ratio",),
           attention_count=lambda p, keep, erank, entropy: _ratio_count(keep, _fill(entropy, p.attention_ratio))),
    Method("mix_adaptive", "mix with the attention share moved by erank / erank_ref", Selection.MAXMIN,
           params=("attention_ratio", "gain", "erank_ref"), needs_erank=lambda p: True,
           attention_count=lambda p, keep, erank, entropy: _ratio_count(keep, _adaptive_ratio(p, erank))),
    Method("agile", "AgilePruner: score-ordered suppression within min(r c tau_scale, tau_max)",
           Selection.AGILE, params=("erank_ref", "entropy_ref", "tau_max", "tau_scale", "complexity"),
           needs_erank=lambda p: p.complexity == "erank", complexity=_agile_complexity),
    Method("random", "a uniformly random K-subset fixed by seed, the same on every backend", Selection.TOPK,
           order="random", params=("seed",),
           attention_count=lambda p, keep, erank, entropy: torch.full_like(entropy, keep, dtype=torch.int64)),
)
METHODS: dict[str, Method] = {m.name: m for m in _METHOD_LIST}

# --------------------------------------------------------------------------------------------
# the parameters of a call


@dataclass(frozen=True)
class PruneParams:
    """Every parameter of `prune` but its tensors and K, validated when constructed.

    ``PruneParams(method="agile", tau_max=0.3)``; `of` also rejects unknown names.
    """

    method: str = field(default="agile", metadata={"rule": Choice(tuple(METHODS)), "doc": "the selection method"})
    important_ratio: float = _param(0.5, Range(0.0, 1.0), '"vispruner": share of K taken by score')
    attention_ratio: float = _param(
        0.5, Range(0.0, 1.0), '"mix": share of K taken by score; "mix_adaptive": that share at erank == erank_ref')
    gain: float = _param(0.5, Range(), '"mix_adaptive": how strongly erank / erank_ref moves the share')
    erank_ref: float = _param(90.0, Range(0.0, low_open=True), "erank of a typical image of the encoder")
    entropy_ref: float = _param(5.75, Range(0.0, low_open=True), 'attention entropy of a typical image (nats)')
    tau_max: float = _param(0.2, Range(0.0), '"agile": largest suppression radius in cosine distance')
    tau_scale: float = _param(0.01, Range(0.0), '"agile": radius growth per rank at c = 1')
    complexity: str = _param("erank", Choice(COMPLEXITIES), '"agile": c from the erank or the attention entropy')
    erank_method: str = _param(
        "exact", Choice(ERANK_METHODS),
        'erank: "exact" (eigenvalues of the fp64 Gram) or "fast" (SVD-free estimate; up to ~15 % off on '
        'steep spectra, see docs/DESIGN.md)')
    compute_erank: bool = _param(False, Flag(), "compute the erank also where the method needs none")
    seed: int = _param(0, Seed(), '"random": which K-subset')

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            f.metadata["rule"].check(f.name, value)
            if f.type is float:  # ints are accepted and stored as floats (the schema's type)
                object.__setattr__(self, f.name, float(value))

    @classmethod
    def of(cls, method: str = "agile", **params) -> "PruneParams":
        """PruneParams(method, **params), with a ValueError naming any unknown parameter."""
        unknown = sorted(set(params) - set(PARAM_NAMES))
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown}; expected some of {sorted(PARAM_NAMES)}")
        return cls(method=method, **params)

    @property
    def spec(self) -> Method:
        return METHODS[self.method]

    def needs_erank(self) -> bool:
        """Whether `prune` computes the erank: the selection reads it, or it was asked for."""
        return self.compute_erank or self.spec.needs_erank(self)

    def reads_features(self) -> bool:
        """Whether `prune` reads feature values: its selection compares tokens, or it computes the erank."""
        return self.spec.selection is not Selection.TOPK or self.needs_erank()

    def as_dict(self) -> dict:
        """The parameters without the method, by name (the op's keyword arguments)."""
        return {name: getattr(self, name) for name in PARAM_NAMES}


DEFAULTS = PruneParams()
# the parameters besides the method, in the op schema's order
PARAM_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(PruneParams) if f.name != "method")


class PruneResult(NamedTuple):
    """What `prune` returns, on every backend.

    indices: [B, K] int64, ascending token indices.
    erank: [B] float32, the erank of each image's valid tokens, or None where the method needs
        none and ``compute_erank`` is False.  The op itself returns a [0] tensor there.
    entropy: [B] float32, the attention entropy of each image's valid scores, nats.
    """

    indices: torch.Tensor
    erank: torch.Tensor | None
    entropy: torch.Tensor


# --------------------------------------------------------------------------------------------
# visit orders


def score_order(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[B, N] int64: each row's tokens by descending fp32 value, equal values by ascending index
    (a stable sort); the padding after each row's length goes last."""
    positions = torch.arange(values.shape[1], device=values.device)
    keyed = torch.where(positions[None, :] < lengths[:, None], values.to(torch.float32), -torch.inf)
    return torch.sort(keyed, dim=1, descending=True, stable=True).indices


def random_keys(seed: int, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[n] float32: token i's key in the "random" order, the top 24 bits of the 32-bit hash
    "lowbias32" of ``i + seed * 0x9E3779B9`` (mod 2**32): integers exact in fp32, the same on every
    device, and a token's key depends only on its position and the seed."""
    mask = 0xFFFFFFFF
    x = (torch.arange(n, dtype=torch.int64, device=device) + seed * 0x9E3779B9) & mask
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & mask
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & mask
    x = x ^ (x >> 16)
    return (x >> 8).to(torch.float32)


def visit_order(p: PruneParams, scores: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[B, N] int64: the order in which the method's selection visits each image's tokens: by
    descending score, or (``"random"``) by descending `random_keys`, ties to the lowest index."""
    if p.spec.order == "random":
        keys = random_keys(p.seed, scores.shape[1], scores.device).expand(scores.shape[0], -1)
        return score_order(keys, lengths)
    return score_order(scores, lengths)


def methods_doc(indent: int) -> str:
    """One bullet per method, for docstrings and help texts."""
    return "\n".join(f"{' ' * indent}- ``{m.name!r}``: {m.summary}." for m in METHODS.values())


def parameters_doc(indent: int) -> str:
    """One line per parameter (name, default, valid values, meaning), for docstrings and help texts."""
    lines = []
    for f in dataclasses.fields(PruneParams):
        if f.name == "method":
            continue
        lines.append(f"{' ' * indent}{f.name} (default {f.default!r}; {f.metadata['rule'].describe()}): "
                     f"{f.metadata['doc']}.")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# the op schema and the C++ header, generated from the declarations above


def _schema_default(value) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return str(value)
    return repr(value)


_SCHEMA_TYPES = {float: "float", str: "str", bool: "bool", int: "int"}


def prune_schema() -> str:
    """The schema of ``ada_vtp::prune``: tensors, K, the method, then every parameter with its default."""
    params = ", ".join(
        f"{_SCHEMA_TYPES[f.type]} {f.name}={_schema_default(f.default)}"
        for f in dataclasses.fields(PruneParams) if f.name != "method"
    )
    return (f'prune(Tensor features, Tensor scores, SymInt keep, str method="{DEFAULTS.method}", '
            f"Tensor? lengths=None, Tensor? relevance=None, {params}) "
            "-> (Tensor indices, Tensor erank, Tensor entropy)")


def erank_schema() -> str:
    return f'erank(Tensor features, Tensor? lengths=None, str method="{DEFAULTS.erank_method}") -> Tensor'


ENTROPY_SCHEMA = "attention_entropy(Tensor scores, Tensor? lengths=None) -> Tensor"


def cpp_header() -> str:
    """csrc/spec.h: the selection ids, erank methods and numerical constants for the C++ kernels."""
    selections = "\n".join(f"  k{s.name.title().replace('_', '')} = {int(s)}," for s in Selection)
    erank_methods = "\n".join(f"  k{m.title()} = {i}," for i, m in enumerate(ERANK_METHODS))
    constants = {
        "kNormEps": NORM_EPS, "kDistanceSnap": DISTANCE_SNAP, "kDppStop": DPP_STOP,
        "kSafeMin": SAFE_MIN, "kSafeMax": SAFE_MAX, "kFastErankOrthDrop": FAST_ERANK_ORTH_DROP,
    }
    ints = {
        "kVisprunerRound": VISPRUNER_ROUND, "kFastErankBlock": FAST_ERANK_BLOCK,
        "kFastErankLargeBlock": FAST_ERANK_LARGE_BLOCK, "kFastErankLargeAbove": FAST_ERANK_LARGE_ABOVE,
        "kFastErankPowerSteps": FAST_ERANK_POWER_STEPS, "kFastErankProbes": FAST_ERANK_PROBES,
        "kFastErankLanczosSteps": FAST_ERANK_LANCZOS_STEPS,
    }
    lines = [
        "// Generated from ada_vtp_kernels/spec.py by `python -m ada_vtp_kernels.spec > csrc/spec.h`;",
        "// tests/test_spec.py checks that it is current.  Do not edit.",
        "#pragma once",
        "",
        "#include <cstdint>",
        "",
        "namespace ada_vtp::spec {",
        "",
        "// spec.Selection",
        "enum class Selection : int64_t {",
        selections,
        "};",
        "",
        "// spec.ERANK_METHODS, by position",
        "enum class ErankMethod : int64_t {",
        erank_methods,
        "};",
        "",
        *(f"constexpr double {name} = {value.hex()};  // {value:g}" for name, value in constants.items()),
        *(f"constexpr int64_t {name} = {value};" for name, value in ints.items()),
        "",
        "}  // namespace ada_vtp::spec",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(cpp_header())

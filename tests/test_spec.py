"""ada_vtp_kernels.spec itself: the generated C++ header is current, each method derives the
documented per-image inputs, the parameters' rules and defaults, the visit orders.

The values here are written from the documentation (spec's docstrings, docs/DESIGN.md), not
computed by spec's own functions."""

import dataclasses
import math
import re
from pathlib import Path

import pytest
import torch

from ada_vtp_kernels import spec

REPO = Path(__file__).resolve().parents[1]


def test_cpp_header_is_current():
    """csrc/spec.h is `python -m ada_vtp_kernels.spec > csrc/spec.h`, regenerated after every change."""
    assert (REPO / "csrc" / "spec.h").read_text() == spec.cpp_header()


# --------------------------------------------------------------------------------------------
# what each method derives from an image's statistics


def f64(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


ERANK = f64(45.0, 90.0, 135.0, 270.0, 0.0)  # 0.5, 1, 1.5 and 3 times erank_ref = 90, and 0
ENTROPY = f64(2.875, 5.75, 8.625, 0.0, 11.5)  # 0.5, 1, 1.5, 0 and 2 times entropy_ref = 5.75

# (method, parameters, keep, attention count per image, complexity per image)
DERIVED = [
    ("attention", {}, 8, [8] * 5, [0.0] * 5),
    ("divprune", {}, 8, [0] * 5, [0.0] * 5),
    ("dpp", {}, 8, [0] * 5, [0.0] * 5),
    ("random", {"seed": 3}, 8, [8] * 5, [0.0] * 5),
    # vispruner: floor(K important_ratio)
    ("vispruner", {"important_ratio": 0.5}, 7, [3] * 5, [0.0] * 5),
    ("vispruner", {"important_ratio": 0.55}, 10, [5] * 5, [0.0] * 5),
    ("vispruner", {"important_ratio": 1.0}, 7, [7] * 5, [0.0] * 5),
    # mix: round(K attention_ratio), halves up
    ("mix", {"attention_ratio": 0.5}, 5, [3] * 5, [0.0] * 5),
    ("mix", {"attention_ratio": 0.25}, 10, [3] * 5, [0.0] * 5),
    ("mix", {"attention_ratio": 0.25}, 2, [1] * 5, [0.0] * 5),
    ("mix", {"attention_ratio": 0.375}, 8, [3] * 5, [0.0] * 5),
    ("mix", {"attention_ratio": 0.0}, 8, [0] * 5, [0.0] * 5),
    # mix_adaptive: round(K clamp(attention_ratio + gain (1 - erank / erank_ref), 0, 1)), halves up
    ("mix_adaptive", {}, 8, [6, 4, 2, 0, 8], [0.0] * 5),
    ("mix_adaptive", {}, 5, [4, 3, 1, 0, 5], [0.0] * 5),
    ("mix_adaptive", {"gain": 2.0, "attention_ratio": 0.25}, 8, [8, 2, 0, 0, 8], [0.0] * 5),
    ("mix_adaptive", {"gain": 0.0, "attention_ratio": 0.25}, 8, [2] * 5, [0.0] * 5),
    ("mix_adaptive", {"erank_ref": 45.0}, 8, [4, 0, 0, 0, 8], [0.0] * 5),
    # agile: c = erank / erank_ref, or entropy / entropy_ref
    ("agile", {}, 8, [0] * 5, [0.5, 1.0, 1.5, 3.0, 0.0]),
    ("agile", {"complexity": "entropy"}, 8, [0] * 5, [0.5, 1.0, 1.5, 0.0, 2.0]),
    ("agile", {"erank_ref": 45.0}, 8, [0] * 5, [1.0, 2.0, 3.0, 6.0, 0.0]),
]


def test_every_method_has_derived_values():
    assert {case[0] for case in DERIVED} == set(spec.METHODS)


@pytest.mark.parametrize("method, params, keep, count, complexity", DERIVED,
                         ids=[f"{c[0]}-{c[1]}-K{c[2]}" for c in DERIVED])
def test_attention_count_and_complexity(method, params, keep, count, complexity):
    p = spec.PruneParams.of(method, **params)
    got_count = p.spec.attention_count(p, keep, ERANK, ENTROPY)
    got_complexity = p.spec.complexity(p, ERANK, ENTROPY)
    assert got_count.dtype == torch.int64 and got_count.tolist() == count
    assert got_complexity.dtype == torch.float64 and got_complexity.tolist() == complexity


@pytest.mark.parametrize("method, params, needs", [
    ("attention", {}, False), ("divprune", {}, False), ("dpp", {}, False), ("vispruner", {}, False),
    ("mix", {}, False), ("random", {}, False), ("mix_adaptive", {}, True), ("agile", {}, True),
    ("agile", {"complexity": "entropy"}, False),
])
def test_needs_erank(method, params, needs):
    """The erank is computed where the selection reads it, or where compute_erank asks for it."""
    assert spec.PruneParams.of(method, **params).needs_erank() is needs
    assert spec.PruneParams.of(method, compute_erank=True, **params).needs_erank() is True


def test_methods_select_with_their_kernel():
    selection = {m.name: m.selection for m in spec.METHODS.values()}
    S = spec.Selection
    assert selection == {"attention": S.TOPK, "divprune": S.MAXMIN, "dpp": S.DPP, "vispruner": S.VISPRUNER,
                         "mix": S.MAXMIN, "mix_adaptive": S.MAXMIN, "agile": S.AGILE, "random": S.TOPK}
    assert {m.name for m in spec.METHODS.values() if m.order == "random"} == {"random"}


# --------------------------------------------------------------------------------------------
# the parameters

RULES = {  # every parameter's valid values, as docs/DESIGN.md states them
    "method": "one of 'attention', 'divprune', 'dpp', 'vispruner', 'mix', 'mix_adaptive', 'agile', 'random'",
    "important_ratio": "a finite number >= 0 and <= 1",
    "attention_ratio": "a finite number >= 0 and <= 1",
    "gain": "a finite number",
    "erank_ref": "a finite number > 0",
    "entropy_ref": "a finite number > 0",
    "tau_max": "a finite number >= 0",
    "tau_scale": "a finite number >= 0",
    "complexity": "one of 'erank', 'entropy'",
    "erank_method": "one of 'exact', 'fast'",
    "compute_erank": "True or False",
    "seed": "an int in [0, 2**31 - 1]",
}
BAD = {spec.Range: math.nan, spec.Choice: "bogus", spec.Flag: 1, spec.Seed: -1}


def test_rules():
    assert {f.name: f.metadata["rule"].describe() for f in dataclasses.fields(spec.PruneParams)} == RULES


@pytest.mark.parametrize("field", dataclasses.fields(spec.PruneParams), ids=lambda f: f.name)
def test_every_field_is_validated(field):
    """A value its rule rejects raises a ValueError naming the parameter, the value and the rule,
    whether the dataclass is built directly or by `of`."""
    rule = field.metadata["rule"]
    bad = BAD[type(rule)]
    if isinstance(rule, spec.Choice):
        message = f"unknown {field.name} {bad!r}; expected {RULES[field.name]}"
    else:
        message = f"{field.name} = {spec.number_text(bad)}; expected {RULES[field.name]}"
    for make in (spec.PruneParams, spec.PruneParams.of):
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            make(**{field.name: bad})


@pytest.mark.parametrize("name, accepted, rejected", [
    ("important_ratio", [0, 0.0, 1, 1.0], [-1e-300, 1.0000000000000002, math.inf]),
    ("gain", [-1e308, 0, 1e308], [math.inf, -math.inf, math.nan, True, "1"]),
    ("erank_ref", [5e-324, 1e308], [0.0, -1.0, math.inf]),
    ("tau_max", [0.0, 1e308], [-5e-324, math.nan]),
    ("seed", [0, 2**31 - 1], [-1, 2**31, 1.0, True, None]),
    ("compute_erank", [True, False], [0, 1, "True", None]),
])
def test_range_ends(name, accepted, rejected):
    for value in accepted:
        assert getattr(spec.PruneParams(**{name: value}), name) == value
    for value in rejected:
        with pytest.raises(ValueError, match=f"^{re.escape(name)} = "):
            spec.PruneParams(**{name: value})


def test_params_object():
    """`of` rejects unknown names (the dataclass itself is a TypeError); floats given as ints are
    stored as floats; the object is frozen; as_dict has every parameter but the method."""
    with pytest.raises(ValueError, match=r"^unknown parameter\(s\) \['tau', 'x'\]; expected some of \["):
        spec.PruneParams.of("agile", x=1, tau=0.1)
    p = spec.PruneParams.of("mix", attention_ratio=1, tau_max=0)
    assert type(p.attention_ratio) is float and type(p.tau_max) is float
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.tau_max = 0.5
    assert list(p.as_dict()) == list(spec.PARAM_NAMES) and "method" not in p.as_dict()
    assert p.spec is spec.METHODS["mix"]


def test_defaults_are_the_schema_defaults():
    """The op schemas' defaults are the dataclass's: spec.DEFAULTS, field by field."""
    prune = {a.name: a.default_value for a in torch._C.parse_schema(f"ada_vtp::{spec.prune_schema()}").arguments
             if a.has_default_value()}
    assert prune == {"method": "agile", "lengths": None, "relevance": None, **spec.DEFAULTS.as_dict()}
    assert spec.DEFAULTS.method == "agile"
    erank = {a.name: a.default_value for a in torch._C.parse_schema(f"ada_vtp::{spec.erank_schema()}").arguments
             if a.has_default_value()}
    assert erank == {"lengths": None, "method": spec.DEFAULTS.erank_method}
    assert {f.name: f.default for f in dataclasses.fields(spec.PruneParams)} == {
        "method": "agile", "important_ratio": 0.5, "attention_ratio": 0.5, "gain": 0.5, "erank_ref": 90.0,
        "entropy_ref": 5.75, "tau_max": 0.2, "tau_scale": 0.01, "complexity": "erank", "erank_method": "exact",
        "compute_erank": False, "seed": 0}


def test_fast_erank_block():
    assert [spec.fast_erank_block(m) for m in (1, 64, 768, 769, 4096)] == [64, 64, 64, 128, 128]


# --------------------------------------------------------------------------------------------
# visit orders


def test_score_order():
    """Descending fp32 value, ties to the lowest index, the padding last (whatever it holds);
    float64 values equal in fp32 tie."""
    values = torch.tensor([[1.0, 3.0, 3.0, 2.0, 9.0], [0.5, math.nan, 0.5, 0.7, -1.0]])
    assert spec.score_order(values, torch.tensor([4, 1])).tolist() == [[1, 2, 3, 0, 4], [0, 1, 2, 3, 4]]
    assert spec.score_order(values, torch.tensor([5, 5])).tolist()[0] == [4, 1, 2, 3, 0]
    close = torch.tensor([[1.0, 1.0 + 1e-12, 1.0 - 1e-12]], dtype=torch.float64)
    assert spec.score_order(close, torch.tensor([3])).tolist() == [[0, 1, 2]]


def test_random_keys():
    """Deterministic, 24-bit integers exact in fp32, and a token's key depends on its position and
    the seed only (not on N)."""
    keys = spec.random_keys(7, 20)
    assert keys.dtype == torch.float32 and torch.equal(keys, spec.random_keys(7, 20))
    assert torch.equal(keys, spec.random_keys(7, 50)[:20])
    assert bool((keys == keys.round()).all()) and 0 <= float(keys.min()) and float(keys.max()) < 2**24
    assert not torch.equal(keys, spec.random_keys(8, 20))
    assert spec.random_keys(2**31 - 1, 5).shape == (5,)


def test_random_order_ignores_the_scores():
    p = spec.PruneParams.of("random", seed=11)
    lengths = torch.tensor([20, 13])
    orders = [spec.visit_order(p, torch.rand(2, 20, generator=torch.Generator().manual_seed(i)), lengths)
              for i in range(2)]
    assert torch.equal(orders[0], orders[1])
    assert torch.equal(orders[0], spec.score_order(spec.random_keys(11, 20).expand(2, -1), lengths))
    scores = torch.rand(2, 20)
    assert torch.equal(spec.visit_order(spec.PruneParams.of("agile"), scores, lengths),
                       spec.score_order(scores, lengths))


def test_random_subset_is_uniform():
    """Over 2000 seeds, each of 20 tokens is among the K = 5 kept in 25 % +- 4 % of them (the
    binomial standard deviation is 0.97 %)."""
    seeds, n, keep = 2000, 20, 5
    keys = torch.stack([spec.random_keys(seed, n) for seed in range(seeds)])
    kept = spec.score_order(keys, torch.full((seeds,), n))[:, :keep]
    frequency = torch.bincount(kept.flatten(), minlength=n).double() / seeds
    assert bool(((frequency - 0.25).abs() <= 0.04).all()), frequency.tolist()

"""The near-tie checker itself (tests/support/near_ties.py): it accepts a difference only where a near-tie
decides, and rejects every other one, for every method with a greedy rule."""

import pytest
import torch

from ada_vtp_kernels import reference

from support import near_ties as nt

ROUNDINGS = (nt.FP32_SUMS, nt.ROUNDED_ONCE)


def check(features, scores, keep, method, got, want, relevance=None, **params):
    """got, want: (indices, erank or None); the entropy is the reference's."""
    entropy = reference.attention_entropy_ref(scores)
    as_result = [(indices, erank, entropy) for indices, erank in (got, want)]
    return nt.assert_same_or_near_ties(features, scores, keep, method, *as_result, roundings=ROUNDINGS,
                                       relevance=relevance, label="checker test", **params)


def gaussian(seed: int, n: int = 60, dim: int = 16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, n, dim, generator=g), torch.rand(1, n, generator=g) + 0.01, torch.rand(1, n, generator=g)


@pytest.mark.parametrize("method", ["divprune", "dpp", "vispruner", "mix", "agile", "mix_adaptive"])
def test_identical_selections_pass(method):
    x, s, r = gaussian(0)
    res = reference.prune_ref(x, s, 12, method, relevance=r if method == "dpp" else None)
    assert check(x, s, 12, method, (res.indices, res.erank), (res.indices, res.erank), relevance=r) == []


@pytest.mark.parametrize("method", ["divprune", "dpp", "vispruner", "mix", "agile"])
def test_one_token_swapped_for_another_fails(method):
    """The selection with its latest-decided token replaced by the farthest unselected one is no
    rounding of the method."""
    x, s, r = gaussian(1)
    rel = r if method == "dpp" else None
    want = reference.prune_ref(x, s, 12, method, relevance=rel, tau_max=0.5)
    chosen = set(want.indices[0].tolist())
    outside = [j for j in range(60) if j not in chosen]
    got = sorted((chosen - {want.indices[0, -1].item()}) | {outside[0]})
    with pytest.raises(AssertionError, match="not a near-tie"):
        check(x, s, 12, method, (torch.tensor([got]), want.erank), (want.indices, want.erank), relevance=r,
              tau_max=0.5)


@pytest.mark.parametrize("method, params, other", [
    ("vispruner", {"important_ratio": 0.5}, {"important_ratio": 0.25}),
    ("agile", {"tau_max": 0.3, "tau_scale": 0.1, "erank_ref": 3.0},
     {"tau_max": 1.0, "tau_scale": 0.1, "erank_ref": 3.0}),
    ("mix", {"attention_ratio": 0.5}, {"attention_ratio": 0.25}),
])
def test_other_parameters_fail(method, params, other):
    x, s, _ = gaussian(2, n=120, dim=4)
    want = reference.prune_ref(x, s, 16, method, **params)
    got = reference.prune_ref(x, s, 16, method, **other)
    assert not torch.equal(got.indices, want.indices)
    with pytest.raises(AssertionError, match="not a near-tie"):
        check(x, s, 16, method, (got.indices, want.erank), (want.indices, want.erank), **params)


@pytest.mark.parametrize("method", ["attention", "random"])
def test_visit_order_selections_allow_no_difference(method):
    x, s, _ = gaussian(3)
    want = reference.prune_ref(x, s, 5, method).indices
    got = want.clone()
    got[0, 0] = next(j for j in range(60) if j not in set(want[0].tolist()))
    with pytest.raises(AssertionError, match="visit order is exact"):
        check(x, s, 5, method, (got.sort().values, None), (want, None))


def test_divprune_near_tie_is_found():
    """Two tokens equally far from the first pick, up to 1e-9: either may come next."""
    e = torch.eye(4)
    x = torch.stack([e[0], e[1], e[2] * (1 + 1e-9) + 1e-9 * e[3], e[3]])[None]
    s = torch.ones(1, 4)
    want = reference.prune_ref(x, s, 2, "divprune").indices
    first = set(want[0].tolist())
    other = sorted(first ^ {1, 2}) if first & {1, 2} else None
    assert other is not None, want
    ties = check(x, s, 2, "divprune", (torch.tensor([other]), None), (want, None))
    assert len(ties) == 1 and ties[0].gap < 1e-7 and ties[0].kind == "max-min distance", ties


def test_agile_threshold_near_tie_is_found():
    """A token at distance tau from the first pick, up to rounding: suppressed on one side only."""
    # token 1 lies at cosine distance 0.01 from token 0, the radius of rank 1 at c = 1
    angle = torch.acos(torch.tensor(1 - 0.01, dtype=torch.float64))
    x = torch.tensor([[1.0, 0.0, 0.0], [float(torch.cos(angle)), float(torch.sin(angle)), 0.0], [0.0, 0.0, 1.0]])
    s = torch.tensor([[3.0, 2.0, 1.0]])
    erank = torch.tensor([90.0])
    a, b = torch.tensor([[0, 1]]), torch.tensor([[0, 2]])
    ties = check(x[None], s, 2, "agile", (a, erank), (b, erank))
    assert len(ties) == 1 and ties[0].kind == "distance vs tau", ties

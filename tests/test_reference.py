"""The pure-PyTorch specification (kernels/*/reference.py, with spec.py's method table) against
hand-checked cases.

Every expected selection below is worked out on paper from docs/DESIGN.md; the comment next to
each case gives the reasoning.  Most cases use 2-D unit vectors at chosen angles, where the cosine
distance is d = 1 - cos(angle between them).  Property tests at the end compare the reference with
tiny independent re-implementations (written from DESIGN.md, plain Python lists) on features whose
cosines are exact, so any disagreement is a real difference of rules, not of rounding.
"""

import math

import pytest
import torch

from ada_vtp_kernels import reference, spec
from ada_vtp_kernels.reference import prune_ref

from support.data import distinct_scores, exact_features


def feats(rows) -> torch.Tensor:
    """One image [1, n, D] fp32 from a list of rows."""
    return torch.tensor([rows], dtype=torch.float32)


def at_angles(degrees) -> torch.Tensor:
    """One image [1, n, 2] of unit vectors at the given angles (degrees)."""
    rad = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], dim=-1)[None].float()


def sel(features, scores, keep, method, **kw) -> list[int]:
    """Selected indices of image 0 as a list (ascending)."""
    if not isinstance(scores, torch.Tensor):
        scores = torch.tensor([scores], dtype=torch.float32)
    return prune_ref(features, scores, keep, method, **kw).indices[0].tolist()


def attention_count(method: str, keep: int, erank: float = math.nan, **params) -> int:
    """The method's attention count for one image of this erank (spec.Method.attention_count)."""
    p = spec.PruneParams.of(method, **params)
    stats = torch.tensor([erank], dtype=torch.float64)
    return int(p.spec.attention_count(p, keep, stats, stats)[0])


def entropy_of(values) -> float:
    total = sum(values)
    return -sum(v / total * math.log(v / total) for v in values if v > 0)


# Shared 2-D example.  x0 = x1 = (1, 0) (duplicates), x2 = (0, 1), x3 = (-1, 0), x4 = (0, -1),
# x5 = (1, 1).  Distances: d(0,1) = 0; d(0,2) = d(0,4) = d(2,3) = d(3,4) = 1; d(0,3) = d(2,4) = 2;
# d(0,5) = d(2,5) = 1 - 1/sqrt2 = 0.293; d(3,5) = d(4,5) = 1.707.
SQUARE = feats([[1, 0], [1, 0], [0, 1], [-1, 0], [0, -1], [1, 1]])
UNIFORM6 = [1.0] * 6


# --------------------------------------------------------------------------------------------
# cosine distance conventions


def test_distance_zero_row_is_one_from_everything_including_itself():
    x = feats([[1, 0], [0, 0], [0, 0]])[0]
    d = reference.cosine_distance(reference.rescale(x))
    assert d[1].tolist() == [1.0, 1.0, 1.0]
    assert d[2, 2].item() == 1.0 and d[0, 0].item() == 0.0


def test_distance_duplicates_and_near_duplicates_snap_to_zero():
    # (1, 1e-4) is 5e-9 away from (1, 0) in cosine distance: below 1e-6, snapped to exactly 0.
    x = feats([[3, 4], [3, 4], [6, 8], [1, 0], [1, 1e-4]])[0]
    d = reference.cosine_distance(reference.rescale(x))
    assert d[0, 1].item() == 0.0 and d[0, 2].item() == 0.0 and d[3, 4].item() == 0.0
    assert torch.equal(d, d.T)
    assert (d >= 0).all() and (d <= 2).all()


# --------------------------------------------------------------------------------------------
# attention


@pytest.mark.parametrize(
    "scores, keep, expected",
    [
        ([0.1, 0.5, 0.3, 0.5, 0.2, 0.0], 2, [1, 3]),  # the two 0.5s
        ([0.1, 0.5, 0.3, 0.5, 0.2, 0.0], 3, [1, 2, 3]),  # then 0.3
        ([0.5, 0.9, 0.5, 0.9, 0.5, 0.1], 3, [0, 1, 3]),  # 0.9, 0.9, then the lowest-index 0.5
        ([0.5, 0.9, 0.5, 0.9, 0.5, 0.1], 4, [0, 1, 2, 3]),
        ([0.7] * 6, 4, [0, 1, 2, 3]),  # all equal: the lowest indices
        ([0.0] * 6, 1, [0]),
    ],
    ids=["plain-k2", "plain-k3", "tie-lowest-k3", "tie-lowest-k4", "all-equal", "all-zero"],
)
def test_attention_hand(scores, keep, expected):
    assert sel(SQUARE, scores, keep, "attention") == expected


# --------------------------------------------------------------------------------------------
# divprune


@pytest.mark.parametrize(
    "keep, expected",
    [
        # nearest-other distance: x0, x1: 0 (duplicates); x2, x5: 0.293; x3: 1; x4: 1 -> tie of 3
        # and 4, lowest index: first pick 3.
        (1, [3]),
        # running min from {3}: [2, 2, 1, 0, 1, 1.707] -> 0 (ties with its duplicate 1: lowest).
        (2, [0, 3]),
        # min with d(0, .): [0, 0, 1, 0, 1, 0.293] -> 2 (ties with 4: lowest).
        (3, [0, 2, 3]),
        # min with d(2, .): [0, 0, 0, 0, 1, 0.293] -> 4; then 5 (0.293); then 1 (0).
        (4, [0, 2, 3, 4]),
        (5, [0, 2, 3, 4, 5]),
        (6, [0, 1, 2, 3, 4, 5]),
    ],
    ids=lambda v: f"k{v}" if isinstance(v, int) else None,
)
def test_divprune_hand(keep, expected):
    assert sel(SQUARE, UNIFORM6, keep, "divprune") == expected


def test_divprune_zero_row_is_far_from_everything():
    # x0 = x1 = x3 in direction (duplicates, nearest other at 0); the zero row x2 is at 1 from
    # every token -> first pick 2; its row is all 1 -> next the lowest index 0.
    x = feats([[1, 0], [1, 0], [0, 0], [2, 0]])
    assert sel(x, [1.0] * 4, 1, "divprune") == [2]
    assert sel(x, [1.0] * 4, 2, "divprune") == [0, 2]


@pytest.mark.parametrize("rows", ["duplicates", "zeros"])
def test_divprune_all_equal_distances_take_lowest_indices(rows):
    # every off-diagonal distance equal (0 for copies, 1 for zero rows): pure tie-breaking.
    x = torch.ones(1, 9, 5) if rows == "duplicates" else torch.zeros(1, 9, 5)
    assert sel(x, [1.0] * 9, 4, "divprune") == [0, 1, 2, 3]


def test_divprune_single_token():
    assert sel(feats([[0.5, -2.0]]), [0.3], 1, "divprune") == [0]


# --------------------------------------------------------------------------------------------
# dpp

# y0 = y1 = (1, 0), y2 = (0, 1), y3 = (1, 1), y4 = (-1, 0); S = cos.
DPP5 = feats([[1, 0], [1, 0], [0, 1], [1, 1], [-1, 0]])


@pytest.mark.parametrize(
    "keep, expected",
    [
        # r = 1: diag L = 1 everywhere -> first pick 0 (lowest); d2 = 1 - S(0, .)^2 =
        # [0, 0, 1, 0.5, 0] -> 2.  2-D: the rank is spent (d2 of 3 = 0.5 - 0.5), so the rest are
        # the unselected of highest relevance, all 1: lowest indices 1, 3, 4.
        (1, [0]),
        (2, [0, 2]),
        (3, [0, 1, 2]),
        (4, [0, 1, 2, 3]),
        (5, [0, 1, 2, 3, 4]),
    ],
    ids=lambda v: f"k{v}" if isinstance(v, int) else None,
)
def test_dpp_hand_unit_relevance(keep, expected):
    assert sel(DPP5, [1.0] * 5, keep, "dpp") == expected


@pytest.mark.parametrize(
    "keep, expected",
    [
        # r = [0.5, 1, 0.25, 0.9, 0.8]: diag L = r^2 -> first 1.  d2 = r^2 (1 - S(1, .)^2) =
        # [0, -, 0.0625, 0.405, 0] -> 3.  Rank spent: the rest by relevance among {0, 2, 4}:
        # 4 (0.8), 0 (0.5), 2 (0.25).
        (1, [1]),
        (2, [1, 3]),
        (3, [1, 3, 4]),
        (4, [0, 1, 3, 4]),
    ],
    ids=lambda v: f"k{v}" if isinstance(v, int) else None,
)
def test_dpp_hand_with_relevance(keep, expected):
    rel = torch.tensor([[0.5, 1.0, 0.25, 0.9, 0.8]])
    assert sel(DPP5, [1.0] * 5, keep, "dpp", relevance=rel) == expected


def test_dpp_duplicates_fall_back_to_relevance():
    # identical rows: one pick (the highest relevance) spends the rank; then relevance order.
    x = torch.tensor([1.0, -2.0, 0.5, 3.0]).expand(1, 8, 4).clone()
    rel = torch.tensor([[0.3, 0.9, 0.1, 0.8, 0.7, 0.2, 0.6, 0.4]])
    assert sel(x, [1.0] * 8, 5, "dpp", relevance=rel) == [1, 3, 4, 6, 7]  # 0.9 0.8 0.7 0.6 0.4
    assert sel(x, [1.0] * 8, 3, "dpp") == [0, 1, 2]


def test_dpp_zero_features_fall_back_to_relevance():
    # diag L = 0 everywhere: the rank is spent before the first pick.
    x = torch.zeros(1, 6, 3)
    rel = torch.tensor([[0.1, 0.5, 0.5, 0.9, 0.0, 0.2]])
    assert sel(x, [1.0] * 6, 3, "dpp", relevance=rel) == [1, 2, 3]
    assert sel(x, [1.0] * 6, 2, "dpp", relevance=torch.zeros(1, 6)) == [0, 1]


@pytest.mark.parametrize("keep", [3, 6, 10], ids=lambda k: f"k{k}")
def test_dpp_rank_exhaustion_more_tokens_than_dims(keep):
    # D = 2 < K: two DPP picks, then relevance.  The picks are computed here in fp64:
    # first argmax r^2, second argmax r^2 (1 - S(i, first)^2).
    x = torch.randn(1, 10, 2)
    rel = torch.rand(1, 10) + 0.05
    xn = torch.nn.functional.normalize(x[0].double(), dim=1)
    r = rel[0].double()
    first = int(torch.argmax(r * r))
    second_gain = r * r * (1 - (xn @ xn[first]) ** 2)
    second_gain[first] = -1
    second = int(torch.argmax(second_gain))
    rest = [i for i in torch.argsort(rel[0], descending=True, stable=True).tolist() if i not in (first, second)]
    expected = sorted([first, second] + rest[: keep - 2])
    res = prune_ref(x, torch.rand(1, 10), keep, "dpp", relevance=rel)
    assert res.indices[0].tolist() == expected
    assert res.indices.unique().numel() == keep


def test_dpp_zero_relevance_token_is_never_a_dpp_pick():
    # a token with r = 0 has diag L = 0; with D = 3 orthogonal tokens available it is picked last.
    x = feats([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]])
    rel = torch.tensor([[1.0, 0.0, 1.0, 1.0]])
    assert sel(x, [1.0] * 4, 3, "dpp", relevance=rel) == [0, 2, 3]


# --------------------------------------------------------------------------------------------
# vispruner

# scores descending with the index (token 0 first).
DESC8 = [8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]


def test_vispruner_single_round_hand():
    # K = 5, important_ratio 0.25 -> K_imp = 1: {0}; R = [1..7], target 4.
    # Round: r = min(8, 7 - 4) = 3; A = [1, 3, 5, 7], B = [2, 4, 6] (at 0, 90, 180 degrees);
    # s_a = max cos to B: 1 (10 deg from 0) .985, 3 (105 deg, 15 from 90) .966,
    # 5 (230 deg, 50 from 180) .643, 7 (120 deg, 30 from 90) .866 -> drop 1, 3, 7.
    x = at_angles([45, 10, 0, 105, 90, 230, 180, 120])
    assert sel(x, DESC8, 5, "vispruner", important_ratio=0.25) == [0, 2, 4, 5, 6]


def test_vispruner_two_rounds_hand():
    # K = 3, important_ratio 0.5 -> K_imp = 1: {0}; R = [1..7], target 2.
    # Round 1: r = min(8, 5) = 5 > |A| = 4: all of A = [1, 3, 5, 7] dropped, R = [2, 4, 6].
    # Round 2: r = 1; A = [2, 6], B = [4] (at 0 deg): s_2 = cos 30, s_6 = cos 80 -> drop 2.
    x = at_angles([200, 0, 30, 0, 0, 0, 80, 0])
    assert sel(x, DESC8, 3, "vispruner", important_ratio=0.5) == [0, 4, 6]
    # mirror: 2 now the less similar one -> 6 is dropped.
    x = at_angles([200, 0, 80, 0, 0, 0, 30, 0])
    assert sel(x, DESC8, 3, "vispruner", important_ratio=0.5) == [0, 2, 4]


def test_vispruner_equal_similarity_drops_the_earlier_candidate():
    # K = 6, important_ratio 0.25 -> K_imp = 1: {0}; R = [1..7], target 5: r = 2.
    # B = [2, 4, 6] = e1, e2, e3.  A = [1, 3, 5, 7]: 1 = e1 (s = 1), 3 = (1,1,1,1) (s = 0.5),
    # 5 = (1,1,-1,-1) (s = 0.5 exactly), 7 = e4 (s = 0).  Drop 1 then the tie 3/5 -> 3 (stable).
    e1, e2, e3, e4 = [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]
    x = feats([e4, e1, e1, [1, 1, 1, 1], e2, [1, 1, -1, -1], e3, e4])
    assert sel(x, DESC8, 6, "vispruner", important_ratio=0.25) == [0, 2, 4, 5, 6, 7]


def test_vispruner_score_ties_keep_index_order():
    # all scores equal: the order is 0, 1, 2, ...; same geometry as the single-round case.
    x = at_angles([45, 10, 0, 105, 90, 230, 180, 120])
    assert sel(x, [1.0] * 8, 5, "vispruner", important_ratio=0.25) == [0, 2, 4, 5, 6]


def test_vispruner_important_ratio_one_is_attention():
    x, s = torch.randn(2, 40, 8), distinct_scores(2, 40)
    assert torch.equal(prune_ref(x, s, 12, "vispruner", important_ratio=1.0).indices,
                       prune_ref(x, s, 12, "attention").indices)


# --------------------------------------------------------------------------------------------
# mix and mix_adaptive

# scores for SQUARE: top two are 1 (0.9) and 4 (0.8), then 5 (0.4).
MIX_SCORES = [0.1, 0.9, 0.2, 0.3, 0.8, 0.4]


@pytest.mark.parametrize(
    "keep, expected",
    [
        # K_att = round(1 * 0.5) = 1 (halves up): pure attention -> 1.
        (1, [1]),
        # K = 4: K_att = 2 -> {1, 4}; running min of d(1, .), d(4, .) = [0, 0, 1, 1, 0, 0.293]
        # -> 2 (tie with 3, lowest); then min with d(2, .) -> 3.
        (4, [1, 2, 3, 4]),
        # K = 3: K_att = 2 -> {1, 4}, then 2.
        (3, [1, 2, 4]),
    ],
    ids=lambda v: f"k{v}" if isinstance(v, int) else None,
)
def test_mix_hand(keep, expected):
    assert sel(SQUARE, MIX_SCORES, keep, "mix", attention_ratio=0.5) == expected


@pytest.mark.parametrize(
    "keep, ratio, count",
    [(5, 0.5, 3), (3, 0.5, 2), (1, 0.5, 1), (4, 0.5, 2), (7, 0.3, 2), (10, 0.25, 3), (64, 0.0, 0), (64, 1.0, 64)],
)
def test_mix_attention_count_rounds_halves_up(keep, ratio, count):
    assert attention_count("mix", keep, attention_ratio=ratio) == count


@pytest.mark.parametrize("keep", [1, 7, 30], ids=lambda k: f"k{k}")
def test_mix_ratio_endpoints(keep):
    x, s = torch.randn(3, 30, 6), distinct_scores(3, 30)
    assert torch.equal(prune_ref(x, s, keep, "mix", attention_ratio=0.0).indices,
                       prune_ref(x, s, keep, "divprune").indices)
    assert torch.equal(prune_ref(x, s, keep, "mix", attention_ratio=1.0).indices,
                       prune_ref(x, s, keep, "attention").indices)


@pytest.mark.parametrize(
    "erank, ratio, gain, ref, expected",
    [
        (90.0, 0.5, 0.5, 90.0, 0.5),
        (45.0, 0.5, 0.5, 90.0, 0.75),  # simple image: more attention
        (135.0, 0.5, 0.5, 90.0, 0.25),
        (270.0, 0.5, 0.5, 90.0, 0.0),  # clamp below
        (0.0, 0.8, 0.5, 90.0, 1.0),  # clamp above
        (45.0, 0.5, -0.5, 90.0, 0.25),  # negative gain reverses
    ],
)
def test_adaptive_attention_ratio_formula(erank, ratio, gain, ref, expected):
    # K = 1000: the count is round(1000 * ratio), which pins the ratio to 3 decimals
    got = attention_count("mix_adaptive", 1000, erank, attention_ratio=ratio, gain=gain, erank_ref=ref)
    assert got == math.floor(1000 * expected + 0.5)


# rows e1, e1, e2, e2, e3, e3, e4, e4: Xᵀ X = 2 I -> four equal singular values -> erank 4.
FOUR_PAIRS = feats([[1 if c == i // 2 else 0 for c in range(4)] for i in range(8)])


@pytest.mark.parametrize(
    "erank_ref, gain, equivalent",
    [
        (4.0, 0.5, dict(method="mix", attention_ratio=0.5)),  # c = 1: the base ratio
        (8.0, 0.5, dict(method="mix", attention_ratio=0.75)),  # 0.5 + 0.5 (1 - 0.5)
        (8.0, 1.0, dict(method="attention")),  # 0.5 + 1 (1 - 0.5) = 1
        (2.0, 0.5, dict(method="divprune")),  # 0.5 + 0.5 (1 - 2) = 0
        (1.0, 0.5, dict(method="divprune")),  # -1 clamped to 0
    ],
    ids=["c1", "c-half", "to-attention", "to-divprune", "clamped"],
)
def test_mix_adaptive_follows_erank(erank_ref, gain, equivalent):
    s = torch.tensor([[0.1, 0.8, 0.3, 0.7, 0.2, 0.6, 0.5, 0.4]])
    res = prune_ref(FOUR_PAIRS, s, 4, "mix_adaptive", erank_ref=erank_ref, gain=gain, attention_ratio=0.5)
    assert res.erank[0].item() == pytest.approx(4.0, rel=1e-6)
    other = dict(equivalent)
    assert res.indices.tolist() == prune_ref(FOUR_PAIRS, s, 4, other.pop("method"), **other).indices.tolist()


def test_mix_adaptive_matches_mix_with_formula_ratio():
    x, s = torch.randn(4, 50, 12), distinct_scores(4, 50)
    eranks = reference.erank_ref(x)
    for erank_ref in (5.0, 9.0, 12.0, 30.0):
        res = prune_ref(x, s, 20, "mix_adaptive", erank_ref=erank_ref)
        for b in range(4):
            ratio = min(max(0.5 + 0.5 * (1 - float(eranks[b]) / erank_ref), 0.0), 1.0)
            count = 20 * ratio + 0.5
            assert abs(count - round(count)) > 1e-4, "choose inputs away from a rounding boundary"
            expected = prune_ref(x[b : b + 1], s[b : b + 1], 20, "mix", attention_ratio=ratio).indices
            assert torch.equal(res.indices[b : b + 1], expected), (erank_ref, b)


# --------------------------------------------------------------------------------------------
# agile

# Angles and scores chosen so that the radius tau_r = 0.1 r (c = 1, tau_scale 0.1) decides:
# idx:    0     1     2     3      4      5
# angle:  30    0     60    100    150    200
# score:  0.5   0.6   0.4   0.3    0.2    0.1   -> order 1, 0, 2, 3, 4, 5
AGILE_X = at_angles([30, 0, 60, 100, 150, 200])
AGILE_SCORES = [0.5, 0.6, 0.4, 0.3, 0.2, 0.1]
AGILE_C1 = dict(complexity="entropy", entropy_ref=entropy_of(AGILE_SCORES), tau_scale=0.1, tau_max=1.0)


@pytest.mark.parametrize(
    "keep, expected",
    [
        # r1: 1 (0 deg) selected, tau 0.1 (< 25.8 deg): suppresses nothing else.
        # r2: 0 (30 deg, d = 0.134 > 0.1 from 1) selected, tau 0.2 (< 36.9 deg): suppresses 2.
        # r3: 2 suppressed.  r4: 3 (100 deg, 70 from 0) selected, tau 0.4 (< 53.1 deg):
        # suppresses 4 (150 deg).  r5: 4 suppressed.  r6: 5 (200 deg) selected.
        (2, [0, 1]),
        (3, [0, 1, 3]),
        (4, [0, 1, 3, 5]),
        # the order ran out at 4: max-min fill from {1, 0, 3, 5}: min distance of 2 is 0.134
        # (to 0), of 4 is 0.357 (50 deg to 3 and 5) -> 4, not 2 (which the score would pick).
        (5, [0, 1, 3, 4, 5]),
        (6, [0, 1, 2, 3, 4, 5]),
    ],
    ids=lambda v: f"k{v}" if isinstance(v, int) else None,
)
def test_agile_hand_growing_radius(keep, expected):
    assert sel(AGILE_X, AGILE_SCORES, keep, "agile", **AGILE_C1) == expected


def test_agile_small_cap_is_attention_here():
    # tau capped at 0.1 (< 25.8 deg): no two tokens are that close -> the score order.
    assert sel(AGILE_X, AGILE_SCORES, 4, "agile", **{**AGILE_C1, "tau_max": 0.1}) == [0, 1, 2, 3]


def test_agile_erank_complexity_equals_entropy_complexity_at_same_c():
    erank = float(reference.erank_ref(AGILE_X)[0])
    by_erank = dict(complexity="erank", erank_ref=erank, tau_scale=0.1, tau_max=1.0)
    for keep in range(1, 7):
        assert sel(AGILE_X, AGILE_SCORES, keep, "agile", **by_erank) == \
            sel(AGILE_X, AGILE_SCORES, keep, "agile", **AGILE_C1)


def test_agile_suppresses_duplicates_and_skips_zero_rows_radius():
    # 0 and 2 are duplicates (d = 0 < any tau > 0): 2 is suppressed by 0.  The zero row 3 has
    # d = 1 to everything (and itself), so with tau < 1 it neither suppresses nor is suppressed.
    x = feats([[1, 0], [0, 1], [1, 0], [0, 0], [-1, 0]])
    s = [0.9, 0.8, 0.7, 0.6, 0.5]
    kw = dict(complexity="entropy", entropy_ref=1.0, tau_scale=100.0, tau_max=0.5)
    assert sel(x, s, 3, "agile", **kw) == [0, 1, 3]
    assert sel(x, s, 4, "agile", **kw) == [0, 1, 3, 4]


@pytest.mark.parametrize("complexity", ["erank", "entropy"])
def test_agile_tau_max_zero_is_attention(complexity):
    x, s = torch.randn(3, 60, 16), distinct_scores(3, 60)
    for keep in (1, 17, 60):
        assert torch.equal(prune_ref(x, s, keep, "agile", tau_max=0.0, complexity=complexity).indices,
                           prune_ref(x, s, keep, "attention").indices)


def test_agile_zero_features_have_zero_erank_hence_attention():
    x, s = torch.zeros(1, 20, 4), distinct_scores(1, 20)
    res = prune_ref(x, s, 6, "agile")
    assert res.erank[0].item() == 0.0
    assert torch.equal(res.indices, prune_ref(x, s, 6, "attention").indices)


def test_agile_constant_radius_keeps_selected_tokens_apart():
    # With a constant radius tau, a token selected from the score order is at distance >= tau
    # from every token selected before it.  K = 8 of 80 tokens: the order does not run out.
    x, s = exact_features(1, 80, 16), distinct_scores(1, 80)
    kw = dict(complexity="entropy", entropy_ref=1.0, tau_scale=1e6, tau_max=0.75)
    idx = prune_ref(x, s, 8, "agile", **kw).indices[0]
    d = reference.cosine_distance(reference.rescale(x[0]))[idx][:, idx]
    assert (d[~torch.eye(8, dtype=torch.bool)] >= 0.75).all()
    assert not torch.equal(idx, prune_ref(x, s, 8, "attention").indices[0]), "the radius must matter here"


# --------------------------------------------------------------------------------------------
# random


def lowbias32(x: int) -> int:
    """The 32-bit hash docs/DESIGN.md names for the random order, on Python ints."""
    mask = 0xFFFFFFFF
    x &= mask
    x ^= x >> 16
    x = (x * 0x7FEB352D) & mask
    x ^= x >> 15
    x = (x * 0x846CA68B) & mask
    return x ^ (x >> 16)


def random_subset(seed: int, n: int, k: int) -> list[int]:
    keys = [lowbias32(i + seed * 0x9E3779B9) >> 8 for i in range(n)]
    return sorted(sorted(range(n), key=lambda i: (-keys[i], i))[:k])


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**31 - 1])
def test_random_keeps_the_highest_keys_of_the_seeded_hash(seed):
    x, s = torch.randn(1, 12, 3), distinct_scores(1, 12)
    assert sel(x, s, 4, "random", seed=seed) == random_subset(seed, 12, 4)


def test_random_reads_neither_features_nor_scores_and_respects_lengths():
    x, s = torch.randn(2, 20, 5), distinct_scores(2, 20)
    res = prune_ref(x, s, 6, "random", lengths=torch.tensor([20, 9]), seed=3)
    assert res.indices[0].tolist() == random_subset(3, 20, 6)
    assert res.indices[1].tolist() == random_subset(3, 9, 6)  # the keys of the valid tokens only
    other = prune_ref(torch.randn(2, 20, 5), torch.rand(2, 20), 6, "random", lengths=torch.tensor([20, 9]), seed=3)
    assert torch.equal(res.indices, other.indices)
    assert res.erank is None


# --------------------------------------------------------------------------------------------
# statistics: entropy and erank


@pytest.mark.parametrize(
    "scores, expected",
    [
        ([0.25] * 7, math.log(7)),
        ([3.0] * 576, math.log(576)),
        ([0.0] * 5, math.log(5)),  # all zero counts as uniform
        ([0.0, 0.0, 4.0, 0.0], 0.0),  # one-hot
        ([1.0, 3.0], -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))),
        ([1.0, 0.0, 1.0], math.log(2)),  # 0 ln 0 = 0
    ],
    ids=["uniform7", "uniform576", "all-zero", "one-hot", "one-three", "with-zero"],
)
def test_entropy_values(scores, expected):
    h = reference.attention_entropy_ref(torch.tensor([scores]))
    assert h.dtype == torch.float32 and h.shape == (1,)
    assert h[0].item() == pytest.approx(expected, rel=1e-6, abs=1e-7)


def test_entropy_ignores_padding():
    s = torch.tensor([[1.0, 1.0, 1.0, 1.0, 50.0, 0.0], [2.0, 0.0, 0.0, 0.0, 0.0, 7.0]])
    h = reference.attention_entropy_ref(s, torch.tensor([4, 1]))
    assert h.tolist() == pytest.approx([math.log(4), 0.0], abs=1e-7)


def test_erank_rank_one():
    v = torch.tensor([1.0, -2.0, 0.5, 3.0, 0.25])
    x = (torch.tensor([1.0, 2.0, -3.0, 0.5, 7.0, 1.5])[:, None] * v)[None]
    assert reference.erank_ref(x)[0].item() == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("n, dim", [(4, 4), (5, 32), (64, 64)])
def test_erank_orthonormal_rows(n, dim):
    q, _ = torch.linalg.qr(torch.randn(dim, dim, dtype=torch.float64))
    x = q[:n].float()[None]
    assert reference.erank_ref(x)[0].item() == pytest.approx(n, rel=1e-5)


def test_erank_equal_singular_values_more_rows_than_dims():
    # Xᵀ X = 2 I (the smaller Gram is 4 x 4): erank 4.
    assert reference.erank_ref(FOUR_PAIRS)[0].item() == pytest.approx(4.0, rel=1e-6)


def test_erank_zero_matrix():
    assert reference.erank_ref(torch.zeros(2, 5, 3)).tolist() == [0.0, 0.0]


def test_erank_known_spectrum():
    # singular values 3, 1 -> q = (0.75, 0.25)
    x = feats([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    expected = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert reference.erank_ref(x)[0].item() == pytest.approx(expected, rel=1e-6)


def test_erank_scale_invariance_fp32():
    x = torch.randn(2, 40, 24)
    base = reference.erank_ref(x)
    # a power of two: the rescaling makes the result bit-identical
    for p in (-100, 100):
        assert torch.equal(reference.erank_ref(x * 2.0**p), base)
    for scale in (1e-30, 1e30):
        scaled = x * scale
        assert torch.isfinite(scaled).all()
        torch.testing.assert_close(reference.erank_ref(scaled), base, rtol=1e-5, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_erank_half_dtypes_equal_their_fp32_upcast(dtype):
    x = torch.randn(2, 30, 16).to(dtype)
    assert torch.equal(reference.erank_ref(x), reference.erank_ref(x.float()))


def test_erank_ignores_padding():
    x = torch.randn(2, 10, 6)
    lengths = torch.tensor([10, 4])
    padded = x.clone()
    padded[1, 4:] = float("nan")
    got = reference.erank_ref(padded, lengths)
    assert got[0] == reference.erank_ref(x[:1])[0]
    assert got[1] == reference.erank_ref(x[1:, :4])[0]


# --------------------------------------------------------------------------------------------
# prune output contract, lengths and padding

ALL_METHODS = list(spec.METHODS)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_output_contract(method):
    x, s = torch.randn(3, 25, 8), distinct_scores(3, 25)
    res = prune_ref(x, s, 7, method)
    assert res.indices.dtype == torch.int64 and res.indices.shape == (3, 7)
    assert res.entropy.dtype == torch.float32
    assert (res.indices.diff(dim=1) > 0).all(), "ascending and distinct"
    assert torch.isfinite(res.entropy).all()
    if spec.PruneParams.of(method).needs_erank():
        assert res.erank.dtype == torch.float32 and torch.isfinite(res.erank).all()
    else:
        assert res.erank is None
    assert torch.isfinite(prune_ref(x, s, 7, method, compute_erank=True).erank).all()


@pytest.mark.parametrize("method", ALL_METHODS)
def test_padding_is_never_selected_and_does_not_matter(method):
    n, lengths = 30, torch.tensor([30, 9, 17])
    x, s = exact_features(3, n, 16), distinct_scores(3, n)
    rel = torch.rand(3, n) if method == "dpp" else None
    res = prune_ref(x, s, 9, method, lengths=lengths, relevance=rel, compute_erank=True)
    assert all((res.indices[b] < lengths[b]).all() for b in range(3))
    # different padding content, NaN included, changes nothing
    x2, s2 = x.clone(), s.clone()
    rel2 = None if rel is None else rel.clone()
    for b in range(3):
        x2[b, lengths[b]:] = float("nan") if b == 1 else 1e4
        s2[b, lengths[b]:] = 1e9 if b == 1 else -5.0
        if rel2 is not None:
            rel2[b, lengths[b]:] = float("inf")
    res2 = prune_ref(x2, s2, 9, method, lengths=lengths, relevance=rel2, compute_erank=True)
    assert torch.equal(res.indices, res2.indices)
    assert torch.equal(res.erank, res2.erank) and torch.equal(res.entropy, res2.entropy)
    # and each row equals that image alone, unpadded
    for b in range(3):
        n_b = int(lengths[b])
        alone = prune_ref(x[b : b + 1, :n_b], s[b : b + 1, :n_b], 9, method,
                          relevance=None if rel is None else rel[b : b + 1, :n_b], compute_erank=True)
        assert torch.equal(res.indices[b], alone.indices[0])


@pytest.mark.parametrize("method", ALL_METHODS)
def test_keep_equals_length_selects_all_valid(method):
    x, s = exact_features(2, 12, 8), distinct_scores(2, 12)
    res = prune_ref(x, s, 5, method, lengths=torch.tensor([12, 5]))
    assert res.indices[1].tolist() == [0, 1, 2, 3, 4]
    assert prune_ref(x, s, 12, method).indices.tolist() == [list(range(12))] * 2


@pytest.mark.parametrize("method", ALL_METHODS)
def test_batch_rows_are_independent(method):
    x, s = exact_features(4, 20, 16), distinct_scores(4, 20)
    res = prune_ref(x, s, 6, method)
    for b in range(4):
        assert torch.equal(res.indices[b], prune_ref(x[b : b + 1], s[b : b + 1], 6, method).indices[0])


@pytest.mark.parametrize("method", ALL_METHODS)
def test_scale_invariance_of_selection(method):
    x, s = torch.randn(2, 30, 8), distinct_scores(2, 30)
    base = prune_ref(x, s, 10, method, compute_erank=True)
    for p in (-60, 60):
        scaled = prune_ref(x * 2.0**p, s, 10, method, compute_erank=True)
        assert torch.equal(scaled.indices, base.indices) and torch.equal(scaled.erank, base.erank)


# --------------------------------------------------------------------------------------------
# independent re-implementations (from DESIGN.md, fp64 cosines of exact features)


def exact_distance(x: torch.Tensor) -> list[list[float]]:
    """d(i, j) in fp64 for exact features (cosines are exact, so this is what fp32 gives too)."""
    x = x.double()
    norms = x.norm(dim=1).clamp_min(1e-6)
    sim = ((x / norms[:, None]) @ (x / norms[:, None]).T).clamp(-1, 1)
    d = 1 - sim
    d[d < 1e-6] = 0
    return d.tolist()


def order_by_score(scores: list[float]) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def naive_maxmin(d, k, selected):
    n = len(d)
    selected = list(selected)
    if not selected:
        nearest = [min(d[i][j] for j in range(n) if j != i) if n > 1 else 0 for i in range(n)]
        selected = [max(range(n), key=lambda i: (nearest[i], -i))]
    while len(selected) < k:
        cand = [i for i in range(n) if i not in selected]
        selected.append(max(cand, key=lambda i: (min(d[i][j] for j in selected), -i)))
    return sorted(selected)


def naive_vispruner(d, scores, k, ratio):
    order = order_by_score(scores)
    k_imp = math.floor(k * ratio)
    important, rest = order[:k_imp], order[k_imp:]
    target = k - k_imp
    while len(rest) > target:
        r = min(8, len(rest) - target)
        a, b = rest[0::2], rest[1::2]
        s_a = [max((1 - d[i][j] for j in b), default=-math.inf) for i in a]
        ranked = sorted(range(len(a)), key=lambda t: (-s_a[t], t))
        rest = [a[t] for t in ranked[min(r, len(a)):]] + b
    return sorted(important + rest)


def naive_agile_constant_radius(d, scores, k, tau):
    selected, suppressed = [], set()
    for i in order_by_score(scores):
        if len(selected) == k:
            break
        if i in suppressed:
            continue
        selected.append(i)
        suppressed |= {j for j in range(len(d)) if d[i][j] < tau}
    return naive_maxmin(d, k, selected)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n, keep", [(40, 11), (70, 25), (33, 1)], ids=["n40-k11", "n70-k25", "n33-k1"])
def test_matches_naive_reimplementations(seed, n, keep):
    g = torch.Generator().manual_seed(seed)
    x, s = exact_features(1, n, 24, generator=g), distinct_scores(1, n, generator=g)
    if seed % 2:
        s = torch.floor(s * 4) / 4  # many score ties
    d, sl = exact_distance(x[0]), s[0].tolist()
    assert sel(x, s, keep, "divprune") == naive_maxmin(d, keep, [])
    for ratio in (0.0, 0.25, 0.5):
        assert sel(x, s, keep, "vispruner", important_ratio=ratio) == naive_vispruner(d, sl, keep, ratio), ratio
    for tau in (0.3, 0.8, 1.2):
        kw = dict(complexity="entropy", entropy_ref=1.0, tau_scale=1e6, tau_max=tau)
        assert sel(x, s, keep, "agile", **kw) == naive_agile_constant_radius(d, sl, keep, tau), tau
    top = order_by_score(sl)[: attention_count("mix", keep, attention_ratio=0.4)]
    assert sel(x, s, keep, "mix", attention_ratio=0.4) == naive_maxmin(d, keep, top)

"""The near-tie checker: proves that two selections of the same inputs part only where fp32
rounding of the similarities may decide (DESIGN.md, reproducibility contract).

Backends compute the cosine similarities with different roundings: the reference and the C++ op
round an fp64 dot product once to fp32 (machine-independent), the Triton kernels and the peers'
code accumulate in fp32 (their bits depend on the summation order, hence on the CPU or GPU).
Where two selections differ, `check_row` replays the method's greedy steps on the exact cosines
(`reference.cosine_distance(xs, exact=True)`, never rounded to fp32) and follows both selections
together:

- at every step each selection's own next pick is its member with the best exact criterion; it
  must be within the selection's rounding tolerance of the step's exact best (otherwise the
  selection is not explained by rounding: AssertionError);
- while the two picks agree, the replay takes that pick and goes on;
- at the first step where they part, the two candidates' exact criteria are within the two
  sides' tolerances of each other: a proven near-tie, returned as a `NearTie`.

The criterion and its tolerance per method, with eps the side's bound on |S - exact cosine|
(`Rounding.similarity_error`) and eps_d = eps + 2**-23 (the fp32 rounding of d = 1 - S):

- ``attention`` and ``random`` (spec.Selection.TOPK): the visit order, exact on every backend
  (fp32 scores, integer hash keys): no difference is allowed.
- ``divprune``, ``mix``, ``mix_adaptive`` and ``agile``'s fill: the max-min distance (first
  pick: the nearest-neighbour distance); tolerance eps_d per value, plus DISTANCE_SNAP where a
  value is within reach of the snap.
- ``agile``: each suppression test d(s, i) < tau, tau from each side's own erank (or entropy);
  a test is decided when d is more than eps_d from both sides' tau.
- ``mix_adaptive``: the attention count round(K ratio(erank)), from each side's erank; the eranks
  must agree within `erank_rtol`.
- ``dpp``: the gain d2_j = L_jj - L_jS L_SS^-1 L_Sj; to first order an entrywise error e of L
  (e = (eps_d + (t + 2) u_state) r_i r_j, u_state the side's unit roundoff of its greedy state)
  moves it by at most e (r_j + sum_s |w_s| r_s)**2, w = L_SS^-1 L_Sj; the rank stop likewise.
- ``vispruner``: each round's s_a = max_b S(a, b), tolerance eps_d per value.  The rounds are
  not picks, so the replay follows the exact rounds until one drops a token a side kept, and
  requires two deciding values within the tolerance in the rounds up to it (`_vispruner`).
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ada_vtp_kernels import reference, spec

FP32_UNIT = 2.0**-24
FP64_UNIT = 2.0**-53
# fp32 rounding of d = 1 - S, d in [0, 2]: half an ulp of [1, 2)
DISTANCE_ROUNDING = 2.0**-23


class Rounding(NamedTuple):
    """How a backend rounds: a bound on |S - exact cosine| for D channels, and the unit roundoff
    of its DPP greedy state."""

    name: str
    similarity_error: Callable[[int], float]
    dpp_state_unit: float


# fp64 dot products of the fp32 rows, rounded once to fp32: half an ulp of a value <= 1, plus
# the fp64 sum's error (D 2**-53, far below it)
ROUNDED_ONCE = Rounding("fp64 dots rounded once (reference, C++ op)", lambda dim: FP32_UNIT, FP64_UNIT)


def fp32_sum_error(dim: int) -> float:
    """Bound on the error of a cosine computed with fp32 sums of D terms, in any order: Higham and
    Mary's probabilistic bound (SIAM J. Sci. Comput. 2019) lambda sqrt(D) u for the dot of two
    unit vectors and half of it for each norm, plus the division and the normalisation, with
    lambda = 6 (each bound fails with probability below 2 D exp(-18), 1e-5 at D = 384).  The
    worst-case bound, 2 D u, is 40x what these sums err by on real features (measured on the
    golden photos, D = 384: at most 20 u on MKL's AVX2 and AVX-512 kernels alike), and would
    call half of VisPruner's rounds near-ties."""
    return (2 * 6 * math.sqrt(dim) + 4) * FP32_UNIT


# fp32 accumulation (Triton), fp64 DPP state
FP32_SUMS = Rounding("fp32 sums (Triton)", fp32_sum_error, FP64_UNIT)
# the peers' own code: fp32 normalisation and GEMM, fp32 greedy state (CDPruner)
PEER_FP32 = Rounding("fp32 sums and state (peers' code)", fp32_sum_error, FP32_UNIT)


@dataclass
class NearTie:
    """Where two selections part: the step, the two candidates and their exact criteria's gap."""

    method: str
    kind: str
    step: int
    candidates: tuple[int, int]
    gap: float
    tolerance: float
    row: int = -1

    def __str__(self) -> str:
        where = f"row {self.row}, " if self.row >= 0 else ""
        return (f"{self.method}: {where}step {self.step}, {self.kind}, tokens {self.candidates[0]} / "
                f"{self.candidates[1]}: gap {self.gap:.3g} <= tolerance {self.tolerance:.3g}")


class Side(NamedTuple):
    """One of the two selections: its name (for messages), its tokens and how it rounds."""

    name: str
    tokens: frozenset
    rounding: Rounding
    erank: float
    entropy: float


class _Replay:
    """The shared state of one row's check: the two sides, the exact distances, the messages."""

    def __init__(self, method: str, label: str, dist: torch.Tensor, dim: int, sides: tuple[Side, Side]):
        self.method, self.label, self.dist, self.sides = method, label, dist, sides
        self.eps = [s.rounding.similarity_error(dim) for s in sides]
        self.eps_d = [e + DISTANCE_ROUNDING for e in self.eps]
        self.masks = []
        for side in sides:
            mask = torch.zeros(dist.shape[0], dtype=torch.bool)
            mask[sorted(side.tokens)] = True
            self.masks.append(mask)

    def fail(self, message: str):
        raise AssertionError(f"{self.label}: {self.method}: {message} (not a near-tie)")

    def require_in_both(self, tokens, what: str) -> None:
        for side in self.sides:
            missing = sorted(set(tokens) - side.tokens)
            if missing:
                self.fail(f"{side.name} lacks {what} {missing}, which no rounding decides")

    def joint_step(self, step: int, kind: str, criterion: torch.Tensor, available: torch.Tensor,
                   tolerance: Callable[[int, int], float]):
        """One greedy argmax over `available` tokens (lowest index on ties): the common pick, or
        a NearTie where the two sides' own picks part.  tolerance(side, j): how far side's
        value of token j may be from the exact one."""
        values = torch.where(available, criterion, -math.inf)
        best = int(torch.argmax(values))
        picks = []
        for s, side in enumerate(self.sides):
            members = available & self.masks[s]
            if not members.any():
                self.fail(f"{side.name} has no token left at step {step}")
            pick = int(torch.argmax(torch.where(members, criterion, -math.inf)))
            slack = 0.0 if pick == best else tolerance(s, pick) + tolerance(s, best)
            shortfall = float(values[best] - values[pick])
            if shortfall > slack:
                self.fail(f"step {step} ({kind}): {side.name}'s best member {pick} ({float(values[pick]):.9g}) "
                          f"trails the exact pick {best} ({float(values[best]):.9g}) by {shortfall:.3g} "
                          f"> tolerance {slack:.3g}")
            picks.append(pick)
        if picks[0] == picks[1]:
            return picks[0]
        a, b = picks
        tol = sum(tolerance(s, a) + tolerance(s, b) for s in range(2))
        gap = abs(float(values[a] - values[b]))
        if gap > tol:
            self.fail(f"step {step} ({kind}): the picks {a} and {b} differ by {gap:.3g} > tolerance {tol:.3g}")
        return NearTie(self.method, kind, step, (a, b), gap, tol)

    def distance_tolerance(self, values: torch.Tensor) -> Callable[[int, int], float]:
        """Tolerance of a criterion made of distances: eps_d, plus the snap where the value could
        have been snapped on one side and not on the other."""

        def tol(side: int, j: int) -> float:
            near_snap = float(values[j]) < spec.DISTANCE_SNAP + self.eps_d[side]
            return self.eps_d[side] + (spec.DISTANCE_SNAP if near_snap else 0.0)

        return tol


def _maxmin(rp: _Replay, k: int, selected: list[int], step0: int = 0):
    """DivPrune's max-min walk continued from `selected` (reference.select_maxmin), both sides
    together."""
    dist = rp.dist
    n = dist.shape[0]
    selected = list(selected)
    rp.require_in_both(selected, "the starting tokens")
    step = step0
    if not selected:
        if n == 1:
            return None
        nearest = dist.clone()
        nearest.fill_diagonal_(math.inf)
        nearest = nearest.min(dim=1).values
        pick = rp.joint_step(step, "first pick's nearest-neighbour distance", nearest,
                             torch.ones(n, dtype=torch.bool), rp.distance_tolerance(nearest))
        if isinstance(pick, NearTie):
            return pick
        selected.append(pick)
        step += 1
    taken = torch.zeros(n, dtype=torch.bool)
    taken[selected] = True
    min_dist = dist[selected].min(dim=0).values
    while len(selected) < k:
        pick = rp.joint_step(step, "max-min distance", min_dist, ~taken, rp.distance_tolerance(min_dist))
        if isinstance(pick, NearTie):
            return pick
        selected.append(pick)
        taken[pick] = True
        min_dist = torch.minimum(min_dist, dist[pick])
        step += 1
    return None


def _agile(rp: _Replay, order: list[int], k: int, p: spec.PruneParams):
    """AgilePruner's walk (reference.select_agile) with both sides' thresholds, then the fill."""
    complexity = [float(p.spec.complexity(p, *_statistics(s))[0]) for s in rp.sides]
    eps = max(rp.eps_d)
    selected, ranks = [], []
    for rank, i in enumerate(order, start=1):
        if len(selected) == k:
            break
        status, closest = "selected", None
        for s, r in zip(selected, ranks):
            taus = [reference.agile_threshold(r, c, p.tau_scale, p.tau_max) for c in complexity]
            d = float(rp.dist[s, i])
            if d + eps < min(taus):
                status = "suppressed"
                break
            if d - eps < max(taus):
                margin = min(abs(d - t) for t in taus)
                if closest is None or margin < closest[0]:
                    closest = (margin, s, eps + abs(taus[0] - taus[1]))
        if status == "suppressed":
            continue
        if closest is not None:
            margin, s, tol = closest
            return NearTie(rp.method, "distance vs tau", rank, (s, i), margin, tol)
        rp.require_in_both([i], f"the token of rank {rank}, which no selected token suppresses,")
        selected.append(i)
        ranks.append(rank)
    return _maxmin(rp, k, selected, step0=len(selected))


def _dpp(rp: _Replay, relevance: torch.Tensor, k: int):
    """CDPruner's greedy MAP (reference.select_dpp) on the exact kernel, both sides together."""
    n = rp.dist.shape[0]
    r = relevance.to(torch.float32).to(torch.float64)
    kernel = r[:, None] * (1.0 - rp.dist) * r[None, :]
    d2 = kernel.diagonal().clone()
    stop = spec.DPP_STOP * float(d2.max())
    c = torch.zeros(k, n, dtype=torch.float64)
    taken = torch.zeros(n, dtype=torch.bool)
    selected: list[int] = []

    def tolerance_at(t: int):
        factor = torch.zeros(n, dtype=torch.float64)  # (r_j + sum_s |w_s| r_s)**2, filled on demand
        known = torch.zeros(n, dtype=torch.bool)

        def tol(side: int, j: int) -> float:
            if not known[j]:
                w = torch.zeros(0, dtype=torch.float64)
                if t:
                    chol = c[:t, selected].T  # [t, t] lower triangular: L_SS = chol cholᵀ
                    w = torch.linalg.solve_triangular(chol.T, c[:t, j : j + 1], upper=True)[:, 0]
                factor[j] = (r[j] + (w.abs() * r[selected]).sum()) ** 2
                known[j] = True
            unit = rp.sides[side].rounding.dpp_state_unit
            return float((rp.eps_d[side] + (t + 2) * unit) * factor[j])

        return tol

    for t in range(k):
        available = ~taken
        tol = tolerance_at(t)
        best = int(torch.argmax(torch.where(available, d2, -math.inf)))
        best_tol = max(tol(s, best) for s in range(2))
        if float(d2[best]) - best_tol <= stop:
            if float(d2[best]) + best_tol > stop:
                return NearTie(rp.method, "DPP gain vs the rank stop", t, (best, best),
                               abs(float(d2[best]) - stop), best_tol)
            rest = [i for i in reference.score_order(relevance).tolist() if not taken[i]]
            rp.require_in_both(rest[: k - t], "the tokens of highest relevance after the rank stop,")
            return None
        pick = rp.joint_step(t, "DPP gain", d2, available, tol)
        if isinstance(pick, NearTie):
            return pick
        e = kernel[pick] - (c[:t, pick : pick + 1] * c[:t]).sum(0)
        c[t] = e / math.sqrt(float(d2[pick]))
        d2 = d2 - c[t] * c[t]
        taken[pick] = True
        selected.append(pick)
    return None


def _vispruner(rp: _Replay, order: list[int], k: int, k_imp: int):
    """VisPruner's rounds (reference.select_vispruner) on the exact similarities.

    A round's outcome is the order of s_a = max_b S(a, b) over its even tokens: which r are
    dropped and how the rest splits in the next round.  Rounds are not picks: a swap of two
    near-tied values shows only rounds later, and a search over which swaps each side made
    explodes (measured: past 20,000 rounds on one golden photo).  So the replay follows the
    exact rounds until one drops a token that a side kept (or ends on another set), and the
    near-tie is the closest pair of values whose order decides, within the tolerance, in the
    rounds up to that one; without such a pair the difference is not explained."""
    rp.require_in_both(order[:k_imp], "the important tokens")
    rest, target = order[k_imp:], k - k_imp
    sim = 1.0 - rp.dist
    tol = 2 * max(rp.eps_d)  # either side may swap two values this close
    closest = None  # (gap, round, tokens) of the closest deciding pair so far
    round_ = 0
    while len(rest) > target:
        r = min(spec.VISPRUNER_ROUND, len(rest) - target)
        a, b = rest[0::2], rest[1::2]
        s_a = sim[a][:, b].max(dim=1).values if b else torch.full((len(a),), -math.inf, dtype=torch.float64)
        by_similarity = torch.sort(s_a, descending=True, stable=True).indices.tolist()
        drop = min(r, len(a))
        # adjacent pairs whose order decides: across the drop boundary, and among the kept tokens
        # when another round splits them again
        pairs = [drop - 1] if 0 < drop < len(a) else []
        if len(rest) - drop > target:
            pairs += range(drop, len(a) - 1)
        for q in pairs:
            x, y = by_similarity[q], by_similarity[q + 1]
            gap = float(s_a[x] - s_a[y])
            snapped_tie = gap == 0 and float(s_a[x]) == 1.0  # snapped duplicates tie on every backend
            if not snapped_tie and (closest is None or gap < closest[0]):
                closest = (gap, round_, (a[x], a[y]))
        dropped = {a[i] for i in by_similarity[:drop]}
        rest = [a[i] for i in by_similarity[drop:]] + b
        parted = any(dropped & side.tokens for side in rp.sides)
        if parted or len(rest) <= target:
            break
        round_ += 1
    if all(set(rest) <= side.tokens for side in rp.sides) and not parted:
        rp.fail("both selections differ from the exact rounds' result, which no rounding decides")
    if closest is None or closest[0] > tol:
        rp.fail(f"the selections part by round {round_}, and no two deciding values of the rounds up to it "
                f"are within {tol:.3g}" + (f" (closest: {closest[0]:.3g})" if closest else ""))
    return NearTie(rp.method, "VisPruner similarity", closest[1], closest[2], closest[0], tol)


def _statistics(side: Side) -> tuple[torch.Tensor, torch.Tensor]:
    """A side's (erank, entropy) as the [1] fp64 tensors spec's per-image rules take."""
    return (torch.tensor([side.erank], dtype=torch.float64), torch.tensor([side.entropy], dtype=torch.float64))


def check_row(features: torch.Tensor, scores: torch.Tensor, keep: int, p: spec.PruneParams, sides: tuple[Side, Side],
              relevance: torch.Tensor | None = None, erank_rtol: float = 1e-4, label: str = ""):
    """One image's valid tokens (features [n, D], scores [n]): None when both sides hold the same
    tokens, else the NearTie where they part; AssertionError when no near-tie explains it."""
    if sides[0].tokens == sides[1].tokens:
        return None
    method, selection = p.method, p.spec.selection
    if selection == spec.Selection.TOPK:
        raise AssertionError(f"{label}: {method} selections differ: its visit order is exact on every backend")
    xs = reference.rescale(features)
    rp = _Replay(method, label, reference.cosine_distance(xs, exact=True), xs.shape[1], sides)
    n = scores.shape[0]
    order = spec.visit_order(p, scores[None], torch.tensor([n]))[0].tolist()
    counts = [int(p.spec.attention_count(p, keep, *_statistics(s))[0]) for s in sides]
    gap = 0.0  # relative difference of the two sides' eranks, where the selection reads them
    if p.spec.needs_erank(p):
        eranks = [s.erank for s in sides]
        gap = abs(eranks[0] - eranks[1]) / abs(eranks[1]) if eranks[1] else abs(eranks[0])
        if not gap <= erank_rtol:
            rp.fail(f"eranks {eranks} differ by more than {erank_rtol:g} relative")
    if counts[0] != counts[1]:
        if not p.spec.needs_erank(p):
            rp.fail(f"attention counts {counts} differ, and they read no erank")
        # mix_adaptive: round(K ratio(erank)) falls on either side of a half with either erank
        return NearTie(method, "erank vs the attention count's rounding", 0, tuple(counts), gap, erank_rtol)
    if selection == spec.Selection.MAXMIN:
        return _maxmin(rp, keep, order[: counts[0]])
    if selection == spec.Selection.DPP:
        r = torch.ones(n, dtype=torch.float32) if relevance is None else relevance
        return _dpp(rp, r, keep)
    if selection == spec.Selection.VISPRUNER:
        return _vispruner(rp, order, keep, counts[0])
    if selection == spec.Selection.AGILE:
        return _agile(rp, order, keep, p)
    raise AssertionError(f"no near-tie rule for method {method!r}")


def assert_same_or_near_ties(features: torch.Tensor, scores: torch.Tensor, keep: int, method: str, got, want, *,
                             roundings: tuple[Rounding, Rounding], names: tuple[str, str] = ("got", "want"),
                             lengths: torch.Tensor | None = None, relevance: torch.Tensor | None = None,
                             erank_rtol: float = 1e-4, label: str = "", **params) -> list[NearTie]:
    """Every row of two prune results (PruneResult or the op's tuple) is identical or parts at a
    proven near-tie; returns the near-ties (row set), raises AssertionError otherwise.  params: the
    method's parameters (spec.PruneParams fields)."""
    p = spec.PruneParams.of(method, **params)
    features, scores = features.cpu(), scores.cpu()
    batch, n = scores.shape
    results = [tuple(r) for r in (got, want)]
    ties = []
    for b in range(batch):
        valid = n if lengths is None else int(lengths[b])
        sides = tuple(
            Side(name, frozenset(res[0][b].tolist()), rounding,
                 float(res[1][b]) if res[1] is not None and res[1].numel() else math.nan, float(res[2][b]))
            for name, res, rounding in zip(names, results, roundings)
        )
        rel = None if relevance is None else relevance[b, :valid].cpu()
        tie = check_row(features[b, :valid], scores[b, :valid], keep, p, sides, rel, erank_rtol,
                        label=f"{label} row {b}")
        if tie is not None:
            tie.row = b
            ties.append(tie)
    return ties

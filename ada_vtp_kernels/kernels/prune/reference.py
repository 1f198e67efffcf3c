"""`prune`, the specification in code: distances, the five selections, one image at a time.

Every backend (C++ CPU op, Triton) must return the indices this module returns.  It follows
docs/DESIGN.md rule by rule and favours clarity over speed: Python loops.  The method table
(which selection, attention count, complexity, visit order) is `ada_vtp_kernels.spec`; the
statistics are kernels/erank/reference.py and kernels/entropy/reference.py.  Tests, benchmarks
and the applications import it; nothing else re-implements it.

Numerical conventions (what makes the backends agree bit for bit on exact inputs):

- Each image's valid rows are upcast to fp32 (`rescale`); only when their largest magnitude is
  outside [2**-56, 2**56] are they multiplied by ``2**-e``, ``e`` its binary exponent, so that
  1e-30 or 1e30 neither underflow nor overflow when squared.  A power of two is exact, so the
  cosines do not change; the norm clamp (1e-6) applies to the features as given.
- Cosine similarity is ``S(i, j) = clamp(fp32(x_i . x_j / (max(||x_i||, 1e-6) max(||x_j||,
  1e-6))), -1, 1)``: the dot products and norms of the fp32 rows in fp64 (whose products of
  fp32 values are exact), rounded once to fp32.  No BLAS kernel decides its bits (an fp32 GEMM
  rounds by its summation order, which differs between MKL's AVX2 and AVX-512 kernels and once
  made `dpp` part from CDPruner's own code on an Intel Xeon), so the C++ op gives the same
  cosines on every CPU; two fp64 sums can round to different fp32 neighbours only when their
  value lies within about 1e-16 of a rounding boundary.  Distance ``d = 1 - S`` with
  ``d < 1e-6`` snapped to 0 (duplicates are exact ties); every method uses ``d`` and
  ``S = 1 - d``.  The diagonal is set, not computed: ``d(i, i) = 0``, or 1 for a row whose norm
  is below the clamp (a zero row is dissimilar to everything).  ``d(i, .)`` is row ``i``: the
  row of the selected or visited token.  Rows whose norm is a power of two and whose products
  are exact in fp32 (entries in {-1, 0, 1}, 4**m non-zeros) give bit-identical distances on
  every backend; the Triton kernels sum in fp32 (tensor cores), so on other inputs their
  selections equal these except at near-ties (tests/near_ties.py proves each one).
- The DPP greedy state is fp64; thresholds (tau, ratios) are fp64 Python floats.
- Scores (and relevance) are ordered as fp32 values, whatever their dtype: float64 scores that
  differ only beyond fp32 precision tie (and go to the lowest index).  The entropy uses them at
  full precision.
- Every ordering is a stable sort and every argmax takes the lowest index.
"""


import math

import torch

from ... import spec
from ..entropy.reference import attention_entropy_one
from ..erank.reference import ERANK_ESTIMATORS, rescale

# --------------------------------------------------------------------------------------------
# similarity


def cosine_distance(xs: torch.Tensor, exact: bool = False) -> torch.Tensor:
    """Snapped cosine distance [n, n] fp32 of rescaled fp32 rows [n, D] (see the module docstring).

    With ``exact=True`` the fp64 cosines are not rounded to fp32 and the result is fp64: the
    truth against which tests/near_ties.py measures every backend's rounding."""
    x = xs.to(torch.float64)
    norms = torch.linalg.vector_norm(x, dim=-1)
    denom = norms.clamp_min(spec.NORM_EPS)
    sim = (x @ x.T) / (denom[:, None] * denom[None, :])
    if not exact:
        sim = sim.to(torch.float32)
    dist = 1.0 - sim.clamp(-1.0, 1.0)
    dist = torch.where(dist < spec.DISTANCE_SNAP, torch.zeros_like(dist), dist)
    # self-distance is set, not computed: 0 for a real token, 1 for one below the norm clamp
    # (like a zero row), so no method's pick can be decided by the rounding of x_i . x_i
    dist.diagonal().copy_((norms < spec.NORM_EPS).to(dist.dtype))
    return dist


def _argmax_lowest(values: torch.Tensor) -> int:
    """Index of the largest value, the lowest index among equals (torch.argmax's documented rule)."""
    return int(torch.argmax(values))


def score_order(scores: torch.Tensor) -> torch.Tensor:
    """One image's tokens [n] by descending fp32 score, equal scores by ascending index
    (`spec.score_order`)."""
    return spec.score_order(scores[None], torch.tensor([scores.shape[0]], device=scores.device))[0]


# --------------------------------------------------------------------------------------------
# selections, one image: n valid tokens, returns a list of k token indices (any order)


def select_topk(order: list[int], k: int) -> list[int]:
    """The first k tokens of the visit order (FasterVLM: the k highest scores)."""
    return order[:k]


def select_maxmin(dist: torch.Tensor, k: int, selected: list[int]) -> list[int]:
    """Max-min diversity (DivPrune), continued from `selected` (may be empty) up to k tokens.

    With nothing selected the first pick is argmax_i min_{j != i} d(i, j) (a lone token is
    picked as is); then the unselected token with the largest running minimum distance to the
    selected set, which is updated with the new token's row.
    """
    n = dist.shape[0]
    selected = list(selected)
    if len(selected) >= k:
        return selected
    if not selected:
        if n == 1:
            selected = [0]
        else:
            off_diag = dist.clone()
            off_diag.fill_diagonal_(math.inf)
            selected = [_argmax_lowest(off_diag.min(dim=1).values)]
    min_dist = dist[selected].min(dim=0).values
    taken = torch.zeros(n, dtype=torch.bool)
    taken[selected] = True
    while len(selected) < k:
        j = _argmax_lowest(torch.where(taken, -math.inf, min_dist))
        selected.append(j)
        taken[j] = True
        min_dist = torch.minimum(min_dist, dist[j])
    return selected


def select_dpp(dist: torch.Tensor, relevance: torch.Tensor, k: int) -> list[int]:
    """CDPruner: greedy MAP of the DPP with kernel L = diag(r) S diag(r) (Chen et al. 2018), fp64.

    d2 = diag(L); pick j = argmax d2 among the unselected; e = (L[j] - sum_t c_t[j] c_t) / sqrt(d2[j]);
    d2 -= e^2.  Once the largest remaining d2 <= 1e-6 * max(diag L) the kernel's rank is spent:
    the rest are the unselected tokens of highest relevance.
    """
    n = dist.shape[0]
    r = relevance.to(torch.float64)
    sim = (1.0 - dist).to(torch.float64)
    kernel = (r[:, None] * sim) * r[None, :]
    d2 = kernel.diagonal().clone()
    stop = spec.DPP_STOP * float(d2.max())
    c = torch.zeros(k, n, dtype=torch.float64)
    taken = torch.zeros(n, dtype=torch.bool)
    selected: list[int] = []
    for t in range(k):
        candidates = torch.where(taken, -math.inf, d2)
        j = _argmax_lowest(candidates)
        if float(candidates[j]) <= stop:
            rest = [i for i in score_order(relevance).tolist() if not taken[i]]
            return selected + rest[: k - t]
        e = kernel[j].clone()
        for s in range(t):
            e = e - c[s, j] * c[s]
        e = e / math.sqrt(float(d2[j]))
        c[t] = e
        d2 = d2 - e * e
        selected.append(j)
        taken[j] = True
    return selected


def select_vispruner(dist: torch.Tensor, order: list[int], k: int, k_imp: int) -> list[int]:
    """VisPruner: the first k_imp tokens of the order (floor(k * important_ratio) highest scores),
    then the rest deduplicated in rounds.

    R = the remaining tokens in order.  While |R| > k - k_imp:
    r = min(8, |R| - (k - k_imp)); A = R[0::2], B = R[1::2]; s_a = max_b S(a, b) (-inf when B is
    empty); the min(r, |A|) members of A with the largest s_a are dropped (stable);
    R = (the rest of A, by descending s_a, stable) + B.
    """
    important, rest = order[:k_imp], order[k_imp:]
    target = k - k_imp
    sim = 1.0 - dist
    while len(rest) > target:
        r = min(spec.VISPRUNER_ROUND, len(rest) - target)
        a, b = rest[0::2], rest[1::2]
        if b:
            s_a = sim[a][:, b].max(dim=1).values
        else:
            s_a = torch.full((len(a),), -math.inf)
        by_similarity = torch.sort(s_a, descending=True, stable=True).indices.tolist()
        kept_a = [a[i] for i in by_similarity[min(r, len(a)):]]
        rest = kept_a + b
    return important + rest


def agile_threshold(rank: int, complexity: float, tau_scale: float, tau_max: float) -> float:
    """tau_r = min(r * c * tau_scale, tau_max), r the 1-based rank in the score order."""
    return min(rank * complexity * tau_scale, tau_max)


def agile_walk(dist: torch.Tensor, order: list[int], k: int, complexity: float, tau_scale: float,
               tau_max: float) -> list[int]:
    """AgilePruner's suppression pass: visit tokens in order (rank r = 1, 2, ...); a token not yet
    suppressed is selected and suppresses every token j with d(i, j) < tau_r.  Stops at k tokens
    or when the order runs out."""
    suppressed = torch.zeros(dist.shape[0], dtype=torch.bool)
    selected: list[int] = []
    for rank, i in enumerate(order, start=1):
        if len(selected) == k:
            break
        if suppressed[i]:
            continue
        selected.append(i)
        suppressed |= dist[i].to(torch.float64) < agile_threshold(rank, complexity, tau_scale, tau_max)
    return selected


def select_agile(dist: torch.Tensor, order: list[int], k: int, complexity: float, tau_scale: float,
                 tau_max: float) -> list[int]:
    """AgilePruner: `agile_walk`; if the order runs out before k, max-min diversity continues from
    the selected set."""
    return select_maxmin(dist, k, agile_walk(dist, order, k, complexity, tau_scale, tau_max))



# --------------------------------------------------------------------------------------------
# prune


def prune_one(features: torch.Tensor, scores: torch.Tensor, relevance: torch.Tensor | None, k: int,
              p: spec.PruneParams) -> tuple[list[int], float, float]:
    """One image's valid tokens: features [n, D], scores [n], relevance [n] or None -> (indices
    ascending, erank (NaN where not computed), entropy)."""
    method = p.spec
    xs = rescale(features) if p.reads_features() else None  # top-K reads no feature value
    entropy = attention_entropy_one(scores)
    erank = ERANK_ESTIMATORS[p.erank_method](xs) if p.needs_erank() else math.nan
    stats = (torch.tensor([erank], dtype=torch.float64), torch.tensor([entropy], dtype=torch.float64))
    n = features.shape[0]
    order = spec.visit_order(p, scores[None], torch.tensor([n]))[0].tolist()
    count = int(method.attention_count(p, k, *stats)[0])
    if method.selection == spec.Selection.TOPK or count >= k:
        chosen = select_topk(order, k)
    elif method.selection == spec.Selection.MAXMIN:
        chosen = select_maxmin(cosine_distance(xs), k, order[:count])
    elif method.selection == spec.Selection.DPP:
        r = torch.ones(n, dtype=torch.float32) if relevance is None else relevance.to(torch.float32)
        chosen = select_dpp(cosine_distance(xs), r, k)
    elif method.selection == spec.Selection.VISPRUNER:
        chosen = select_vispruner(cosine_distance(xs), order, k, count)
    else:
        c = float(method.complexity(p, *stats)[0])
        chosen = select_agile(cosine_distance(xs), order, k, c, p.tau_scale, p.tau_max)
    return sorted(chosen), erank, entropy


def prune_ref(features: torch.Tensor, scores: torch.Tensor, keep: int, method: str = spec.DEFAULTS.method,
              lengths: torch.Tensor | None = None, relevance: torch.Tensor | None = None,
              **params) -> spec.PruneResult:
    """Reference `prune`: select `keep` of N visual tokens per image (inputs validated by the caller).

    Args:
        features: [B, N, D] float32/float16/bfloat16, any strides.
        scores: [B, N] non-negative (e.g. [CLS] attention).
        keep: K, 1 <= K <= every row's length.
        method: a name of spec.METHODS.
        lengths: [B] int, optional: valid tokens per row.
        relevance: [B, N] non-negative, optional, `dpp` only (default all ones).
        **params: the other fields of spec.PruneParams.
    Returns:
        PruneResult(indices [B, K] int64 ascending, erank [B] float32 or None, entropy [B] float32).
    """
    p = spec.PruneParams.of(method, **params)
    batch, n, _ = features.shape
    sizes = [n] * batch if lengths is None else [int(v) for v in lengths.tolist()]
    rows, eranks, entropies = [], [], []
    for b, nb in enumerate(sizes):
        rel = None if relevance is None else relevance[b, :nb].cpu()
        idx, er, h = prune_one(features[b, :nb].cpu(), scores[b, :nb].cpu(), rel, keep, p)
        rows.append(idx)
        eranks.append(er)
        entropies.append(h)
    device = features.device
    return spec.PruneResult(
        torch.tensor(rows, dtype=torch.int64, device=device).reshape(-1, keep),
        torch.tensor(eranks, dtype=torch.float32, device=device) if p.needs_erank() else None,
        torch.tensor(entropies, dtype=torch.float32, device=device),
    )

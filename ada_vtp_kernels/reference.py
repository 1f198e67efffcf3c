"""Pure-PyTorch reference of every statistic and selection method: the specification in code.

Every backend (C++ CPU op, Triton) must return the indices this module returns.  It follows
docs/DESIGN.md rule by rule and favours clarity over speed: one image at a time, Python loops.
Tests and benchmarks import it; nothing else re-implements it.

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
from typing import NamedTuple

import torch

from . import _validation, defaults

# --------------------------------------------------------------------------------------------
# statistics


def rescale(x: torch.Tensor) -> torch.Tensor:
    """[n, D] any float -> [n, D] fp32: the features as given, unless their largest magnitude is
    outside [2**-56, 2**56], where they are multiplied by the power of two that brings it into
    [0.5, 1) so that fp32 squares neither overflow nor underflow (exact, so the cosines are
    unchanged).  The result is contiguous: a matrix product's rounding depends on its operands'
    layout, and transposed or broadcast (stride-0) features must give the bits contiguous ones give."""
    x32 = x.to(torch.float32).contiguous()
    amax = float(x32.abs().max())
    if amax == 0 or defaults.SAFE_MIN <= amax <= defaults.SAFE_MAX:
        return x32
    exponent = math.frexp(amax)[1]
    return (x.to(torch.float64) * 2.0 ** (-exponent)).to(torch.float32).contiguous()


def attention_entropy_one(scores: torch.Tensor) -> float:
    """Entropy in nats of one image's valid scores [n]; all-zero scores count as uniform."""
    s = scores.to(torch.float64)
    total = s.sum()
    if total == 0:
        return math.log(s.numel())
    p = s / total
    return float(-torch.xlogy(p, p).sum())


def erank_one(xs: torch.Tensor) -> float:
    """Exact effective rank of one image's rescaled fp32 rows [n, D] (fp64 symmetric eigensolver)."""
    x = xs.to(torch.float64)
    gram = x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x
    sigma = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt()
    total = sigma.sum()
    if total == 0:
        return 0.0
    q = sigma / total
    return float(torch.exp(-torch.xlogy(q, q).sum()))


def probe_signs(n: int, cols: int, stream: int) -> torch.Tensor:
    """[n, cols] float64 of +-1: deterministic Rademacher vectors, the same on every backend.

    Entry (i, j) is bit 0 of the 32-bit integer hash "lowbias32" of ``i * 1024 + j + stream *
    0x9E3779B9`` (mod 2**32); stream 0 seeds the deflation block, stream 1 the probes."""
    mask = 0xFFFFFFFF
    x = (torch.arange(n, dtype=torch.int64)[:, None] * 1024 + torch.arange(cols, dtype=torch.int64)[None, :]
         + stream * 0x9E3779B9) & mask
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & mask
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & mask
    x = x ^ (x >> 16)
    return (1 - 2 * (x & 1)).to(torch.float64)


ORTH_DROP = 1e-5


def _orthonormalize(y: torch.Tensor) -> torch.Tensor:
    """Columns of y [n, c] -> orthonormal columns [n, c] by classical Gram-Schmidt applied twice,
    column by column.  A column that keeps less than ORTH_DROP of its norm after projection lies
    in the span of the previous ones to fp32 precision and becomes zero (normalising its rounding
    noise would not give an orthogonal vector)."""
    q = torch.zeros_like(y)
    for j in range(y.shape[1]):
        w = y[:, j]
        for _ in range(2):
            w = w - q[:, :j] @ (q[:, :j].T @ w)
        norm = torch.linalg.vector_norm(w)
        if norm > ORTH_DROP * torch.linalg.vector_norm(y[:, j]):
            q[:, j] = w / norm
    return q


def _tridiagonal_rule(alpha: torch.Tensor, beta: torch.Tensor, beta0: float, nodes: int,
                      anti: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss (``nodes`` nodes) or anti-Gauss (Laurie 1996: the last off-diagonal times sqrt 2)
    quadrature of the Lanczos recurrence alpha [m], beta [m]: (nodes, weights), weights summing to
    beta0**2."""
    off = beta[: nodes - 1].clone()
    if anti:
        off[-1] = off[-1] * math.sqrt(2.0)
    t = torch.diag(alpha[:nodes]) + torch.diag(off, 1) + torch.diag(off, -1)
    theta, vectors = torch.linalg.eigh(t)
    return theta, vectors[0] ** 2 * beta0**2


def _sqrt_terms(lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sigma = sqrt(max(lam, 0)) and sigma ln sigma (0 at sigma = 0)."""
    sigma = lam.clamp_min(0).sqrt()
    return sigma, torch.xlogy(sigma, sigma)


def fast_erank_block(m: int) -> int:
    """Columns of the fast estimator's deflation block for an image with min(n, D) = m."""
    return defaults.FAST_ERANK_LARGE_BLOCK if m > defaults.FAST_ERANK_LARGE_ABOVE else defaults.FAST_ERANK_BLOCK


def erank_fast_one(xs: torch.Tensor) -> float:
    """SVD-free effective rank of one image's rescaled fp32 rows [n, D]: the "fast" estimator.

    With X the rows, G = XᵀX or XXᵀ (the smaller, m = min(n, D)), sigma = sqrt(eig(G)),
    S = sum sigma and T = sum sigma ln sigma, erank = exp(ln S - T / S).  G is never formed: every
    product is ``G V = Xᵀ (X V)`` (or ``X (Xᵀ V)``), whose fp32 rounding stays relative to the
    singular values involved, where a formed fp32 Gram puts a floor of about 1e-7 * sigma_max**2
    under every eigenvalue (that floor alone turns a rank-1 matrix's erank of 1 into 1.13).

    1. Deflation: block power iteration from the deterministic +-1 block Omega [m, k] (k =
       `fast_erank_block` (m): 64, or 128 above min(n, D) = 768), each step ``Q <- orth(aᵀ
       orth(a Q))`` with a = X or Xᵀ (G = aᵀ a), FAST_ERANK_POWER_STEPS steps; then the
       Rayleigh-Ritz values theta = eig(Qᵀ G Q) (k x k, from B = a Q as Bᵀ B in fp64) give the
       top of the spectrum.  Orthonormalising after each product with a, not after G, keeps the
       columns' dynamic range at sigma rather than sigma**2 per step: with sigma ∝ i**-2 a G step
       squeezes column 40 below fp32's resolution and the orthonormalisation drops it.
    2. The rest, ``P G P`` with P = I - Q Qᵀ, by stochastic Lanczos quadrature: FAST_ERANK_PROBES
       +-1 probes projected by P, FAST_ERANK_LANCZOS_STEPS Lanczos steps each (full
       reorthogonalisation against Q and the previous vectors).  Each probe's integral is the
       mean of its 7-node Gauss rule and 8-node anti-Gauss rule, whose errors have opposite signs
       (Laurie 1996); sqrt and sigma ln sigma are far from polynomials near 0, where a plain
       Gauss rule overestimates S by several percent.
    3. Control variate: the dimension ``m - rank Q`` and ``tr(P G P) = ||X P||_F**2`` are known
       exactly, and each quadrature integrates 1 and lambda exactly, so the probes estimate only
       the part of f not explained by the line a + b lambda fitted (weighted least squares) to f
       on the pooled nodes.
    Images with m <= FAST_ERANK_BLOCK are solved exactly (`erank_one`: a Gram of at most 64 x 64).

    Error against the exact fp64 erank (benchmarks/bench_erank.py prints the table; 213 cases:
    power-law, exponential, flat, rank-1/10 spectra, N in {64, 576, 2880}, D in {384, 1024, 4096},
    fp32/fp16/bf16, and real DINOv2 features): 0.03 % median, 2.3 % max; real DINOv2 features
    0.5 % median, 1.8 % max; the worst family is the exponential (0.8 % median).  Cost: 5 block
    products with a of k columns and 15 with FAST_ERANK_PROBES columns, 4 orthonormalisations of
    k columns, no eigensolver larger than k x k.

    This reference computes in fp64; the CPU and Triton kernels run the same steps with fp32
    products and fp64 reductions (the CPU kernel orthonormalises by Cholesky QR applied twice,
    which is Gram-Schmidt in exact arithmetic), and agree with it to about 1e-5 relative (1e-4
    at most).
    """
    x = xs.to(torch.float64)
    m = min(x.shape)
    a = x if x.shape[1] <= x.shape[0] else x.T  # [rows, m]: G = aᵀ a

    if m <= defaults.FAST_ERANK_BLOCK:
        return erank_one(xs)
    q = probe_signs(m, fast_erank_block(m), 0)
    for _ in range(defaults.FAST_ERANK_POWER_STEPS):
        q = _orthonormalize(a.T @ _orthonormalize(a @ q))
    b = a @ q
    theta = torch.linalg.eigvalsh(b.T @ b)
    sigma, sigma_log = _sqrt_terms(theta)
    total, total_log = float(sigma.sum()), float(sigma_log.sum())

    # exactly known moments of the remainder P G P: its dimension and its trace
    rank_q = int((torch.linalg.vector_norm(q, dim=0) > 0).sum())
    moments = (float(m - rank_q), float(torch.linalg.vector_norm(a - b @ q.T) ** 2))
    steps = defaults.FAST_ERANK_LANCZOS_STEPS
    z = probe_signs(m, defaults.FAST_ERANK_PROBES, 1)
    for _ in range(2):
        z = z - q @ (q.T @ z)
    beta0 = torch.linalg.vector_norm(z, dim=0)
    # the probes' Lanczos recurrences side by side: column c of every [m, p] block is probe c
    basis = [z / beta0.clamp_min(torch.finfo(torch.float64).tiny)]
    alpha = torch.zeros(steps, z.shape[1], dtype=torch.float64)
    beta = torch.zeros(steps, z.shape[1], dtype=torch.float64)
    for j in range(steps):
        av = a @ basis[j]
        alpha[j] = (av * av).sum(0)
        if j == steps - 1:
            break
        w = a.T @ av - alpha[j] * basis[j] - (beta[j - 1] * basis[j - 1] if j > 0 else 0)
        previous = torch.stack(basis)  # [j + 1, m, p]
        for _ in range(2):
            w = w - q @ (q.T @ w)
            w = w - (previous * (previous * w).sum(1, keepdim=True)).sum(0)
        beta[j] = torch.linalg.vector_norm(w, dim=0)
        basis.append(w / beta[j].clamp_min(torch.finfo(torch.float64).tiny))
    nodes, weights = [], []
    for c in range(z.shape[1]):
        for count, anti in ((steps - 1, False), (steps, True)):
            theta_c, w_c = _tridiagonal_rule(alpha[:, c], beta[:, c], float(beta0[c]), count, anti)
            nodes.append(theta_c.clamp_min(0))
            weights.append(w_c / (2 * z.shape[1]))
    if moments[0] > 0:
        lam, w = torch.cat(nodes), torch.cat(weights)
        unexplained = torch.tensor(moments, dtype=torch.float64) - torch.stack([w.sum(), (w * lam).sum()])
        terms = _sqrt_terms(lam)
        total += float((w * terms[0]).sum() + (_control_line(lam, w, terms[0]) * unexplained).sum())
        total_log += float((w * terms[1]).sum() + (_control_line(lam, w, terms[1]) * unexplained).sum())
    return _erank_from_sums(total, total_log, m)


def _control_line(lam: torch.Tensor, w: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """[2]: (a, b) of the line a + b lam closest to f on the nodes lam, weighted by w (normal
    equations in lam / max lam); a constant where the nodes cannot support a slope."""
    scale = float(lam.max())
    weight, g0 = float(w.sum()), float((w * f).sum())
    constant = torch.tensor([g0 / weight, 0.0], dtype=torch.float64)
    if scale <= 0:
        return constant
    t = lam / scale
    s1, s2 = float((w * t).sum()), float((w * t * t).sum())
    det = weight * s2 - s1 * s1
    if det <= 1e-12 * weight * s2:
        return constant
    g1 = float((w * t * f).sum())
    return torch.tensor([(s2 * g0 - s1 * g1) / det, (weight * g1 - s1 * g0) / det / scale], dtype=torch.float64)


def _erank_from_sums(total: float, total_log: float, m: int) -> float:
    """erank = exp(ln S - T / S) from S = sum sigma, T = sum sigma ln sigma, clamped to [1, m];
    0 for a zero matrix."""
    if total <= 0:
        return 0.0
    return min(max(math.exp(math.log(total) - total_log / total), 1.0), float(m))


ERANK_ESTIMATORS = {"exact": erank_one, "fast": erank_fast_one}


def attention_entropy_ref(scores: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Attention entropy H = -sum p ln p, p = s / sum s over the valid tokens.

    Args:
        scores: [B, N] non-negative.
        lengths: [B] int, optional.
    Returns:
        [B] float32, nats.
    """
    _validation.check_scores(scores)
    batch, n = scores.shape
    lengths = _validation.check_lengths(lengths, batch, n, scores.device)
    _validation.check_row_values("scores", scores, batch, n, scores.device, lengths)
    out = [attention_entropy_one(scores[b, : int(lengths[b])]) for b in range(batch)]
    return torch.tensor(out, dtype=torch.float32, device=scores.device)


def erank_ref(features: torch.Tensor, lengths: torch.Tensor | None = None,
              method: str = defaults.ERANK_METHOD) -> torch.Tensor:
    """Effective rank (Roy & Vetterli 2007) of each image's valid tokens, uncentred.

    sigma = sqrt(max(eig(G), 0)) with G the smaller of X Xᵀ and Xᵀ X; q = sigma / sum sigma;
    erank = exp(-sum q ln q).  A zero matrix has erank 0.

    Args:
        features: [B, N, D] float32/float16/bfloat16.
        lengths: [B] int, optional.
        method: "exact" (fp64 symmetric eigensolver) or "fast" (`erank_fast_one`).
    Returns:
        [B] float32.
    """
    _validation.check_erank_metadata(features, lengths, method)
    batch, n, _ = features.shape
    lengths = _validation.check_lengths(lengths, batch, n, features.device)
    _validation.check_finite_features(features, lengths)
    estimator = ERANK_ESTIMATORS[method]
    out = [estimator(rescale(features[b, : int(lengths[b])])) for b in range(batch)]
    return torch.tensor(out, dtype=torch.float32, device=features.device)


# --------------------------------------------------------------------------------------------
# similarity


def cosine_distance(xs: torch.Tensor, exact: bool = False) -> torch.Tensor:
    """Snapped cosine distance [n, n] fp32 of rescaled fp32 rows [n, D] (see the module docstring).

    With ``exact=True`` the fp64 cosines are not rounded to fp32 and the result is fp64: the
    truth against which tests/near_ties.py measures every backend's rounding."""
    x = xs.to(torch.float64)
    norms = torch.linalg.vector_norm(x, dim=-1)
    denom = norms.clamp_min(defaults.NORM_EPS)
    sim = (x @ x.T) / (denom[:, None] * denom[None, :])
    if not exact:
        sim = sim.to(torch.float32)
    dist = 1.0 - sim.clamp(-1.0, 1.0)
    dist = torch.where(dist < defaults.DISTANCE_SNAP, torch.zeros_like(dist), dist)
    # self-distance is set, not computed: 0 for a real token, 1 for one below the norm clamp
    # (like a zero row), so no method's pick can be decided by the rounding of x_i . x_i
    dist.diagonal().copy_((norms < defaults.NORM_EPS).to(dist.dtype))
    return dist


def _argmax_lowest(values: torch.Tensor) -> int:
    """Index of the largest value, the lowest index among equals (torch.argmax's documented rule)."""
    return int(torch.argmax(values))


def score_order(scores: torch.Tensor) -> torch.Tensor:
    """Token indices in descending score order; equal scores keep ascending index (stable)."""
    return torch.sort(scores.to(torch.float32), descending=True, stable=True).indices


# --------------------------------------------------------------------------------------------
# selection methods, one image: n valid tokens, returns a list of k token indices (any order)


def select_attention(scores: torch.Tensor, k: int) -> list[int]:
    """FasterVLM: the k highest scores."""
    return score_order(scores)[:k].tolist()


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
    stop = defaults.DPP_STOP * float(d2.max())
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


def select_vispruner(dist: torch.Tensor, scores: torch.Tensor, k: int, important_ratio: float) -> list[int]:
    """VisPruner: floor(k * important_ratio) highest scores, then the rest deduplicated in rounds.

    R = the remaining tokens in descending score order.  While |R| > k - k_imp:
    r = min(8, |R| - (k - k_imp)); A = R[0::2], B = R[1::2]; s_a = max_b S(a, b) (-inf when B is
    empty); the min(r, |A|) members of A with the largest s_a are dropped (stable);
    R = (the rest of A, by descending s_a, stable) + B.
    """
    order = score_order(scores).tolist()
    k_imp = math.floor(k * important_ratio)
    important, rest = order[:k_imp], order[k_imp:]
    target = k - k_imp
    sim = 1.0 - dist
    while len(rest) > target:
        r = min(defaults.VISPRUNER_ROUND, len(rest) - target)
        a, b = rest[0::2], rest[1::2]
        if b:
            s_a = sim[a][:, b].max(dim=1).values
        else:
            s_a = torch.full((len(a),), -math.inf)
        by_similarity = torch.sort(s_a, descending=True, stable=True).indices.tolist()
        kept_a = [a[i] for i in by_similarity[min(r, len(a)):]]
        rest = kept_a + b
    return important + rest


def mix_attention_count(k: int, attention_ratio: float) -> int:
    """round(k * attention_ratio), halves up: how many tokens `mix` takes by attention before
    continuing with max-min diversity from them (ratio 0 is `divprune`, 1 is `attention`)."""
    return math.floor(k * attention_ratio + 0.5)


def adaptive_attention_ratio(erank: float, attention_ratio: float, gain: float, erank_ref: float) -> float:
    """mix_adaptive: clamp(attention_ratio + gain * (1 - erank / erank_ref), 0, 1)."""
    return min(max(attention_ratio + gain * (1.0 - erank / erank_ref), 0.0), 1.0)


def agile_complexity(erank: float, entropy: float, p: dict) -> float:
    """c of AgilePruner: erank / erank_ref or entropy / entropy_ref."""
    if p["complexity"] == "erank":
        return erank / p["erank_ref"]
    return entropy / p["entropy_ref"]


def agile_threshold(rank: int, complexity: float, tau_scale: float, tau_max: float) -> float:
    """tau_r = min(r * c * tau_scale, tau_max), r the 1-based rank in the score order."""
    return min(rank * complexity * tau_scale, tau_max)


def select_agile(dist: torch.Tensor, scores: torch.Tensor, k: int, complexity: float,
                 tau_scale: float, tau_max: float) -> list[int]:
    """AgilePruner: attention-ordered suppression with a rank- and complexity-dependent radius.

    Visit tokens in descending score order (rank r = 1, 2, ...); a token not yet suppressed is
    selected and suppresses every token j with d(i, j) < tau_r.  Stops at k; if the order runs
    out first, the rest comes from max-min diversity continued from the selected set.
    """
    n = dist.shape[0]
    suppressed = torch.zeros(n, dtype=torch.bool)
    selected: list[int] = []
    for rank, i in enumerate(score_order(scores).tolist(), start=1):
        if len(selected) == k:
            break
        if suppressed[i]:
            continue
        selected.append(i)
        tau = agile_threshold(rank, complexity, tau_scale, tau_max)
        suppressed |= dist[i].to(torch.float64) < tau
    return select_maxmin(dist, k, selected)


# --------------------------------------------------------------------------------------------
# prune


class PruneResult(NamedTuple):
    """What `prune` returns, on every backend.

    indices: [B, K] int64, ascending token indices.
    erank: [B] float32, the erank of each image's valid tokens, or None where the method needs
        none (`attention`, `divprune`, `dpp`, `vispruner`, `mix`, `agile` with
        complexity="entropy") and ``compute_erank`` is False.  The op itself returns a [0]
        tensor there.
    entropy: [B] float32, the attention entropy of each image's valid scores, nats.
    """

    indices: torch.Tensor
    erank: torch.Tensor | None
    entropy: torch.Tensor


def default_params(**overrides) -> dict:
    """Every method parameter with its default, overridden by `overrides` (unknown names rejected)."""
    p = dict(
        method="agile",
        important_ratio=defaults.IMPORTANT_RATIO,
        attention_ratio=defaults.MIX_ATTENTION_RATIO,
        gain=defaults.MIX_GAIN,
        erank_ref=defaults.ERANK_REF,
        entropy_ref=defaults.ENTROPY_REF,
        tau_max=defaults.TAU_MAX,
        tau_scale=defaults.TAU_SCALE,
        complexity=defaults.COMPLEXITY,
        erank_method=defaults.ERANK_METHOD,
        compute_erank=False,
    )
    unknown = set(overrides) - set(p)
    if unknown:
        _validation._fail(f"unknown parameter(s) {sorted(unknown)}; expected some of {sorted(p)}")
    p.update(overrides)
    return p


def needs_erank(method: str, complexity: str, compute_erank: bool = False) -> bool:
    """Whether `prune` computes the erank: the selection depends on it, or it was asked for."""
    return compute_erank or method == "mix_adaptive" or (method == "agile" and complexity == "erank")


def prune_one(features: torch.Tensor, scores: torch.Tensor, relevance: torch.Tensor | None, k: int,
              p: dict) -> tuple[list[int], float, float]:
    """One image's valid tokens: features [n, D], scores [n], relevance [n] or None -> (indices, erank, entropy)."""
    method = p["method"]
    xs = rescale(features)
    entropy = attention_entropy_one(scores)
    with_erank = needs_erank(method, p["complexity"], p["compute_erank"])
    erank = ERANK_ESTIMATORS[p["erank_method"]](xs) if with_erank else math.nan
    scores = scores.to(torch.float32)
    if method == "attention":
        chosen = select_attention(scores, k)
    elif method in ("mix", "mix_adaptive"):
        ratio = p["attention_ratio"]
        if method == "mix_adaptive":
            ratio = adaptive_attention_ratio(erank, ratio, p["gain"], p["erank_ref"])
        top = select_attention(scores, mix_attention_count(k, ratio))
        chosen = top if len(top) == k else select_maxmin(cosine_distance(xs), k, top)
    elif method == "divprune":
        chosen = select_maxmin(cosine_distance(xs), k, [])
    elif method == "dpp":
        r = torch.ones_like(scores) if relevance is None else relevance.to(torch.float32)
        chosen = select_dpp(cosine_distance(xs), r, k)
    elif method == "vispruner":
        chosen = select_vispruner(cosine_distance(xs), scores, k, p["important_ratio"])
    else:  # agile
        c = agile_complexity(erank, entropy, p)
        chosen = select_agile(cosine_distance(xs), scores, k, c, p["tau_scale"], p["tau_max"])
    return sorted(chosen), erank, entropy


def prune_ref(features: torch.Tensor, scores: torch.Tensor, keep: int, method: str = "agile",
              lengths: torch.Tensor | None = None, relevance: torch.Tensor | None = None,
              **params) -> PruneResult:
    """Reference `prune`: select `keep` of N visual tokens per image.

    Args:
        features: [B, N, D] float32/float16/bfloat16, any strides.
        scores: [B, N] non-negative (e.g. [CLS] attention).
        keep: K, 1 <= K <= every row's length.
        method: one of defaults.METHODS.
        lengths: [B] int, optional: valid tokens per row.
        relevance: [B, N] non-negative, optional, `dpp` only (default all ones).
        **params: important_ratio, attention_ratio, gain, erank_ref, entropy_ref, tau_max,
            tau_scale, complexity, erank_method, compute_erank (see functional.prune).
    Returns:
        PruneResult(indices [B, K] int64 ascending, erank [B] float32 or None, entropy [B] float32).
    """
    p = default_params(method=method, **params)
    lengths = _validation.check_prune_inputs(features, scores, keep, lengths, relevance, p)
    rows, eranks, entropies = [], [], []
    for b in range(features.shape[0]):
        n = int(lengths[b])
        rel = None if relevance is None else relevance[b, :n].cpu()
        idx, er, h = prune_one(features[b, :n].cpu(), scores[b, :n].cpu(), rel, keep, p)
        rows.append(idx)
        eranks.append(er)
        entropies.append(h)
    device = features.device
    with_erank = needs_erank(p["method"], p["complexity"], p["compute_erank"])
    return PruneResult(
        torch.tensor(rows, dtype=torch.int64, device=device).reshape(-1, keep),
        torch.tensor(eranks, dtype=torch.float32, device=device) if with_erank else None,
        torch.tensor(entropies, dtype=torch.float32, device=device),
    )

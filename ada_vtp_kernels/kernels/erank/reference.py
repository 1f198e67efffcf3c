"""Effective rank, the specification in code (docs/DESIGN.md, "Statistics").

erank = exp(-sum q ln q), q = sigma / sum sigma, sigma the singular values of an image's valid
token matrix (uncentred), after `rescale`.  Two estimators: `erank_one` (exact, fp64 symmetric
eigensolver) and `erank_fast_one` (SVD-free; the C++ and Triton kernels run its steps).  One
image at a time; the inputs are validated by the caller (`ada_vtp_kernels.validation`).
"""

import math

import torch

from ... import spec


def rescale(x: torch.Tensor) -> torch.Tensor:
    """[n, D] any float -> [n, D] fp32: the features as given, unless their largest magnitude is
    outside [2**-56, 2**56], where they are multiplied by the power of two that brings it into
    [0.5, 1) so that fp32 squares neither overflow nor underflow (exact, so the cosines are
    unchanged).  The result is contiguous: a matrix product's rounding depends on its operands'
    layout, and transposed or broadcast (stride-0) features must give the bits contiguous ones give."""
    x32 = x.to(torch.float32).contiguous()
    amax = float(x32.abs().max())
    if amax == 0 or spec.SAFE_MIN <= amax <= spec.SAFE_MAX:
        return x32
    exponent = math.frexp(amax)[1]
    return (x.to(torch.float64) * 2.0 ** (-exponent)).to(torch.float32).contiguous()


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


def _orthonormalize(y: torch.Tensor) -> torch.Tensor:
    """Columns of y [n, c] -> orthonormal columns [n, c] by classical Gram-Schmidt applied twice,
    column by column.  A column that keeps less than spec.FAST_ERANK_ORTH_DROP of its norm after projection lies
    in the span of the previous ones to fp32 precision and becomes zero (normalising its rounding
    noise would not give an orthogonal vector)."""
    q = torch.zeros_like(y)
    for j in range(y.shape[1]):
        w = y[:, j]
        for _ in range(2):
            w = w - q[:, :j] @ (q[:, :j].T @ w)
        norm = torch.linalg.vector_norm(w)
        if norm > spec.FAST_ERANK_ORTH_DROP * torch.linalg.vector_norm(y[:, j]):
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

    Error against the exact fp64 erank (benchmarks/bench_erank.py prints the table per family):
    about 0.5 % median and 3 % max on real DINOv2 features, exact on flat, step and low-rank
    spectra, but up to ~15 % too high on steep ones (exponential decay with an e-fold every 15 to
    100 indices, a power law followed by an exponential knee), with the same sign on every seed.
    The cause is step 1, not the quadrature: two power steps leave Q far from an invariant
    subspace when the eigenvalues decay slowly past the block, and tr f(QᵀGQ) + tr f(PGP) drops
    the coupling Qᵀ G P, which for the concave f = sqrt raises the sum (measured: with Q the true
    top eigenvectors, 8 probes x 8 steps are within 2 % of S on the same spectra).  More power
    steps, larger blocks, more Lanczos steps or a block-Krylov Rayleigh-Ritz basis (tried) cut the
    bias to 3-5 % at 3x the cost, not to 1 %; hence "exact" is the default.  Cost: 5 block
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

    if m <= spec.FAST_ERANK_BLOCK:
        return erank_one(xs)
    q = probe_signs(m, spec.fast_erank_block(m), 0)
    for _ in range(spec.FAST_ERANK_POWER_STEPS):
        q = _orthonormalize(a.T @ _orthonormalize(a @ q))
    b = a @ q
    theta = torch.linalg.eigvalsh(b.T @ b)
    sigma, sigma_log = _sqrt_terms(theta)
    total, total_log = float(sigma.sum()), float(sigma_log.sum())

    # exactly known moments of the remainder P G P: its dimension and its trace
    rank_q = int((torch.linalg.vector_norm(q, dim=0) > 0).sum())
    moments = (float(m - rank_q), float(torch.linalg.vector_norm(a - b @ q.T) ** 2))
    steps = spec.FAST_ERANK_LANCZOS_STEPS
    z = probe_signs(m, spec.FAST_ERANK_PROBES, 1)
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


def erank_ref(features: torch.Tensor, lengths: torch.Tensor | None = None,
              method: str = spec.DEFAULTS.erank_method) -> torch.Tensor:
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
    batch, n, _ = features.shape
    lengths = [n] * batch if lengths is None else [int(v) for v in lengths.tolist()]
    estimator = ERANK_ESTIMATORS[method]
    out = [estimator(rescale(features[b, : lengths[b]])) for b in range(batch)]
    return torch.tensor(out, dtype=torch.float32, device=features.device)



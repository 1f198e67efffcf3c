"""Batched symmetric eigensolver for small matrices: cyclic parallel Jacobi, one program per matrix.

For use inside GPU pipelines that never synchronise with the host (CUDA-graph capturable: no
``.item()``, no data-dependent Python control flow, no ``torch.linalg``).

Math.  A = (Aᵢₙ + Aᵢₙᵀ)/2 ([k, k]) is padded with zero rows and columns to a [KB, KB] block,
KB = the power of two >= max(k, 16) (``tl.dot`` needs 16 in every dimension), scaled by the power
of two 2^e <= max|A| < 2^(e+1) (exact; squares can then neither overflow nor underflow, and the
result is exactly scale-equivariant), and diagonalised by plane rotations, A <- Jᵀ A J, V <- V J
from V = I; λ = 2^e diag(A).

- Pairing: a round-robin ("chess tournament", circle method) over NP = k rounded up to an even
  number of players (player k is a dummy when k is odd: its zero row makes its rotations identities;
  the padding slots >= NP stay in place and pair among themselves, identities too).
  Every round pairs the slots (2t, 2t+1); between rounds the players move one step around the
  table, slot 0 fixed: with the rotation J and the move Π as one matrix M = J Π, A <- Mᵀ A M,
  V <- V M.  J has two entries per column, so the rotation is elementwise on the column pairs
  (O(KB²) a round, where a product by M would cost O(KB³) and hold a third KB² matrix in
  registers), the move a gather of rows and columns.  NP-1 rounds (one sweep) pair every
  (p, q) exactly once and bring every player back to its own slot, so all masks are loop-invariant.
- Rotation of a pair (p, q) = (2t, 2t+1), Golub & Van Loan 8.5: tau = (a_qq - a_pp) / (2 a_pq),
  t = sign(tau) / (|tau| + sqrt(1 + tau²)) (sign(0) = +1), c = 1 / sqrt(1 + t²), s = t c;
  J_pp = J_qq = c, J_pq = s, J_qp = -s, which makes (Jᵀ A J)_pq = 0; J = I on the pair when
  |a_pq| <= 1e-150 max|A|.  After each round A is re-symmetrised and the annihilated a_pq are set
  to exactly 0, so that the rounding noise of the cancellation does not floor the off-diagonal norm.
- Stop: a device-side while loop over sweeps, until off(A)² = Σ_{i≠j} a_ij² <= TOL² ||A||_F²
  (checked after every sweep) or MAX_SWEEPS sweeps.  |λ_i - a_ii| <= off(A), so the eigenvalues
  are accurate to about TOL ||A||_F <= TOL sqrt(k) max|λ|.
- Output: λ_i = a_ii in ascending order by rank (rank_i = #{j < k : λ_j < λ_i, or λ_j = λ_i and
  j < i}), each stored straight to its rank; column i of V goes to column rank_i, its sign chosen
  so that its largest-magnitude component (the first on ties) is positive.
"""

import torch
import triton
import triton.language as tl

from ..triton_device import NO_FMA, check_device

MAX_K = 128  # A, V and M of one matrix are held by one program (the 128-column Rayleigh-Ritz of erank "fast")
# Measured (64 x 64, TOL 1e-15): <= 9 sweeps for random symmetric matrices, 12-14 for
# rank-deficient Grams (a cluster of zeros), up to 20 for 2 or 3 eigenvalues of multiplicity ~20-32:
# Jacobi converges only linearly until clusters are resolved.
MAX_SWEEPS = 24
TOL = 1e-15  # off-diagonal Frobenius norm / Frobenius norm at which the sweeps stop


@triton.jit
def _rotate_column_pairs(x, c, s, KB: tl.constexpr):
    """x J ([KB, KB]), J the rotations of the column pairs (2t, 2t+1) (J_pp = J_qq = c_t,
    J_pq = s_t, J_qp = -s_t): column 2t <- c x_2t - s x_2t+1, column 2t+1 <- s x_2t + c x_2t+1."""
    x_p, x_q = tl.split(tl.reshape(x, (KB, KB // 2, 2)))
    return tl.reshape(tl.join(c[None, :] * x_p - s[None, :] * x_q, s[None, :] * x_p + c[None, :] * x_q), (KB, KB))


@triton.jit
def _jacobi_eigh_kernel(
    a_ptr,  # [B, K, K] float64, contiguous
    w_ptr,  # [B, K] float64 out: eigenvalues, ascending
    v_ptr,  # [B, K, K] float64 out: eigenvectors in columns (unused when not VECTORS)
    K: tl.constexpr,
    KB: tl.constexpr,
    NP: tl.constexpr,
    MAX_SWEEPS: tl.constexpr,
    TOL2: tl.constexpr,
    VECTORS: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    idx = tl.arange(0, KB)
    row = idx[:, None]
    col = idx[None, :]
    eye = row == col
    real = (row < K) & (col < K)

    a = tl.load(a_ptr + b * K * K + row * K + col, mask=real, other=0.0)
    a = 0.5 * (a + tl.trans(a))
    # 2^e <= max|a| < 2^(e+1) from the exponent bits; 1 for a zero matrix
    big = tl.max(tl.max(tl.abs(a), axis=1), axis=0)
    pow2 = (big.to(tl.int64, bitcast=True) & 0x7FF0000000000000).to(tl.float64, bitcast=True)
    pow2 = tl.where(pow2 > 0, pow2, 1.0)
    a = a * (1.0 / pow2)
    v = tl.where(eye, 1.0, 0.0).to(tl.float64)

    # Π: slot i of the next round gets the player of slot pi(i) of this round (slot 0 fixed; the
    # others move around the table 1 -> 2 -> 4 ... -> NP-2 -> NP-1 -> NP-3 ... -> 3 -> 1)
    if NP == 2:
        pi = idx
    else:
        pi = tl.where(
            (idx == 0) | (idx >= NP),
            idx,
            tl.where(idx == NP - 1, NP - 2, tl.where(idx == 2, 1, tl.where(idx % 2 == 0, idx - 2, idx + 2))),
        )
    # Π as the gather index of rows (and of columns, for V)
    pi_rows = pi[:, None] + tl.zeros((KB, KB), tl.int32)
    if VECTORS:
        pi_cols = pi[None, :] + tl.zeros((KB, KB), tl.int32)
    pairs = tl.arange(0, KB // 2)[:, None]
    annihilated = pi[None, :] == (pi ^ 1)[:, None]  # (Mᵀ A M)_ij with {pi(i), pi(j)} a pair

    fro2 = tl.sum(a * a)
    finite = fro2 < 1e300  # after the scaling a NaN or inf entry makes fro2 NaN, else fro2 <= 4 KB²
    off2 = tl.sum(tl.where(eye, 0.0, a * a))
    sweep = 0
    while (sweep < MAX_SWEEPS) & (off2 > TOL2 * fro2):
        for _round in range(NP - 1):
            # a_pp, a_qq, a_pq of the KB/2 pairs (p, q) = (2t, 2t+1), from rows p and q
            row_p, row_q = tl.split(tl.permute(tl.reshape(a, (KB // 2, 2, KB)), (0, 2, 1)))
            app = tl.sum(tl.where(col == 2 * pairs, row_p, 0.0), axis=1)
            apq = tl.sum(tl.where(col == 2 * pairs + 1, row_p, 0.0), axis=1)
            aqq = tl.sum(tl.where(col == 2 * pairs + 1, row_q, 0.0), axis=1)

            # pairs with |a_pq| <= 1e-150 max|A| are left alone (their a_pq is dropped below): then
            # |tau| <= 2e150 and tau² cannot overflow
            rotate = tl.abs(apq) > 1e-150
            tau = (aqq - app) / (2.0 * tl.where(rotate, apq, 1.0))
            t = 1.0 / (tl.abs(tau) + tl.sqrt(1.0 + tau * tau))
            t = tl.where(tau >= 0, t, -t)
            c = tl.where(rotate, 1.0 / tl.sqrt(1.0 + t * t), 1.0)
            s = tl.where(rotate, t * c, 0.0)

            # A <- Mᵀ A M, elementwise: J has two entries per column, and a product by M would hold
            # a third KB² matrix in registers.  A J by columns; Jᵀ A J as the columns of
            # (A J)ᵀ = Jᵀ A (A symmetric); then the move to the next round's slots, a gather of
            # rows twice, the second time of the transpose: A' = (Π (Π Jᵀ A J)ᵀ)ᵀ
            a = _rotate_column_pairs(tl.trans(_rotate_column_pairs(a, c, s, KB)), c, s, KB)
            a = tl.gather(tl.trans(tl.gather(a, pi_rows, 0)), pi_rows, 0)
            # exact symmetry (which also undoes the last transpose) and exact zeros where the
            # rotations annihilated: rounding noise of the cancellation would otherwise put a
            # floor under the off-diagonal norm
            a = tl.where(annihilated, 0.0, 0.5 * (a + tl.trans(a)))
            if VECTORS:
                v = tl.gather(_rotate_column_pairs(v, c, s, KB), pi_cols, 1)
        off2 = tl.sum(tl.where(eye, 0.0, a * a))
        sweep += 1

    # NP-1 rounds bring every slot back home: slot i is row/column i of the input again.
    # Ascending order: rank of column i among the real eigenvalues, ties by index (identity when
    # not finite, so that every output is written, with NaN).
    diag = tl.where(eye, a, 0.0)
    lam_row = tl.sum(diag, axis=1)
    lam = tl.sum(diag, axis=0)
    before = (lam_row[:, None] < lam[None, :]) | ((lam_row[:, None] == lam[None, :]) & (row < col))
    rank = tl.where(finite, tl.sum((before & real).to(tl.int32), axis=0), idx)
    tl.store(w_ptr + b * K + rank, tl.where(finite, lam * pow2, float("nan")), mask=idx < K)

    if VECTORS:
        mag = tl.where(real, tl.abs(v), -1.0)
        peak = tl.max(mag, axis=0)
        first = tl.min(tl.where(mag == peak[None, :], row, KB), axis=0)
        pivot = tl.sum(tl.where(row == first[None, :], v, 0.0), axis=0)
        v = tl.where(pivot[None, :] < 0, -v, v)
        v = tl.where(finite, v, float("nan"))
        tl.store(v_ptr + b * K * K + row * K + rank[None, :], v, mask=real)


def jacobi_eigh(a: torch.Tensor, vectors: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Eigenvalues (ascending) and eigenvectors of a batch of small symmetric matrices.

    Like ``torch.linalg.eigh`` in float64, without host synchronisation (CUDA-graph capturable).
    Only (A + Aᵀ)/2 is used.  Finiteness is not checked (that would synchronise): a matrix with a NaN
    or inf entry gets all-NaN eigenvalues and eigenvectors.  A largest entry below 2.2e-308 (all
    entries subnormal) is not scaled up and loses accuracy.

    Args:
        a: [B, k, k] float64 or float32 (computed in float64), 1 <= k <= 128, on a CUDA device (or
            on the CPU when TRITON_INTERPRET=1 was set before this module was imported).
        vectors: also compute the eigenvectors.

    Returns:
        (w, v): w [B, k] float64 eigenvalues in ascending order; v [B, k, k] float64 with column i
        the unit eigenvector of w[:, i], its largest-magnitude component (the first on ties)
        positive, or None when ``vectors`` is False.
    """
    if not isinstance(a, torch.Tensor):
        raise ValueError(f"a must be a torch.Tensor [B, k, k], got {type(a).__name__}")
    if a.dim() != 3 or a.shape[1] != a.shape[2]:
        raise ValueError(f"a must have shape [B, k, k] (a batch of square matrices), got {tuple(a.shape)}")
    if a.dtype not in (torch.float64, torch.float32):
        raise ValueError(f"a must be float64 or float32, got {a.dtype}")
    batch, k = a.shape[0], a.shape[1]
    if not 1 <= k <= MAX_K:
        raise ValueError(f"a must have 1 <= k <= {MAX_K}, got k = {k}")
    check_device("a", a, __name__)

    a = a.to(torch.float64).contiguous()
    w = torch.empty((batch, k), dtype=torch.float64, device=a.device)
    v = torch.empty((batch, k, k), dtype=torch.float64, device=a.device) if vectors else None
    if batch == 0:
        return w, v
    kb = max(16, triton.next_power_of_2(k))
    players = k + k % 2
    # num_warps: ptxas (sm_90a, triton 3.6 and 3.9) reports no spills with 2 warps up to KB = 32 and
    # 16 at KB = 64; at KB = 128 A alone is half an SM's register file, and 16 warps spill 120-250 B
    # per thread (tests/test_triton_compile.py bounds it)
    _jacobi_eigh_kernel[(batch,)](
        a, w, v if vectors else w, K=k, KB=kb, NP=players, MAX_SWEEPS=MAX_SWEEPS,
        TOL2=TOL * TOL, VECTORS=vectors, num_warps=2 if kb <= 32 else 16, **NO_FMA,
    )
    return w, v

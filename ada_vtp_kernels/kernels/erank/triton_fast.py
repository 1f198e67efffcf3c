"""The SVD-free erank estimator ("fast") as batched Triton kernels, free of host synchronisation.

Exactly the steps of `reference.erank_fast_one` (its docstring has the method and its error), with
fp32 products and fp64 reductions like the C++ kernel (csrc/cpu/erank_fast.cpp).  Per image b, X
its n_b valid rows after `reference.rescale`, m_b = min(n_b, D) and a = X (n_b >= D) or Xᵀ, so
that G = aᵀ a is the smaller Gram matrix, never formed:

    Q <- Omega (+-1, [m, k], k = fast_erank_block(m));   Q <- orth(aᵀ orth(a Q)), twice
    B = a Q;  theta = eig(Bᵀ B) (fp64);  S = sum sqrt(theta),  T = sum sqrt(theta) ln sqrt(theta)
    z_i <- (I - Q Qᵀ)² z_i (+-1 probes), 8 Lanczos steps on G each, fully reorthogonalised
    S, T += 7-node Gauss + 8-node anti-Gauss quadrature of sqrt and sigma ln sigma, with the
            control line fitted to the exactly known dimension m - rank Q and trace ||a - B Qᵀ||²
    erank = clamp(exp(ln S - T / S), 1, m),  0 when S = 0

orth is classical Gram-Schmidt applied twice, column by column, dropping (zeroing) a column that
keeps less than ORTH_DROP of its norm.  Images with m_b <= FAST_ERANK_BLOCK take the exact erank
(`reference.erank_one`): Q = I makes B = a and Bᵀ B their whole Gram.

Batching: every per-image quantity (n_b, m_b, whether a is X or Xᵀ, the block size, the exact
path) is read from `lengths` on the device.  The vectors of every image share one buffer width:
C = fast_erank_block(min(N, D)) columns, an image with a smaller block keeping zero columns, which
stay zero through every step and add nothing; vectors over the m_b (or max(n_b, D)) valid rows are
stored in [B, min(N, D) (or max(N, D)), C] buffers, zero below.  The host launches a fixed sequence
of kernels; the small eigenproblems (Rayleigh-Ritz, tridiagonal) go to `triton.eigh.jacobi_eigh`.
"""

import math

import torch
import triton
import triton.language as tl

# tl.sum / tl.max are @jit wrappers of tl.reduce with these combine functions; the interpreter
# re-patches the language module on every @jit call (about 1 ms), but evaluates tl.reduce with them
# directly in numpy.  Compiled, the two spellings are the same code.
from triton.language.standard import _elementwise_max, _sum_combine

from ... import spec
from ..triton_device import GPU_CONFIG, NO_FMA
from .triton_eigh import jacobi_eigh

PROBES = spec.FAST_ERANK_PROBES
STEPS = spec.FAST_ERANK_LANCZOS_STEPS
# tl.dot needs 16 columns: the probe block is padded with zero probes, which stay zero
PROBE_WIDTH = max(16, triton.next_power_of_2(PROBES))
STEP_SLOTS = triton.next_power_of_2(STEPS)
# reference.probe_signs: key = i * 1024 + j + stream * 0x9E3779B9 (mod 2**32)
STREAM_BLOCK = 0
STREAM_PROBES = 0x9E3779B9
TINY = torch.finfo(torch.float64).tiny

# Tile sizes.  The interpreter pays per operation rather than per element, so it gets large tiles,
# except in the (cheap) Lanczos kernels, whose row loops small test images should still iterate.
if not GPU_CONFIG:
    APPLY_BLOCK_R, APPLY_BLOCK_K = 128, 128
    ORTH_BLOCK_R, LANCZOS_BLOCK_R = 256, 64
    GRAM_BLOCK_G, GRAM_BLOCK_R = 32, 128
    RESIDUAL_BLOCK_N, RESIDUAL_BLOCK_D = 128, 128
    ABSMAX_BLOCK_N, ABSMAX_BLOCK_D = 128, 256
else:
    APPLY_BLOCK_R, APPLY_BLOCK_K = 64, 32
    ORTH_BLOCK_R, LANCZOS_BLOCK_R = 32, 16
    GRAM_BLOCK_G, GRAM_BLOCK_R = 32, 32
    RESIDUAL_BLOCK_N, RESIDUAL_BLOCK_D = 32, 32
    ABSMAX_BLOCK_N, ABSMAX_BLOCK_D = 32, 128
# the Lanczos kernel holds [C, P] and [S, BLOCK_R, P] fp64 accumulators: 8 warps and 16-row tiles
# keep them in registers at C = 128 (ptxas for sm_90: 32-row tiles spill 12 B under triton 3.9 and
# 128 B under 3.6; 4 warps, 255 registers and a stack)
LANCZOS_WARPS = 8
# the residual kernel holds a [BLOCK_N, C] fp32 tile of B Qᵀ: at C = 128 and 64-token tiles triton 3.6
# spills 6 KB with 4 warps and 0.3 KB (fp16/bf16 inputs) with 8; 32-token tiles and 8 warps, none
RESIDUAL_WARPS = 8


# --------------------------------------------------------------------------------------------
# kernels


@triton.jit
def _load_rescaled(ptrs, mask, scale):
    """fp32 features times the image's power-of-two scale, as reference.rescale rounds them: the
    product in fp64 (2**-e may lie outside fp32's range), then one rounding to fp32."""
    x = tl.load(ptrs, mask=mask, other=0.0)
    y = x.to(tl.float32)
    if scale != 1.0:
        y = (x.to(tl.float64) * scale).to(tl.float32)
    return y


@triton.jit
def _erank_absmax_kernel(
    x_ptr, stride_xb, stride_xn, stride_xd,  # features [B, N, D]
    lengths_ptr,  # [B] int32
    out_ptr,  # [B, cdiv(N, BLOCK_N)] fp32: max |x| of each tile of valid rows
    D,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1)
    i = t * BLOCK_N + tl.arange(0, BLOCK_N)
    n = tl.load(lengths_ptr + b)
    x_img = x_ptr + b * stride_xb
    best = tl.full((BLOCK_N,), 0.0, tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        x = tl.load(x_img + i[:, None] * stride_xn + d[None, :] * stride_xd,
                    mask=(i < n)[:, None] & (d < D)[None, :], other=0.0)
        best = tl.maximum(best, tl.reduce(tl.abs(x.to(tl.float32)), 1, _elementwise_max))
    tl.store(out_ptr + b * tl.num_programs(1) + t, tl.reduce(best, 0, _elementwise_max))


@triton.jit
def _erank_probes_kernel(
    out_ptr, stride_ob,  # [B, rows, C] fp32 out
    lengths_ptr,  # [B] int32
    cols_ptr,  # [B] int32: probe columns of each image, the rest zero
    D,
    out_rows,
    STREAM: tl.constexpr,  # stream * 0x9E3779B9 mod 2**32
    C: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """reference.probe_signs over the m_b valid rows: bit 0 of lowbias32(i * 1024 + j + STREAM)."""
    b = tl.program_id(0).to(tl.int64)
    i = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    j = tl.arange(0, C)
    m = tl.minimum(tl.load(lengths_ptr + b), D)
    cols = tl.load(cols_ptr + b)
    h = (i[:, None] * 1024 + j[None, :]).to(tl.uint32) + STREAM
    h ^= h >> 16
    h *= 0x7FEB352D
    h ^= h >> 15
    h *= 0x846CA68B
    h ^= h >> 16
    sign = tl.where((h & 1) == 1, -1.0, 1.0)
    sign = tl.where((i < m)[:, None] & (j < cols)[None, :], sign, 0.0)
    tl.store(out_ptr + b * stride_ob + i[:, None] * C + j[None, :], sign, mask=(i < out_rows)[:, None])


@triton.jit
def _erank_apply_kernel(
    x_ptr, stride_xb, stride_xn, stride_xd,  # features [B, N, D]
    lengths_ptr,  # [B] int32
    scale_ptr,  # [B] fp64: reference.rescale's factor
    v_ptr, stride_vb,  # [B, *, C] fp32, rows of C contiguous
    out_ptr, stride_ob,  # [B, out_rows, C] fp32 out
    out_rows,
    D,
    ADJOINT: tl.constexpr,  # False: out = a v; True: out = aᵀ v
    C: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """One [BLOCK_R, C] tile of a v or aᵀ v, a = X or Xᵀ per image: either X v (rows are the n_b
    tokens, the sum runs over the D channels) or Xᵀ v (rows are the D channels, the sum runs over
    the n_b tokens).  Rows past the image's length come out zero."""
    b = tl.program_id(0).to(tl.int64)
    start = tl.program_id(1) * BLOCK_R
    r = start + tl.arange(0, BLOCK_R)
    c = tl.arange(0, C)
    n = tl.load(lengths_ptr + b)
    scale = tl.load(scale_ptr + b)
    x_img = x_ptr + b * stride_xb
    v_img = v_ptr + b * stride_vb
    acc = tl.full((BLOCK_R, C), 0.0, tl.float32)
    # two loops rather than one with the strides picked at run time: each keeps the compiler's
    # knowledge of which of stride_xn, stride_xd is 1 (contiguous loads)
    if (n < D) != ADJOINT:  # Xᵀ v
        k_end = tl.where(start < D, n, 0)
        for k0 in range(0, k_end, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            x = _load_rescaled(x_img + r[:, None] * stride_xd + k[None, :] * stride_xn,
                               (r < D)[:, None] & (k < n)[None, :], scale)
            v = tl.load(v_img + k[:, None] * C + c[None, :], mask=(k < n)[:, None], other=0.0)
            acc = tl.dot(x, v, acc, input_precision="ieee")
    else:  # X v
        k_end = tl.where(start < n, D, 0)
        for k0 in range(0, k_end, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            x = _load_rescaled(x_img + r[:, None] * stride_xn + k[None, :] * stride_xd,
                               (r < n)[:, None] & (k < D)[None, :], scale)
            v = tl.load(v_img + k[:, None] * C + c[None, :], mask=(k < D)[:, None], other=0.0)
            acc = tl.dot(x, v, acc, input_precision="ieee")
    tl.store(out_ptr + b * stride_ob + r[:, None] * C + c[None, :], acc, mask=(r < out_rows)[:, None])


@triton.jit
def _erank_orthonormalize_kernel(
    y_ptr, stride_yb,  # [B, rows, C] fp32, orthonormalised in place
    lengths_ptr,  # [B] int32
    cols_ptr,  # [B] int32: the image's block columns, the rest are zero (0: exact path, untouched)
    D,
    ROWS: tl.constexpr,  # columns of length max(n_b, D) (a's rows), else min(n_b, D)
    C: tl.constexpr,
    ORTH_DROP: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """reference._orthonormalize, one program per image: for each column j, twice w -= Q_{<j}
    (Q_{<j}ᵀ w) (coefficients in fp64, updates in fp32), then w / |w|, or 0 when |w| <= ORTH_DROP
    |y_j|.  Each step sweeps the rows; the next projection's coefficients ride along with the
    update that precedes it."""
    b = tl.program_id(0).to(tl.int64)
    n = tl.load(lengths_ptr + b)
    length = tl.maximum(n, D) if ROWS else tl.minimum(n, D)
    cols = tl.load(cols_ptr + b)
    y_img = y_ptr + b * stride_yb
    c = tl.arange(0, C)
    rows = tl.arange(0, BLOCK_R)
    tile = rows[:, None] * C + c[None, :]  # offsets of a [BLOCK_R, C] tile
    for j in range(cols):
        done = (c < j)[None, :]
        col = y_img + rows * C + j  # column j in the first tile
        norm_y2 = tl.full((), 0.0, tl.float64)
        coef = tl.full((C,), 0.0, tl.float64)
        for r0 in range(0, length, BLOCK_R):
            live = rows < length - r0
            q = tl.load(y_img + r0 * C + tile, mask=live[:, None] & done, other=0.0)
            w = tl.load(col + r0 * C, mask=live, other=0.0).to(tl.float64)
            norm_y2 += tl.reduce(w * w, None, _sum_combine)
            coef += tl.reduce(q.to(tl.float64) * w[:, None], 0, _sum_combine)
        norm2 = tl.full((), 0.0, tl.float64)
        for p in tl.static_range(2):
            update = coef.to(tl.float32)
            coef = tl.full((C,), 0.0, tl.float64)
            for r0 in range(0, length, BLOCK_R):
                live = rows < length - r0
                q = tl.load(y_img + r0 * C + tile, mask=live[:, None] & done, other=0.0)
                w = tl.load(col + r0 * C, mask=live, other=0.0)
                w = w - tl.reduce(q * update[None, :], 1, _sum_combine)
                tl.store(col + r0 * C, w, mask=live)
                w64 = w.to(tl.float64)
                if p == 0:
                    coef += tl.reduce(q.to(tl.float64) * w64[:, None], 0, _sum_combine)
                else:
                    norm2 += tl.reduce(w64 * w64, None, _sum_combine)
            tl.debug_barrier()
        norm = tl.sqrt(norm2)
        keep = norm > ORTH_DROP * tl.sqrt(norm_y2)
        inv = tl.where(keep, 1.0 / tl.where(keep, norm, 1.0), 0.0).to(tl.float32)
        for r0 in range(0, length, BLOCK_R):
            live = rows < length - r0
            w = tl.load(col + r0 * C, mask=live, other=0.0)
            tl.store(col + r0 * C, w * inv, mask=live)
        tl.debug_barrier()


@triton.jit
def _erank_gram_kernel(
    b_ptr, stride_bb,  # [B, rows, C] fp32: B = a Q
    g_ptr,  # [B, C, C] fp64 out: Bᵀ B
    lengths_ptr,  # [B] int32
    D,
    C: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    gi = tl.program_id(1) * BLOCK_G + tl.arange(0, BLOCK_G)
    gj = tl.program_id(2) * BLOCK_G + tl.arange(0, BLOCK_G)
    rows = tl.maximum(tl.load(lengths_ptr + b), D)
    b_img = b_ptr + b * stride_bb
    acc = tl.full((BLOCK_G, BLOCK_G), 0.0, tl.float64)
    for r0 in range(0, rows, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        left = tl.load(b_img + r[:, None] * C + gi[None, :], mask=(r < rows)[:, None], other=0.0)
        right = tl.load(b_img + r[:, None] * C + gj[None, :], mask=(r < rows)[:, None], other=0.0)
        # out_dtype said: triton 3.6 defaults it to fp32 and rejects an fp64 accumulator
        acc = tl.dot(tl.trans(left.to(tl.float64)), right.to(tl.float64), acc, out_dtype=tl.float64)
    tl.store(g_ptr + b * C * C + gi[:, None] * C + gj[None, :], acc)


@triton.jit
def _erank_residual_kernel(
    x_ptr, stride_xb, stride_xn, stride_xd,  # features [B, N, D]
    lengths_ptr,  # [B] int32
    scale_ptr,  # [B] fp64
    q_ptr, stride_qb,  # [B, M, C] fp32: Q over the m_b rows
    b_ptr, stride_bb,  # [B, R, C] fp32: B = a Q over a's rows
    out_ptr,  # [B, cdiv(N, BLOCK_N)] fp64 out: ||a - B Qᵀ||² of each tile of tokens
    D,
    C: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """The exactly known trace of P G P (the C++ forms the residual in fp32 too), seen from X:
    a - B Qᵀ is X - Q Bᵀ when a = Xᵀ (Q over the tokens) and X - B Qᵀ when a = X."""
    b = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1)
    i = t * BLOCK_N + tl.arange(0, BLOCK_N)
    c = tl.arange(0, C)
    n = tl.load(lengths_ptr + b)
    scale = tl.load(scale_ptr + b)
    x_img = x_ptr + b * stride_xb
    q_img = q_ptr + b * stride_qb
    b_img = b_ptr + b * stride_bb
    transposed = n < D
    if transposed:
        left = tl.load(q_img + i[:, None] * C + c[None, :], mask=(i < n)[:, None], other=0.0)
    else:
        left = tl.load(b_img + i[:, None] * C + c[None, :], mask=(i < n)[:, None], other=0.0)
    acc = tl.full((BLOCK_N,), 0.0, tl.float64)
    d_end = tl.where(t * BLOCK_N < n, D, 0)
    for d0 in range(0, d_end, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        if transposed:
            right = tl.load(b_img + d[:, None] * C + c[None, :], mask=(d < D)[:, None], other=0.0)
        else:
            right = tl.load(q_img + d[:, None] * C + c[None, :], mask=(d < D)[:, None], other=0.0)
        x = _load_rescaled(x_img + i[:, None] * stride_xn + d[None, :] * stride_xd,
                           (i < n)[:, None] & (d < D)[None, :], scale)
        res = (x - tl.dot(left, tl.trans(right), input_precision="ieee")).to(tl.float64)
        acc += tl.reduce(res * res, 1, _sum_combine)
    tl.store(out_ptr + b * tl.num_programs(1) + t, tl.reduce(acc, None, _sum_combine))


@triton.jit
def _erank_alpha_kernel(
    av_ptr, stride_ab,  # [B, R, P] fp32: a v_step
    alpha_ptr,  # [B, S, P] fp64 out: alpha_step = |a v_step|²
    lengths_ptr,  # [B] int32
    D,
    step,
    S: tl.constexpr,
    P: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    rows = tl.maximum(tl.load(lengths_ptr + b), D)
    p = tl.arange(0, P)
    av_img = av_ptr + b * stride_ab
    acc = tl.full((P,), 0.0, tl.float64)
    for r0 in range(0, rows, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        v = tl.load(av_img + r[:, None] * P + p[None, :], mask=(r < rows)[:, None], other=0.0).to(tl.float64)
        acc += tl.reduce(v * v, 0, _sum_combine)
    tl.store(alpha_ptr + (b * S + step) * P + p, acc)


@triton.jit
def _erank_lanczos_kernel(
    w_ptr, stride_wb,  # [B, M, P] fp32: aᵀ a v_step, or the probes when FIRST
    basis_ptr,  # [B, S, M, P] fp32: v_0 .. v_step in, v_{step+1} out
    q_ptr, stride_qb,  # [B, M, C] fp32: Q
    alpha_ptr,  # [B, S, P] fp64: alpha_step in
    beta_ptr,  # [B, S, P] fp64: slot 0 = |projected probe|, slot j + 1 = beta_j; slot step + 1 out
    lengths_ptr,  # [B] int32
    D,
    M,
    step,  # -1 when FIRST
    C: tl.constexpr,
    P: tl.constexpr,
    S: tl.constexpr,
    FIRST: tl.constexpr,
    TINY: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """One Lanczos step of every probe of one image, as the C++: w = aᵀ a v_j - alpha_j v_j -
    beta_{j-1} v_{j-1} (fp32), then twice {w -= Q (Qᵀ w); w -= sum_i v_i (v_i . w)} (fp64
    coefficients), beta_j = |w| (fp64), v_{j+1} = w / max(beta_j, TINY).  FIRST: w = the probes,
    projected twice on Q's complement only; its norm is beta0."""
    b = tl.program_id(0).to(tl.int64)
    m = tl.minimum(tl.load(lengths_ptr + b), D)
    p = tl.arange(0, P)
    c = tl.arange(0, C)
    s = tl.arange(0, S)
    w_img = w_ptr + b * stride_wb
    basis_img = basis_ptr + b * S * M * P
    out_img = basis_img + (step + 1) * M * P
    q_img = q_ptr + b * stride_qb
    previous = (s <= step)[:, None, None]

    # w and its coefficients on Q
    if not FIRST:
        alpha = tl.load(alpha_ptr + (b * S + step) * P + p).to(tl.float32)
        # beta_{j-1} v_{j-1} from step 1 on (slot 0 holds beta0)
        has_before = tl.full((P,), step, tl.int32) > 0
        beta = tl.where(has_before, tl.load(beta_ptr + (b * S + step) * P + p), 0.0).to(tl.float32)
    coef_q = tl.full((C, P), 0.0, tl.float64)
    for r0 in range(0, m, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        rows = (r < m)[:, None]
        w = tl.load(w_img + r[:, None] * P + p[None, :], mask=rows, other=0.0)
        if not FIRST:
            v = tl.load(basis_img + step * M * P + r[:, None] * P + p[None, :], mask=rows, other=0.0)
            v_before = tl.load(basis_img + (step - 1) * M * P + r[:, None] * P + p[None, :],
                               mask=rows & has_before[None, :], other=0.0)
            w = w - alpha[None, :] * v - beta[None, :] * v_before
        tl.store(out_img + r[:, None] * P + p[None, :], w, mask=rows)
        q = tl.load(q_img + r[:, None] * C + c[None, :], mask=rows, other=0.0)
        coef_q += tl.dot(tl.trans(q), w, input_precision="ieee").to(tl.float64)
    tl.debug_barrier()

    norm2 = tl.full((P,), 0.0, tl.float64)
    for it in tl.static_range(2):
        # w -= Q coef_q, with the coefficients on the previous vectors (FIRST: on Q again)
        update_q = coef_q.to(tl.float32)
        coef_q = tl.full((C, P), 0.0, tl.float64)
        coef_v = tl.full((S, P), 0.0, tl.float64)
        for r0 in range(0, m, BLOCK_R):
            r = r0 + tl.arange(0, BLOCK_R)
            rows = (r < m)[:, None]
            q = tl.load(q_img + r[:, None] * C + c[None, :], mask=rows, other=0.0)
            w = tl.load(out_img + r[:, None] * P + p[None, :], mask=rows, other=0.0)
            w = w - tl.dot(q, update_q, input_precision="ieee")
            tl.store(out_img + r[:, None] * P + p[None, :], w, mask=rows)
            if FIRST:
                if it == 0:
                    coef_q += tl.dot(tl.trans(q), w, input_precision="ieee").to(tl.float64)
                else:
                    norm2 += tl.reduce(w.to(tl.float64) * w.to(tl.float64), 0, _sum_combine)
            else:
                v = tl.load(basis_img + s[:, None, None] * M * P + r[None, :, None] * P + p[None, None, :],
                            mask=previous & rows[None, :, :], other=0.0)
                coef_v += tl.reduce(v.to(tl.float64) * w.to(tl.float64)[None, :, :], 1, _sum_combine)
        tl.debug_barrier()
        if not FIRST:
            # w -= sum_i v_i coef_v[i], with the next pass's coefficients on Q (or the norm)
            update_v = coef_v.to(tl.float32)
            for r0 in range(0, m, BLOCK_R):
                r = r0 + tl.arange(0, BLOCK_R)
                rows = (r < m)[:, None]
                v = tl.load(basis_img + s[:, None, None] * M * P + r[None, :, None] * P + p[None, None, :],
                            mask=previous & rows[None, :, :], other=0.0)
                w = tl.load(out_img + r[:, None] * P + p[None, :], mask=rows, other=0.0)
                w = w - tl.reduce(v * update_v[:, None, :], 0, _sum_combine)
                tl.store(out_img + r[:, None] * P + p[None, :], w, mask=rows)
                if it == 0:
                    q = tl.load(q_img + r[:, None] * C + c[None, :], mask=rows, other=0.0)
                    coef_q += tl.dot(tl.trans(q), w, input_precision="ieee").to(tl.float64)
                else:
                    norm2 += tl.reduce(w.to(tl.float64) * w.to(tl.float64), 0, _sum_combine)
            tl.debug_barrier()

    norm = tl.sqrt(norm2)
    divisor = tl.maximum(norm, TINY)
    for r0 in range(0, m, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        rows = (r < m)[:, None]
        w = tl.load(out_img + r[:, None] * P + p[None, :], mask=rows, other=0.0)
        tl.store(out_img + r[:, None] * P + p[None, :], (w.to(tl.float64) / divisor[None, :]).to(tl.float32), mask=rows)
    tl.store(beta_ptr + (b * S + step + 1) * P + p, norm)


@triton.jit
def _xlogx(x):
    """x ln x, 0 at x = 0 (torch.xlogy(x, x))."""
    return tl.where(x > 0, x * tl.log(tl.where(x > 0, x, 1.0)), 0.0)


@triton.jit
def _control_line(lam, w, f):
    """reference._control_line: (a, b) of the line a + b lam closest to f on the nodes lam,
    weighted by w (normal equations in lam / max lam); a constant where the nodes cannot support
    a slope."""
    scale = tl.reduce(lam, 0, _elementwise_max)
    weight = tl.reduce(w, 0, _sum_combine)
    g0 = tl.reduce(w * f, 0, _sum_combine)
    t = lam / tl.where(scale > 0, scale, 1.0)
    s1 = tl.reduce(w * t, 0, _sum_combine)
    s2 = tl.reduce(w * t * t, 0, _sum_combine)
    g1 = tl.reduce(w * t * f, 0, _sum_combine)
    det = weight * s2 - s1 * s1
    sloped = (scale > 0) & (det > 1e-12 * weight * s2)
    det = tl.where(sloped, det, 1.0)
    a = tl.where(sloped, (s2 * g0 - s1 * g1) / det, g0 / tl.where(weight > 0, weight, 1.0))
    slope = tl.where(sloped, (weight * g1 - s1 * g0) / det / tl.where(scale > 0, scale, 1.0), 0.0)
    return a, slope


@triton.jit
def _erank_finish_kernel(
    theta_ptr,  # [B, K] fp64: eigenvalues of Bᵀ B (Ritz values, or the whole Gram on the exact path)
    nodes_ptr,  # [B, NQ] fp64: eigenvalues of the tridiagonals, [probe, Gauss/anti-Gauss, node]
    first_ptr,  # [B, NQ] fp64: first components of their eigenvectors
    beta_ptr,  # [B, S, P_PAD] fp64: slot 0 = |projected probe|
    rank_ptr,  # [B] int64: non-zero columns of Q
    trace_ptr,  # [B] fp64: ||a - B Qᵀ||²
    lengths_ptr,  # [B] int32
    out_ptr,  # [B] fp32 or fp64 out: erank
    D,
    K,
    KP: tl.constexpr,  # K rounded up to a power of two
    NQ: tl.constexpr,
    PROBES: tl.constexpr,
    S: tl.constexpr,
    P_PAD: tl.constexpr,
    EXACT_UP_TO: tl.constexpr,  # images with m <= EXACT_UP_TO are solved exactly
    HAS_QUADRATURE: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    m = tl.minimum(tl.load(lengths_ptr + b), D)
    k = tl.arange(0, KP)
    theta = tl.load(theta_ptr + b * K + k, mask=k < K, other=0.0)
    sigma = tl.sqrt(tl.maximum(theta, 0.0))
    total = tl.reduce(sigma, 0, _sum_combine)
    total_log = tl.reduce(_xlogx(sigma), 0, _sum_combine)
    positive = total > 0
    safe_total = tl.where(positive, total, 1.0)
    # reference.erank_one: exp(-sum q ln q), no clamp
    exact = tl.exp(-tl.reduce(_xlogx(sigma / safe_total), 0, _sum_combine))
    if HAS_QUADRATURE:
        j = tl.arange(0, NQ)
        lam = tl.maximum(tl.load(nodes_ptr + b * NQ + j), 0.0)
        v0 = tl.load(first_ptr + b * NQ + j)
        beta0 = tl.load(beta_ptr + b * S * P_PAD + j // (NQ // PROBES))
        w = v0 * v0 * (beta0 * beta0) / (2 * PROBES)
        dimension = (m - tl.load(rank_ptr + b)).to(tl.float64)
        unexplained_dim = dimension - tl.reduce(w, 0, _sum_combine)
        unexplained_trace = tl.load(trace_ptr + b) - tl.reduce(w * lam, 0, _sum_combine)
        f = tl.sqrt(lam)
        a, slope = _control_line(lam, w, f)
        add = tl.reduce(w * f, 0, _sum_combine) + (a * unexplained_dim + slope * unexplained_trace)
        f = _xlogx(f)
        a, slope = _control_line(lam, w, f)
        add_log = tl.reduce(w * f, 0, _sum_combine) + (a * unexplained_dim + slope * unexplained_trace)
        total += tl.where(dimension > 0, add, 0.0)
        total_log += tl.where(dimension > 0, add_log, 0.0)
    positive = total > 0
    safe_total = tl.where(positive, total, 1.0)
    fast = tl.minimum(tl.maximum(tl.exp(tl.log(safe_total) - total_log / safe_total), 1.0), m.to(tl.float64))
    erank = tl.where(m <= EXACT_UP_TO, exact, fast)
    tl.store(out_ptr + b, tl.where(positive, erank, 0.0).to(out_ptr.dtype.element_ty))


# --------------------------------------------------------------------------------------------
# launchers


def _block_columns(m: torch.Tensor) -> torch.Tensor:
    """reference.fast_erank_block on the device: [B] int m -> [B] int32 deflation columns."""
    return torch.where(m > spec.FAST_ERANK_LARGE_ABOVE, spec.FAST_ERANK_LARGE_BLOCK,
                       spec.FAST_ERANK_BLOCK).to(torch.int32)


def _rescale_factors(features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[B] fp64: reference.rescale's factor of each image, 2**-e where max |x| = f 2**e (f in
    [0.5, 1)) lies outside [SAFE_MIN, SAFE_MAX] and is not 0, else 1."""
    batch, n, dim = features.shape
    tiles = triton.cdiv(n, ABSMAX_BLOCK_N)
    partial = torch.empty((batch, tiles), dtype=torch.float32, device=features.device)
    _erank_absmax_kernel[(batch, tiles)](
        features, *features.stride(), lengths, partial, dim, BLOCK_N=ABSMAX_BLOCK_N, BLOCK_D=ABSMAX_BLOCK_D, **NO_FMA,
    )
    amax = partial.amax(dim=1)
    exponent = torch.frexp(amax).exponent.to(torch.int64)
    outside = (amax != 0) & ((amax < spec.SAFE_MIN) | (amax > spec.SAFE_MAX))
    power = ((1023 - exponent) << 52).view(torch.float64)  # 2**-e from its IEEE bits: exact
    return torch.where(outside, power, torch.ones_like(power))


def _tridiagonals(alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """alpha, beta [B, STEPS, PROBE_WIDTH] -> [B, PROBES, 2, STEPS, STEPS] fp64: each probe's Gauss
    matrix (STEPS - 1 nodes, zero-padded: one more node 0 of weight 0) and anti-Gauss matrix
    (reference._tridiagonal_rule: the last off-diagonal times sqrt 2)."""
    diag = alpha[:, :, :PROBES].transpose(1, 2)  # [B, P, STEPS]
    off = beta[:, 1:, :PROBES].transpose(1, 2)  # [B, P, STEPS - 1]: beta_0 .. beta_{STEPS-2}
    gauss_diag = torch.cat([diag[..., :-1], torch.zeros_like(diag[..., -1:])], dim=-1)
    gauss_off = torch.cat([off[..., :-1], torch.zeros_like(off[..., -1:])], dim=-1)
    anti_off = torch.cat([off[..., :-1], off[..., -1:] * math.sqrt(2.0)], dim=-1)
    diag = torch.stack([gauss_diag, diag], dim=2)
    off = torch.stack([gauss_off, anti_off], dim=2)
    return torch.diag_embed(diag) + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)


def _apply(features, lengths, scale, v, out, adjoint: bool) -> None:
    """out = a v (adjoint False) or aᵀ v, per image; v [B, *, C], out [B, rows, C] fp32."""
    batch, _, dim = features.shape
    cols = v.shape[-1]
    grid = (batch, triton.cdiv(out.shape[1], APPLY_BLOCK_R))
    _erank_apply_kernel[grid](
        features, *features.stride(), lengths, scale, v, v.stride(0), out, out.stride(0), out.shape[1], dim,
        ADJOINT=adjoint, C=cols, BLOCK_R=APPLY_BLOCK_R, BLOCK_K=APPLY_BLOCK_K, **NO_FMA,
    )


def _orthonormalize(y: torch.Tensor, lengths: torch.Tensor, cols: torch.Tensor, dim: int, rows: bool) -> None:
    _erank_orthonormalize_kernel[(y.shape[0],)](
        y, y.stride(0), lengths, cols, dim, ROWS=rows, C=y.shape[-1], ORTH_DROP=spec.FAST_ERANK_ORTH_DROP,
        BLOCK_R=ORTH_BLOCK_R,
    )


def _erank_fast_fwd(features: torch.Tensor, lengths: torch.Tensor, scale: torch.Tensor,
                    out_dtype=torch.float32) -> torch.Tensor:
    """features [B, N, D] (validated), lengths [B] int32 on the same device, scale [B] fp64 (their
    `_rescale_factors`) -> [B] `out_dtype` (float32, or float64 for `prune`, whose thresholds take
    the unrounded erank like the C++ op)."""
    batch, n_max, dim = features.shape
    device = features.device
    m_rows, a_rows = min(n_max, dim), max(n_max, dim)
    width = spec.fast_erank_block(m_rows)
    ritz = min(m_rows, width)  # the Rayleigh-Ritz (or exact Gram) size
    # some image may take the estimator (else every one has m <= FAST_ERANK_BLOCK: shapes decide)
    quadrature = m_rows > spec.FAST_ERANK_BLOCK
    m = torch.clamp(lengths, max=dim)
    f32 = dict(dtype=torch.float32, device=device)
    q = torch.zeros((batch, m_rows, width), **f32)
    u = torch.zeros((batch, a_rows, width), **f32)

    exact = m <= spec.FAST_ERANK_BLOCK
    if quadrature:
        # images on the exact path get no columns: their power steps are empty
        cols = torch.where(exact, 0, _block_columns(m)).to(torch.int32)
        grid = (batch, triton.cdiv(m_rows, APPLY_BLOCK_R))
        _erank_probes_kernel[grid](q, q.stride(0), lengths, cols, dim, m_rows,
                                   STREAM=STREAM_BLOCK, C=width, BLOCK_R=APPLY_BLOCK_R, **NO_FMA)
        for _ in range(spec.FAST_ERANK_POWER_STEPS):
            _apply(features, lengths, scale, q, u, adjoint=False)
            _orthonormalize(u, lengths, cols, dim, rows=True)
            _apply(features, lengths, scale, u, q, adjoint=True)
            _orthonormalize(q, lengths, cols, dim, rows=False)
    # the exact path: Q = I, so that B = a and Bᵀ B is the image's whole Gram (m <= width)
    i = torch.arange(m_rows, device=device)[:, None]
    identity = (i == torch.arange(width, device=device)[None, :]) & (i < m[:, None, None])
    q = torch.where(exact[:, None, None], identity.to(torch.float32), q)
    _apply(features, lengths, scale, q, u, adjoint=False)
    gram = torch.empty((batch, width, width), dtype=torch.float64, device=device)
    grid = (batch, width // GRAM_BLOCK_G, width // GRAM_BLOCK_G)
    _erank_gram_kernel[grid](u, u.stride(0), gram, lengths, dim, C=width, BLOCK_G=GRAM_BLOCK_G,
                             BLOCK_R=GRAM_BLOCK_R, **NO_FMA)
    theta = jacobi_eigh(gram[:, :ritz, :ritz], vectors=False)[0].contiguous()

    f64 = dict(dtype=torch.float64, device=device)
    beta = torch.zeros((batch, STEP_SLOTS, PROBE_WIDTH), **f64)
    nodes = first = rank = trace = theta  # pointer arguments the finish kernel ignores without quadrature
    if quadrature:
        rank = (q != 0).any(dim=1).sum(dim=1)
        tiles = triton.cdiv(n_max, RESIDUAL_BLOCK_N)
        partial = torch.empty((batch, tiles), **f64)
        _erank_residual_kernel[(batch, tiles)](
            features, *features.stride(), lengths, scale, q, q.stride(0), u, u.stride(0), partial, dim,
            C=width, BLOCK_N=RESIDUAL_BLOCK_N, BLOCK_D=RESIDUAL_BLOCK_D, num_warps=RESIDUAL_WARPS, **NO_FMA,
        )
        trace = partial.sum(dim=1)

        basis = torch.zeros((batch, STEP_SLOTS, m_rows, PROBE_WIDTH), **f32)
        av = torch.zeros((batch, a_rows, PROBE_WIDTH), **f32)
        w = torch.zeros((batch, m_rows, PROBE_WIDTH), **f32)
        alpha = torch.zeros((batch, STEP_SLOTS, PROBE_WIDTH), **f64)
        probes = torch.full((batch,), PROBES, dtype=torch.int32, device=device)
        grid = (batch, triton.cdiv(m_rows, APPLY_BLOCK_R))
        _erank_probes_kernel[grid](w, w.stride(0), lengths, probes, dim, m_rows,
                                   STREAM=STREAM_PROBES, C=PROBE_WIDTH, BLOCK_R=APPLY_BLOCK_R, **NO_FMA)
        lanczos = dict(C=width, P=PROBE_WIDTH, S=STEP_SLOTS, TINY=TINY, BLOCK_R=LANCZOS_BLOCK_R,
                       num_warps=LANCZOS_WARPS)
        _erank_lanczos_kernel[(batch,)](w, w.stride(0), basis, q, q.stride(0), alpha, beta, lengths, dim, m_rows,
                                        -1, FIRST=True, **lanczos, **NO_FMA)
        for step in range(STEPS):
            _apply(features, lengths, scale, basis[:, step], av, adjoint=False)
            _erank_alpha_kernel[(batch,)](av, av.stride(0), alpha, lengths, dim, step, S=STEP_SLOTS,
                                          P=PROBE_WIDTH, BLOCK_R=LANCZOS_BLOCK_R, **NO_FMA)
            if step == STEPS - 1:
                break
            _apply(features, lengths, scale, av, w, adjoint=True)
            _erank_lanczos_kernel[(batch,)](w, w.stride(0), basis, q, q.stride(0), alpha, beta, lengths, dim,
                                            m_rows, step, FIRST=False, **lanczos, **NO_FMA)
        tri = _tridiagonals(alpha[:, :STEPS], beta[:, :STEPS])
        values, vectors = jacobi_eigh(tri.reshape(-1, STEPS, STEPS), vectors=True)
        nodes = values.reshape(batch, -1).contiguous()
        first = vectors[:, 0, :].reshape(batch, -1).contiguous()

    out = torch.empty((batch,), dtype=out_dtype, device=device)
    _erank_finish_kernel[(batch,)](
        theta, nodes, first, beta, rank, trace, lengths, out, dim, ritz,
        KP=triton.next_power_of_2(ritz), NQ=PROBES * 2 * STEPS, PROBES=PROBES, S=STEP_SLOTS, P_PAD=PROBE_WIDTH,
        EXACT_UP_TO=spec.FAST_ERANK_BLOCK, HAS_QUADRATURE=quadrature, **NO_FMA,
    )
    return out

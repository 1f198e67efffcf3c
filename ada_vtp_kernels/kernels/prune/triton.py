"""The selection stage on the GPU: snapped cosine distances and the five selection kernels,
batched, with no host synchronisation (ops.prune_forward runs the statistics before it).

Math (docs/DESIGN.md; kernels/prune/reference.py is the specification).  Per image b with n_b valid
rows X (after `reference.rescale`'s power-of-two factor):

    norms      ‖x_i‖ in fp32;  G = X Xᵀ in fp32 (tensor cores for fp16/bf16 features: their
               products are exact in fp32; IEEE fp32 FMA otherwise)
    distances  d(i, j) = 1 − clamp(G_ij / (max(‖x_i‖, 1e-6) · max(‖x_j‖, 1e-6)), −1, 1),
               d < 1e-6 → 0;  d(i, i) = 1 for a row below the norm clamp, else 0
    selection  one program per image walks the greedy method over rows of d kept in global
               memory (L2-resident at LLaVA sizes: 576² fp32 = 1.3 MB per image):
               maxmin (divprune, mix, mix_adaptive), agile (then maxmin), dpp (fp64), vispruner
    output     the K selected tokens, sorted ascending

The C++ op and the reference round fp64 dot products once (`reference.cosine_distance`); these
kernels sum in fp32, so the distances agree to a few fp32 ulps, not bitwise: indices are
identical wherever no two candidates (or a distance and a threshold) are that close, which the
tests prove with tests/near_ties.py, and exactly identical on inputs whose cosines are exact in
fp32 (tests/conftest.py `exact_features`).  DESIGN.md's note on VisPruner's near-ties applies.

Launches per call: absmax, norms, distances, entropy, the erank's (fast: about 50, none of them
synchronising; exact: torch's fp64 `eigvalsh`, which synchronises on CUDA), two sorts and one
scatter in torch, the selection kernel, the final sort.  Every tie goes to the lowest token index:
`tl.argmax`/`tl.argmin` return the first of equal values, torch's stable sort keeps index order.
"""

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ... import spec
from ..erank.triton_fast import _load_rescaled, _rescale_factors
from ..triton_device import GPU_CONFIG, NO_FMA, check_device


class Tiles(NamedTuple):
    """Tile sizes of the launches."""

    norm_n: int
    norm_d: int
    dist: int  # the distance kernel's [dist, dist] tiles of the Gram
    dist_d: int
    first_pick: int  # elements of the [rows, N] tile of DivPrune's first pick
    vispruner: int  # VisPruner's [A, B] similarity tiles and rank-count chunks


GPU_TILES = Tiles(norm_n=32, norm_d=128, dist=64, dist_d=32, first_pick=1 << 13, vispruner=64)
# The interpreter pays per operation, not per element: large tiles (tests also run GPU_TILES)
INTERPRETER_TILES = Tiles(norm_n=128, norm_d=256, dist=128, dist_d=128, first_pick=1 << 16, vispruner=512)
TILES = GPU_TILES if GPU_CONFIG else INTERPRETER_TILES
# 8 warps: ptxas for sm_90 fits the 64 x 64 distance tile (fp32 IEEE dot, or bf16) without spills
DIST_WARPS = 8
SELECT_WARPS = 8
# the largest int32: "no rank" for tokens a selection loop may not take
NO_RANK = tl.constexpr(2**31 - 1)

# spec.Selection.MAXMIN / AGILE -> the diverse kernel's MODE
MODE_MAXMIN, MODE_AGILE = 0, 1


# --------------------------------------------------------------------------------------------
# kernels


@triton.jit
def _row_norms_kernel(
    x_ptr, stride_xb, stride_xn, stride_xd,  # features [B, N, D]
    lengths_ptr,  # [B] int32
    scale_ptr,  # [B] fp64: reference.rescale's factor
    norms_ptr,  # [B, N] fp32 out: ‖x_i‖ of the rescaled rows (0 after the length)
    N, D,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    i = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n = tl.load(lengths_ptr + b)
    scale = tl.load(scale_ptr + b)
    acc = tl.zeros((BLOCK_N,), tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        x = _load_rescaled(x_ptr + b * stride_xb + i[:, None] * stride_xn + d[None, :] * stride_xd,
                           (i < n)[:, None] & (d < D)[None, :], scale)
        acc += tl.sum(x * x, axis=1)
    tl.store(norms_ptr + b * N + i, tl.sqrt_rn(acc), mask=i < N)


@triton.jit
def _distance_kernel(
    x_ptr, stride_xb, stride_xn, stride_xd,  # features [B, N, D]
    lengths_ptr,  # [B] int32
    scale_ptr,  # [B] fp64
    norms_ptr,  # [B, N] fp32
    dist_ptr,  # [B, N, N] fp32 out: snapped cosine distances
    N, D,
    NORM_EPS: tl.constexpr,
    SNAP: tl.constexpr,
    NATIVE_DOT: tl.constexpr,  # fp16/bf16 features on the GPU: tensor cores, exact products
    BLOCK_I: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    j = tl.program_id(2) * BLOCK_J + tl.arange(0, BLOCK_J)
    n = tl.load(lengths_ptr + b)
    scale = tl.load(scale_ptr + b)
    x_img = x_ptr + b * stride_xb
    acc = tl.zeros((BLOCK_I, BLOCK_J), tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        dmask = (d < D)[None, :]
        xi = _load_rescaled(x_img + i[:, None] * stride_xn + d[None, :] * stride_xd, (i < n)[:, None] & dmask, scale)
        xj = _load_rescaled(x_img + j[:, None] * stride_xn + d[None, :] * stride_xd, (j < n)[:, None] & dmask, scale)
        if NATIVE_DOT:
            # a power-of-two rescale of fp16/bf16 values is exact in their own format
            elem = x_ptr.dtype.element_ty
            acc = tl.dot(xi.to(elem), tl.trans(xj.to(elem)), acc)
        else:
            acc = tl.dot(xi, tl.trans(xj), acc, input_precision="ieee")
    ni = tl.load(norms_ptr + b * N + i, mask=i < N, other=0.0)
    nj = tl.load(norms_ptr + b * N + j, mask=j < N, other=0.0)
    denom = tl.maximum(ni, NORM_EPS)[:, None] * tl.maximum(nj, NORM_EPS)[None, :]
    sim = tl.minimum(tl.maximum(tl.div_rn(acc, denom), -1.0), 1.0)
    dist = 1.0 - sim
    dist = tl.where(dist < SNAP, 0.0, dist)
    # the self-distance is set, not computed (reference.cosine_distance)
    self_dist = tl.where(ni < NORM_EPS, 1.0, 0.0)
    dist = tl.where(i[:, None] == j[None, :], self_dist[:, None], dist)
    tl.store(dist_ptr + b * N * N + i[:, None] * N + j[None, :], dist, mask=(i < N)[:, None] & (j < N)[None, :])


@triton.jit
def _maxmin_first_pick(dist_img, N, n, BLOCK_N: tl.constexpr, BLOCK_I: tl.constexpr):
    """argmax_i min_{j != i} d(i, j) over the n valid tokens, the lowest i among equals (0 when n = 1)."""
    cols = tl.arange(0, BLOCK_N)
    best = -float("inf")
    best_i = 0
    for i0 in range(0, n, BLOCK_I):
        rows = i0 + tl.arange(0, BLOCK_I)
        tile = tl.load(dist_img + rows[:, None] * N + cols[None, :],
                       mask=(rows < n)[:, None] & (cols < n)[None, :], other=float("inf"))
        tile = tl.where(rows[:, None] == cols[None, :], float("inf"), tile)
        nearest = tl.where(rows < n, tl.min(tile, axis=1), -float("inf"))
        tile_best = tl.max(nearest, axis=0)
        better = tile_best > best
        best_i = tl.where(better, i0 + tl.argmax(nearest, axis=0), best_i)
        best = tl.where(better, tile_best, best)
    return best_i


@triton.jit
def _select_diverse_kernel(
    dist_ptr,  # [B, N, N] fp32 (unread when every image takes K tokens by rank)
    rank_ptr,  # [B, N] int32: position of each token in the descending score order
    order_ptr,  # [B, N] int64: the descending score order
    count_ptr,  # [B] int32: MAXMIN: tokens taken by rank first (0: DivPrune's first pick)
    complexity_ptr,  # [B] fp64: AGILE: c = erank / erank_ref or entropy / entropy_ref
    params_ptr,  # [2] fp64: AGILE: tau_scale, tau_max
    lengths_ptr,  # [B] int32
    out_ptr,  # [B, K] int64 out: the selected tokens, in selection order
    N, K,
    MODE: tl.constexpr,  # MODE_MAXMIN or MODE_AGILE
    BLOCK_N: tl.constexpr,
    BLOCK_I: tl.constexpr,
):
    """divprune / mix / mix_adaptive (MAXMIN) and agile (AGILE): a first phase along the score
    order, then max-min diversity continued from its tokens up to K (reference.select_maxmin)."""
    b = tl.program_id(0).to(tl.int64)
    n = tl.load(lengths_ptr + b)
    offs = tl.arange(0, BLOCK_N)
    valid = offs < n
    dist_img = dist_ptr + b * N * N
    out = out_ptr + b * K
    taken = offs < 0
    min_dist = tl.full((BLOCK_N,), float("inf"), tl.float32)
    count = 0
    if MODE == 0:
        count = tl.load(count_ptr + b)
        for t in range(0, count):
            i = tl.load(order_ptr + b * N + t)
            tl.store(out + t, i)
            taken = taken | (offs == i)
            if count < K:
                row = tl.load(dist_img + i * N + offs, mask=valid, other=float("inf"))
                min_dist = tl.minimum(min_dist, row)
        if count == 0:
            first = _maxmin_first_pick(dist_img, N, n, BLOCK_N, BLOCK_I)
            tl.store(out, first.to(tl.int64))
            taken = offs == first
            min_dist = tl.load(dist_img + first * N + offs, mask=valid, other=float("inf"))
            count = count + 1
    else:
        # visit the tokens by rank; the next one selected is the unsuppressed token of lowest rank
        # above the last visited (every token below it was selected or suppressed already)
        c = tl.load(complexity_ptr + b)
        tau_scale = tl.load(params_ptr)
        tau_max = tl.load(params_ptr + 1)
        rank = tl.load(rank_ptr + b * N + offs, mask=valid, other=NO_RANK)
        suppressed = ~valid
        candidates = tl.where(suppressed, NO_RANK, rank)
        next_rank = tl.min(candidates, axis=0)
        while (count < K) & (next_rank < NO_RANK):
            i = tl.argmin(candidates, axis=0)
            tl.store(out + count, i.to(tl.int64))
            count += 1
            taken = taken | (offs == i)
            row = tl.load(dist_img + i * N + offs, mask=valid, other=float("inf"))
            min_dist = tl.minimum(min_dist, row)
            tau = tl.minimum((next_rank + 1).to(tl.float64) * c * tau_scale, tau_max)
            suppressed = suppressed | (row.to(tl.float64) < tau)
            candidates = tl.where(suppressed | (rank <= next_rank), NO_RANK, rank)
            next_rank = tl.min(candidates, axis=0)
    while count < K:
        pick = tl.argmax(tl.where(taken | ~valid, -float("inf"), min_dist), axis=0)
        tl.store(out + count, pick.to(tl.int64))
        count += 1
        taken = taken | (offs == pick)
        row = tl.load(dist_img + pick * N + offs, mask=valid, other=float("inf"))
        min_dist = tl.minimum(min_dist, row)


@triton.jit
def _select_dpp_kernel(
    dist_ptr,  # [B, N, N] fp32
    relevance_ptr,  # [B, N] fp32 contiguous
    relevance_rank_ptr,  # [B, N] int32: position in the descending relevance order
    params_ptr,  # [1] fp64: DPP_STOP
    c_ptr,  # [B, K, BLOCK_N] fp64 scratch: the Cholesky rows c_t
    lengths_ptr,  # [B] int32
    out_ptr,  # [B, K] int64 out
    N, K,
    BLOCK_N: tl.constexpr,
):
    """CDPruner's fast greedy MAP in fp64, operation for operation as reference.select_dpp (every
    product and difference rounds separately: launched with NO_FMA)."""
    b = tl.program_id(0).to(tl.int64)
    n = tl.load(lengths_ptr + b)
    offs = tl.arange(0, BLOCK_N)
    valid = offs < n
    dist_img = dist_ptr + b * N * N
    c_img = c_ptr + b * K * BLOCK_N
    out = out_ptr + b * K
    r = tl.load(relevance_ptr + b * N + offs, mask=valid, other=0.0).to(tl.float64)
    self_sim = (1.0 - tl.load(dist_img + offs * (N + 1), mask=valid, other=1.0)).to(tl.float64)
    d2 = (r * self_sim) * r
    stop = tl.load(params_ptr) * tl.max(tl.where(valid, d2, -float("inf")), axis=0)
    taken = offs < 0
    count = 0
    best = tl.max(tl.where(valid, d2, -float("inf")), axis=0)
    while (count < K) & (best > stop):
        j = tl.argmax(tl.where(taken | ~valid, -float("inf"), d2), axis=0)
        row = tl.load(dist_img + j * N + offs, mask=valid, other=1.0)
        r_j = tl.load(relevance_ptr + b * N + j).to(tl.float64)
        e = (r_j * (1.0 - row).to(tl.float64)) * r
        for t in range(0, count):
            c_t = tl.load(c_img + t * BLOCK_N + offs)
            e = e - tl.load(c_img + t * BLOCK_N + j) * c_t
        c_new = e / tl.sqrt(best)  # fp64: IEEE-rounded
        tl.store(c_img + count * BLOCK_N + offs, c_new)
        tl.debug_barrier()  # the next steps read single entries of this row
        d2 = d2 - c_new * c_new
        tl.store(out + count, j.to(tl.int64))
        count += 1
        taken = taken | (offs == j)
        best = tl.max(tl.where(taken | ~valid, -float("inf"), d2), axis=0)
    # the kernel's rank is spent: the rest are the unselected tokens of highest relevance
    relevance_rank = tl.load(relevance_rank_ptr + b * N + offs, mask=valid, other=NO_RANK)
    while count < K:
        i = tl.argmin(tl.where(taken, NO_RANK, relevance_rank), axis=0)
        tl.store(out + count, i.to(tl.int64))
        count += 1
        taken = taken | (offs == i)


@triton.jit
def _ordered_key(s, q, BLOCK_N: tl.constexpr):
    """int64 keys whose descending order is (s descending, q ascending), unique for q < BLOCK_N:
    s's fp32 bits made monotonic as a signed integer, above BLOCK_N - 1 - q."""
    s = tl.where(s == 0.0, 0.0, s)  # -0.0 and +0.0 are equal similarities
    bits = s.to(tl.int32, bitcast=True)
    bits = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return (bits.to(tl.int64) << 32) | (BLOCK_N - 1 - q).to(tl.int64)


@triton.jit
def _select_vispruner_kernel(
    dist_ptr,  # [B, N, N] fp32
    order_ptr,  # [B, N] int64: the visit order
    count_ptr,  # [B] int32: tokens taken from the order first, floor(K * important_ratio)
    rest_ptr,  # [B, 2, N] int32 scratch: the remaining tokens, two buffers used in turn
    key_ptr,  # [B, N] int64 scratch: the sort keys of A
    lengths_ptr,  # [B] int32
    out_ptr,  # [B, K] int64 out
    N, K,
    ROUND: tl.constexpr,  # at most this many dropped per round (8)
    BLOCK_N: tl.constexpr,  # power of two >= N
    BLOCK_A: tl.constexpr,  # members of A per tile
    BLOCK_B: tl.constexpr,  # members of B per tile
):
    """VisPruner (reference.select_vispruner): the first K_IMP tokens of the order, then the rest,
    in order, deduplicated in rounds: A = R[0::2], B = R[1::2], s_a = max_b S(a, b); the r members
    of A with the largest s_a are dropped; R = (the rest of A by descending s_a, stable) + B.
    The stable order is a rank count over unique keys (s_a, then position): each a lands at the
    number of keys above its own."""
    b = tl.program_id(0).to(tl.int64)
    n = tl.load(lengths_ptr + b)
    dist_img = dist_ptr + b * N * N
    rest = rest_ptr + b * 2 * N
    key_img = key_ptr + b * N
    out = out_ptr + b * K
    K_IMP = tl.load(count_ptr + b)
    target = K - K_IMP
    offs = tl.arange(0, BLOCK_N)
    important = tl.load(order_ptr + b * N + offs, mask=offs < K_IMP)
    tl.store(out + offs, important, mask=offs < K_IMP)
    m = n - K_IMP
    tl.store(rest + offs, tl.load(order_ptr + b * N + K_IMP + offs, mask=offs < m).to(tl.int32), mask=offs < m)
    tl.debug_barrier()
    src = n * 0  # the buffer holding the current list
    while m > target:
        na = (m + 1) // 2
        nb = m // 2
        drop = tl.minimum(tl.minimum(m - target, ROUND), na)
        src_rest = rest + src * N
        dst_rest = rest + (1 - src) * N
        for a0 in range(0, na, BLOCK_A):
            q = a0 + tl.arange(0, BLOCK_A)
            a_tok = tl.load(src_rest + 2 * q, mask=q < na, other=0).to(tl.int64)
            s_a = tl.full((BLOCK_A,), -float("inf"), tl.float32)
            for q0 in range(0, nb, BLOCK_B):
                qb = q0 + tl.arange(0, BLOCK_B)
                b_tok = tl.load(src_rest + 2 * qb + 1, mask=qb < nb, other=0)
                pair = (q < na)[:, None] & (qb < nb)[None, :]
                d = tl.load(dist_img + a_tok[:, None] * N + b_tok[None, :], mask=pair, other=0.0)
                s_a = tl.maximum(s_a, tl.max(tl.where(pair, 1.0 - d, -float("inf")), axis=1))
            tl.store(key_img + q, _ordered_key(s_a, q, BLOCK_N), mask=q < na)
        tl.debug_barrier()  # the rank count reads every key
        for a0 in range(0, na, BLOCK_A):
            q = a0 + tl.arange(0, BLOCK_A)
            key = tl.load(key_img + q, mask=q < na, other=0)
            position = tl.zeros((BLOCK_A,), tl.int32)
            for c0 in range(0, na, BLOCK_B):
                qc = c0 + tl.arange(0, BLOCK_B)
                other = tl.load(key_img + qc, mask=qc < na, other=0)
                larger = (other[None, :] > key[:, None]) & (qc < na)[None, :]
                position += tl.sum(larger.to(tl.int32), axis=1)
            kept = (q < na) & (position >= drop)
            tl.store(dst_rest + position - drop, tl.load(src_rest + 2 * q, mask=kept), mask=kept)
        for q0 in range(0, nb, BLOCK_N):
            qb = q0 + offs
            tl.store(dst_rest + na - drop + qb, tl.load(src_rest + 2 * qb + 1, mask=qb < nb), mask=qb < nb)
        tl.debug_barrier()  # the next round reads the new list in another layout
        m = m - drop
        src = 1 - src
    tl.store(out + K_IMP + offs, tl.load(rest + src * N + offs, mask=offs < target).to(tl.int64), mask=offs < target)


# --------------------------------------------------------------------------------------------
# launchers


def _device_scalars(device: torch.device, *values: float) -> torch.Tensor:
    """[len(values)] fp64 on `device`, by fill kernels: a Python float reaches a Triton kernel as
    fp32, and copying a host list would break a CUDA graph's capture."""
    return torch.stack([torch.full((), v, dtype=torch.float64, device=device) for v in values])


def _rank(order: torch.Tensor) -> torch.Tensor:
    """[B, N] int32: each token's position in `order` (the inverse permutation)."""
    batch, n = order.shape
    positions = torch.arange(n, device=order.device).expand(batch, n)
    return torch.empty_like(order).scatter_(1, order, positions).to(torch.int32)


def _distances(features: torch.Tensor, lengths: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """[B, N, N] fp32 snapped cosine distances of each image's rescaled valid rows."""
    batch, n, dim = features.shape
    norms = torch.empty((batch, n), dtype=torch.float32, device=features.device)
    _row_norms_kernel[(batch, triton.cdiv(n, TILES.norm_n))](
        features, *features.stride(), lengths, scale, norms, n, dim, BLOCK_N=TILES.norm_n, BLOCK_D=TILES.norm_d,
        **NO_FMA,
    )
    dist = torch.empty((batch, n, n), dtype=torch.float32, device=features.device)
    grid = (batch, triton.cdiv(n, TILES.dist), triton.cdiv(n, TILES.dist))
    _distance_kernel[grid](
        features, *features.stride(), lengths, scale, norms, dist, n, dim,
        NORM_EPS=spec.NORM_EPS, SNAP=spec.DISTANCE_SNAP,
        NATIVE_DOT=GPU_CONFIG and features.dtype != torch.float32,
        BLOCK_I=TILES.dist, BLOCK_J=TILES.dist, BLOCK_D=TILES.dist_d, num_warps=DIST_WARPS, **NO_FMA,
    )
    return dist


def select(features: torch.Tensor, order: torch.Tensor, lengths: torch.Tensor, attention_count: torch.Tensor,
           complexity: torch.Tensor, relevance: torch.Tensor | None, keep: int, selection: spec.Selection,
           tau_scale: float, tau_max: float) -> torch.Tensor:
    """[B, K] int64 ascending: the selection of every image (ops.Stages.select), no host
    synchronisation.

    Args:
        features: [B, N, D] float32/float16/bfloat16, validated, any strides; on a CUDA device, or
            the CPU under TRITON_INTERPRET=1.
        order: [B, N] int64, the visit order (`spec.visit_order`).
        lengths: [B] int64 in [K, N].
        attention_count: [B] int64, tokens taken from the order first (MAXMIN, VISPRUNER).
        complexity: [B] fp64, agile's c.
        relevance: [B, N] or None, DPP's r (all ones when None).
        keep: K.
        selection: the method's `spec.Selection`.
        tau_scale, tau_max: agile's radius.
    """
    check_device("features", features, __name__)
    if selection == spec.Selection.TOPK:
        return torch.sort(order[:, :keep], dim=1).values
    batch, n, _ = features.shape
    device = features.device
    lengths = lengths.to(torch.int32)
    dist = _distances(features, lengths, _rescale_factors(features, lengths))
    selected = torch.empty((batch, keep), dtype=torch.int64, device=device)
    block_n = triton.next_power_of_2(n)
    if selection == spec.Selection.DPP:
        r = torch.ones((batch, n), dtype=torch.float32, device=device) if relevance is None \
            else relevance.to(torch.float32).contiguous()
        cholesky = torch.empty((batch, keep, block_n), dtype=torch.float64, device=device)
        _select_dpp_kernel[(batch,)](
            dist, r, _rank(spec.score_order(r, lengths)), _device_scalars(device, spec.DPP_STOP), cholesky, lengths,
            selected, n, keep, BLOCK_N=block_n, num_warps=SELECT_WARPS, **NO_FMA,
        )
    elif selection == spec.Selection.VISPRUNER:
        rest = torch.empty((batch, 2, n), dtype=torch.int32, device=device)
        keys = torch.empty((batch, n), dtype=torch.int64, device=device)
        _select_vispruner_kernel[(batch,)](
            dist, order, attention_count.to(torch.int32), rest, keys, lengths, selected, n, keep,
            ROUND=spec.VISPRUNER_ROUND, BLOCK_N=block_n, BLOCK_A=min(TILES.vispruner, block_n),
            BLOCK_B=min(TILES.vispruner, block_n), num_warps=SELECT_WARPS, **NO_FMA,
        )
    else:
        _select_diverse_kernel[(batch,)](
            dist, _rank(order), order, attention_count.to(torch.int32), complexity.to(torch.float64),
            _device_scalars(device, tau_scale, tau_max), lengths, selected, n, keep,
            MODE=MODE_AGILE if selection == spec.Selection.AGILE else MODE_MAXMIN, BLOCK_N=block_n,
            BLOCK_I=max(1, TILES.first_pick // block_n), num_warps=SELECT_WARPS, **NO_FMA,
        )
    return torch.sort(selected, dim=1).values

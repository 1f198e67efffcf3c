"""Attention entropy as a Triton kernel: one program per image, two passes over its scores.

Math (reference.attention_entropy_one): with s the n_b valid scores of image b, S = sum s and
p = s / S, H = -sum p ln p (0 ln 0 = 0), in nats; all-zero scores count as uniform, H = ln n_b.
Sums and logarithms in fp64, like the reference and the C++ kernel; the result is rounded once to
fp32.  The summation order differs from theirs (tiles of BLOCK_N, then a tree), which moves H by
about 1e-15 relative.
"""

import torch
import triton
import triton.language as tl

from ..triton_device import NO_FMA, check_device

BLOCK_N = 1024  # LLaVA-1.5's 576 scores in one tile, LLaVA-NeXT's 2880 in three


@triton.jit
def _attention_entropy_kernel(
    s_ptr, stride_sb, stride_sn,  # scores [B, N]
    lengths_ptr,  # [B] int32
    out_ptr,  # [B] fp32 or fp64
    BLOCK_N: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    n = tl.load(lengths_ptr + b)
    row = s_ptr + b * stride_sb
    total = tl.zeros((BLOCK_N,), tl.float64)
    for start in range(0, n, BLOCK_N):
        i = start + tl.arange(0, BLOCK_N)
        total += tl.load(row + i * stride_sn, mask=i < n, other=0.0).to(tl.float64)
    s_total = tl.sum(total, axis=0)
    # all-zero scores: uniform (a divisor of 1 keeps the unused branch finite).  The reciprocal of
    # a total below 2**-1000 (subnormal float64 scores) would overflow to inf: such rows are scaled
    # by 2**100 first, exactly (an fp64 division in the loop costs the kernel register spills)
    boost = tl.where(s_total < 2.0**-1000, 2.0**100, 1.0)
    inv = 1.0 / tl.where(s_total > 0, s_total * boost, 1.0)
    acc = tl.zeros((BLOCK_N,), tl.float64)
    for start in range(0, n, BLOCK_N):
        i = start + tl.arange(0, BLOCK_N)
        p = tl.load(row + i * stride_sn, mask=i < n, other=0.0).to(tl.float64) * boost * inv
        acc += tl.where(p > 0, p * tl.log(tl.where(p > 0, p, 1.0)), 0.0)
    entropy = tl.where(s_total > 0, -tl.sum(acc, axis=0), tl.log(n.to(tl.float64)))
    tl.store(out_ptr + b, entropy.to(out_ptr.dtype.element_ty))


def attention_entropy(scores: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[B] fp64 entropy (nats) of each image's normalised valid scores; all-zero scores count as
    uniform (ln n).

    Args:
        scores: [B, N] float16/bfloat16/float32/float64, validated (finite, >= 0 on the valid
            tokens), any strides; on a CUDA device, or the CPU under TRITON_INTERPRET=1.
        lengths: [B] int64 in [1, N] on the same device; scores after a length are never read.
    """
    check_device("scores", scores, __name__)
    lengths = lengths.to(torch.int32)
    out = torch.empty(scores.shape[0], dtype=torch.float64, device=scores.device)
    _attention_entropy_kernel[(scores.shape[0],)](
        scores, scores.stride(0), scores.stride(1), lengths, out, BLOCK_N=BLOCK_N, **NO_FMA,
    )
    return out

"""Attention entropy, the specification in code (docs/DESIGN.md, "Statistics").

H = -sum p ln p with p = s / sum s over an image's valid scores, in fp64, nats; all-zero scores
count as uniform (H = ln n).  One image at a time; the inputs are validated by the caller
(`ada_vtp_kernels.validation`).
"""

import math

import torch


def _lengths(lengths: torch.Tensor | None, batch: int, n: int) -> list[int]:
    return [n] * batch if lengths is None else [int(v) for v in lengths.tolist()]


def attention_entropy_one(scores: torch.Tensor) -> float:
    """Entropy in nats of one image's valid scores [n]; all-zero scores count as uniform."""
    s = scores.to(torch.float64)
    total = s.sum()
    if total == 0:
        return math.log(s.numel())
    p = s / total
    return float(-torch.xlogy(p, p).sum())


def attention_entropy_ref(scores: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Attention entropy H = -sum p ln p, p = s / sum s over the valid tokens.

    Args:
        scores: [B, N] non-negative.
        lengths: [B] int, optional.
    Returns:
        [B] float32, nats.
    """
    batch, n = scores.shape
    lengths = _lengths(lengths, batch, n)
    out = [attention_entropy_one(scores[b, : lengths[b]]) for b in range(batch)]
    return torch.tensor(out, dtype=torch.float32, device=scores.device)



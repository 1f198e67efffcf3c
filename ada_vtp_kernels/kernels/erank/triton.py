"""The erank stage on the GPU: "fast" (triton_fast.py, no host synchronisation) or "exact".

Math (kernels/erank/reference.py): erank = exp(-sum q ln q), q = sigma / sum sigma over each
image's valid rows after the power-of-two rescale.  "exact": torch's fp64 eigvalsh of the smaller
Gram of every zero-padded image at once (zero rows add only zero eigenvalues); it synchronises
with the host on CUDA (cuSOLVER's error check).  "fast": the SVD-free estimator.
"""

import torch

from ..triton_device import check_device
from .triton_fast import _erank_fast_fwd, _rescale_factors


def _erank_exact(features: torch.Tensor, lengths: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """[B] fp64 exact erank (reference.erank_one) of every image at once."""
    batch, n, dim = features.shape
    valid = torch.arange(n, device=features.device)[None, :, None] < lengths[:, None, None]
    x = (features.to(torch.float64) * scale[:, None, None]).to(torch.float32).to(torch.float64)
    x = torch.where(valid, x, 0.0)
    gram = x @ x.transpose(1, 2) if n <= dim else x.transpose(1, 2) @ x
    sigma = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt()
    total = sigma.sum(dim=1, keepdim=True)
    q = sigma / torch.where(total > 0, total, 1.0)
    return torch.where(total[:, 0] > 0, torch.exp(-torch.xlogy(q, q).sum(dim=1)), 0.0)


def erank(features: torch.Tensor, lengths: torch.Tensor, method: str) -> torch.Tensor:
    """[B] fp64 erank of validated features.

    Args:
        features: [B, N, D] float32/float16/bfloat16, any strides, finite on the valid rows; on a
            CUDA device, or the CPU under TRITON_INTERPRET=1.
        lengths: [B] int64 in [1, N] on the same device.
        method: "fast" or "exact".
    """
    check_device("features", features, __name__)
    lengths = lengths.to(torch.int32)
    scale = _rescale_factors(features, lengths)
    if method == "fast":
        return _erank_fast_fwd(features, lengths, scale, out_dtype=torch.float64)
    return _erank_exact(features, lengths, scale)

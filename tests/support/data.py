"""Input generators shared by the tests (conftest exposes them as fixtures too)."""

import torch


def exact_features(batch: int, n: int, dim: int, dtype=torch.float32, *, zero_rows: float = 0.05,
                   duplicate_rows: float = 0.05, generator: torch.Generator | None = None) -> torch.Tensor:
    """[B, N, D] features whose cosines are exact in fp32.

    Each row has entries in {-1, 0, +1} and exactly 4**m non-zeros, m random in {0, 1, 2, 3}
    with 4**m <= the support size.  The non-zeros of an image are drawn from a random pool of
    min(D, 96) channels so that rows overlap often (otherwise, at D = 4096, almost every cosine
    would be 0).  About `zero_rows` of the rows are all zero and about `duplicate_rows` copy an
    earlier row of the same image.
    """
    g = generator
    out = torch.zeros(batch, n, dim, dtype=torch.float32)
    pool_size = min(dim, 96)
    max_m = max(m for m in range(4) if 4 ** m <= pool_size)
    for b in range(batch):
        pool = torch.randperm(dim, generator=g)[:pool_size]
        ms = torch.randint(0, max_m + 1, (n,), generator=g)
        for i in range(n):
            nnz = 4 ** int(ms[i])
            cols = pool[torch.randperm(pool_size, generator=g)[:nnz]]
            signs = torch.randint(0, 2, (nnz,), generator=g).float() * 2 - 1
            out[b, i, cols] = signs
        if n > 2:
            kinds = torch.rand(n, generator=g)
            for i in range(1, n):
                if kinds[i] < zero_rows:
                    out[b, i] = 0
                elif kinds[i] < zero_rows + duplicate_rows:
                    out[b, i] = out[b, int(torch.randint(0, i, (1,), generator=g))]
    return out.to(dtype)


def distinct_scores(batch: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """[B, N] float32 scores from torch.rand, positive and distinct within each row."""
    s = torch.rand(batch, n, generator=generator) + 1e-3
    for b in range(batch):
        while torch.unique(s[b]).numel() != n:
            s[b] = torch.rand(n, generator=generator) + 1e-3
    return s


def ragged_lengths(batch: int, n: int, minimum: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """[B] int64 lengths in [minimum, n]: the first row full, the last row exactly `minimum`."""
    lengths = torch.randint(minimum, n + 1, (batch,), generator=generator)
    lengths[0] = n
    if batch > 1:
        lengths[-1] = minimum
    return lengths


def lapack_eigh(a: torch.Tensor, vectors: bool):
    """`kernels.erank.triton_eigh.jacobi_eigh`'s signature and results, from torch.linalg.eigh."""
    values, vecs = torch.linalg.eigh(a)
    return values, vecs if vectors else None

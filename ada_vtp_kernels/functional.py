"""The documented Python API: prune, erank, attention_entropy, gather.

Each function takes ``backend=``:

- ``"auto"`` (default): the registered op ``torch.ops.ada_vtp.*``, dispatched on the tensors'
  device (the C++ kernels on CPU, the Triton kernels on CUDA);
- ``"cpu"``: the C++ CPU kernels, CPU tensors only;
- ``"reference"``: the pure-PyTorch specification in `reference.py` (slow, any device);
- ``"triton"``: the Triton launchers (`ada_vtp_kernels.triton`), called directly: CUDA tensors, or
  CPU tensors with ``TRITON_INTERPRET=1`` set before triton's first import (the interpreter runs the
  GPU code path on the CPU, about 1000x slower, for checking it without a GPU).

The reference and the C++ op compute the same cosines (fp64 dot products rounded once to fp32)
and return identical indices; the Triton kernels sum in fp32, so their indices equal those except
where a near-tie decides (docs/DESIGN.md, reproducibility contract).  On one machine every
backend gives the same bits whatever the thread count or the rest of the batch.
"""

import importlib

import torch

from . import defaults, ops, reference
from .reference import PruneResult

BACKENDS = ("auto", "cpu", "reference", "triton")


def _check_backend(backend: str, *tensors) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(map(repr, BACKENDS))}")
    if backend in ("auto", "cpu"):
        ops.require_extension()
    if backend == "cpu":
        for t in tensors:
            if isinstance(t, torch.Tensor) and t.device.type != "cpu":
                raise ValueError(f"backend='cpu' needs CPU tensors, got a tensor on {t.device}")


def _triton_module(name: str):
    """ada_vtp_kernels.triton.<name>, imported on first use (importing it decides, once, whether the
    kernels are interpreted: TRITON_INTERPRET)."""
    try:
        return importlib.import_module(f".triton.{name}", __package__)
    except ImportError as error:
        raise ImportError(f"backend='triton' needs the triton package (pip install triton==3.9.0): {error}") from error


def prune(
    features: torch.Tensor,
    scores: torch.Tensor,
    keep: int,
    method: str = "agile",
    *,
    lengths: torch.Tensor | None = None,
    relevance: torch.Tensor | None = None,
    important_ratio: float = defaults.IMPORTANT_RATIO,
    attention_ratio: float = defaults.MIX_ATTENTION_RATIO,
    gain: float = defaults.MIX_GAIN,
    erank_ref: float = defaults.ERANK_REF,
    entropy_ref: float = defaults.ENTROPY_REF,
    tau_max: float = defaults.TAU_MAX,
    tau_scale: float = defaults.TAU_SCALE,
    complexity: str = defaults.COMPLEXITY,
    erank_method: str = defaults.ERANK_METHOD,
    compute_erank: bool = False,
    backend: str = "auto",
) -> PruneResult:
    r"""Select ``keep`` of the N visual tokens of each image, batched.

    Methods (docs/DESIGN.md has the exact rules; d is the snapped cosine distance):

    - ``"attention"`` (FasterVLM): the K highest scores.
    - ``"divprune"`` (DivPrune): max-min diversity; first the token whose nearest neighbour is
      farthest, then repeatedly the token farthest from the selected set.
    - ``"dpp"`` (CDPruner): greedy MAP of a DPP with kernel diag(r)·S·diag(r), r = ``relevance``.
    - ``"vispruner"`` (VisPruner): ``floor(K·important_ratio)`` highest scores, the rest
      deduplicated by rounds of bipartite matching (drop the 8 most similar per round).
    - ``"mix"``: ``round(K·attention_ratio)`` highest scores, then max-min diversity from them.
    - ``"mix_adaptive"``: ``mix`` with attention_ratio replaced by
      ``clamp(attention_ratio + gain·(1 − erank/erank_ref), 0, 1)``: low-erank (simple) images
      take more attention tokens.
    - ``"agile"`` (AgilePruner): visit tokens by descending score; a token not yet suppressed
      is selected and suppresses every token within cosine distance
      ``τ_r = min(r·c·tau_scale, tau_max)``, r its rank, c = erank/erank_ref (or
      entropy/entropy_ref with ``complexity="entropy"``); when the order runs out before K,
      max-min diversity continues from the selected set.

    Args:
        features: [B, N, D] float32/float16/bfloat16, any strides: the tokens compared for
            similarity and erank (vision-encoder layer or projector output).
        scores: [B, N] non-negative, finite: token importance, normally the [CLS] attention to
            each patch averaged over heads, CLS column removed.
        keep: K, 1 <= K <= every row's length.
        method: see above.
        lengths: [B] int, optional: valid tokens per row; positions >= length are padding,
            never selected and excluded from the statistics.
        relevance: [B, N] non-negative, optional, ``"dpp"`` only: per-token relevance r
            (default all ones).
        important_ratio: ``"vispruner"``: share of K taken by score, in [0, 1]. Default 0.5.
        attention_ratio: ``"mix"``: share of K taken by score; ``"mix_adaptive"``: that share
            at erank == erank_ref. In [0, 1]. Default 0.5.
        gain: ``"mix_adaptive"``: how strongly the erank moves the share. Default 0.5.
        erank_ref: erank of a typical image of the encoder (``"agile"``, ``"mix_adaptive"``).
            Default 90.0, measured on DINOv2 ViT-S/14 (see `ada_vtp_kernels.defaults`).
        entropy_ref: attention entropy of a typical image (``complexity="entropy"``). Default 5.75.
        tau_max: ``"agile"``: largest suppression radius in cosine distance, >= 0. Default 0.2.
        tau_scale: ``"agile"``: radius growth per rank at c = 1. Default 0.01.
        complexity: ``"agile"``: ``"erank"`` or ``"entropy"``.
        erank_method: ``"fast"`` (default: the SVD-free estimator of
            `reference.erank_fast_one`, about 0.5 % median error on real features, at the cost of
            about one Gram matrix) or ``"exact"`` (fp64 symmetric eigensolver on the smaller Gram).
        compute_erank: also compute the erank for methods that do not need it.
        backend: ``"auto"``, ``"cpu"``, ``"reference"`` or ``"triton"`` (module docstring).

    Returns:
        PruneResult(indices [B, K] int64 ascending, erank [B] float32 or None where the
        method needs none and ``compute_erank`` is False, entropy [B] float32 in nats).
        The op ``torch.ops.ada_vtp.prune`` returns the erank as a [0] tensor in that case.

    Examples::

        >>> import torch, ada_vtp_kernels as vtp
        >>> feats, attn = torch.randn(2, 576, 1024), torch.rand(2, 576)
        >>> res = vtp.prune(feats, attn, keep=64, method="agile")
        >>> res.indices.shape, res.erank.shape   # agile needs the erank
        (torch.Size([2, 64]), torch.Size([2]))
        >>> kept = vtp.gather(feats, res.indices)        # [2, 64, 1024]
    """
    _check_backend(backend, features, scores, lengths, relevance)
    params = dict(
        important_ratio=important_ratio, attention_ratio=attention_ratio, gain=gain,
        erank_ref=erank_ref, entropy_ref=entropy_ref, tau_max=tau_max, tau_scale=tau_scale,
        complexity=complexity, erank_method=erank_method, compute_erank=compute_erank,
    )
    if backend == "reference":
        return reference.prune_ref(features, scores, keep, method, lengths=lengths, relevance=relevance, **params)
    op = _triton_module("prune").prune if backend == "triton" else torch.ops.ada_vtp.prune
    indices, erank_, entropy = op(features, scores, keep, method, lengths=lengths, relevance=relevance, **params)
    return PruneResult(indices, erank_ if erank_.numel() else None, entropy)


def erank(features: torch.Tensor, lengths: torch.Tensor | None = None, method: str = defaults.ERANK_METHOD,
          *, backend: str = "auto") -> torch.Tensor:
    """Effective rank (Roy & Vetterli 2007) of each image's valid tokens.

    erank = exp(-sum q ln q), q = sigma / sum sigma, sigma the singular values of the uncentred
    token matrix; in [1, min(n, D)], 0 for a zero matrix; invariant to the features' scale.

    Args:
        features: [B, N, D] float32/float16/bfloat16.
        lengths: [B] int, optional: valid tokens per row.
        method: ``"fast"`` (default): the SVD-free estimator (products with X only: deflated
            block power iteration and stochastic Lanczos quadrature with fixed +-1 probes, see
            `reference.erank_fast_one`; about 0.5 % median, 2 % max error on real features), or
            ``"exact"``: fp64 symmetric eigensolver on the smaller Gram matrix.
        backend: see the module docstring.

    Returns:
        [B] float32.

    Examples::

        >>> x = torch.randn(1, 576, 1024)
        >>> erank(x)   # close to 576 for white noise
    """
    _check_backend(backend, features, lengths)
    if backend == "reference":
        return reference.erank_ref(features, lengths, method)
    if backend == "triton":
        return _triton_module("prune").erank(features, lengths, method)
    return torch.ops.ada_vtp.erank(features, lengths, method)


def attention_entropy(scores: torch.Tensor, lengths: torch.Tensor | None = None, *,
                      backend: str = "auto") -> torch.Tensor:
    """Shannon entropy (nats) of each image's normalised scores, p = s / sum s.

    Args:
        scores: [B, N] non-negative, finite.
        lengths: [B] int, optional: valid tokens per row.
        backend: see the module docstring.

    Returns:
        [B] float32; all-zero scores count as uniform (ln n).
    """
    _check_backend(backend, scores, lengths)
    if backend == "reference":
        return reference.attention_entropy_ref(scores, lengths)
    if backend == "triton":
        return _triton_module("entropy").attention_entropy(scores, lengths)
    return torch.ops.ada_vtp.attention_entropy(scores, lengths)


def gather(features: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """The kept tokens: ``features[b, indices[b, k]]``.

    Args:
        features: [B, N, D] any dtype.
        indices: [B, K] int64, e.g. ``prune(...).indices``.

    Returns:
        [B, K, D], same dtype and device as ``features``.
    """
    if features.dim() != 3 or indices.dim() != 2 or indices.shape[0] != features.shape[0]:
        raise ValueError(
            f"gather expects features [B, N, D] and indices [B, K] with the same B, got "
            f"{tuple(features.shape)} and {tuple(indices.shape)}"
        )
    return torch.gather(features, 1, indices.unsqueeze(-1).expand(-1, -1, features.shape[-1]))

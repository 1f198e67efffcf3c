"""The documented Python API: prune, erank, attention_entropy, gather.

Each function takes ``backend=``:

- ``"auto"`` (default): the registered op ``torch.ops.ada_vtp.*``, dispatched on the tensors'
  device (the C++ kernels on CPU, the Triton kernels on CUDA);
- ``"cpu"``: the C++ CPU kernels, CPU tensors only;
- ``"reference"``: the pure-PyTorch specification, kernels/<op>/reference.py (slow, any device);
- ``"triton"``: the Triton launchers (`ada_vtp_kernels.triton`), called directly: CUDA tensors, or
  CPU tensors with ``TRITON_INTERPRET=1`` set before triton's first import (the interpreter runs the
  GPU code path on the CPU, about 1000x slower, for checking it without a GPU).

The reference and the C++ op compute the same cosines (fp64 dot products rounded once to fp32)
and return identical indices; the Triton kernels sum in fp32, so their indices equal those except
where a near-tie decides (docs/DESIGN.md, reproducibility contract).  On one machine every
backend gives the same bits whatever the thread count or the rest of the batch.
"""

import torch

from . import ops, spec, validation
from .spec import PruneResult

BACKENDS = ("auto", "cpu", "reference", "triton")


def _check_backend(backend: str, *tensors) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(map(repr, BACKENDS))}")
    devices = {t.device.type for t in tensors if isinstance(t, torch.Tensor)}
    if backend == "cpu" or (backend == "auto" and "cpu" in devices):
        ops.require_extension()
    if backend == "cpu" and devices - {"cpu"}:
        raise ValueError(f"backend='cpu' needs CPU tensors, got tensors on {', '.join(sorted(devices))}")


def prune(
    features: torch.Tensor,
    scores: torch.Tensor,
    keep: int,
    method: str = spec.DEFAULTS.method,
    *,
    lengths: torch.Tensor | None = None,
    relevance: torch.Tensor | None = None,
    backend: str = "auto",
    **params,
) -> PruneResult:
    r"""Select ``keep`` of the N visual tokens of each image, batched.

    Methods (docs/DESIGN.md has the exact rules; d is the snapped cosine distance):

{methods}

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
        backend: ``"auto"``, ``"cpu"``, ``"reference"`` or ``"triton"`` (module docstring).
        **params: the method parameters by name, each validated before anything runs
            (`spec.PruneParams`; an unknown name is an error):

{parameters}

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
    if backend == "auto" and torch.compiler.is_compiling():
        # Dynamo traces the registered op: its fake kernel runs every check that reads no values,
        # the parameters' included, at trace time, and its kernel all of them at run time
        indices, erank_, entropy = torch.ops.ada_vtp.prune(features, scores, keep, method, lengths=lengths,
                                                           relevance=relevance, **params)
        return PruneResult(indices, erank_ if erank_.numel() else None, entropy)
    p = spec.PruneParams.of(method, **params)
    _check_backend(backend, features, scores, lengths, relevance)
    if backend == "reference":
        from .kernels.prune.reference import prune_ref

        validation.check_prune(features, scores, keep, lengths, relevance, p, on_device=False)
        return prune_ref(features, scores, keep, p.method, lengths=lengths, relevance=relevance, **p.as_dict())
    if backend == "triton":
        indices, erank_, entropy = ops.prune_forward(ops.triton_stages(), features, scores, keep, lengths,
                                                     relevance, p)
    else:
        # the op's kernel checks again; here, what its argument parser would reject or coerce
        # first (non-tensors, a bool or float keep, sparse tensors) gets the ValueError too
        validation.check_prune_metadata(features, scores, keep, lengths, relevance, p)
        indices, erank_, entropy = torch.ops.ada_vtp.prune(features, scores, keep, p.method, lengths=lengths,
                                                           relevance=relevance, **p.as_dict())
    return PruneResult(indices, erank_ if erank_.numel() else None, entropy)


prune.__doc__ = prune.__doc__.replace("{methods}", spec.methods_doc(indent=4)).replace(
    "{parameters}", spec.parameters_doc(indent=12))


def erank(features: torch.Tensor, lengths: torch.Tensor | None = None, method: str = spec.DEFAULTS.erank_method,
          *, backend: str = "auto") -> torch.Tensor:
    """Effective rank (Roy & Vetterli 2007) of each image's valid tokens.

    erank = exp(-sum q ln q), q = sigma / sum sigma, sigma the singular values of the uncentred
    token matrix; in [1, min(n, D)], 0 for a zero matrix; invariant to the features' scale.

    Args:
        features: [B, N, D] float32/float16/bfloat16.
        lengths: [B] int, optional: valid tokens per row.
        method: ``"exact"`` (default): a symmetric eigensolver on the smaller Gram matrix, its
            sums in fp64; or ``"fast"``: the SVD-free estimator (products with X only: deflated
            block power iteration and stochastic Lanczos quadrature with fixed +-1 probes, see
            `ada_vtp_kernels.reference.erank_fast_one`), no host synchronisation on CUDA, about
            0.5 % median and 3 % max error on real DINOv2 features but up to ~15 % high on steep
            spectra (docs/DESIGN.md).
        backend: see the module docstring.

    Returns:
        [B] float32.

    Examples::

        >>> x = torch.randn(1, 576, 1024)
        >>> erank(x)   # close to 576 for white noise
    """
    _check_backend(backend, features, lengths)
    if backend == "reference":
        from .kernels.erank.reference import erank_ref

        validation.check_erank(features, lengths, method, on_device=False)
        return erank_ref(features, lengths, method)
    if backend == "triton":
        return ops.erank_forward(ops.triton_stages(), features, lengths, method)
    validation.check_erank_metadata(features, lengths, method)  # as in prune: before the argument parser
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
        from .kernels.entropy.reference import attention_entropy_ref

        validation.check_entropy(scores, lengths, on_device=False)
        return attention_entropy_ref(scores, lengths)
    if backend == "triton":
        return ops.entropy_forward(ops.triton_stages(), scores, lengths)
    validation.check_entropy_metadata(scores, lengths)  # as in prune: before the argument parser
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

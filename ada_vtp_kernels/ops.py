"""Registration glue for the `torch.ops.ada_vtp` ops.

The schemas and the CPU kernels live in the compiled extension (csrc/torch_bindings.cpp,
loaded as ``ada_vtp_kernels._C`` by ``__init__``).  This module adds what only Python can:
the fake (meta) kernels used by FakeTensor, torch.compile and torch.export, the CUDA kernels
(the Triton launchers of `ada_vtp_kernels.triton`, imported on their first call), and a clear
error when the extension is missing.
"""

import importlib

import torch

from .reference import needs_erank

BUILD_HINT = (
    "the ada_vtp C++ extension (ada_vtp_kernels._C) is not built; build it with "
    "`pip install -e . --no-build-isolation` in the repository root (it needs the torch you run "
    "with, a C++17 compiler and ninja), or pass backend='reference' to use the pure-PyTorch path"
)


def extension_loaded() -> bool:
    return hasattr(torch.ops, "ada_vtp") and hasattr(torch.ops.ada_vtp, "prune")


def require_extension() -> None:
    if not extension_loaded():
        raise RuntimeError(BUILD_HINT)


def _register_fakes() -> None:
    @torch.library.register_fake("ada_vtp::prune")
    def _prune_fake(features, scores, keep, method="agile", lengths=None, relevance=None,
                    important_ratio=0.0, attention_ratio=0.0, gain=0.0, erank_ref=1.0,
                    entropy_ref=1.0, tau_max=0.0, tau_scale=0.0, complexity="erank",
                    erank_method="fast", compute_erank=False):
        batch = features.shape[0]
        indices = features.new_empty((batch, keep), dtype=torch.int64)
        erank_rows = batch if needs_erank(method, complexity, compute_erank) else 0
        erank = features.new_empty((erank_rows,), dtype=torch.float32)
        return indices, erank, features.new_empty((batch,), dtype=torch.float32)

    @torch.library.register_fake("ada_vtp::erank")
    def _erank_fake(features, lengths=None, method="fast"):
        return features.new_empty((features.shape[0],), dtype=torch.float32)

    @torch.library.register_fake("ada_vtp::attention_entropy")
    def _attention_entropy_fake(scores, lengths=None):
        return scores.new_empty((scores.shape[0],), dtype=torch.float32)


def _triton_launcher(op: str, module: str):
    """The CUDA kernel of ``ada_vtp::<op>``: `ada_vtp_kernels.triton.<module>.<op>`, called with
    every argument by its schema name, imported on the first call (importing triton is slow and
    needs the package, which CPU-only users may not have)."""

    names = [a.name for a in getattr(torch.ops.ada_vtp, op).default._schema.arguments]

    def launch(*args, **kwargs):
        try:
            mod = importlib.import_module(f".triton.{module}", __package__)
        except ImportError as error:
            raise ImportError(f"ada_vtp on CUDA tensors needs triton (pip install triton==3.9.0): {error}") from error
        return getattr(mod, op)(**dict(zip(names, args)), **kwargs)

    return launch


def _register_cuda_kernels() -> torch.library.Library:
    lib = torch.library.Library("ada_vtp", "IMPL")
    lib.impl("prune", _triton_launcher("prune", "prune"), "CUDA")
    lib.impl("erank", _triton_launcher("erank", "prune"), "CUDA")
    lib.impl("attention_entropy", _triton_launcher("attention_entropy", "entropy"), "CUDA")
    return lib


if extension_loaded():
    _register_fakes()
    _CUDA_KERNELS = _register_cuda_kernels()  # the registrations live as long as this object

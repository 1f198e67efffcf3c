"""Registration glue for the `torch.ops.ada_vtp` ops.

The schemas and the CPU kernels live in the compiled extension (csrc/torch_bindings.cpp,
loaded as ``ada_vtp_kernels._C`` by ``__init__``).  This module adds what only Python can:
the fake (meta) kernels used by FakeTensor, torch.compile and torch.export, the CUDA kernels
(the Triton launchers of `ada_vtp_kernels.triton`, imported on their first call), and a clear
error when the extension is missing.
"""

import functools
import importlib

import torch

from . import _validation, defaults
from .reference import default_params, needs_erank

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
    """Fake (meta) kernels: the output shapes, after every check that reads no values (a wrong
    shape, dtype, device or keep > N fails here too, under torch.compile, torch.export and on the
    meta device, with the CPU op's message; the lengths' values are checked when the op runs)."""

    @torch.library.register_fake("ada_vtp::prune")
    def _prune_fake(*args, **kwargs):
        a = _by_name("prune", args, kwargs)
        params = default_params(**{k: v for k, v in a.items() if k not in _PRUNE_INPUTS})
        features, keep = a["features"], a["keep"]
        _validation.check_prune_metadata(features, a["scores"], keep, a.get("lengths"), a.get("relevance"), params)
        batch = features.shape[0]
        indices = features.new_empty((batch, keep), dtype=torch.int64)
        erank_rows = batch if needs_erank(params["method"], params["complexity"], params["compute_erank"]) else 0
        erank = features.new_empty((erank_rows,), dtype=torch.float32)
        return indices, erank, features.new_empty((batch,), dtype=torch.float32)

    @torch.library.register_fake("ada_vtp::erank")
    def _erank_fake(*args, **kwargs):
        a = _by_name("erank", args, kwargs)
        _validation.check_erank_metadata(a["features"], a.get("lengths"), a.get("method", defaults.ERANK_METHOD))
        return a["features"].new_empty((a["features"].shape[0],), dtype=torch.float32)

    @torch.library.register_fake("ada_vtp::attention_entropy")
    def _attention_entropy_fake(*args, **kwargs):
        a = _by_name("attention_entropy", args, kwargs)
        _validation.check_entropy_metadata(a["scores"], a.get("lengths"))
        return a["scores"].new_empty((a["scores"].shape[0],), dtype=torch.float32)


# prune's arguments that are not method parameters (reference.default_params takes the rest)
_PRUNE_INPUTS = ("features", "scores", "keep", "lengths", "relevance")


@functools.cache
def _schema_names(op: str) -> tuple[str, ...]:
    return tuple(a.name for a in getattr(torch.ops.ada_vtp, op).default._schema.arguments)


def _by_name(op: str, args: tuple, kwargs: dict) -> dict:
    """The arguments of a call of ``ada_vtp::<op>`` by their schema names (the dispatcher passes
    them positionally, and only up to the last one the caller gave)."""
    return {**dict(zip(_schema_names(op), args)), **kwargs}


def _triton_launcher(op: str, module: str):
    """The CUDA kernel of ``ada_vtp::<op>``: `ada_vtp_kernels.triton.<module>.<op>`, called with
    every argument by its schema name, imported on the first call (importing triton is slow and
    needs the package, which CPU-only users may not have)."""

    _schema_names(op)  # read the schema at registration, not per call

    def launch(*args, **kwargs):
        try:
            mod = importlib.import_module(f".triton.{module}", __package__)
        except ImportError as error:
            raise ImportError(f"ada_vtp on CUDA tensors needs triton (pip install triton==3.9.0): {error}") from error
        return getattr(mod, op)(**_by_name(op, args, kwargs))

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

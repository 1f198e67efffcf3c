"""ada_vtp_kernels: fused, batched adaptive visual-token pruning for vision-language models.

``torch.ops.ada_vtp.prune`` / ``erank`` / ``attention_entropy`` come from the compiled
extension ``ada_vtp_kernels._C``; the documented Python API is in `functional`.  Set
``ADA_VTP_SKIP_EXTENSION=1`` to import without loading it (only ``backend="reference"`` works
then).
"""

import glob
import logging
import os

import torch

__version__ = "0.1.0"

_log = logging.getLogger(__name__)


def _load_extension() -> None:
    """Loads _C, which registers torch.ops.ada_vtp.*; the package stays importable without it."""
    libraries = glob.glob(os.path.join(os.path.dirname(__file__), "_C*.so"))
    if not libraries:
        _log.warning("ada_vtp_kernels._C is not built; only backend='reference' works")
        return
    try:
        torch.ops.load_library(libraries[0])
    except OSError as exc:  # built against another torch, say; ops.require_extension explains
        _log.warning("ada_vtp_kernels._C could not be loaded (%s); only backend='reference' works", exc)


if os.environ.get("ADA_VTP_SKIP_EXTENSION", "0") != "1":
    _load_extension()

from . import ops  # noqa: E402  (fake kernels need the schemas registered by _C)
from .functional import PruneResult, attention_entropy, erank, gather, prune  # noqa: E402

__all__ = ["PruneResult", "attention_entropy", "erank", "gather", "prune", "ops"]

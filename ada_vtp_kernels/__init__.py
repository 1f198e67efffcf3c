"""ada_vtp_kernels: fused, batched adaptive visual-token pruning for vision-language models.

``torch.ops.ada_vtp.prune`` / ``erank`` / ``attention_entropy`` are registered by `ops` (CPU
tensors run the compiled extension ``ada_vtp_kernels._C``, CUDA tensors the Triton kernels); the
documented Python API is `functional`, the methods and their parameters are declared in `spec`.
Set ``ADA_VTP_SKIP_EXTENSION=1`` to import without loading the extension (CUDA tensors and
``backend="reference"`` still work).
"""

from ._extension import load_extension as _load_extension

_load_extension()

from . import ops, spec  # noqa: E402  (the ops' CPU kernels come from the extension loaded above)
from .functional import attention_entropy, erank, gather, prune  # noqa: E402
from .spec import METHODS, PruneParams, PruneResult  # noqa: E402

__version__ = "0.1.0"

__all__ = ["METHODS", "PruneParams", "PruneResult", "attention_entropy", "erank", "gather", "ops", "prune", "spec"]

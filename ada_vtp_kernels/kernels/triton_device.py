"""Where the Triton kernels may run: CUDA tensors, or CPU tensors under the Triton interpreter."""

import os

import torch
import triton

# TRITON_INTERPRET=1 as triton.jit saw it when the kernel modules were imported (it decides, once,
# whether the kernels are interpreted on the CPU or compiled for the GPU)
INTERPRETED = bool(triton.knobs.runtime.interpret)
# The GPU's tile sizes and dot precisions: compiled, or interpreted with ADA_VTP_GPU_CONFIG=1, which
# tests/support/launches.py sets to record the launches a GPU gets without running them (run
# interpreted, these tiles are slow and a native bf16 dot is wrong)
GPU_CONFIG = not INTERPRETED or os.environ.get("ADA_VTP_GPU_CONFIG", "0") == "1"


def _squeeze_interpreted_scalars() -> None:
    """Let triton < 3.8's interpreter run our loops under numpy >= 2.4.

    The interpreter holds a kernel's scalars (arguments, loaded lengths) as size-1 arrays and makes
    them loop bounds with ``int(array)``, which numpy 2.4 turned into a TypeError, so every
    ``range(0, n, BLOCK)`` over a run-time n fails (triton-lang/triton#9171; triton 3.8 squeezes
    the array first).  Apply the same fix to the interpreter's tensor patch.
    """
    from triton.runtime import interpreter

    patch_tensor = interpreter._patch_lang_tensor

    def patch_tensor_squeezed(tensor, scope):
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    interpreter._patch_lang_tensor = patch_tensor_squeezed


if INTERPRETED and tuple(int(part) for part in triton.__version__.split(".")[:2]) < (3, 8):
    _squeeze_interpreted_scalars()

# Every launch passes this: no fused multiply-adds, so products and sums round separately as in
# the reference and the C++ kernels (built with -ffp-contract=off); fp64 DPP state and the
# erank's sums then follow the same arithmetic on every backend.  (Triton 3.9 fuses by default
# and warns when a launch does not say.)
NO_FMA = {"enable_fp_fusion": False}


def check_device(name: str, tensor: torch.Tensor, module: str) -> None:
    """Raise unless `tensor` (argument `name` of a launcher in `module`) is where the kernels run."""
    if tensor.device.type == "cpu":
        if not INTERPRETED:
            raise RuntimeError(
                f"{name} is a CPU tensor but Triton is not in interpreter mode: pass CUDA tensors, or set "
                f"TRITON_INTERPRET=1 before importing {module}"
            )
    elif tensor.device.type != "cuda":
        raise ValueError(f"{name} must be on a CUDA device (or the CPU under TRITON_INTERPRET=1), got {tensor.device}")

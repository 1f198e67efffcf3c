"""Loading the compiled extension ``ada_vtp_kernels._C``, which registers the C++ CPU kernels
(``torch.ops.ada_vtp_cpu.*``); the package stays importable without it."""

import glob
import logging
import os

import torch

_log = logging.getLogger(__name__)


def load_extension() -> None:
    if os.environ.get("ADA_VTP_SKIP_EXTENSION", "0") == "1":
        return
    libraries = glob.glob(os.path.join(os.path.dirname(__file__), "_C*.so"))
    if not libraries:
        _log.warning("ada_vtp_kernels._C is not built; CPU tensors need backend='reference'")
        return
    try:
        torch.ops.load_library(libraries[0])
    except OSError as exc:  # built against another torch, say; ops.require_extension explains
        _log.warning("ada_vtp_kernels._C could not be loaded (%s); CPU tensors need backend='reference'", exc)

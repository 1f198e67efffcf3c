"""Builds ada_vtp_kernels._C (the op schemas and the C++ CPU kernels) against the installed torch.

    pip install -e . --no-build-isolation

Build isolation would fetch another torch (and a CUDA build of it); the extension must be
compiled against the torch it runs with.  Knobs: MAX_JOBS (ninja parallelism),
ADA_VTP_SKIP_EXTENSION_BUILD=1 (pure-Python install: only backend="reference" works).
"""

import glob
import os

from setuptools import setup

ext_modules, cmdclass = [], {}
if os.environ.get("ADA_VTP_SKIP_EXTENSION_BUILD", "0") != "1":
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    ext_modules.append(
        CppExtension(
            name="ada_vtp_kernels._C",
            sources=sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp")),
            # -ffp-contract=off: no fused multiply-adds, so the fp64 DPP state rounds exactly
            # like the reference's separate tensor products and differences.  -fopenmp: ATen's
            # at::parallel_for is an OpenMP pragma in the headers, compiled into this library;
            # without the flag it runs every loop on one thread.
            extra_compile_args={"cxx": ["-O3", "-std=c++17", "-ffp-contract=off", "-fopenmp"]},
            extra_link_args=["-fopenmp"],
            py_limited_api=False,
        )
    )
    cmdclass["build_ext"] = BuildExtension.with_options(use_ninja=True)

setup(ext_modules=ext_modules, cmdclass=cmdclass)

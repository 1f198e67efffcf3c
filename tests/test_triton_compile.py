"""Every Triton kernel launch compiles for an H100 (sm_90) and fits it: no register spills, at most
227 KB of shared memory per block.

tests/support/sm90_compile.py records the launches under the interpreter (every op and method at
LLaVA-1.5 and LLaVA-NeXT shapes, every dtype; tests/support/launches.py) and compiles each with
triton's compiler and bundled ptxas, no GPU needed; it runs in a subprocess because this process
defined the kernels for the interpreter.  The check catches what the interpreter cannot (constexpr
globals, loop-carried types, dot layouts, a Triton version's rules) and register pressure (one
launch has a bounded spill, SPILL_BOUNDS).

The default path's 18 launches compile here; the fast erank's 43 more (minutes) run with
``--interpreter-full``, as tools/test_triton_versions.sh does under triton 3.6.0 and this venv's.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

SCRIPT = Path(__file__).resolve().parent / "support" / "sm90_compile.py"
H100_SHARED_BYTES = 227 * 1024
# The one launch allowed to spill, with its bound in bytes per thread: the fast erank's 128-column
# Rayleigh-Ritz eigensolver (LLaVA-NeXT sizes), whose 128 x 128 fp64 matrix alone fills half an
# SM's register file; ptxas spills 120 B (triton 3.6.0) and 244 B (3.9.0) at 16 warps
SPILL_BOUNDS = {"_jacobi_eigh_kernel[K=128,": 512}


def compile_report(*erank_methods: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, str(SCRIPT), *erank_methods], env=env, capture_output=True, text=True,
                         timeout=1800)
    print(run.stdout)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = [line for line in run.stdout.splitlines() if line.startswith(("OK", "FAIL"))]
    assert lines and all(line.startswith("OK") for line in lines), run.stdout
    return lines


def assert_fits_an_h100(lines: list[str]) -> None:
    for line in lines:
        shared = int(re.search(r"shared (\d+) B", line).group(1))
        assert shared <= H100_SHARED_BYTES, f"shared memory beyond an H100's: {line}"
        spilled = int(re.search(r"(\d+) bytes spill stores", line).group(1))
        bound = next((b for kernel, b in SPILL_BOUNDS.items() if line.split()[1].startswith(kernel)), 0)
        assert spilled <= bound, f"register spills beyond {bound} B: {line}"


def test_default_path_compiles_for_sm90():
    lines = compile_report("exact")
    kernels = {line.split()[1].split("[")[0] for line in lines}
    assert {"_row_norms_kernel", "_distance_kernel", "_select_diverse_kernel", "_select_dpp_kernel",
            "_select_vispruner_kernel", "_attention_entropy_kernel", "_erank_absmax_kernel"} <= kernels, kernels
    assert_fits_an_h100(lines)


@pytest.mark.interpreter_full
def test_fast_erank_compiles_for_sm90():
    assert_fits_an_h100(compile_report("fast"))

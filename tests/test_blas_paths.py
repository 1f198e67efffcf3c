"""The same answers on Intel and AMD CPUs, checked on one machine: the C++ op run here against
the op run in a child process on another of MKL's code paths (tests/support/blas_paths.py forces it).

Indices are identical except at proven near-ties (tests/support/near_ties.py; the cosines are fp64 dots
rounded once, which MKL's kernels change by at most a rounding of the fp64 sum), the entropy is
bit-identical (no BLAS), the exact erank agrees to 1e-6 and the fast one (fp32 products) to 1e-4.
Each path also checks that the thread count and the batch's composition change no bit (the probe
asserts it), and one child must really round its GEMMs unlike this process.
"""

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from support import blas_paths
from support import near_ties as nt

pytestmark = [
    pytest.mark.requires_ext,
    pytest.mark.skipif(platform.machine() != "x86_64" or not torch.backends.mkl.is_available(),
                       reason="MKL's CPU code paths exist on x86-64 builds of torch with MKL"),
]

HERE = Path(__file__).resolve().parent
PATHS = {"intel": "LD_PRELOAD", "avx2": "MKL_ENABLE_INSTRUCTIONS"}


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler for the MKL shim")
    folder = tmp_path_factory.mktemp("mkl_shim")
    (folder / "shim.c").write_text(blas_paths.SHIM_SOURCE)
    subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(folder / "libshim.so"), str(folder / "shim.c")],
                   check=True)
    return folder / "libshim.so"


@pytest.fixture(scope="module")
def results(shim, tmp_path_factory):
    """{"here" or a path name: the probe's results}: this process and one child per MKL path."""
    out = {"here": blas_paths.probe()}
    for path, variable in PATHS.items():
        file = tmp_path_factory.mktemp(path) / "results.pt"
        env = dict(os.environ, **{variable: str(shim) if path == "intel" else "AVX2"})
        done = subprocess.run([sys.executable, str(HERE / "support" / "blas_paths.py"), str(file)], env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"MKL {path} path: {done.stderr[-4000:]}"
        out[path] = torch.load(file, weights_only=False)
    return out


def test_a_child_takes_another_mkl_path(results):
    """On an AMD CPU the shim's child takes the AVX-512 kernels, on an Intel one the AVX2 child
    leaves them: either way one child rounds its GEMMs unlike this process."""
    assert any(results[path]["gemm"] != results["here"]["gemm"] for path in PATHS), \
        "no child took another MKL code path: the comparison below proves nothing on this machine"


@pytest.mark.parametrize("path", list(PATHS))
def test_other_mkl_path_gives_the_same_answers(path, results):
    here, there = results["here"], results[path]
    inputs = blas_paths.inputs()
    assert there.keys() == here.keys()
    for key, got in there.items():
        if key == "gemm":
            continue
        name, method, erank_method = key
        want = here[key]
        features, scores, relevance, lengths, keep = inputs[name]
        label = f"{path}: {name} {method} erank={erank_method}"
        ties = nt.assert_same_or_near_ties(
            features, scores, keep, method, got, want, roundings=(nt.ROUNDED_ONCE, nt.ROUNDED_ONCE),
            names=(f"MKL {path} path", "this process"), lengths=lengths,
            relevance=relevance if method == "dpp" else None, label=label, erank_method=erank_method)
        for tie in ties:
            print(f"\n{label}: {tie}")
        assert torch.equal(got[2], want[2]), f"{label}: entropy bits differ"
        torch.testing.assert_close(got[1], want[1], rtol=1e-4 if erank_method == "fast" else 1e-6, atol=0,
                                   msg=label)

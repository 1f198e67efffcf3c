"""Without the C++ build the ops still exist: schemas, fake kernels and the CUDA (Triton) kernels are
registered in Python, so CUDA users need no compiler; CPU tensors then name the build step.

Runs in a child process with ADA_VTP_SKIP_EXTENSION=1 (this process has the extension loaded), the
Triton kernels interpreted on the CPU standing in for CUDA.
"""

import os
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    import ada_vtp_kernels as vtp
    from ada_vtp_kernels import ops

    assert not ops.extension_loaded()
    assert hasattr(torch.ops.ada_vtp, "prune")
    features, scores = torch.randn(2, 30, 8), torch.rand(2, 30)
    # the CUDA path: the Triton kernels (interpreted) through the same pipeline, and the reference
    for method in vtp.METHODS:
        got = vtp.prune(features, scores, 5, method, backend="triton").indices
        want = vtp.prune(features, scores, 5, method, backend="reference").indices
        assert torch.equal(got, want), method
    # the fake kernel
    with FakeTensorMode() as mode:
        out = torch.ops.ada_vtp.prune(mode.from_tensor(features), mode.from_tensor(scores), 5, "agile")
        assert tuple(out[0].shape) == (2, 5)
    # CPU tensors on the op: the build step, by name
    try:
        torch.ops.ada_vtp.prune(features, scores, 5, "agile")
    except RuntimeError as error:
        assert "pip install -e . --no-build-isolation" in str(error), error
    else:
        raise AssertionError("the CPU op ran without its extension")
    print("ok")
""")


def test_ops_without_the_extension():
    env = {**os.environ, "ADA_VTP_SKIP_EXTENSION": "1", "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stdout + run.stderr

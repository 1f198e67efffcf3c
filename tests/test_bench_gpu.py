"""benchmarks/bench_gpu.py keeps running without a GPU: its --smoke mode, under the Triton
interpreter, runs every Triton kernel and every prune method once on a tiny shape and checks them against the C++ op."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


@pytest.mark.requires_ext
def test_bench_gpu_smoke():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, str(SCRIPT), "--smoke"], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "erank_fast" in run.stdout and "attention_entropy" in run.stdout
    assert run.stdout.count("identical") >= 6, run.stdout

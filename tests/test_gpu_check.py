"""tools/gpu_check.sh keeps running: its --dry-run (every stage on the CPU, Triton interpreted,
tiny shapes) passes every stage and leaves its logs, summary and CSV in the folder it is given."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "gpu_check.sh"
STAGES = ["install", "versions", "tests", "bench_gpu_576", "bench_e2e", "bench_e2e_next"]


@pytest.mark.slow
def test_dry_run_passes_every_stage(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("TRITON_INTERPRET", None)  # each stage decides for itself, as on the GPU machine
    run = subprocess.run(["bash", str(SCRIPT), "--dry-run", str(tmp_path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=1500)
    print(run.stdout[-4000:])
    with open(tmp_path / "summary.csv") as f:
        summary = {row["stage"]: row for row in csv.DictReader(f)}
    assert list(summary) == STAGES
    failed = {stage: (row["status"], Path(row["log"]).read_text()[-2000:]) for stage, row in summary.items()
              if row["status"] != "ok"}
    assert not failed and run.returncode == 0, failed
    assert "torch" in (tmp_path / "versions.log").read_text()
    assert (tmp_path / "e2e_cpu-dry-run.csv").stat().st_size > 0
    assert (tmp_path / "e2e_cpu-dry-run_next.csv").stat().st_size > 0

"""Helpers shared by the CPU benchmarks: inputs, wall-clock timing, the environment, tidy CSV rows."""

import csv
import datetime
import os
import platform
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"

CSV_COLUMNS = ("op", "provider", "method", "B", "N", "D", "K", "metric", "unit", "p50", "p20", "p80",
               "cpu_name", "torch_version", "git_sha", "timestamp")


def make_inputs(batch: int, n: int, dim: int, seed: int = 0):
    """Random fp32 features [B, N, D] (standard normal), scores and relevance [B, N] in (0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, n, dim, generator=gen)
    # strictly positive, so that every token is a valid candidate of every method
    scores = torch.rand(batch, n, generator=gen) * 0.99 + 0.01
    relevance = torch.rand(batch, n, generator=gen) * 0.99 + 0.01
    return features, scores, relevance


class Timing(NamedTuple):
    """Wall-clock milliseconds of one call: median and 20th / 80th percentiles over `repeats` calls."""

    p50: float
    p20: float
    p80: float
    repeats: int


def measure(fn: Callable[[], object], *, warmup: int = 1, min_repeats: int = 3, max_repeats: int = 30,
            budget_s: float = 1.0) -> Timing:
    """Times `fn()` after `warmup` calls: at least `min_repeats` calls, then more until `budget_s`
    seconds are spent or `max_repeats` is reached. CPU ops are synchronous, so the wall clock
    around each call is its latency."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    spent = 0.0
    while len(samples) < min_repeats or (spent < budget_s and len(samples) < max_repeats):
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        samples.append(elapsed * 1e3)
        spent += elapsed
    p20, p50, p80 = np.percentile(samples, [20, 50, 80])
    return Timing(float(p50), float(p20), float(p80), len(samples))


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def git_sha() -> str:
    """The repository's HEAD commit, with "-dirty" for uncommitted changes; "unknown" without one."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=BENCH_DIR, capture_output=True, text=True, check=True).stdout.strip()
    try:
        sha = git("rev-parse", "HEAD")
        return sha + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment() -> dict:
    """The columns that say where and when a row was measured."""
    return dict(
        cpu_name=cpu_name(),
        torch_version=torch.__version__,
        git_sha=git_sha(),
        timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )


def default_csv_path() -> Path:
    """benchmarks/results/cpu_<cpu model>.csv (the hostname when the model is unknown): one file per machine kind."""
    name = cpu_name()
    if name == "unknown-cpu":
        name = socket.gethostname()
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return RESULTS_DIR / f"cpu_{slug}.csv"


def append_csv(path: os.PathLike, rows: list[dict]) -> None:
    """Appends `rows` (dicts keyed by CSV_COLUMNS) to `path`, writing the header when the file is new."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerows(rows)

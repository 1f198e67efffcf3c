"""Helpers shared by the CPU benchmarks: inputs, wall-clock timing, the environment, tidy CSV rows."""

import csv
import datetime
import os
import platform
import re
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"

CSV_COLUMNS = ("op", "provider", "method", "B", "N", "D", "K", "metric", "unit", "p50", "p20", "p80",
               "cpu_name", "torch_version", "git_sha", "timestamp")


def make_inputs(batch: int, n: int, dim: int, seed: int = 0):
    """Random fp32 features [B, N, D] (standard normal), scores and relevance [B, N] in [0.01, 1)."""
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, n, dim, generator=gen)
    # strictly positive, so that every token is a valid candidate of every method
    scores = torch.rand(batch, n, generator=gen) * 0.99 + 0.01
    relevance = torch.rand(batch, n, generator=gen) * 0.99 + 0.01
    return features, scores, relevance


# Other processes on a small machine share its cores, and OpenMP's spinning barriers then wait
# for descheduled threads: small parallel ops (an fp64 eigensolver, reductions) slow down by up
# to 100x.  A measurement during which others used more than this share of the CPU is retried.
CONTENTION_LIMIT = 0.1


def _machine_busy_seconds() -> float | None:
    """CPU seconds all processes have spent since boot (Linux /proc/stat); None elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


class Contention:
    """Measures the share of the machine's CPU time that *other* processes use from construction on."""

    def __init__(self):
        self.busy = _machine_busy_seconds()
        self.own = time.process_time()
        self.wall = time.perf_counter()

    def share(self) -> float:
        """Others' CPU seconds / (elapsed seconds x cores) so far; 0 where it cannot be measured.
        /proc/stat counts in 10 ms ticks, so windows under 0.1 s count as 0.1 s: a stray tick of a
        background daemon then stays below CONTENTION_LIMIT."""
        if self.busy is None:
            return 0.0
        others = (_machine_busy_seconds() - self.busy) - (time.process_time() - self.own)
        return max(others, 0.0) / (max(time.perf_counter() - self.wall, 0.1) * (os.cpu_count() or 1))


def wait_until_idle(timeout_s: float, window_s: float = 1.0) -> None:
    """Sleeps in `window_s` steps until others use at most CONTENTION_LIMIT of the CPU, or `timeout_s` passes."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        window = Contention()
        time.sleep(window_s)
        if window.share() <= CONTENTION_LIMIT:
            return


class Timing(NamedTuple):
    """Wall-clock milliseconds of one call: median and 20th / 80th percentiles over `repeats` calls;
    `contention`: the CPU share other processes used meanwhile (see CONTENTION_LIMIT)."""

    p50: float
    p20: float
    p80: float
    repeats: int
    contention: float

    @property
    def contended(self) -> bool:
        return self.contention > CONTENTION_LIMIT


def measure(fn: Callable[[], object], *, warmup: int = 1, min_repeats: int = 3, max_repeats: int = 30,
            budget_s: float = 1.0, retries: int = 2, idle_wait_s: float = 30.0) -> tuple[Timing, object]:
    """Times `fn()`: `warmup` untimed calls, then at least `min_repeats` timed calls and more until
    `budget_s` seconds are spent or `max_repeats` is reached.  CPU ops are synchronous, so the wall
    clock around a call is its latency.  When other processes used more than CONTENTION_LIMIT of
    the CPU meanwhile, waits up to `idle_wait_s` for the machine to go idle and measures again, at
    most `retries` times; the result says how contended the kept measurement was.  Returns the
    timing and the value of the last call (to check what was timed)."""
    for attempt in range(retries + 1):
        contention = Contention()
        for _ in range(warmup):
            fn()
        samples: list[float] = []
        spent = 0.0
        value = None
        while len(samples) < min_repeats or (spent < budget_s and len(samples) < max_repeats):
            start = time.perf_counter()
            value = fn()
            elapsed = time.perf_counter() - start
            samples.append(elapsed * 1e3)
            spent += elapsed
        share = contention.share()
        if share <= CONTENTION_LIMIT or attempt == retries:
            break
        wait_until_idle(idle_wait_s)
    p20, p50, p80 = np.percentile(samples, [20, 50, 80])
    return Timing(float(p50), float(p20), float(p80), len(samples), share), value


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
    """The CSV columns that say where and when a row was measured."""
    return {
        "cpu_name": cpu_name(),
        "torch_version": torch.__version__,
        "git_sha": git_sha(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def default_csv_path() -> Path:
    """benchmarks/results/cpu_<cpu model>.csv (the hostname when the model is unknown): one file per machine kind."""
    name = cpu_name()
    if name == "unknown-cpu":
        name = socket.gethostname()
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return RESULTS_DIR / f"cpu_{slug}.csv"


def append_csv(path: os.PathLike, rows: list[dict], columns: tuple[str, ...] = CSV_COLUMNS) -> None:
    """Appends `rows` (dicts keyed by `columns`) to `path`, writing the header when the file is new."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        if new:
            writer.writeheader()
        writer.writerows(rows)

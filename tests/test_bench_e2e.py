"""benchmarks/bench_e2e.py keeps running: its --quick mode (a tiny LLaVA, each case in a fresh
process) prints a row for every K, writes the CSV, and the language model sees K visual tokens."""

import csv
import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("transformers")

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPT = BENCH_DIR / "bench_e2e.py"
sys.path.insert(0, str(BENCH_DIR))
import bench_e2e  # noqa: E402

N = bench_e2e.QUICK_SHAPE.patches
TEXT = bench_e2e.DEFAULT_TEXT_TOKENS
KEEPS = (N, *bench_e2e.QUICK_KEEPS)
BUDGET_S = 60  # on an idle machine; scaled up by the share of the CPU that other processes take


def table_rows(stdout: str) -> dict[int, dict]:
    """The printed table's rows, by K."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["K", "method"])
    header = lines[start].split()
    rows = {}
    for line in lines[start + 2:]:
        cells = line.split()
        if len(cells) != len(header) or not cells[0].isdigit():
            break
        row = dict(zip(header, cells))
        rows[int(row["K"])] = row
    return rows


@pytest.mark.requires_ext
def test_bench_e2e_quick(tmp_path):
    out_csv = tmp_path / "e2e.csv"
    others, start = bench_e2e.OthersShare(), time.perf_counter()  # others: not this test, the script, its cases
    run = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--csv", str(out_csv)], capture_output=True,
                         text=True, timeout=600)
    elapsed = time.perf_counter() - start
    assert run.returncode == 0, run.stdout + run.stderr
    share = others.share()
    limit = BUDGET_S / max(1 - share, 1 / 3)
    assert elapsed < limit, f"--quick took {elapsed:.0f} s (limit {limit:.0f} s: others used {share:.0%} of the CPU)"

    rows = table_rows(run.stdout)
    assert sorted(rows) == sorted(KEEPS), run.stdout
    assert rows[N]["method"] == "none" and rows[N]["TTFT_x"] == "1.00" and rows[N]["peak_x"] == "1.00"
    unpruned = int(rows[N]["LM_tokens"])
    assert unpruned == N + TEXT
    for keep, row in rows.items():
        assert int(row["LM_tokens"]) == unpruned - (N - keep), row  # one image per row shrank by N - K
        assert float(row["TTFT_ms"].rstrip("!")) > 0 and float(row["peak_MiB"]) >= 0 and float(row["alloc_MiB"]) > 0
        if keep != N:
            assert row["method"] == "agile"

    with open(out_csv, newline="") as f:
        records = list(csv.DictReader(f))
    assert set(records[0]) == set(bench_e2e.CSV_COLUMNS)
    for keep in KEEPS:
        metrics = {r["metric"]: r for r in records if int(r["K"]) == keep}
        assert {"peak_mem", "peak_alloc", "peak_total"} <= set(metrics), metrics
        assert {"ttft", "ttft_contended"} & set(metrics), metrics
        assert all(int(r["lm_tokens"]) == unpruned - (N - keep) for r in metrics.values())
        assert all(r["N"] == str(N) and r["B"] == "1" for r in metrics.values())
    assert len(records) == 4 * len(KEEPS)


@pytest.mark.requires_ext
def test_bench_e2e_quick_llava_next(tmp_path):
    """--next: the image is a base view and 2 x 2 tiles; the unpatched language model sees every
    vision token and a newline per grid row, the patched one K tokens and every row's newline."""
    shape = dataclasses.replace(bench_e2e.QUICK_SHAPE, family="llava_next")
    side = shape.image_size // shape.patch_size
    assert (shape.tokens, shape.placeholders) == (5 * N, 5 * N + 2 * side)
    run = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--next", "--keeps", "48", "16", "--csv",
                          str(tmp_path / "e2e.csv")], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    rows = table_rows(run.stdout)
    assert sorted(rows) == [16, 48, shape.tokens], run.stdout
    assert int(rows[shape.tokens]["LM_tokens"]) == shape.placeholders + TEXT
    for keep in (16, 48):
        assert int(rows[keep]["LM_tokens"]) == TEXT + keep + 2 * side, rows[keep]

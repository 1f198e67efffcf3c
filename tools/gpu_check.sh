#!/usr/bin/env bash
# The device check: everything a GPU machine lent for a few minutes should measure, in one command.
#
#   tools/gpu_check.sh [--dry-run] [OUT]
#
# Run from the repository root on the GPU image (Python 3.12, its own torch/triton/transformers,
# no internet).  Every result goes under OUT (default: $OUT, else ./gpu-check): one log per stage,
# summary.csv (stage, status, seconds), the benchmarks' CSVs named after the GPU.  A failing stage
# is logged and the next one runs; each has a time limit, all together under 8 minutes.
#
# Stages: install (pip, offline, against the machine's torch), versions, the CUDA test tier
# (every method's CUDA op against the CPU op with the near-tie checker, CUDA-graph capture and
# replay, torch.compile(fullgraph=True), fp16/bf16/fp32), benchmarks/bench_gpu.py at LLaVA-1.5's
# 576 and LLaVA-NeXT's 2880 tokens, benchmarks/bench_e2e.py --llava-7b on LLaVA-1.5-7B and (--next)
# LLaVA-NeXT-7B shapes (time to first token and peak memory, unpruned against K = 192/128/64 with
# agile and attention, batch 1 and 8).
#
# --dry-run runs the same stages on the CPU (Triton interpreter, tiny shapes, short limits), so
# that the script cannot rot: tests/test_gpu_check.py runs it.
set -uo pipefail

dry_run=0
if [ "${1:-}" = "--dry-run" ]; then
  dry_run=1
  shift
fi
out=$(realpath -m "${1:-${OUT:-gpu-check}}")
mkdir -p "$out"
python=${PYTHON:-python}
summary="$out/summary.csv"
echo "stage,status,seconds,log" > "$summary"

# stage NAME LIMIT_S COMMAND...: run it with a time limit, log to OUT/NAME.log, record the outcome
stage() {
  local name=$1 limit=$2
  shift 2
  local log="$out/$name.log" start=$SECONDS status
  echo "== $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" > "$log" 2>&1
  status=$?
  case $status in
    0) status=ok ;;
    124 | 137) status=timeout ;;
    *) status="failed($status)" ;;
  esac
  echo "$name,$status,$((SECONDS - start)),$log" >> "$summary"
  echo "   $status in $((SECONDS - start)) s; last lines of $log:"
  tail -n 5 "$log" | sed 's/^/   | /'
}

versions() {
  "$python" - <<'EOF'
import platform, subprocess
import torch
print("python", platform.python_version())
for name in ("torch", "triton", "transformers", "numpy"):
    try:
        print(name, __import__(name).__version__)
    except ImportError:
        print(name, "not installed")
print("cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.1f} GiB", f"sm_{p.major}{p.minor}", p.multi_processor_count, "SMs")
print(subprocess.run(["lscpu"], capture_output=True, text=True).stdout)
EOF
  nvidia-smi || true
}

# the GPU's name in file names ("nvidia-h100-80gb-hbm3"), or cpu-dry-run
device=$("$python" -c '
import re, torch
name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu dry run"
print(re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-"))' 2>/dev/null || echo unknown)

# limits: 450 s in all, so the check ends within 8 minutes whatever hangs (16 cores build the
# extension in well under a minute)
# the dry run resolves and prepares the same install without rebuilding the extension under the tests
install_mode=()
[ "$dry_run" = 1 ] && install_mode=(--dry-run)
stage install 90 "$python" -m pip install "${install_mode[@]}" --no-deps --no-build-isolation --no-index -e .
export python
export -f versions
stage versions 20 bash -c versions  # timeout runs programs, not shell functions
if [ "$dry_run" = 1 ]; then
  stage tests 300 "$python" -m pytest -q -p no:cacheprovider tests/test_triton_launches.py \
    "tests/test_triton_prune.py::test_cuda_kernels_registered" "tests/test_triton_prune.py::test_cuda_op_matches_cpu" \
    "tests/test_triton_prune.py::test_cuda_graph_capture_and_compile"
  stage bench_gpu_576 300 "$python" benchmarks/bench_gpu.py --smoke
  stage bench_e2e 300 "$python" benchmarks/bench_e2e.py --quick --csv "$out/e2e_$device.csv"
  stage bench_e2e_next 300 "$python" benchmarks/bench_e2e.py --quick --next --csv "$out/e2e_${device}_next.csv"
else
  stage tests 120 "$python" -m pytest -q -p no:cacheprovider tests/test_triton_prune.py tests/test_ops.py \
    tests/test_host_syncs.py tests/test_golden.py -k "cuda or triton"
  stage bench_gpu_576 45 "$python" benchmarks/bench_gpu.py --tokens 576 --csv "$out/gpu_${device}_576.csv"
  stage bench_gpu_2880 45 "$python" benchmarks/bench_gpu.py --tokens 2880 --csv "$out/gpu_${device}_2880.csv"
  stage bench_e2e_b1 30 "$python" benchmarks/bench_e2e.py --llava-7b --methods agile attention --batch 1 --repeats 5 \
    --csv "$out/e2e_${device}_b1.csv"
  stage bench_e2e_b8 30 "$python" benchmarks/bench_e2e.py --llava-7b --methods agile attention --batch 8 --repeats 5 \
    --csv "$out/e2e_${device}_b8.csv"
  stage bench_e2e_next_b1 30 "$python" benchmarks/bench_e2e.py --llava-7b --next --methods agile attention --batch 1 \
    --repeats 5 --csv "$out/e2e_${device}_next_b1.csv"
  stage bench_e2e_next_b8 40 "$python" benchmarks/bench_e2e.py --llava-7b --next --methods agile attention --batch 8 \
    --repeats 3 --csv "$out/e2e_${device}_next_b8.csv"
fi
echo "== summary ($summary)"
cat "$summary"
# the exit status says whether every stage passed; the results are in OUT either way
! grep -qv -e '^stage,' -e ',ok,' "$summary"

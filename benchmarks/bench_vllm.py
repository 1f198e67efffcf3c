"""vLLM with the ada_vtp plugin: engine start-up time and time to first token, with and without
the plugin and with and without pruning, on a tiny LLaVA-1.5 checkpoint at LLaVA-1.5's geometry.

    .venv-vllm/bin/python benchmarks/bench_vllm.py [--keep K] [--method M] [--repeats R] [--rounds N]
                                                   [--csv PATH]

Run it in the vLLM venv (tools/vllm_env.sh).  The checkpoint is the tests' tiny LLaVA-1.5
(tests/support/tiny_checkpoints.py: random weights, CLIP tower 336 px / 14 px, so 576 tokens per
image, width 64, 3 layers; Llama width 128, 2 layers), written to a temporary folder.  Three
cases, each in a fresh process (vLLM in-process, ``VLLM_ENABLE_V1_MULTIPROCESSING=0``, fp32,
eager, prefix caching off):

- ``off``: the plugin not loaded (``VLLM_PLUGINS=""``): vLLM as shipped;
- ``on``: the plugin loaded, no ``ada_vtp`` override: must match ``off`` in prompt length;
- ``pruned``: the plugin with ``hf_overrides={"ada_vtp": {"keep": K, "method": M}}``.

Measured per case: the start-up, wall-clock time of ``LLM(...)`` (config, weights, profiling
run, KV cache); the TTFT, ``llm.generate`` of one image prompt with ``max_tokens=1`` (processor,
vision tower, pruning, projector, prefill, one sampled token), median and 20th/80th percentiles
of ``--repeats`` calls after one warm-up (`_common.measure`), a new image each call so nothing
is cached; and the prompt tokens.  The same process gives the same TTFT within a few percent,
but fresh processes of one case differ by up to ~15 % here (where the allocator and the OpenMP
threads land), so the cases run in ``--rounds`` rounds of fresh processes, interleaved
(off, on, pruned, off, ...), and the table gives each case's median over the rounds with the
rounds' range.  Ratios are against ``off`` from the same run.  The tiny
language model is cheap, so the TTFT ratio is far from what a 7B model gains (benchmarks/bench_e2e.py
measures that shape with HF transformers); it shows that the plugin's path costs no more than the
tokens it removes.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
# the tests' tiny checkpoint builder: one definition of the model both use
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import _common  # noqa: E402

CASES = ("off", "on", "pruned")
IMAGE_SIZE = 336
PROMPT = "USER: <image>\nWhat is in this picture? ASSISTANT:"


def _child(case: str, checkpoint: str, keep: int, method: str, repeats: int) -> dict:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM, SamplingParams

    from support.vllm_runs import images

    overrides = {"ada_vtp": {"keep": keep, "method": method}} if case == "pruned" else {}
    start = time.perf_counter()
    llm = LLM(model=checkpoint, dtype="float32", max_model_len=2048, enforce_eager=True, gpu_memory_utilization=0.5,
              limit_mm_per_prompt={"image": 1}, enable_prefix_caching=False, mm_processor_cache_gb=0,
              hf_overrides=overrides)
    start_s = time.perf_counter() - start
    pictures = iter(images([(IMAGE_SIZE, IMAGE_SIZE)] * (repeats + 40), seed=7))
    params = SamplingParams(max_tokens=1, temperature=0)

    def first_token():
        return llm.generate({"prompt": PROMPT, "multi_modal_data": {"image": next(pictures)}}, params, use_tqdm=False)

    timing, outputs = _common.measure(first_token, min_repeats=repeats, max_repeats=repeats, budget_s=0.0)
    return {"case": case, "start_s": start_s, "ttft_p50": timing.p50, "ttft_p20": timing.p20,
            "ttft_p80": timing.p80, "prompt_tokens": len(outputs[0].prompt_token_ids)}


def _run_case(case: str, checkpoint: str, args) -> dict:
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    if case == "off":
        env["VLLM_PLUGINS"] = ""  # an allow-list naming no plugin
    command = [sys.executable, __file__, "--child", case, "--checkpoint", checkpoint, "--keep", str(args.keep),
               "--method", args.method, "--repeats", str(args.repeats)]
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"case {case} failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=int, default=64)
    parser.add_argument("--method", default="agile")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per case, interleaved")
    parser.add_argument("--csv", type=Path, default=None, help="append rows to this CSV")
    parser.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.checkpoint, args.keep, args.method, args.repeats)))
        return

    from support.tiny_checkpoints import save_llava

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = str(save_llava(Path(folder), image_size=IMAGE_SIZE))
        rounds = [[_run_case(case, checkpoint, args) for case in CASES] for _ in range(args.rounds)]
    env = _common.environment()
    summary = {}
    for i, case in enumerate(CASES):
        runs = [r[i] for r in rounds]
        summary[case] = {key: float(np.median([r[key] for r in runs])) for key in ("start_s", "ttft_p50")}
        summary[case].update(ttft_low=min(r["ttft_p50"] for r in runs), ttft_high=max(r["ttft_p50"] for r in runs),
                             prompt_tokens=runs[0]["prompt_tokens"])
    base = summary["off"]["ttft_p50"]
    print(f"vLLM, tiny LLaVA-1.5 (576 tokens per image), {env['cpu_name']}; pruned = {args.method}, K = {args.keep}; "
          f"median of {args.rounds} rounds of fresh processes, each TTFT the median of {args.repeats} calls")
    print(f"{'case':<8} {'start-up s':>10} {'TTFT ms (rounds: min-max)':>27} {'prompt tokens':>14} {'TTFT ratio':>11}")
    for case, r in summary.items():
        print(f"{case:<8} {r['start_s']:>10.1f} {r['ttft_p50']:>10.1f} ({r['ttft_low']:.1f}-{r['ttft_high']:.1f})"
              f"{'':>5} {r['prompt_tokens']:>14} {r['ttft_p50'] / base:>11.2f}")
    rows = []  # one set per process: its own start-up, TTFT percentiles and prompt length
    for runs in rounds:
        for r in runs:
            pruned = r["case"] == "pruned"
            common = {"op": "vllm", "provider": r["case"], "method": args.method if pruned else "", "B": 1, "N": 576,
                      "D": 64, "K": args.keep if pruned else 576, **env}
            rows += [{**common, "metric": "startup", "unit": "s", "p50": r["start_s"], "p20": "", "p80": ""},
                     {**common, "metric": "ttft", "unit": "ms", "p50": r["ttft_p50"], "p20": r["ttft_p20"],
                      "p80": r["ttft_p80"]},
                     {**common, "metric": "prompt_tokens", "unit": "tokens", "p50": r["prompt_tokens"], "p20": "",
                      "p80": ""}]
    if args.csv:
        _common.append_csv(args.csv, rows)


if __name__ == "__main__":
    main()

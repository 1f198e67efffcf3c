"""End-to-end time to first token and peak memory of a LLaVA-1.5 model (HF transformers'
``LlavaForConditionalGeneration``; LLaVA-NeXT with ``--next``) with and without `apply_ada_vtp`.

    python benchmarks/bench_e2e.py [--methods M ...] [--keeps K ...] [--batch B] [--repeats R]
                                   [--layers-vision L] [--layers-text L] [--hidden D] [--intermediate F]
                                   [--heads H] [--dtype {fp32,fp16,bf16}] [--device {auto,cpu,cuda}]
                                   [--llava-7b] [--next] [--inference-mode] [--quick] [--csv PATH]

What is measured, per case: K = 576 (the unpatched model: no pruning, the baseline) and
K in {192, 128, 64} for each method of ``--methods`` (default: agile), the model patched by
``apply_ada_vtp(model, keep=K, method=...)``:

- TTFT: the wall-clock time of ``model.generate(input_ids, attention_mask, pixel_values,
  max_new_tokens=1, do_sample=False)``, i.e. one prefill including the vision tower, the pruning,
  the projector, the language model and the LM head, plus generate's own overhead.  On CUDA the
  call is followed by ``torch.cuda.synchronize()`` inside the timed region.  Median (and 20th /
  80th percentiles) of ``--repeats`` calls after one untimed warm-up call (`_common.measure`).
  ``generate`` is called bare, as HF's examples do (grad mode on outside it);
  ``--inference-mode`` wraps each call in ``torch.inference_mode()``, as a serving stack would.
- peak memory of the forward pass, in MiB, above what the model and its inputs hold:
  on CUDA, ``torch.cuda.max_memory_allocated()`` over the warm-up and timed calls (after
  ``torch.cuda.reset_peak_memory_stats()``) minus ``torch.cuda.memory_allocated()`` before them;
  on CPU, every case runs in a fresh process (this script re-invokes itself with ``--case``) that
  builds the model and inputs, runs ``gc.collect()`` and glibc's ``malloc_trim(0)``, resets the
  kernel's peak-RSS mark (writes ``5`` to ``/proc/self/clear_refs``), reads ``VmRSS`` from
  ``/proc/self/status`` (the RSS after model construction), then runs the warm-up and timed calls
  and reads ``VmHWM``: the number is VmHWM - that RSS.  Resetting the mark keeps the transient
  peak of model construction (random initialisation) out of it.  Where the kernel refuses the
  reset (before Linux 4.0), VmHWM still includes construction, and the table says so.  RSS counts
  what glibc, MKL and OpenMP keep mapped and grows over repeated calls (fragmentation), so CPU
  numbers carry tens of MiB of slack.  The CSV also has ``peak_total`` (absolute peak RSS / peak
  allocated, weights included).
- allocator peak (``alloc``), the tensor-level counterpart of CUDA's ``max_memory_allocated`` on
  CPU: one more generate call under ``torch.profiler.profile(profile_memory=True)``, whose
  ``[memory]`` events (+bytes per allocation, -bytes per free, in time order) give the largest
  net sum: tensor bytes the call held at once beyond what existed before it.  It omits what
  torch's allocator does not see (MKL / oneDNN scratch, Python objects) and allocations made on
  OpenMP worker threads.  On CUDA it is the peak above (max_memory_allocated).
- LM tokens: the sequence length the language model (``model.model.language_model``) is called
  with at prefill (a forward pre-hook), per row: T + 576 unpatched, T + K pruned (one image per
  row).  LM-head rows: how many positions per row the LM head computes at prefill (HF's
  generate asks for the last one only, ``logits_to_keep=1``, when the model's ``forward``
  signature declares that argument).

Ratios are each case's value / the unpatched model's, measured in the same run (on CPU in a
separate process built the same way: same seed, same weights, same inputs).

Model (random weights, ``torch.manual_seed(0)``, SDPA attention everywhere), by default "a
small real-shaped config" for a CPU: LLaVA-1.5's shapes where they set token counts and widths,
fewer layers:

- vision: CLIP ViT-L/14-336: width 1024, MLP 4096, 16 heads, 336 px, 14 px patches -> 576
  patches + [CLS]; ``vision_feature_layer=-2``, ``vision_feature_select_strategy="default"``;
  ``--layers-vision`` 4 (of 24);
- projector: LLaVA-1.5's 2-layer GELU MLP, 1024 -> D -> D;
- language model: Llama, ``--hidden`` D = 2048 (of 4096), ``--intermediate`` 5504 (default
  D * 43 / 16, which gives 11008 at D = 4096), ``--heads`` 16 (default D / 128, no GQA),
  ``--layers-text`` 4 (of 32), vocab 32064 (image token 32000, pad 32001);
- fp32 on CPU (``--dtype``; default fp16 on CUDA).

``--llava-7b`` sets LLaVA-1.5-7B's full shapes (24 vision layers, D = 4096, 11008, 32 heads, 32
layers): for a GPU, e.g. ``python benchmarks/bench_e2e.py --llava-7b --dtype bf16``.

``--next``: LLaVA-NeXT (``LlavaNextForConditionalGeneration``, LLaVA-NeXT's grid pinpoints) with
one 672 x 672 image per row, its base view and 2 x 2 tiles: N = 5 x 576 = 2880 vision tokens and
48 newlines in the prompt (the image fills its grid, so nothing is unpadded away); K counts the
image's kept tokens, and the language model also sees the newline of every grid row (48).  With
``--llava-7b`` these are LLaVA-NeXT-7B's shapes (the same CLIP tower and Vicuna-7B).

Prompt: per row, BOS, 4 text tokens, the image's 576 placeholder tokens, the rest of the text:
T = 31 text tokens in all (``flops.DEFAULT_TEXT_TOKENS``, the count that reproduces the
AgilePruner paper's TFLOPs; ``--text-tokens``), random token ids; one random-normal 336 x 336
image per row; ``--batch`` rows (default 1), no padding.  Random weights and pixels make random
features, so the selection itself is not representative (see bench_cpu.py's notes), its cost is.

``--quick``: a tiny config (CLIP width 64 / 2 layers / 168 px -> 144 patches, Llama width 64 / 2
layers, K in {48, 32, 16}), 2 timed calls, no retries, 1 thread: a smoke test (seconds per case;
tests/test_bench_e2e.py runs it).

On a shared machine other processes slow CPU timings down: a measurement during which they used
more than a tenth of the CPU is retried after waiting for the machine to go idle (see
`_common.measure`); one still contended is marked "!" in the table and ``ttft_contended`` in the
CSV.  Rows (one per case and metric: ttft, peak_mem, peak_total) are appended to ``--csv``
(default for a full run: benchmarks/results/e2e_<cpu or gpu model>.csv; ``--quick`` writes only
where ``--csv`` is given).
"""

import argparse
import contextlib
import ctypes
import dataclasses
import gc
import importlib.metadata
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flops import DEFAULT_TEXT_TOKENS  # noqa: E402

import _common  # noqa: E402

DEFAULT_KEEPS = (192, 128, 64)
QUICK_KEEPS = (48, 32, 16)  # the default keeps / 4, as the quick image has 576 / 4 patches
IMAGE_TOKEN, PAD, BOS = 32000, 32001, 1
TEXT_BEFORE_IMAGE = 4  # "USER:" and the like, after BOS
RESULT_PREFIX = "E2E_RESULT "
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MIB = 2**20

CSV_COLUMNS = ("op", "provider", "method", "B", "N", "D", "K", "metric", "unit", "p50", "p20", "p80",
               "ratio_to_unpruned", "lm_tokens", "lm_head_rows", "repeats", "contention", "grad_mode", "config",
               "device", "cpu_name", "torch_version", "transformers_version", "git_sha", "timestamp")


@dataclasses.dataclass(frozen=True)
class Shape:
    """The model's shape (LLaVA-1.5 or LLaVA-NeXT with CLIP ViT-L/14-336 and a Llama language model)
    and dtype."""

    family: str = "llava"  # or "llava_next": a square image of 2 x 2 tiles plus the base view

    vision_layers: int = 4
    vision_width: int = 1024
    vision_intermediate: int = 4096
    vision_heads: int = 16
    image_size: int = 336
    patch_size: int = 14
    text_layers: int = 4
    hidden: int = 2048
    intermediate: int = 5504
    text_heads: int = 16
    vocab: int = 32064
    dtype: str = "fp32"

    @property
    def patches(self) -> int:
        """Patches of one tile (the base view)."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def tiles(self) -> int:
        """Tiles per side of the high-resolution grid (LLaVA-NeXT); 0 for LLaVA-1.5."""
        return NEXT_GRID if self.family == "llava_next" else 0

    @property
    def tokens(self) -> int:
        """N: one image's vision tokens, the pool pruned to K (LLaVA-NeXT: base view and grid)."""
        return self.patches * (1 + self.tiles**2)

    @property
    def placeholders(self) -> int:
        """One image's placeholder tokens in the prompt: N, plus LLaVA-NeXT's newline after each row
        of the grid (the image fills the grid exactly, so nothing is unpadded away)."""
        return self.tokens + self.tiles * (self.image_size // self.patch_size)

    def describe(self) -> str:
        image = (f"LLaVA-NeXT {self.tiles * self.image_size}px image = base view + {self.tiles}x{self.tiles} tiles "
                 f"({self.tokens} tokens + {self.placeholders - self.tokens} newlines); " if self.tiles else "")
        return (image + f"vision CLIP w{self.vision_width}/mlp{self.vision_intermediate}/h{self.vision_heads}/"
                f"{self.image_size}px/p{self.patch_size} ({self.patches} patches) x{self.vision_layers} layers "
                f"(feature layer -2); projector {self.vision_width}->{self.hidden}->{self.hidden}; "
                f"text Llama d{self.hidden}/ff{self.intermediate}/h{self.text_heads} x{self.text_layers} layers "
                f"vocab {self.vocab}; {self.dtype}; random init seed 0; sdpa")


QUICK_SHAPE = Shape(vision_layers=2, vision_width=64, vision_intermediate=128, vision_heads=4, image_size=168,
                    text_layers=2, hidden=64, intermediate=172, text_heads=4)
LLAVA_7B = {"layers_vision": 24, "layers_text": 32, "hidden": 4096}
NEXT_GRID = 2  # LLaVA-NeXT's 672 x 672 image: a 2 x 2 grid of 336 px tiles, 2880 tokens, 48 newlines


@dataclasses.dataclass(frozen=True)
class Case:
    """One measurement: keep=None is the unpatched model."""

    shape: Shape
    keep: int | None
    method: str
    batch: int
    text_tokens: int
    device: str
    repeats: int
    quick: bool
    inference_mode: bool
    threads: int  # torch.set_num_threads; 0: torch's default

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Case":
        fields = json.loads(text)
        return cls(**{**fields, "shape": Shape(**fields["shape"])})


# --------------------------------------------------------------------------------------------
# model and prompt


def build_model(shape: Shape, device: str):
    """LlavaForConditionalGeneration with random weights (seed 0), eval mode, on `device`."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
    )
    from transformers.utils import logging

    logging.set_verbosity_error()
    vision = CLIPVisionConfig(hidden_size=shape.vision_width, intermediate_size=shape.vision_intermediate,
                              num_hidden_layers=shape.vision_layers, num_attention_heads=shape.vision_heads,
                              image_size=shape.image_size, patch_size=shape.patch_size, projection_dim=768)
    text = LlamaConfig(hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                       num_hidden_layers=shape.text_layers, num_attention_heads=shape.text_heads,
                       num_key_value_heads=shape.text_heads, vocab_size=shape.vocab, pad_token_id=PAD,
                       bos_token_id=BOS, eos_token_id=2, max_position_embeddings=4096, rms_norm_eps=1e-5)
    common = dict(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN, vision_feature_layer=-2,
                  vision_feature_select_strategy="default", projector_hidden_act="gelu")
    if shape.family == "llava_next":
        side = shape.image_size  # LLaVA-NeXT's pinpoints, in tiles
        pinpoints = [[side, 2 * side], [2 * side, side], [2 * side, 2 * side], [3 * side, side], [side, 3 * side]]
        config = LlavaNextConfig(image_grid_pinpoints=pinpoints, **common)
        model_class = LlavaNextForConditionalGeneration
    else:
        config, model_class = LlavaConfig(**common), LlavaForConditionalGeneration
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: a 7B model never exists in fp32 on the host
        model = model_class._from_config(config, dtype=DTYPES[shape.dtype], attn_implementation="sdpa")
    model.eval()
    model.generation_config.pad_token_id = PAD
    model.generation_config.eos_token_id = None  # one token is generated whatever it is
    return model


def make_prompt(shape: Shape, batch: int, text_tokens: int, device: str) -> dict:
    """generate's inputs: per row BOS, text, the image's placeholders, more text (`text_tokens`
    non-image tokens in all, BOS included); one random-normal image per row (LLaVA-NeXT: its base
    view and grid tiles, and its size)."""
    if text_tokens < TEXT_BEFORE_IMAGE + 1:
        raise ValueError(f"--text-tokens {text_tokens}: need at least {TEXT_BEFORE_IMAGE + 1}")
    gen = torch.Generator().manual_seed(1)
    text = torch.randint(2, IMAGE_TOKEN, (batch, text_tokens - 1), generator=gen)
    image = torch.full((batch, shape.placeholders), IMAGE_TOKEN)
    input_ids = torch.cat([torch.full((batch, 1), BOS), text[:, :TEXT_BEFORE_IMAGE], image,
                           text[:, TEXT_BEFORE_IMAGE:]], dim=1)
    views = (1 + shape.tiles**2,) if shape.tiles else ()
    pixels = torch.randn(batch, *views, 3, shape.image_size, shape.image_size, generator=gen)
    inputs = {"input_ids": input_ids.to(device), "attention_mask": torch.ones_like(input_ids).to(device),
              "pixel_values": pixels.to(device, DTYPES[shape.dtype])}
    if shape.tiles:
        inputs["image_sizes"] = torch.tensor([[shape.tiles * shape.image_size] * 2] * batch, device=device)
    return inputs


# --------------------------------------------------------------------------------------------
# memory


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _release_freed_memory() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class CpuPeak:
    """Peak RSS above the RSS at construction (see the module docstring)."""

    def __init__(self):
        _release_freed_memory()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            self.reset = True
        except OSError:
            self.reset = False
        self.base = _status_kib("VmRSS") * 1024

    def read(self) -> tuple[float, float]:
        """(peak above the base, absolute peak) in bytes."""
        peak = _status_kib("VmHWM") * 1024
        return peak - self.base, peak


class CudaPeak:
    """Peak allocated CUDA memory above what was allocated at construction."""

    def __init__(self):
        _release_freed_memory()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        self.base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        self.reset = True

    def read(self) -> tuple[float, float]:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return peak - self.base, peak


# --------------------------------------------------------------------------------------------
# one case


def allocator_peak(call) -> float | None:
    """Bytes of CPU tensors that `call()` held at once beyond those alive before it (the profiler's
    memory events); None where the profiler gives none."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        call()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    if not events:
        return None
    total = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        total += e.nbytes()
        peak = max(peak, total)
    return float(peak)


def repeats_of(case: Case) -> dict:
    if case.quick:
        return {"warmup": 1, "min_repeats": case.repeats, "max_repeats": case.repeats, "budget_s": 0.0, "retries": 0}
    return {"warmup": 1, "min_repeats": case.repeats, "max_repeats": case.repeats, "budget_s": 0.0, "retries": 2}


def measure_case(model, inputs: dict, case: Case) -> dict:
    """Patches `model` for the case (unpatched for keep=None), times generate, reads the peak
    memory, and restores the model.  Returns the result as a JSON-able dict."""
    from ada_vtp_kernels.integrations import apply_ada_vtp, remove_ada_vtp

    if case.keep is not None:
        apply_ada_vtp(model, keep=case.keep, method=case.method)
    lm_tokens: list[int] = []
    head_rows: list[int] = []
    hooks = [
        model.model.language_model.register_forward_pre_hook(
            lambda module, args, kwargs: lm_tokens.append((args[0] if args else kwargs["inputs_embeds"]).shape[1]),
            with_kwargs=True),
        model.lm_head.register_forward_pre_hook(lambda module, args: head_rows.append(args[0].shape[1])),
    ]
    cuda = case.device.startswith("cuda")
    grad_mode = torch.inference_mode if case.inference_mode else contextlib.nullcontext

    def call():
        with grad_mode():
            out = model.generate(**inputs, max_new_tokens=1, do_sample=False)
        if cuda:
            torch.cuda.synchronize()
        return out

    try:
        peak = CudaPeak() if cuda else CpuPeak()
        timing, out = _common.measure(call, **repeats_of(case))
        forward_bytes, total_bytes = peak.read()
        alloc_bytes = forward_bytes if cuda else allocator_peak(call)
    finally:
        for hook in hooks:
            hook.remove()
        if case.keep is not None:
            remove_ada_vtp(model)
    if out.shape != (case.batch, lm_tokens[-1] + 1):
        raise RuntimeError(f"generate returned {tuple(out.shape)}; expected ({case.batch}, {lm_tokens[-1] + 1})")
    return {"ttft": timing._asdict(), "peak_mem_mib": forward_bytes / MIB, "peak_total_mib": total_bytes / MIB,
            "peak_alloc_mib": None if alloc_bytes is None else alloc_bytes / MIB,
            "peak_reset": peak.reset, "lm_tokens": lm_tokens[-1], "lm_head_rows": head_rows[-1],
            "weights_mib": sum(p.numel() * p.element_size() for p in model.parameters()) / MIB}


def run_child(case: Case) -> dict:
    """Runs one CPU case in a fresh process (this script with --case) and returns its result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--case", case.to_json()]
    run = subprocess.run(cmd, capture_output=True, text=True)
    for line in run.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    raise RuntimeError(f"case K={case.keep} {case.method} failed (exit {run.returncode}):\n"
                       f"{run.stdout[-3000:]}{run.stderr[-3000:]}")


def child_main(spec: str) -> int:
    case = Case.from_json(spec)
    if case.threads:
        torch.set_num_threads(case.threads)
    model = build_model(case.shape, case.device)
    inputs = make_prompt(case.shape, case.batch, case.text_tokens, case.device)
    print(RESULT_PREFIX + json.dumps(measure_case(model, inputs, case)), flush=True)
    return 0


# --------------------------------------------------------------------------------------------
# output


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return _common.cpu_name()


def default_csv_path(device: str) -> Path:
    """benchmarks/results/e2e_<cpu or gpu model>.csv (the hostname when the CPU model is unknown)."""
    name = device_name(device)
    if name == "unknown-cpu":
        name = socket.gethostname()
    return _common.RESULTS_DIR / ("e2e_" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") + ".csv")


def fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"


def ratio(num: float | None, den: float | None, digits: int = 2, missing: str = "-") -> str:
    return f"{num / den:.{digits}f}" if num is not None and den else missing


def table(results: list[tuple[Case, dict]], base: dict) -> str:
    header = ("K", "method", "LM_tokens", "LM_head_rows", "TTFT_ms", "TTFT_x", "peak_MiB", "peak_x", "alloc_MiB",
              "alloc_x")
    lines = [header]
    for case, r in results:
        ttft = _common.Timing(**r["ttft"])
        lines.append((str(case.keep or case.shape.tokens), case.method, str(r["lm_tokens"]), str(r["lm_head_rows"]),
                      fmt(ttft.p50) + ("!" if ttft.contended else ""), ratio(ttft.p50, base["ttft"]["p50"]),
                      fmt(r["peak_mem_mib"]), ratio(r["peak_mem_mib"], base["peak_mem_mib"]),
                      "-" if r["peak_alloc_mib"] is None else fmt(r["peak_alloc_mib"]),
                      ratio(r["peak_alloc_mib"], base["peak_alloc_mib"])))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [" ".join(cell.ljust(w) if i == 1 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
            for line in lines]
    text.insert(1, "-" * len(text[0]))
    return "\n".join(text)


def csv_rows(results: list[tuple[Case, dict]], base: dict, env: dict) -> list[dict]:
    rows = []
    for case, r in results:
        ttft = _common.Timing(**r["ttft"])
        common = dict(op="e2e_ttft", provider="hf_unpatched" if case.keep is None else "ada_vtp", method=case.method,
                      B=case.batch, N=case.shape.tokens, D=case.shape.hidden, K=case.keep or case.shape.tokens,
                      lm_tokens=r["lm_tokens"], lm_head_rows=r["lm_head_rows"], repeats=ttft.repeats,
                      contention=f"{ttft.contention:.3f}",
                      grad_mode="inference_mode" if case.inference_mode else "bare",
                      config=f"{case.shape.describe()}; T={case.text_tokens}", **env)
        rows.append(dict(common, metric="ttft_contended" if ttft.contended else "ttft", unit="ms",
                         p50=f"{ttft.p50:.3f}", p20=f"{ttft.p20:.3f}", p80=f"{ttft.p80:.3f}",
                         ratio_to_unpruned=ratio(ttft.p50, base["ttft"]["p50"], 4, "")))
        for metric, key in (("peak_mem", "peak_mem_mib"), ("peak_alloc", "peak_alloc_mib"),
                            ("peak_total", "peak_total_mib")):
            if r[key] is None:
                continue
            rows.append(dict(common, metric=metric, unit="MiB", p50=f"{r[key]:.2f}", p20="", p80="",
                             ratio_to_unpruned=ratio(r[key], base[key], 4, "")))
    return rows


# --------------------------------------------------------------------------------------------
# main


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["agile"], help="pruning methods (default: agile)")
    parser.add_argument("--keeps", nargs="+", type=int, default=None,
                        help=f"K values besides the unpruned model (default: {DEFAULT_KEEPS}; --quick: {QUICK_KEEPS})")
    parser.add_argument("--batch", type=int, default=1, help="prompts (rows, one image each) per generate call")
    parser.add_argument("--text-tokens", type=int, default=DEFAULT_TEXT_TOKENS, help="non-image tokens per row")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per case (default: 3 CPU, 10 CUDA)")
    parser.add_argument("--layers-vision", type=int, default=None, help="CLIP layers (default 4; LLaVA-1.5: 24)")
    parser.add_argument("--layers-text", type=int, default=None, help="Llama layers (default 4; LLaVA-1.5-7B: 32)")
    parser.add_argument("--hidden", type=int, default=None, help="Llama width (default 2048; LLaVA-1.5-7B: 4096)")
    parser.add_argument("--intermediate", type=int, default=None, help="Llama MLP width (default hidden * 43 / 16)")
    parser.add_argument("--heads", type=int, default=None, help="Llama heads (default hidden / 128)")
    parser.add_argument("--llava-7b", action="store_true",
                        help="LLaVA-1.5-7B's layer counts and widths (with --next: LLaVA-NeXT-7B's, the same)")
    parser.add_argument("--next", action="store_true",
                        help="LLaVA-NeXT: one 2x2-tile image per row (base view + grid: 5 x 576 tokens, 48 newlines)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: fp32 on CPU, fp16 on CUDA")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N")
    parser.add_argument("--inference-mode", action="store_true", help="wrap generate in torch.inference_mode()")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per case (default: torch's default; --quick: 1)")
    parser.add_argument("--quick", action="store_true", help="tiny config, 2 timed calls: a smoke test")
    parser.add_argument("--csv", type=Path, default=None,
                        help="append the rows here (default: benchmarks/results/e2e_<device>.csv; none with --quick)")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: one CPU case, as JSON
    return parser.parse_args(argv)


def shape_of(args, device: str) -> Shape:
    base = QUICK_SHAPE if args.quick else Shape()
    preset = LLAVA_7B if args.llava_7b else {}
    layers_vision = args.layers_vision or preset.get("layers_vision", base.vision_layers)
    layers_text = args.layers_text or preset.get("layers_text", base.text_layers)
    hidden = args.hidden or preset.get("hidden", base.hidden)
    customised = hidden != base.hidden
    intermediate = args.intermediate or (hidden * 43 // 16 if customised else base.intermediate)
    heads = args.heads or (max(hidden // 128, 1) if customised else base.text_heads)
    dtype = args.dtype or ("fp16" if device.startswith("cuda") else "fp32")
    return dataclasses.replace(base, family="llava_next" if args.next else "llava", vision_layers=layers_vision,
                               text_layers=layers_text, hidden=hidden, intermediate=intermediate, text_heads=heads,
                               dtype=dtype)


class OthersShare:
    """The share of the machine's CPU that processes other than this one and its cases (reaped
    children) used from construction on; 0 where /proc/stat is missing."""

    def __init__(self):
        self.busy, self.ours, self.wall = _common._machine_busy_seconds(), self.own_seconds(), time.perf_counter()

    @staticmethod
    def own_seconds() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def share(self) -> float:
        if self.busy is None:
            return 0.0
        others = (_common._machine_busy_seconds() - self.busy) - (self.own_seconds() - self.ours)
        return max(others, 0.0) / (max(time.perf_counter() - self.wall, 0.1) * (os.cpu_count() or 1))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.case is not None:
        return child_main(args.case)
    from ada_vtp_kernels import ops, spec

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    cuda = device.startswith("cuda")
    shape = shape_of(args, device)
    keeps = args.keeps or (QUICK_KEEPS if args.quick else DEFAULT_KEEPS)
    for method in args.methods:
        if method not in spec.METHODS:
            raise SystemExit(f"--methods {method}: expected one of {', '.join(spec.METHODS)}")
    for keep in keeps:
        if not 1 <= keep <= shape.tokens:
            raise SystemExit(f"--keeps {keep}: expected 1..{shape.tokens}")
    repeats = args.repeats or (2 if args.quick else 10 if cuda else 3)
    csv_path = args.csv or (None if args.quick else default_csv_path(device))
    threads = args.threads if args.threads is not None else (1 if args.quick else 0)
    if threads:
        torch.set_num_threads(threads)
    env = {**_common.environment(), "device": device_name(device),
           "transformers_version": importlib.metadata.version("transformers")}
    print(f"ada_vtp end-to-end benchmark: {env['device']} ({device}), {os.cpu_count()} cores, torch "
          f"{env['torch_version']} ({torch.get_num_threads()} threads), transformers {env['transformers_version']}, "
          f"git {env['git_sha']}, {env['timestamp']}")
    print(f"model: {'LLaVA-NeXT' if shape.tiles else 'LLaVA-1.5'} shapes, {shape.describe()}")
    print(f"prompt: batch {args.batch}, {shape.placeholders} visual + {args.text_tokens} text tokens per row; generate "
          f"max_new_tokens=1 ({'inside torch.inference_mode()' if args.inference_mode else 'bare call'}); "
          f"C++ op {'loaded' if ops.extension_loaded() else 'NOT built (the pure-PyTorch path runs)'}")

    def case(keep, method):
        return Case(shape, keep, method, args.batch, args.text_tokens, device, repeats, args.quick,
                    args.inference_mode, threads)

    cases = [case(None, "none")] + [case(k, m) for m in args.methods for k in sorted(keeps, reverse=True)]
    contention = OthersShare()
    results: list[tuple[Case, dict]] = []
    failed = 0
    if cuda:
        model = build_model(shape, device)
        inputs = make_prompt(shape, args.batch, args.text_tokens, device)
    for c in cases:
        start = time.perf_counter()
        try:
            r = measure_case(model, inputs, c) if cuda else run_child(c)
        except Exception as e:  # one method failing leaves the others' rows
            print(f"  case K={c.keep} {c.method} FAILED: {e}", file=sys.stderr, flush=True)
            failed += 1
            if c.keep is None:
                return 1
            continue
        results.append((c, r))
        print(f"  {time.strftime('%H:%M:%S')} K={c.keep or shape.tokens} {c.method}: TTFT "
              f"{r['ttft']['p50']:.1f} ms, {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    base = results[0][1]
    print(f"weights: {base['weights_mib']:.0f} MiB; peak: "
          + ("CUDA max_memory_allocated above the allocated memory before the calls" if cuda else
             "VmHWM above VmRSS after construction, each case in a fresh process"
             + ("" if base["peak_reset"] else " (the kernel refused the VmHWM reset: construction's peak included)")))
    print(table(results, base))
    print(f"TTFT: median of {repeats} generate(max_new_tokens=1) calls after 1 warm-up"
          f"{' (quick: no contention retries)' if args.quick else ''}; _x: ratio to the unpatched model (K="
          f"{shape.tokens}); '!': other processes used > {_common.CONTENTION_LIMIT:.0%} of the CPU meanwhile, "
          f"even after retries.  peak_MiB: the forward's peak memory above the model and inputs"
          + ("." if cuda else " (RSS); alloc_MiB: the peak of torch's CPU allocator in one more call (profiler)."))
    wide = [f"K={c.keep} {c.method}" for c, r in results if c.keep is not None and r["lm_head_rows"] > 1]
    if wide:
        print(f"note: the LM head ran on every prefill position ({', '.join(wide)}), not on the last one as "
              f"for the unpatched model: generate did not pass logits_to_keep=1 to the patched forward")
    share = contention.share()
    if share > _common.CONTENTION_LIMIT:
        print(f"WARNING: other processes used {share:.0%} of the {os.cpu_count()} cores during the run: CPU "
              f"timings are unreliable; rerun on an idle machine")
    if csv_path:
        rows = csv_rows(results, base, {k: env[k] for k in CSV_COLUMNS if k in env})
        _common.append_csv(csv_path, rows, CSV_COLUMNS)
        print(f"wrote {len(rows)} rows to {csv_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Prefill FLOPs of the language model of LLaVA-1.5-7B/13B, LLaVA-NeXT-7B, Qwen2.5-VL-7B and Qwen3-VL-8B for K
visual tokens kept per image, computed from the models' published configs (no model is loaded).

    python benchmarks/flops.py [--model NAME] [--keep K ...] [--text-tokens T] [--convention {fastv,dense}]
                               [--csv PATH]

prints, per model, the TFLOPs of one prefill at K in {full, 576, 192, 128, 64} (those <= the model's full count)
and their ratio to the full count, and writes them to ``--csv`` (default benchmarks/results/flops.csv).

What is counted, per decoder layer, for a prompt of n = images * K + T tokens (d hidden size, m FFN intermediate
size, d_kv = KV heads * head dim, which is d without GQA), in multiply-adds (MACs):

- projections: n*d*(2d + 2*d_kv): Q and O are d x d, K and V are d x d_kv (GQA-aware);
- attention: 2*n^2*d: the scores Q K^T and the weighted sum of V, over all query heads, for the full n x n square
  (a causal kernel that skips the masked half does about half);
- FFN: f*n*d*m with f matrices of d x m;

times L layers, plus, where the convention counts it, the LM head (d x vocab) on the last token only, the one
whose logits a prefill needs.  Not counted: embedding lookups, norms, RoPE, softmax, the SiLU gate, biases,
residuals (element-wise work, O(n*d) or O(n^2*heads), well under 0.1 %), the vision encoder and the projector.
Two conventions:

- ``fastv`` (default): FastV's formula (Chen et al., ECCV 2024, sec. 4) L*(4nd^2 + 2n^2d + 2ndm), which
  token-pruning papers commonly reuse: one "FLOP" per multiply-add, an FFN of f = 2 matrices, no LM head; with
  GQA its 4nd^2 becomes n*d*(2d + 2*d_kv).  It is the only convention we found that reproduces the AgilePruner
  paper's LLaVA-1.5-7B numbers, 3.14 TFLOPs at 576 visual tokens and 0.48 at 64: with T = 31 text tokens it
  gives 3.152 (+0.4 %) and 0.4805 (+0.1 %).  No integer T gives both to the paper's two decimals (T = 29:
  3.141 / 0.470; T = 31 minimises the larger relative error); the pair is consistent with T of 29 to 31.
  We searched {3, 4} d x d projections x {1, 2, 4} n^2*d terms x {2, 3} FFN matrices x {1, 2} FLOPs per
  multiply-add x {none, last token, every token} through the LM head, over T in 0..399: the LM head on the
  last token changes nothing visible; the next best fits, 1 % off, halve the n^2 term (T = 32) or put every
  token through the LM head (T = 28); every variant with 3 FFN matrices or 2 FLOPs per multiply-add is 12 %
  off or more.  The formula with LLaMA's real SwiGLU FFN (3 d x m matrices) gives 3.82 TFLOPs at 576 visual
  tokens with no text at all, so the paper's count cannot include the third matrix.  T = 31 is what the
  paper's numbers imply, not a measured TextVQA prompt: LLaVA-1.5's TextVQA prompts (system sentence,
  question, OCR tokens, answer instruction) are longer, the system sentence alone about 30 tokens; pass
  ``--text-tokens`` for them.
- ``dense``: the multiply-adds a dense prefill runs, 2 FLOPs each: the FFN with its 3 SwiGLU matrices (gate, up,
  down) and the LM head on the last token; about 2.6x the ``fastv`` count.

Visual tokens per image, "full": LLaVA-1.5: 576 (24 x 24 patches of a 336-px image).  LLaVA-NeXT: 2880 = 5 x 576
(the base view and a 2 x 2 grid of 336-px tiles), the figure the pruning literature quotes; the HF processor's
exact count depends on the image: for 672 x 672 it adds one newline token per feature row (2928), and for
non-square images it unpads rows or columns.  Qwen2.5-VL: resolution-dependent, (H/28) * (W/28) after the
2 x 2 merger; the default 1296 is a 1008 x 1008 image ((1008/14/2)^2); pass any N to `prefill_flops`.
Qwen3-VL: likewise, with 16-px patches, (H/32) * (W/32); the default 1024 is a 1024 x 1024 image ((1024/16/2)^2).
Its DeepStack additions (visual features added to the visual positions of the first layers) are element-wise
and not counted.
"""

import argparse
import csv
import dataclasses
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_CSV = RESULTS_DIR / "flops.csv"
CSV_COLUMNS = ("model", "visual_tokens", "text_tokens", "tflops", "ratio_to_full", "convention")

# The text tokens that, with the fastv convention, reproduce the AgilePruner paper's LLaVA-1.5-7B numbers
# (3.14 / 0.48 TFLOPs at 576 / 64 visual tokens); see the module docstring.
DEFAULT_TEXT_TOKENS = 31
DEFAULT_KEEPS = (576, 192, 128, 64)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The language-model shape that the prefill FLOPs depend on, from the HF hub config `hub_id`, and the
    model's default full count of visual tokens per image."""

    hub_id: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    full_visual_tokens: int

    @property
    def kv_dim(self) -> int:
        """Width of the K and V projections: KV heads x head dim (the hidden size without GQA)."""
        return self.kv_heads * (self.hidden // self.heads)


# From each repo's config.json (text_config for the LLaVA models).  llava-1.5-7b-hf and llava-v1.6-vicuna-7b-hf
# list only vocab_size (32064) in their text_config and take the rest from transformers' LlamaConfig defaults
# (4096 / 11008 / 32 layers / 32 heads / 32 KV heads; checked in transformers 5.24), vicuna-7b-v1.5's shape.
# llava-1.5-13b-hf: vicuna-13b-v1.5's 5120 / 13824 / 40 / 40 / 40 and vocab 32064.  Qwen2.5-VL-7B-Instruct:
# 3584 / 18944 / 28 layers / 28 heads / 4 KV heads, vocab 152064.  Checked against copies of these configs on
# huggingface.co (quantized and fine-tuned derivatives that name the repo as their source; for the 13B,
# liuhaotian/llava-v1.5-13b and llava-hf/llava-v1.6-vicuna-13b-hf), not against the repos themselves.
# Qwen3-VL-8B-Instruct: text_config 4096 / 12288 / 36 layers / 32 heads / 8 KV heads (head_dim 128 = 4096 / 32),
# vocab 151936, the Qwen3-8B language model's shape.  transformers' Qwen3VLTextConfig defaults (5.25) are not
# this checkpoint's (4096 / 22016 / 32 / 32 / 32); only its vocab 151936 and head_dim 128 agree.  Not checked
# against the hub repo's config.json (no network here): taken from the issue, consistent with Qwen3-8B's
# published shape.
MODELS = {
    "llava-1.5-7b": ModelConfig("llava-hf/llava-1.5-7b-hf", hidden=4096, intermediate=11008, layers=32, heads=32,
                                kv_heads=32, vocab=32064, full_visual_tokens=576),
    "llava-1.5-13b": ModelConfig("llava-hf/llava-1.5-13b-hf", hidden=5120, intermediate=13824, layers=40, heads=40,
                                 kv_heads=40, vocab=32064, full_visual_tokens=576),
    "llava-next-7b": ModelConfig("llava-hf/llava-v1.6-vicuna-7b-hf", hidden=4096, intermediate=11008, layers=32,
                                 heads=32, kv_heads=32, vocab=32064, full_visual_tokens=2880),
    "qwen2.5-vl-7b": ModelConfig("Qwen/Qwen2.5-VL-7B-Instruct", hidden=3584, intermediate=18944, layers=28,
                                 heads=28, kv_heads=4, vocab=152064, full_visual_tokens=1296),
    "qwen3-vl-8b": ModelConfig("Qwen/Qwen3-VL-8B-Instruct", hidden=4096, intermediate=12288, layers=36, heads=32,
                               kv_heads=8, vocab=151936, full_visual_tokens=1024),
}


@dataclasses.dataclass(frozen=True)
class Convention:
    """How a FLOP count is made: FLOPs per multiply-add, d x m matrices in the FFN, tokens through the LM head."""

    flops_per_mac: int
    ffn_matrices: int
    lm_head_tokens: int


CONVENTIONS = {
    "fastv": Convention(flops_per_mac=1, ffn_matrices=2, lm_head_tokens=0),
    "dense": Convention(flops_per_mac=2, ffn_matrices=3, lm_head_tokens=1),
}


def _convention(name: str) -> Convention:
    """The `CONVENTIONS` entry `name`; ValueError naming the known conventions otherwise."""
    if name not in CONVENTIONS:
        raise ValueError(f"unknown FLOP convention {name!r}; expected one of {sorted(CONVENTIONS)}")
    return CONVENTIONS[name]


def sequence_flops(config: ModelConfig, tokens: int, convention: str = "fastv") -> float:
    """FLOPs of one prefill of `tokens` tokens through the language model `config`, counted as the module
    docstring describes."""
    if tokens < 1:
        raise ValueError(f"a prefill needs at least 1 token, got {tokens}")
    conv = _convention(convention)
    d, n = config.hidden, tokens
    layer = n * d * (2 * d + 2 * config.kv_dim) + 2 * n * n * d + conv.ffn_matrices * n * d * config.intermediate
    return float(conv.flops_per_mac * (config.layers * layer + conv.lm_head_tokens * d * config.vocab))


def model_config(model: str) -> ModelConfig:
    """The `MODELS` entry of `model`; ValueError naming the known models otherwise."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; expected one of {list(MODELS)}")
    return MODELS[model]


def prefill_flops(model: str, visual_tokens: int, text_tokens: int = DEFAULT_TEXT_TOKENS, images: int = 1,
                  convention: str = "fastv") -> float:
    """FLOPs of the language model's prefill when `images` images each keep `visual_tokens` visual tokens and
    the prompt has `text_tokens` text tokens; `model` is a key of `MODELS`, `convention` one of `CONVENTIONS`."""
    config = model_config(model)
    if visual_tokens < 0:
        raise ValueError(f"visual_tokens must be >= 0, got {visual_tokens}")
    if text_tokens < 0:
        raise ValueError(f"text_tokens must be >= 0, got {text_tokens}")
    if images < 1:
        raise ValueError(f"images must be >= 1, got {images}")
    return sequence_flops(config, images * visual_tokens + text_tokens, convention)


def sweep(models, keeps, text_tokens: int, convention: str) -> tuple[list[dict], list[str]]:
    """The table's rows (one per model and kept count: the full count first, then the `keeps` below it, in
    descending order) and notes on the `keeps` skipped because they exceed a model's full count."""
    rows, notes = [], []
    for name in models:
        full = MODELS[name].full_visual_tokens
        full_flops = prefill_flops(name, full, text_tokens, convention=convention)
        skipped = sorted(k for k in set(keeps) if k > full)
        if skipped:
            notes.append(f"{name}: skipped K = {', '.join(map(str, skipped))} (above its full count {full})")
        for k in [full] + sorted((k for k in set(keeps) if k < full), reverse=True):
            flops = prefill_flops(name, k, text_tokens, convention=convention)
            rows.append(dict(model=name, visual_tokens=k, text_tokens=text_tokens, tflops=flops / 1e12,
                             ratio_to_full=flops / full_flops, convention=convention))
    return rows, notes


def table(rows: list[dict]) -> str:
    """The rows as an aligned text table."""
    header = ("model", "K", "tokens", "TFLOPs", "ratio")
    lines = [header] + [(r["model"], str(r["visual_tokens"]), str(r["visual_tokens"] + r["text_tokens"]),
                         f"{r['tflops']:.3f}", f"{r['ratio_to_full']:.3f}") for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [" ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
            for line in lines]
    text.insert(1, "-" * len(text[0]))
    return "\n".join(text)


def write_csv(rows: list[dict], path: Path) -> None:
    """Writes (overwrites) the rows to `path`, TFLOPs to 4 decimals and ratios to 4."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "tflops": f"{r['tflops']:.4f}", "ratio_to_full": f"{r['ratio_to_full']:.4f}"})


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=list(MODELS), action="append",
                        help="a model to tabulate (repeatable; default: all)")
    parser.add_argument("--keep", type=non_negative_int, nargs="+", default=list(DEFAULT_KEEPS), metavar="K",
                        help=f"visual tokens kept per image, besides the full count (default: {DEFAULT_KEEPS})")
    parser.add_argument("--text-tokens", type=non_negative_int, default=DEFAULT_TEXT_TOKENS, metavar="T",
                        help=f"text tokens in the prompt (default: {DEFAULT_TEXT_TOKENS})")
    parser.add_argument("--convention", choices=list(CONVENTIONS), default="fastv",
                        help="fastv: the papers' count (default); dense: 2 FLOPs per multiply-add, SwiGLU, LM head")
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help=f"output CSV (default: {DEFAULT_CSV})")
    args = parser.parse_args(argv)

    rows, notes = sweep(args.model or list(MODELS), args.keep, args.text_tokens, args.convention)
    print(f"LLM prefill FLOPs, one image, {args.text_tokens} text tokens, convention {args.convention!r}; "
          f"K = visual tokens kept, tokens = K + text, ratio = FLOPs / FLOPs at the full count")
    print(table(rows))
    for note in notes:
        print("note:", note)
    write_csv(rows, args.csv)
    print(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

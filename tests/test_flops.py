"""benchmarks/flops.py: the AgilePruner paper's LLaVA-1.5-7B numbers, the formula's structure (linear plus
quadratic in the token count, GQA-aware K/V projections), the CLI and its CSV, and the errors on bad input."""

import csv
import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "flops.py"


def _load_flops():
    spec = importlib.util.spec_from_file_location("flops", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


flops = _load_flops()


def test_reproduces_agilepruner_llava_1_5_7b():
    assert flops.prefill_flops("llava-1.5-7b", 576) / 1e12 == pytest.approx(3.14, abs=0.02)
    assert flops.prefill_flops("llava-1.5-7b", 64) / 1e12 == pytest.approx(0.48, abs=0.01)


@pytest.mark.parametrize("convention", sorted(flops.CONVENTIONS))
@pytest.mark.parametrize("model", list(flops.MODELS))
def test_monotonic_in_kept_tokens(model, convention):
    full = flops.MODELS[model].full_visual_tokens
    counts = [flops.prefill_flops(model, k, convention=convention) for k in range(0, full + 1, 16)]
    assert all(a < b for a, b in zip(counts, counts[1:]))


def test_matches_the_formula_by_hand():
    d, m, layers, vocab = 4096, 11008, 32, 32064  # LLaMA-7B shape, MHA
    n = 10 + 2  # 10 visual tokens, 2 text tokens
    fastv = layers * (4 * n * d * d + 2 * n * n * d + 2 * n * d * m)
    dense = 2 * (layers * (4 * n * d * d + 2 * n * n * d + 3 * n * d * m) + d * vocab)
    assert flops.prefill_flops("llava-1.5-7b", 10, text_tokens=2) == fastv
    assert flops.prefill_flops("llava-1.5-7b", 10, text_tokens=2, convention="dense") == dense


@pytest.mark.parametrize("convention", sorted(flops.CONVENTIONS))
def test_linear_plus_quadratic_in_tokens(convention):
    """The second difference in n is the attention's n^2 term alone: L * 4d multiply-adds, whatever n."""
    config = flops.MODELS["llava-1.5-13b"]
    per_mac = flops.CONVENTIONS[convention].flops_per_mac
    f = [flops.sequence_flops(config, n, convention) for n in (99, 100, 101, 700, 701, 702)]
    for i in (0, 3):
        assert f[i + 2] - 2 * f[i + 1] + f[i] == per_mac * config.layers * 4 * config.hidden


def test_gqa_shrinks_only_the_kv_projections():
    qwen = flops.MODELS["qwen2.5-vl-7b"]
    assert qwen.kv_dim == 4 * 3584 // 28 == 512
    mha = dataclasses.replace(qwen, kv_heads=qwen.heads)
    n = 1296 + flops.DEFAULT_TEXT_TOKENS
    for convention, conv in flops.CONVENTIONS.items():
        saved = flops.sequence_flops(mha, n, convention) - flops.sequence_flops(qwen, n, convention)
        # K and V: two d x d projections become d x d_kv
        assert saved == conv.flops_per_mac * qwen.layers * 2 * n * qwen.hidden * (qwen.hidden - qwen.kv_dim) > 0


def test_images_multiply_the_visual_tokens():
    config = flops.MODELS["llava-1.5-7b"]
    assert flops.prefill_flops("llava-1.5-7b", 64, text_tokens=20, images=3) == flops.sequence_flops(config, 212)


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ValueError, match="llava-2") as err:
        flops.prefill_flops("llava-2", 64)
    assert all(name in str(err.value) for name in flops.MODELS)


@pytest.mark.parametrize("kwargs, bad", [
    (dict(visual_tokens=-1), "visual_tokens must be >= 0, got -1"),
    (dict(visual_tokens=64, text_tokens=-3), "text_tokens must be >= 0, got -3"),
    (dict(visual_tokens=64, images=0), "images must be >= 1, got 0"),
    (dict(visual_tokens=0, text_tokens=0), "at least 1 token, got 0"),
    (dict(visual_tokens=64, convention="mac"), "unknown FLOP convention 'mac'"),
])
def test_bad_inputs(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        flops.prefill_flops("llava-1.5-7b", **kwargs)


def test_cli_writes_the_csv(tmp_path):
    out = tmp_path / "flops.csv"
    run = subprocess.run([sys.executable, str(SCRIPT), "--model", "llava-1.5-7b", "--keep", "64", "1000",
                          "--csv", str(out)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "skipped K = 1000" in run.stdout
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(flops.CSV_COLUMNS)
    assert [(r["model"], int(r["visual_tokens"]), int(r["text_tokens"])) for r in rows] == [
        ("llava-1.5-7b", 576, flops.DEFAULT_TEXT_TOKENS), ("llava-1.5-7b", 64, flops.DEFAULT_TEXT_TOKENS)]
    assert float(rows[0]["ratio_to_full"]) == 1.0
    assert float(rows[1]["tflops"]) == pytest.approx(flops.prefill_flops("llava-1.5-7b", 64) / 1e12, abs=1e-4)


def test_cli_rejects_negative_keep(tmp_path):
    run = subprocess.run([sys.executable, str(SCRIPT), "--keep", "-5", "--csv", str(tmp_path / "x.csv")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "expected an integer >= 0, got -5" in run.stderr

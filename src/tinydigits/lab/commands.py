"""Command lines, built one way: the lines recorded beside results (so a reader can repeat a
run) and the argument lists of the child processes the lab starts."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Mapping, Sequence
from typing import Any


def option_args(options: Mapping[str, Any]) -> list[str]:
    """``--name value`` for each option, in order: ``name_with_underscores`` becomes
    ``--name-with-underscores``; None is left out; True is a bare ``--flag`` and False
    ``--no-flag``; a list or tuple repeats the option once per item."""
    args: list[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, (list, tuple)):
            for item in value:
                args += [flag, str(item)]
        else:
            args += [flag, str(value)]
    return args


def tinydigits_line(subcommand: str, options: Mapping[str, Any], *arguments: str) -> str:
    """``tinydigits SUBCOMMAND [ARGUMENTS] --option value ...`` as one shell-quoted line."""
    return shlex.join(["tinydigits", subcommand, *arguments, *option_args(options)])


def python_module_argv(module: str, arguments: Sequence[str], options: Mapping[str, Any]) -> list[str]:
    """The argument list that runs ``python -m MODULE`` with this interpreter."""
    return [sys.executable, "-m", module, *arguments, *option_args(options)]

"""The ``medsamkit`` parser and dispatch; each command lives in its own module.

Exit status: 0 on success; 1 when some images could not be processed (they are named on
stderr and in the output table) or on a bug (an unexpected exception: its traceback is
printed); 2 for a user error (bad arguments, missing or unreadable files, a missing
optional package; one line on stderr, see :mod:`medsamkit.cli._errors`); 130 when
interrupted.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from . import (
    _box_margins,
    _compare,
    _crossval,
    _demo,
    _evaluate,
    _finetune,
    _fit_prompter,
    _sammix,
    _segment,
)
from ._checks import configure_logging
from ._errors import is_user_error, user_message

__all__ = ["COMMANDS", "build_parser", "main"]

#: The command modules in the order ``medsamkit --help`` lists them; each has ``add_parser(sub)`` and ``run(args)``.
COMMANDS = (_evaluate, _segment, _finetune, _sammix, _crossval, _fit_prompter, _compare, _box_margins, _demo)


def build_parser() -> argparse.ArgumentParser:
    """The ``medsamkit`` argument parser."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="medsamkit", description="Fully automatic medical image segmentation with SAM-family models."
    )
    parser.add_argument("--version", action="version", version=f"medsamkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub).set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``medsamkit`` command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("medsamkit: interrupted; finished images are saved, run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        if is_user_error(exc):
            print(f"medsamkit: error: {user_message(exc)}", file=sys.stderr)
            return 2
        traceback.print_exc()
        print(
            f"medsamkit: internal error ({type(exc).__name__}) in '{args.command}': this is a bug in medsamkit; "
            "please report it with the traceback above",
            file=sys.stderr,
        )
        return 1

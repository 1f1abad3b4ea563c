"""What the commands print at the end: the Dice table rows and the tail naming what failed."""

from __future__ import annotations

import sys
from collections.abc import Collection
from typing import Any

__all__ = ["exit_status", "print_dice_row"]


def print_dice_row(label: str, report: Any) -> None:
    """One line of the evaluation tables: label, images, Dice mean and std."""
    d = report.summary["metrics"]["dice"]
    mean = "-" if d["mean"] is None else f"{d['mean']:.4f}"
    std = "-" if d["std"] is None else f"{d['std']:.4f}"
    print(f"{label:<44} {d['n']:>6} {mean:>10} {std:>7}")


def exit_status(failed: Collection[str], what: str, *, n: int | None = None, see: str | None = None) -> int:
    """The exit status of a batch command: 0 when nothing failed, else 1 after naming the failures.

    A batch run goes past a bad file (and a later run retries it); the command still
    tells the user, on stderr, and exits with status 1 so scripts notice. Writes
    ``medsamkit: <n> <what>(s) failed: <names>[; see <see>]``.

    Args:
        failed: What failed, one name each (image or volume stems, ``set/stem``, ...).
        what: The kind of item counted (``"image"``, ``"volume"``).
        n: How many items failed when ``failed`` groups them (default: ``len(failed)``).
        see: Where the details are written (a file or folder), added to the line.
    """
    count = len(failed) if n is None else n
    if not count:
        return 0
    line = f"medsamkit: {count} {what}(s) failed: {', '.join(failed)}"
    print(line if see is None else f"{line}; see {see}", file=sys.stderr)
    return 1

"""Checks every command runs on its data and output folder before slow set-up (loading a model)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._errors import UsageError

__all__ = ["add_missing_masks_option", "check_data_and_out", "check_missing_masks", "configure_logging"]


def add_missing_masks_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-missing-masks",
        action="store_true",
        help="go on when some images have no mask (they are named and counted); default: refuse",
    )


def check_missing_masks(folder: Any, args: argparse.Namespace) -> None:
    """Refuse images without a mask (named, counted) unless ``--allow-missing-masks``."""
    missing = list(getattr(folder, "unmatched_images", ()))
    if not missing:
        return
    shown = ", ".join(missing[:10]) + (f", ... ({len(missing)} in total)" if len(missing) > 10 else "")
    if getattr(args, "allow_missing_masks", False):
        print(f"medsamkit: note: {len(missing)} image(s) without a mask are left out: {shown}", file=sys.stderr)
        return
    raise UsageError(
        f"{len(missing)} image(s) in {folder.images_dir} have no mask in {folder.masks_dir}: {shown}; "
        "add their masks or pass --allow-missing-masks"
    )


def check_data_and_out(data: Any, out: Path, *, owned: Sequence[str] = (), name: str = "--out") -> None:
    """``--out`` must not be, contain or lie inside the data's images or masks folders (nothing is created)."""
    from .._outdir import check_out_dir, input_folders

    check_out_dir(out, inputs=input_folders(data), owned=owned, name=name)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to the current ``sys.stderr`` (which tests and notebooks replace)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def configure_logging() -> None:
    """Show medsamkit's log messages (info and above) on stderr, once per process."""
    logger = logging.getLogger("medsamkit")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)

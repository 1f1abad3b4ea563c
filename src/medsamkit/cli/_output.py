"""Printed tables shared by the training commands."""

from __future__ import annotations

from typing import Any

__all__ = ["print_dice_row"]


def print_dice_row(label: str, report: Any) -> None:
    """One line of the evaluation tables: label, images, Dice mean and std."""
    d = report.summary["metrics"]["dice"]
    mean = "-" if d["mean"] is None else f"{d['mean']:.4f}"
    std = "-" if d["std"] is None else f"{d['std']:.4f}"
    print(f"{label:<44} {d['n']:>6} {mean:>10} {std:>7}")

"""Helpers shared by the CLI tests: small blob folders and output readers."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from medsamkit.data import write_image, write_mask
from medsamkit.testing import make_blob_image

SIZE = (48, 64)
STEMS = ("case_03", "case_01", "case_02", "case_00")
FAKE = ["--segmenter", "fake", "--no-progress"]


def make_folder(root: Path, stems=STEMS, *, masks: bool = True) -> dict[str, np.ndarray]:
    """``root/images`` (and ``root/masks``) with one synthetic blob image per stem; returns the masks."""
    refs = {}
    for i, stem in enumerate(stems):
        image, mask = make_blob_image(SIZE, seed=30 + i)
        write_image(root / "images" / f"{stem}.png", image)
        if masks:
            write_mask(root / "masks" / f"{stem}.png", mask)
        refs[stem] = mask
    return refs


def csv_rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text().splitlines()))


def read_png_mask(path: Path) -> np.ndarray:
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert array is not None, f"unreadable PNG {path}"
    return array > 0

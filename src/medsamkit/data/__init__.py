"""Image/mask IO, folder datasets and seeded splits.

- :func:`read_image`, :func:`read_mask`, :func:`write_image`, :func:`write_mask`:
  file IO keeping native dtypes (uint8, uint16, float32), RGB channel order.
- :func:`atomic_write_bytes`, :func:`atomic_write_text`: crash-safe file writes;
  :func:`csv_text`: the CSV text of every table medsamkit writes.
- :class:`MaskFolder` / :class:`Sample`: ``root/images`` + ``root/masks`` paired by stem.
- :class:`CsvSamples`: image/mask paths listed in a CSV file (CXLSeg layout).
- :func:`train_val_test_split` / :func:`kfold_splits`: deterministic, optionally
  stratified splits of stems (:class:`Split`, :class:`Fold`).
"""

from ._folder import MaskFolder, Sample
from ._io import (
    IMAGE_SUFFIXES,
    ImageReadError,
    atomic_write_bytes,
    atomic_write_text,
    csv_text,
    read_image,
    read_mask,
    write_image,
    write_mask,
)
from ._splits import Fold, Split, kfold_splits, train_val_test_split
from ._table import CsvSamples

__all__ = [
    "IMAGE_SUFFIXES",
    "CsvSamples",
    "Fold",
    "ImageReadError",
    "MaskFolder",
    "Sample",
    "Split",
    "atomic_write_bytes",
    "atomic_write_text",
    "csv_text",
    "kfold_splits",
    "read_image",
    "read_mask",
    "train_val_test_split",
    "write_image",
    "write_mask",
]

"""A dataset listed in a CSV file: one row per image, with its mask path (CXLSeg, MIMIC-CXR style)."""

from __future__ import annotations

import csv
import gzip
import io
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, overload

from ._folder import Sample

__all__ = ["CsvSamples"]


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix.lower() == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


class CsvSamples(Sequence):
    """Image/mask pairs listed in a CSV file, one row per image.

    Large collections are shipped as a table of relative paths rather than two flat
    folders: CXLSeg (243,324 chest radiographs) lists ``files/p10/p10000032/s5.../<dicom_id>.jpg``
    with the mask beside it as ``<dicom_id>-mask.jpg``. This reads such a table::

        CsvSamples("CXLseg-mask.csv.gz", image_column="path", mask_suffix="-mask", stem_column="dicom_id", root="/data/cxlseg")

    The file is read as text (a ``.gz`` file is decompressed), so an identifier such as
    ``00123`` keeps its leading zeros. Rows are streamed: iterating or taking the
    length never keeps the table in memory, which the Ray engine relies on; indexing
    (``samples[i]``) loads the rows once.

    Args:
        csv_path: The CSV (or ``.csv.gz``) file, with a header row.
        image_column: Column with each image's path (relative to ``root`` or absolute).
        mask_column: Column with each mask's path. Default: derived with ``mask_suffix``.
        mask_suffix: The mask is the image's file with ``mask_suffix`` appended to its
            stem (same folder, same extension), as in CXLSeg (``-mask``).
        stem_column: Column with each sample's identifier (unique). Default: the image
            file's stem (which must then be unique across folders).
        root: Folder relative paths are taken from. Default: the CSV file's folder.
        require_masks: If True (default), ``mask_column`` or ``mask_suffix`` is needed.

    Raises:
        FileNotFoundError: If ``csv_path`` does not exist.
        ValueError: If a named column is missing from the header, no mask source is
            given while masks are required, or (when iterating) a row has an empty
            image path or repeats a stem.
    """

    def __init__(
        self,
        csv_path: str | os.PathLike[str],
        *,
        image_column: str = "image",
        mask_column: str | None = None,
        mask_suffix: str | None = None,
        stem_column: str | None = None,
        root: str | os.PathLike[str] | None = None,
        require_masks: bool = True,
    ) -> None:
        self.csv_path = Path(csv_path).absolute()
        if not self.csv_path.is_file():
            raise FileNotFoundError(f"csv_path: {self.csv_path} does not exist")
        if mask_column is not None and mask_suffix is not None:
            raise ValueError("mask_column, mask_suffix: give one of them, not both")
        if require_masks and mask_column is None and mask_suffix is None:
            raise ValueError(
                "mask_column: expected the column with the mask paths, or mask_suffix= for masks "
                "named after their image (CXLSeg: mask_suffix='-mask'); got neither"
            )
        self.image_column = image_column
        self.mask_column = mask_column
        self.mask_suffix = mask_suffix
        self.stem_column = stem_column
        self.root = Path(root).absolute() if root is not None else self.csv_path.parent
        with _open_text(self.csv_path) as handle:
            header = next(csv.reader(handle), None)
        if not header:
            raise ValueError(f"csv_path: {self.csv_path} is empty; expected a header row")
        for name, column in (("image_column", image_column), ("mask_column", mask_column), ("stem_column", stem_column)):
            if column is not None and column not in header:
                raise ValueError(f"{name}: {self.csv_path} has no column {column!r}; its columns are {header}")
        self._length: int | None = None
        self._rows: list[Sample] | None = None

    def __repr__(self) -> str:
        return f"CsvSamples({str(self.csv_path)!r}, image_column={self.image_column!r})"

    @property
    def columns(self) -> list[str]:
        """The columns a row needs (read as text)."""
        return [c for c in (self.image_column, self.mask_column, self.stem_column) if c is not None]

    def sample_from_row(self, row: Mapping[str, Any], *, line: int | None = None) -> Sample:
        """The :class:`Sample` of one CSV row (a mapping column -> text)."""
        where = f"{self.csv_path}" + (f" line {line}" if line is not None else "")
        image_text = str(row.get(self.image_column) or "").strip()
        if not image_text:
            raise ValueError(f"{self.image_column}: empty image path in {where}")
        image_path = self.root / image_text
        mask_path: Path | None = None
        if self.mask_column is not None:
            mask_text = str(row.get(self.mask_column) or "").strip()
            mask_path = self.root / mask_text if mask_text else None
        elif self.mask_suffix is not None:
            mask_path = image_path.with_name(image_path.stem + self.mask_suffix + image_path.suffix)
        stem = str(row.get(self.stem_column) or "").strip() if self.stem_column is not None else image_path.stem
        if not stem:
            raise ValueError(f"{self.stem_column}: empty stem in {where}")
        return Sample(stem=stem, image_path=image_path, mask_path=mask_path)

    def __iter__(self) -> Iterator[Sample]:
        if self._rows is not None:
            yield from self._rows
            return
        seen: set[str] = set()
        with _open_text(self.csv_path) as handle:
            for line, row in enumerate(csv.DictReader(handle), start=2):
                sample = self.sample_from_row(row, line=line)
                if sample.stem in seen:
                    raise ValueError(
                        f"{self.stem_column or self.image_column}: stem {sample.stem!r} appears twice in "
                        f"{self.csv_path} (again at line {line}); each row needs a unique stem "
                        "(pass stem_column= with a unique identifier)"
                    )
                seen.add(sample.stem)
                yield sample

    def __len__(self) -> int:
        if self._length is None:
            self._length = sum(1 for _ in self)  # also checks the rows once
        return self._length

    @overload
    def __getitem__(self, index: int) -> Sample: ...

    @overload
    def __getitem__(self, index: slice) -> list[Sample]: ...

    def __getitem__(self, index: int | slice) -> Sample | list[Sample]:
        if self._rows is None:
            self._rows = list(self)
            self._length = len(self._rows)
        return self._rows[index]

"""The 2D drivers' side of the Ray Data engine of ``evaluate`` and ``segment``.

The Ray job itself (items, actors running :func:`evaluate_samples` /
:func:`segment_samples`, resources, the session) is :mod:`medsamkit._rayjob`, shared
with the volume runs; here are what the 2D drivers keep instead of the rows
(``report.rows`` read back from the records, the overlays' extremes, the box plot's
columns). Ray is imported only in :mod:`medsamkit._rayjob`, only when the engine is used.
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .._rayjob import (
    TELEMETRY_OFF,
    CsvStream,
    RayEngine,
    cache_of,
    check_rebuildable,
    engine_options,
    progress_bar,
    ray_session,
    stream_rows,
    worker_pipeline,
)

__all__ = [
    "TELEMETRY_OFF",
    "ColumnRow",
    "CsvStream",
    "Extremes",
    "RayEngine",
    "RecordRows",
    "cache_of",
    "check_rebuildable",
    "engine_options",
    "progress_bar",
    "ray_session",
    "stream_rows",
    "worker_pipeline",
]


class RecordRows(Sequence):
    """``report.rows`` of a Ray run without holding the rows: read back from the records."""

    def __init__(self, out_dir: Path, stems: list[str], errors: dict[str, dict[str, Any]]) -> None:
        self._out_dir = out_dir
        self._stems = stems
        self._errors = errors

    def __len__(self) -> int:
        return len(self._stems)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        stem = self._stems[index]
        if stem in self._errors:
            return self._errors[stem]
        return json.loads((self._out_dir / "records" / f"{stem}.json").read_text())["row"]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"<{len(self)} rows read from {self._out_dir / 'records'}>"


class ColumnRow(Mapping):
    """One image's metric values, viewed from the summary's columns (for the box plot)."""

    __slots__ = ("_columns", "_i")

    def __init__(self, columns: dict[str, Any], i: int) -> None:
        self._columns = columns
        self._i = i

    def __getitem__(self, key: str) -> float | None:
        value = self._columns[key][self._i]
        return None if math.isnan(value) else value

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns)

    def __len__(self) -> int:
        return len(self._columns)


class Extremes:
    """The ``n`` lowest and highest Dice rows seen, ties in input order (for the overlays)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._low: list[tuple[float, int, str, Any]] = []  # max-heap of the lowest (negated keys)
        self._high: list[tuple[float, int, str, Any]] = []  # min-heap of the highest

    def add(self, dice: float, index: int, stem: str, sample: Any) -> None:
        if self.n == 0:
            return
        low = (-dice, -index, stem, sample)
        if len(self._low) < self.n:
            heapq.heappush(self._low, low)
        elif low > self._low[0]:
            heapq.heapreplace(self._low, low)
        high = (dice, index, stem, sample)
        if len(self._high) < self.n:
            heapq.heappush(self._high, high)
        elif high > self._high[0]:
            heapq.heapreplace(self._high, high)

    def sorted_rows(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Rows ``{"stem", "dice"}`` sorted by (Dice, input order), and samples by stem."""
        found = {i: (d, stem, sample) for d, i, stem, sample in self._high}
        found.update({-i: (-d, stem, sample) for d, i, stem, sample in self._low})
        order = sorted(found, key=lambda i: (found[i][0], i))
        return [{"stem": found[i][1], "dice": found[i][0]} for i in order], {found[i][1]: found[i][2] for i in order}

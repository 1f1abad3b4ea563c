"""Evaluation over a folder: tables (CSV/JSON), predicted masks, overlays and box plots."""

from ._evaluate import CSV_COLUMNS, EvaluationReport, evaluate
from ._segment import SegmentReport, segment_images

__all__ = ["CSV_COLUMNS", "EvaluationReport", "SegmentReport", "evaluate", "segment_images"]

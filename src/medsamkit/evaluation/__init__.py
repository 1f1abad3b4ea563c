"""Evaluation over a folder: tables (CSV/JSON), predicted masks, overlays and box plots."""

from ._evaluate import CSV_COLUMNS, EvaluationReport, evaluate
from ._ray import RayEngine
from ._segment import SegmentReport, segment_images
from ._studies import DETECTION_CLASSES, StudyReport, box_margin_study, compare_prompters, detection_class

__all__ = [
    "CSV_COLUMNS",
    "DETECTION_CLASSES",
    "EvaluationReport",
    "RayEngine",
    "SegmentReport",
    "StudyReport",
    "box_margin_study",
    "compare_prompters",
    "detection_class",
    "evaluate",
    "segment_images",
]

"""Evaluation over a folder: tables (CSV/JSON), predicted masks, overlays and box plots."""

from ._evaluate import CSV_COLUMNS, METRIC_COLUMNS, EvaluationReport, evaluate
from ._plots import save_grouped_boxplot
from ._ray import RayEngine
from ._segment import SegmentReport, segment_images
from ._studies import DETECTION_CLASSES, StudyReport, box_margin_study, compare_prompters, detection_class

__all__ = [
    "CSV_COLUMNS",
    "DETECTION_CLASSES",
    "EvaluationReport",
    "METRIC_COLUMNS",
    "RayEngine",
    "SegmentReport",
    "StudyReport",
    "box_margin_study",
    "compare_prompters",
    "detection_class",
    "evaluate",
    "save_grouped_boxplot",
    "segment_images",
]

"""Evaluation over a folder: tables (CSV/JSON), predicted masks, overlays and box plots."""

from ._evaluate import CSV_COLUMNS, EVALUATE_OWNED, METRIC_COLUMNS, EvaluationReport, evaluate
from ._plots import overlay_image, overlay_panel, plot_overlay, save_grouped_boxplot, save_overlay
from ._quality import QUALITY_COLUMNS, auroc, cases_to_check, estimate_quality, failure_detection
from ._ray import RayEngine
from ._segment import SEGMENT_OWNED, SegmentReport, segment_images
from ._studies import DETECTION_CLASSES, StudyReport, box_margin_study, compare_prompters, detection_class

__all__ = [
    "CSV_COLUMNS",
    "DETECTION_CLASSES",
    "EVALUATE_OWNED",
    "EvaluationReport",
    "METRIC_COLUMNS",
    "QUALITY_COLUMNS",
    "RayEngine",
    "SEGMENT_OWNED",
    "SegmentReport",
    "StudyReport",
    "auroc",
    "box_margin_study",
    "cases_to_check",
    "compare_prompters",
    "detection_class",
    "estimate_quality",
    "evaluate",
    "failure_detection",
    "overlay_image",
    "overlay_panel",
    "plot_overlay",
    "save_grouped_boxplot",
    "save_overlay",
    "segment_images",
]

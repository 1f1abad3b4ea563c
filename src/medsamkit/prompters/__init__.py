"""Prompt providers: where to segment, as boxes or points."""

from ._cam import CAM_METHODS, CAMBoxPrompter
from ._combined import BoxesWithPointsPrompter
from ._embedding_head import EmbeddingHeadPrompter
from ._fixed import FixedPrompter
from ._mean_mask import MeanMaskPointPrompter
from ._oracle import OracleBoxPrompter, PerturbedBoxPrompter
from ._refine import RefinedPrompter
from ._yolo import YOLOBoxPrompter, YOLOSegmenter, configure_ultralytics_offline, masks_to_yolo_dataset

__all__ = [
    "BoxesWithPointsPrompter",
    "CAMBoxPrompter",
    "CAM_METHODS",
    "EmbeddingHeadPrompter",
    "FixedPrompter",
    "MeanMaskPointPrompter",
    "OracleBoxPrompter",
    "PerturbedBoxPrompter",
    "RefinedPrompter",
    "YOLOBoxPrompter",
    "YOLOSegmenter",
    "configure_ultralytics_offline",
    "masks_to_yolo_dataset",
]

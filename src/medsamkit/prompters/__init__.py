"""Prompt providers: where to segment, as boxes or points."""

from .._ultralytics import configure_ultralytics_offline, masks_to_yolo_dataset
from ._cam import CAM_METHODS, CAMBoxPrompter
from ._combined import BoxesWithPointsPrompter
from ._embedding_head import EmbeddingHeadPrompter
from ._fixed import FixedPrompter
from ._mean_mask import MeanMaskPointPrompter
from ._oracle import OracleBoxPrompter, PerturbedBoxPrompter
from ._yolo import YOLOBoxPrompter

__all__ = [
    "CAM_METHODS",
    "BoxesWithPointsPrompter",
    "CAMBoxPrompter",
    "EmbeddingHeadPrompter",
    "FixedPrompter",
    "MeanMaskPointPrompter",
    "OracleBoxPrompter",
    "PerturbedBoxPrompter",
    "YOLOBoxPrompter",
    "configure_ultralytics_offline",
    "masks_to_yolo_dataset",
]

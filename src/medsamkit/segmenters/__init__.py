"""SAM-family segmenters behind the :class:`~medsamkit.Segmenter` protocol.

Importing this package does not import torch; each backend imports it when built.
"""

from ._litemedsam import LiteMedSAM, build_litemedsam_model, litemedsam_checkpoint_path
from ._sam import (
    HQSAM,
    HQSAM_CHECKPOINT_NAMES,
    SAM,
    SAM_CHECKPOINT_DIR_ENV,
    SAM_CHECKPOINT_NAMES,
    SAM_MODEL_TYPES,
    HQSAMFeatures,
    build_hqsam_model,
    build_sam_model,
    sam_checkpoint_path,
)
from ._yolo_seg import YOLOSegmenter

__all__ = [
    "HQSAM",
    "HQSAM_CHECKPOINT_NAMES",
    "SAM",
    "SAM_CHECKPOINT_DIR_ENV",
    "SAM_CHECKPOINT_NAMES",
    "SAM_MODEL_TYPES",
    "HQSAMFeatures",
    "LiteMedSAM",
    "YOLOSegmenter",
    "build_hqsam_model",
    "build_litemedsam_model",
    "build_sam_model",
    "litemedsam_checkpoint_path",
    "sam_checkpoint_path",
]

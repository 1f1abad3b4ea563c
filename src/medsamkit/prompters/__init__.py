"""Prompt providers: where to segment, as boxes or points.

The presence-classifier pieces (:func:`presence_arrays`, :func:`embedding_presence_arrays`, :func:`seeded_classifier`,
:func:`focal_loss`, :func:`index_batches`, :func:`classifier_step`,
:func:`classifier_scores`) train :class:`CAMBoxPrompter`'s classifier, in
``CAMBoxPrompter.fit`` and in SAM-Mix's joint loop (:func:`medsamkit.fit_sammix`).
"""

from .._ultralytics import configure_ultralytics_offline, masks_to_yolo_dataset
from ._cam import (
    CAM_BACKBONES,
    CAM_METHODS,
    CAMBoxPrompter,
    classifier_arrays,
    classifier_scores,
    classifier_step,
    embedding_presence_arrays,
    focal_loss,
    index_batches,
    presence_arrays,
    seeded_classifier,
)
from ._combined import BoxesWithPointsPrompter
from ._embedding_head import EmbeddingHeadPrompter
from ._fixed import FixedPrompter
from ._localiser import DecoderLocaliserPrompter
from ._mean_mask import MeanMaskPointPrompter
from ._oracle import OracleBoxPrompter, PerturbedBoxPrompter
from ._ranked import RankedPrompter
from ._refine import RefinedPrompter
from ._yolo import YOLOBoxPrompter

__all__ = [
    "CAM_BACKBONES",
    "CAM_METHODS",
    "BoxesWithPointsPrompter",
    "CAMBoxPrompter",
    "DecoderLocaliserPrompter",
    "EmbeddingHeadPrompter",
    "FixedPrompter",
    "MeanMaskPointPrompter",
    "OracleBoxPrompter",
    "PerturbedBoxPrompter",
    "RankedPrompter",
    "RefinedPrompter",
    "YOLOBoxPrompter",
    "classifier_arrays",
    "classifier_scores",
    "classifier_step",
    "configure_ultralytics_offline",
    "embedding_presence_arrays",
    "focal_loss",
    "index_batches",
    "masks_to_yolo_dataset",
    "presence_arrays",
    "seeded_classifier",
]

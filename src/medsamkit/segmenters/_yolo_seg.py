"""YOLOv8-seg's own masks as a segmenter: the baseline SAM is compared with in paper 000."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._types import ImageEncoding, PromptMasks, Prompts
from .._ultralytics import YOLOModel, result_boxes, to_numpy
from .._validation import as_image

__all__ = ["YOLOSegmenter"]

_SEG_FORMAT = "medsamkit.YOLOSegmenter"


class YOLOSegmenter(YOLOModel):
    """The detector's own segmentation (YOLOv8-seg): the baseline SAM is compared with in paper 000.

    Trained like :class:`~medsamkit.prompters.YOLOBoxPrompter` (:meth:`fit`, with polygon labels made
    from the masks), from ``yolov8n-seg.yaml`` by default. It is both a
    :class:`~medsamkit.PromptProvider` (its detected boxes) and a
    :class:`~medsamkit.Segmenter`: ``encode`` runs the model once and keeps the
    instance masks; ``decode`` returns, for each prompt box, the mask of the
    detected instance whose box overlaps it most (an empty mask if none does). So
    ``Pipeline(seg, seg)`` is the pure YOLOv8-seg baseline, evaluated with the same
    :func:`~medsamkit.evaluate` as ``Pipeline(seg, LiteMedSAM())`` or a box prompter.

    Args: as :class:`~medsamkit.prompters.YOLOBoxPrompter`, with ``model="yolov8n-seg.yaml"``.
    """

    _task = "segment"
    _format = _SEG_FORMAT
    _default_model = "yolov8n-seg.yaml"

    requires_target = False

    @property
    def model_id(self) -> str:
        """Identifies the weights (a hash of the checkpoint) and the prediction settings."""
        digest = self._state.digest[:12] if self._state is not None else "unfitted"
        return f"yolo-seg:{digest}:{self.imgsz}:{self.conf}:{self.iou}:{self.max_boxes}"

    def __call__(self, image: np.ndarray, *, target: np.ndarray | None = None, encoding: ImageEncoding | None = None) -> Prompts:
        """The detected boxes as prompts (``target`` and ``encoding`` are not read)."""
        boxes, _ = self.detect(image)
        return Prompts.empty() if len(boxes) == 0 else Prompts(box_xyxy=boxes)

    def segment(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Instances: ``(boxes (N, 4), scores (N,), masks (N, H, W) bool)``, best first."""
        result, size_hw = self._predict(image)
        boxes, scores, order = result_boxes(result, size_hw, conf=self.conf, max_boxes=self.max_boxes)
        masks = np.zeros((len(boxes), *size_hw), dtype=bool)
        if len(boxes) and getattr(result, "masks", None) is not None:
            data = to_numpy(result.masks.data)[order]  # retina_masks: at the input image's size
            masks[:] = data > 0.5
        return boxes, scores, masks

    def encode(self, image: np.ndarray) -> Any:
        """Run the model once; the encoding keeps boxes, scores and instance masks."""
        image = as_image(image)
        boxes, scores, masks = self.segment(image)
        return ImageEncoding(
            features={"boxes": boxes, "scores": scores, "masks": masks},
            size_hw=tuple(image.shape[:2]),
            input_size_hw=tuple(image.shape[:2]),
            model_id=self.model_id,
        )

    def decode(self, encoding: Any, prompts: Prompts) -> PromptMasks:
        """Per prompt box, the instance mask whose box overlaps it most (its confidence as score)."""
        if getattr(encoding, "model_id", None) != self.model_id:
            raise ValueError(f"encoding: expected an encoding made by {self.model_id!r}")
        if prompts.box_xyxy is None:
            raise ValueError("prompts: YOLOSegmenter needs box prompts (points are not supported)")
        h, w = encoding.size_hw
        found = encoding.features
        probabilities = np.zeros((prompts.n, h, w), dtype=np.float32)
        scores = np.zeros(prompts.n, dtype=np.float32)
        for i, box in enumerate(prompts.box_xyxy):
            if len(found["boxes"]) == 0:
                break
            overlaps = _box_iou(box, found["boxes"])
            j = int(np.argmax(overlaps))
            if overlaps[j] > 0:
                probabilities[i] = found["masks"][j].astype(np.float32)
                scores[i] = found["scores"][j]
        return PromptMasks(probabilities=probabilities, scores=scores)


def _box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one inclusive-pixel box with each of ``boxes``."""
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0 + 1, 0, None) * np.clip(y1 - y0 + 1, 0, None)
    area = (box[2] - box[0] + 1) * (box[3] - box[1] + 1)
    areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    return inter / np.maximum(area + areas - inter, 1e-9)

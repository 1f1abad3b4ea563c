"""Boxes from a YOLOv8 detector trained on a few image/mask pairs (paper 000).

A small Ultralytics detector learns where the structure is from ~100 labelled
images; its boxes then prompt a SAM-family segmenter. Training, prediction and
saving (offline, weights as plain data, never unpickled from a user's file) are
:class:`medsamkit._ultralytics.YOLOModel`'s; this module adds the prompts.

Ultralytics is an optional dependency: ``pip install medsamkit[yolo]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._registry import register_component
from .._types import ImageEncoding, Prompts
from .._ultralytics import YOLOModel

__all__ = ["YOLOBoxPrompter", "build_yolo_box_prompter"]


def build_yolo_box_prompter(*, weights: str | None = None, state: str | None = None, **params: Any) -> YOLOBoxPrompter:
    """Registry builder for ``"yolo-box"``: a saved prompter (``state``) or a checkpoint (``weights``).

    ``Pipeline.save`` stores a fitted prompter as ``state``; it wins over ``weights``
    (which then only documents where the weights came from). Other parameters
    override the saved ones.
    """
    if state is not None:
        return YOLOBoxPrompter.load(state, **params)
    if weights is None:
        raise ValueError(
            "weights: the 'yolo-box' prompter needs trained weights: weights=PATH to an Ultralytics .pt "
            "checkpoint, or state=PATH saved by YOLOBoxPrompter.save() (CLI: --prompter-state PATH)"
        )
    return YOLOBoxPrompter(weights=weights, **params)


@register_component("prompter", "yolo-box", build=build_yolo_box_prompter, fitted=True)
class YOLOBoxPrompter(YOLOModel):
    """Boxes from a YOLO detector trained on a few image/mask pairs (paper 000).

    Train once with :meth:`fit` (about 100 labelled images are enough in paper
    000), then every call detects boxes in an image: at most ``max_boxes``, each
    with confidence ``>= conf``, best first, in input-image pixels. An image where
    nothing is detected gets :meth:`Prompts.empty` (the pipeline then returns an
    empty mask); that is not an error.

    Images of any dtype and channel count work: they are converted to 8 bits
    exactly as the training images were (:func:`to_uint8_image`).

    Args:
        model: Ultralytics model YAML to train from scratch (``yolov8n.yaml``,
            ``yolov8s.yaml``, ``yolo11n.yaml``, ... bundled with Ultralytics).
        weights: A local Ultralytics ``.pt`` checkpoint: predict with it directly
            (e.g. a ``best.pt`` trained with the ``yolo`` CLI), or fine-tune from it
            in :meth:`fit`. Never downloaded.
        conf: Minimum detection confidence, in ``[0, 1]``.
        iou: Non-maximum-suppression IoU threshold, in ``[0, 1]``.
        max_boxes: At most this many boxes per image (prompts).
        imgsz: Detector input size (long side); :meth:`fit` sets it to its training size.
        device: Torch device for training and prediction (``"cpu"``, ``"cuda:0"``).

    Example:
        >>> prompter = YOLOBoxPrompter().fit(folder.subset(train_stems), val=folder.subset(val_stems))
        >>> prompter.save("busi_yolo.npz")
        >>> pipe = Pipeline(YOLOBoxPrompter.load("busi_yolo.npz"), LiteMedSAM())
    """

    requires_target = False

    def __call__(self, image: np.ndarray, *, target: np.ndarray | None = None, encoding: ImageEncoding | None = None) -> Prompts:
        """The detected boxes as prompts (``target`` and ``encoding`` are not read)."""
        boxes, _ = self.detect(image)
        if len(boxes) == 0:
            return Prompts.empty()
        return Prompts(box_xyxy=boxes)

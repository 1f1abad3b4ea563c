"""Ultralytics YOLO in medsamkit, offline (paper 000): what the YOLO prompter and segmenter share.

:class:`~medsamkit.prompters.YOLOBoxPrompter` (boxes) and
:class:`~medsamkit.segmenters.YOLOSegmenter` (YOLOv8-seg masks) are both a
:class:`YOLOModel`, trained on a few image/mask pairs. Everything runs offline:
before ``ultralytics`` is first imported, :func:`configure_ultralytics_offline`
points its settings directory at a folder medsamkit owns and switches it to
offline mode, and training and prediction run with every download, update check,
telemetry and integration callback disabled. Weights are kept and saved as plain
data (model YAML + arrays) and never unpickled from a user's file.

Modules: ``_offline`` (the offline Ultralytics setup), ``_dataset`` (image/mask pairs
to a YOLO dataset), ``_weights`` (weights without pickle), ``_model`` (training,
prediction, save/load), subclassed in ``prompters/_yolo.py`` and ``segmenters/_yolo_seg.py``.

Ultralytics is an optional dependency: ``pip install medsamkit[yolo]`` (which
installs ``ultralytics-opencv-headless``, the variant without GUI OpenCV).
"""

from ._dataset import CLASS_NAME, masks_to_yolo_dataset, to_bgr, to_uint8_image
from ._model import STATE_VERSION, YOLOModel, check_positive_int, result_boxes, to_numpy
from ._offline import (
    configure_ultralytics_offline,
    default_ultralytics_dir,
    font_source,
    import_ultralytics,
    offline_guard,
    preserve_global_state,
)
from ._weights import (
    YOLOWeights,
    build_model,
    check_model_yaml,
    read_checkpoint,
    weights_of,
)

__all__ = [
    "CLASS_NAME",
    "STATE_VERSION",
    "YOLOModel",
    "YOLOWeights",
    "build_model",
    "check_model_yaml",
    "check_positive_int",
    "configure_ultralytics_offline",
    "default_ultralytics_dir",
    "font_source",
    "import_ultralytics",
    "masks_to_yolo_dataset",
    "offline_guard",
    "preserve_global_state",
    "read_checkpoint",
    "result_boxes",
    "to_bgr",
    "to_numpy",
    "to_uint8_image",
    "weights_of",
]

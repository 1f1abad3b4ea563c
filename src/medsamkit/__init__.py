"""medsamkit: fully automatic medical image segmentation with the Segment Anything family.

A *prompt provider* finds the region (boxes or points), a SAM-family *segmenter*
draws the mask, a :class:`Pipeline` chains them, and :mod:`medsamkit.metrics`
scores the result. ``import medsamkit`` is light: numpy only; torch, OpenCV, SciPy
and pydantic are imported when the object that needs them is first used.

Example:
    >>> import medsamkit as msk
    >>> pipe = msk.Pipeline(msk.OracleBoxPrompter(), msk.LiteMedSAM())
    >>> result = pipe(image, target=mask)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

_EXPORTS = {
    # value types and protocols
    "Prompts": "._types",
    "ImageEncoding": "._types",
    "PromptMasks": "._types",
    "SegmentationResult": "._types",
    "PromptProvider": "._protocols",
    "FittablePrompter": "._protocols",
    "Segmenter": "._protocols",
    "TrainableSegmenter": "._protocols",
    "LowResDecoder": "._protocols",
    "EncoderIdentified": "._protocols",
    "ParallelEncoder": "._protocols",
    "prompts_for": "._protocols",
    # pipeline
    "Pipeline": "._pipeline",
    "PipelineConfig": "._pipeline",
    "ComponentConfig": "._pipeline",
    "KeepLargestComponents": "._postprocess",
    "RemoveSmallComponents": "._postprocess",
    "FillHoles": "._postprocess",
    "Window": "._intensity",
    "PercentileClip": "._intensity",
    "CLAHE": "._intensity",
    # prompt providers
    "OracleBoxPrompter": ".prompters",
    "PerturbedBoxPrompter": ".prompters",
    "MeanMaskPointPrompter": ".prompters",
    "FixedPrompter": ".prompters",
    "EmbeddingHeadPrompter": ".prompters",
    "DecoderLocaliserPrompter": ".prompters",
    "RefinedPrompter": ".prompters",
    "BoxesWithPointsPrompter": ".prompters",
    "YOLOBoxPrompter": ".prompters",
    "CAMBoxPrompter": ".prompters",
    # segmenters and registry
    "LiteMedSAM": ".segmenters",
    "SAM": ".segmenters",
    "HQSAM": ".segmenters",
    "YOLOSegmenter": ".segmenters",
    "load_segmenter": "._registry",
    "build_prompter": "._registry",
    "PROMPTERS": "._registry",
    "SEGMENTERS": "._registry",
    "register_component": "._registry",
    # embedding cache
    "EmbeddingCache": "._cache",
    # fine-tuning
    "finetune": ".training",
    "FinetuneConfig": ".training",
    "FinetuneResult": ".training",
    "fit_sammix": ".training",
    "fit_sam_pp": ".training",
    "SAMMixConfig": ".training",
    "SAMMixResult": ".training",
    "CachedSegmenter": "._cache",
    # geometry
    "mask_to_xyxy": "._geometry",
    "component_boxes_xyxy": "._geometry",
    "grow_boxes_xyxy": "._geometry",
    # data
    "MaskFolder": ".data",
    "Sample": ".data",
    "CsvSamples": ".data",
    "read_image": ".data",
    "read_mask": ".data",
    "write_mask": ".data",
    "Volume": ".data",
    "VolumeFolder": ".data",
    "segment_volume": ".volumes",
    "read_volume": ".data",
    "ImageReadError": ".data",
    "train_val_test_split": ".data",
    "kfold_splits": ".data",
    # evaluation
    "evaluate": ".evaluation",
    "EvaluationReport": ".evaluation",
    "segment_images": ".evaluation",
    "SegmentReport": ".evaluation",
    "RayEngine": ".evaluation",
    "compare_prompters": ".evaluation",
    "box_margin_study": ".evaluation",
    "StudyReport": ".evaluation",
    "estimate_quality": ".evaluation",
    "failure_detection": ".evaluation",
    "cases_to_check": ".evaluation",
    "overlay_image": ".evaluation",
    "plot_overlay": ".evaluation",
    "OutDirLockedError": "._outdir",
}

__all__ = sorted([*_EXPORTS, "metrics", "testing", "__version__"])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    if name in ("metrics", "testing", "data", "prompters", "segmenters", "evaluation", "training", "volumes"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'medsamkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover
    from . import metrics, testing
    from ._cache import CachedSegmenter, EmbeddingCache
    from ._geometry import component_boxes_xyxy, grow_boxes_xyxy, mask_to_xyxy
    from ._intensity import CLAHE, PercentileClip, Window
    from ._outdir import OutDirLockedError
    from ._pipeline import ComponentConfig, Pipeline, PipelineConfig
    from ._postprocess import FillHoles, KeepLargestComponents, RemoveSmallComponents
    from ._protocols import (
        EncoderIdentified,
        FittablePrompter,
        LowResDecoder,
        ParallelEncoder,
        PromptProvider,
        Segmenter,
        TrainableSegmenter,
        prompts_for,
    )
    from ._registry import PROMPTERS, SEGMENTERS, build_prompter, load_segmenter, register_component
    from ._types import ImageEncoding, PromptMasks, Prompts, SegmentationResult
    from .data import (
        CsvSamples,
        ImageReadError,
        MaskFolder,
        Sample,
        Volume,
        VolumeFolder,
        kfold_splits,
        read_image,
        read_mask,
        read_volume,
        train_val_test_split,
        write_mask,
    )
    from .evaluation import (
        EvaluationReport,
        RayEngine,
        SegmentReport,
        StudyReport,
        box_margin_study,
        cases_to_check,
        compare_prompters,
        estimate_quality,
        evaluate,
        failure_detection,
        overlay_image,
        plot_overlay,
        segment_images,
    )
    from .prompters import (
        BoxesWithPointsPrompter,
        CAMBoxPrompter,
        DecoderLocaliserPrompter,
        EmbeddingHeadPrompter,
        FixedPrompter,
        MeanMaskPointPrompter,
        OracleBoxPrompter,
        PerturbedBoxPrompter,
        RefinedPrompter,
        YOLOBoxPrompter,
    )
    from .segmenters import HQSAM, SAM, LiteMedSAM, YOLOSegmenter
    from .training import FinetuneConfig, FinetuneResult, SAMMixConfig, SAMMixResult, finetune, fit_sam_pp, fit_sammix
    from .volumes import segment_volume

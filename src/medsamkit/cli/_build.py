"""Segmenters, caches and pipelines built from the command-line options, one way for every command.

Every command that builds a segmenter takes the options of
:func:`~medsamkit.cli._options.add_segmenter_options` (``--segmenter``, ``--checkpoint``,
``--precision``, ``--resize-filter``, ``--cache-dir``, ``--cache-size-gb``, ``--no-cache``; ``evaluate`` and
``segment`` also ``--device``) and builds it with :func:`build_segmenter`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._protocols import PromptProvider, Segmenter

if TYPE_CHECKING:  # pragma: no cover
    from .._cache import EmbeddingCache
    from .._pipeline import Pipeline
from ._errors import UsageError

__all__ = [
    "build_segmenter",
    "calibration_images",
    "embedding_cache",
    "in_same_cache",
    "limited_folder",
    "pipeline_from_args",
    "segmenter_params",
    "volume_pipeline_from_args",
]


def segmenter_params(args: argparse.Namespace) -> dict[str, Any]:
    """``--checkpoint``, ``--precision``, ``--resize-filter`` and ``--device`` as segmenter constructor arguments
    (only those given)."""
    params: dict[str, Any] = {}
    if getattr(args, "device", None) is not None and args.segmenter != "fake":
        params["device"] = args.device
    if args.checkpoint is not None:
        params["checkpoint"] = args.checkpoint
    if args.precision is not None:
        if args.segmenter == "fake":
            raise UsageError("--precision applies to LiteMedSAM, SAM and HQ-SAM, not to the fake segmenter")
        params["precision"] = args.precision
    resize_filter = getattr(args, "resize_filter", None)
    if resize_filter is not None:
        if args.segmenter != "litemedsam":
            raise UsageError(f"--resize-filter: LiteMedSAM only, got --segmenter {args.segmenter}")
        params["resize_filter"] = resize_filter
    calibration = getattr(args, "calibration", None)
    if args.precision == "int8":
        if args.segmenter != "litemedsam":
            raise UsageError(f"--precision int8: LiteMedSAM only, got --segmenter {args.segmenter}")
        if calibration is None:
            raise UsageError("--precision int8: needs --calibration FOLDER_OR_VOLUME (your own images, 16-64 of them)")
        params["calibration"] = calibration_images(args)
    elif calibration is not None:
        raise UsageError("--calibration: only used with --precision int8")
    return params


_CALIBRATION_SLICES = 32


def calibration_images(args: argparse.Namespace) -> list[Any]:
    """The images of ``--calibration``: a folder's 2D images, or up to 32 evenly spaced slices of a volume,
    after the command's intensity steps (``--window``, ``--percentile-clip``, ``--clahe``); file paths when
    a folder needs no step (so a saved pipeline configuration names them)."""
    from ..data import IMAGE_SUFFIXES, is_volume_path, read_image, read_volume

    path = Path(args.calibration)
    steps = _preprocess(args)
    if not path.exists():
        raise UsageError(f"--calibration: no such file or folder: {path}")
    images: list[Any]
    if is_volume_path(path):
        array = read_volume(path).array
        step = max(int(np.ceil(array.shape[0] / _CALIBRATION_SLICES)), 1)
        images = [array[k] for k in range(0, array.shape[0], step)]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UsageError(
                f"--calibration: expected a volume or a folder of images ({', '.join(IMAGE_SUFFIXES)}), found none in {path}"
            )
        if not steps:
            return list(files)
        images = [read_image(f) for f in files]
    else:
        raise UsageError(f"--calibration: expected a folder of images or a volume file, got {path}")
    for step in steps:
        images = [step(image) for image in images]
    return images


def embedding_cache(args: argparse.Namespace) -> Any:
    """The :class:`~medsamkit.EmbeddingCache` of ``--cache-dir`` and ``--cache-size-gb``, or None with ``--no-cache``."""
    if args.no_cache:
        return None
    if not args.cache_size_gb > 0:
        raise UsageError(f"--cache-size-gb: expected a positive number, got {args.cache_size_gb}")
    from .. import EmbeddingCache

    return EmbeddingCache(args.cache_dir, max_bytes=int(args.cache_size_gb * 1024**3))


def _in_cache(segmenter: Segmenter, cache: EmbeddingCache | None) -> Segmenter:
    if cache is None:
        return segmenter
    from .. import CachedSegmenter

    return CachedSegmenter(segmenter, cache)


def build_segmenter(args: argparse.Namespace) -> Any:
    """The segmenter the options name, in the embedding cache unless ``--no-cache``."""
    from .. import load_segmenter

    cache = embedding_cache(args)  # checks --cache-size-gb before any weights load
    return _in_cache(load_segmenter(args.segmenter, **segmenter_params(args)), cache)


def in_same_cache(pipeline: Pipeline, segmenter: Segmenter) -> Pipeline:
    """``pipeline`` with its segmenter in the embedding cache of ``segmenter``, if that one has a cache.

    For the pipeline a training run returns: it holds the trained segmenter, uncached.
    """
    from .. import CachedSegmenter

    if not isinstance(segmenter, CachedSegmenter):
        return pipeline
    return pipeline.replace(segmenter=CachedSegmenter(pipeline.segmenter, segmenter.cache))


def limited_folder(data_dir: Any, limit: int | None) -> Any:
    """The :class:`~medsamkit.MaskFolder` of ``data_dir``, its first ``limit`` images (``--limit``) if given."""
    from ..data import MaskFolder

    folder = MaskFolder(data_dir)
    return folder if limit is None else folder.limit(limit)


def _option_params(args: argparse.Namespace) -> dict[str, Any]:
    """Constructor parameters that the pipeline options give the chosen (not fitted) prompter.

    The command line's options for a prompter (``--box-mode``, ``--margin``, ``--box``,
    ...) belong to that prompter; a registered prompter without options of its own is
    built with its defaults.
    """
    from .. import Prompts

    if args.prompter == "oracle-box":
        return {"mode": args.box_mode, "min_area": args.min_area}
    if args.prompter == "perturbed-box":
        return {"margin": args.margin, "jitter": args.jitter, "seed": args.seed, "mode": args.box_mode, "min_area": args.min_area}
    if args.prompter == "fixed":
        if not args.box:
            raise UsageError("--prompter fixed needs at least one --box X0 Y0 X1 Y1")
        return {"prompts": Prompts(box_xyxy=args.box).to_dict()}
    return {}


def _prompter_from_args(args: argparse.Namespace) -> PromptProvider:
    from .._registry import build_prompter, components

    component = components("prompter")[args.prompter]  # argparse checked the name against the registry
    if args.prompter == "mean-mask-points" and args.fit_masks is not None:
        from ..data import MaskFolder

        fitted: PromptProvider = component.cls().fit(MaskFolder(args.fit_masks), progress=not args.no_progress)
        return fitted
    if component.fitted:
        if args.prompter_state is None:
            alternative = " or --fit-masks TRAIN_DIR" if args.prompter == "mean-mask-points" else ""
            raise UsageError(
                f"--prompter {args.prompter} needs --prompter-state FILE{alternative} (saved by the prompter's save(); "
                f"fit one with: medsamkit fit-prompter TRAIN_DIR --prompter {args.prompter} --out FILE)"
            )
        return build_prompter(args.prompter, state=args.prompter_state)
    return build_prompter(args.prompter, **_option_params(args))


def pipeline_from_args(args: argparse.Namespace) -> Any:
    """The pipeline of ``evaluate`` and ``segment``: from ``--pipeline``, or from the pipeline options."""
    from .. import FillHoles, KeepLargestComponents, Pipeline

    if args.pipeline is not None:
        cache = embedding_cache(args)
        pipeline = Pipeline.load(args.pipeline)
        return pipeline if cache is None else pipeline.replace(segmenter=_in_cache(pipeline.segmenter, cache))
    prompter = _prompter_from_args(args)
    if args.refine:
        if args.refine < 0:
            raise UsageError(f"--refine: expected a non-negative number of rounds, got {args.refine}")
        from ..prompters import RefinedPrompter

        prompter = RefinedPrompter(prompter, iterations=args.refine)
    segmenter = build_segmenter(args)
    post: list[Any] = []
    if args.keep_largest is not None:
        post.append(KeepLargestComponents(args.keep_largest))
    if args.fill_holes:
        post.append(FillHoles())
    return Pipeline(
        prompter, segmenter, threshold=args.threshold, combine=args.combine, postprocess=post, preprocess=_preprocess(args)
    )


def _preprocess(args: argparse.Namespace) -> list[Any]:
    """Intensity steps of ``--window``, ``--percentile-clip`` and ``--clahe``, in that order."""
    from .._intensity import CLAHE, PercentileClip, parse_window

    steps: list[Any] = []
    try:
        if getattr(args, "window", None):
            steps.append(parse_window(args.window))
        if getattr(args, "percentile_clip", None):
            steps.append(PercentileClip(*args.percentile_clip))
    except ValueError as exc:
        flag = "--window" if "window" in str(exc) or "width" in str(exc) else "--percentile-clip"
        raise UsageError(f"{flag}: {exc}") from None
    if getattr(args, "clahe", False):
        steps.append(CLAHE())
    return steps


def volume_pipeline_from_args(args: argparse.Namespace, prompt: str) -> Any:
    """:func:`pipeline_from_args` for volumes; ``--prompt auto`` refuses a prompter that reads the reference mask."""
    pipeline = pipeline_from_args(args)
    if prompt == "auto" and getattr(pipeline.prompter, "requires_target", False):
        raise UsageError(
            "--prompt auto runs the --prompter on every slice; choose an automatic one (not oracle-box/perturbed-box)"
        )
    return pipeline

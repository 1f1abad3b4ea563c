"""Segmenters, caches and pipelines built from the command-line options, one way for every command.

Every command that builds a segmenter takes the options of
:func:`~medsamkit.cli._options.add_segmenter_options` (``--segmenter``, ``--checkpoint``,
``--precision``, ``--cache-dir``, ``--cache-size-gb``, ``--no-cache``; ``evaluate`` and
``segment`` also ``--device``) and builds it with :func:`build_segmenter`.
"""

from __future__ import annotations

import argparse
from typing import Any

from ._errors import UsageError

__all__ = ["build_segmenter", "embedding_cache", "pipeline_from_args", "segmenter_params"]


def segmenter_params(args: argparse.Namespace) -> dict[str, Any]:
    """``--checkpoint``, ``--precision`` and ``--device`` as segmenter constructor arguments (only those given)."""
    params: dict[str, Any] = {}
    if getattr(args, "device", None) is not None and args.segmenter != "fake":
        params["device"] = args.device
    if args.checkpoint is not None:
        params["checkpoint"] = args.checkpoint
    if args.precision is not None:
        if args.segmenter == "fake":
            raise UsageError("--precision applies to LiteMedSAM, SAM and HQ-SAM, not to the fake segmenter")
        params["precision"] = args.precision
    return params


def embedding_cache(args: argparse.Namespace) -> Any:
    """The :class:`~medsamkit.EmbeddingCache` of ``--cache-dir`` and ``--cache-size-gb``, or None with ``--no-cache``."""
    if args.no_cache:
        return None
    if not args.cache_size_gb > 0:
        raise UsageError(f"--cache-size-gb: expected a positive number, got {args.cache_size_gb}")
    from .._cache import EmbeddingCache

    return EmbeddingCache(args.cache_dir, max_bytes=int(args.cache_size_gb * 1024**3))


def _in_cache(segmenter: Any, cache: Any) -> Any:
    if cache is None:
        return segmenter
    from .._cache import CachedSegmenter

    return CachedSegmenter(segmenter, cache)


def build_segmenter(args: argparse.Namespace) -> Any:
    """The segmenter the options name, in the embedding cache unless ``--no-cache``."""
    from .._registry import load_segmenter

    cache = embedding_cache(args)  # checks --cache-size-gb before any weights load
    return _in_cache(load_segmenter(args.segmenter, **segmenter_params(args)), cache)


def _prompter_from_args(args: argparse.Namespace) -> Any:
    from .. import Prompts
    from .._registry import build_prompter

    if args.prompter == "oracle-box":
        return build_prompter("oracle-box", mode=args.box_mode, min_area=args.min_area)
    if args.prompter == "perturbed-box":
        return build_prompter(
            "perturbed-box", margin=args.margin, jitter=args.jitter, seed=args.seed, mode=args.box_mode, min_area=args.min_area
        )
    if args.prompter == "mean-mask-points":
        from ..data import MaskFolder
        from ..prompters import MeanMaskPointPrompter

        if args.fit_masks is not None:
            return MeanMaskPointPrompter().fit(MaskFolder(args.fit_masks), progress=not args.no_progress)
        if args.prompter_state is not None:
            return MeanMaskPointPrompter.load(args.prompter_state)
        raise UsageError("--prompter mean-mask-points needs --prompter-state FILE.npz or --fit-masks TRAIN_DIR")
    if args.prompter in ("yolo-box", "cam-box", "embedding-head"):
        if args.prompter_state is None:
            raise UsageError(
                f"--prompter {args.prompter} needs --prompter-state FILE (saved by the prompter's save(); "
                "fit one with: medsamkit fit-prompter TRAIN_DIR --prompter ... --out FILE)"
            )
        return build_prompter(args.prompter, state=args.prompter_state)
    if not args.box:
        raise UsageError("--prompter fixed needs at least one --box X0 Y0 X1 Y1")
    return build_prompter("fixed", prompts=Prompts(box_xyxy=args.box).to_dict())


def pipeline_from_args(args: argparse.Namespace) -> Any:
    """The pipeline of ``evaluate`` and ``segment``: from ``--pipeline``, or from the pipeline options."""
    from .. import FillHoles, KeepLargestComponents, Pipeline

    if args.pipeline is not None:
        cache = embedding_cache(args)
        pipeline = Pipeline.load(args.pipeline)
        return pipeline if cache is None else pipeline.replace(segmenter=_in_cache(pipeline.segmenter, cache))
    prompter = _prompter_from_args(args)
    segmenter = build_segmenter(args)
    post: list[Any] = []
    if args.keep_largest is not None:
        post.append(KeepLargestComponents(args.keep_largest))
    if args.fill_holes:
        post.append(FillHoles())
    return Pipeline(prompter, segmenter, threshold=args.threshold, combine=args.combine, postprocess=post)

"""Checks of the inputs of a SAM-Mix or SAM-PP run (before any file is written), and :func:`pick_labelled`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._protocols import Segmenter, TrainableSegmenter
from ._engine import check_mode, check_trainable
from ._settings import SAMMixConfig

__all__ = ["pick_labelled"]


def _config(config: Any, overrides: dict[str, Any]) -> SAMMixConfig:
    if config is not None and not isinstance(config, SAMMixConfig):
        raise TypeError(f"config: expected a SAMMixConfig or None, got {type(config).__name__}")
    # Validated as a whole: an unknown override is an error (model_copy(update=...) would drop it).
    return SAMMixConfig.model_validate({**(config or SAMMixConfig()).model_dump(), **overrides})


def _check_samples(samples: Any, name: str, *, required: bool) -> list[Any]:
    """A list of samples with ``stem`` and ``load()``, unique stems."""
    if samples is None:
        samples = []
    if isinstance(samples, (str, bytes, Path)) or not hasattr(samples, "__len__"):
        raise TypeError(f"{name}: expected a sequence of samples (e.g. a MaskFolder), got {type(samples).__name__}")
    samples = list(samples)
    if required and not samples:
        raise ValueError(f"{name}: expected at least one training sample, got none")
    for i, sample in enumerate(samples):
        if not isinstance(getattr(sample, "stem", None), str) or not callable(getattr(sample, "load", None)):
            raise TypeError(
                f"{name}[{i}]: expected a sample with a stem and load() -> (image, mask) (MaskFolder items), "
                f"got {type(sample).__name__}"
            )
    stems = [s.stem for s in samples]
    if len(set(stems)) != len(stems):
        repeated = sorted({s for s in stems if stems.count(s) > 1})
        raise ValueError(f"{name}: expected unique stems, got repeated {repeated[:5]}")
    return samples


def _labelled_stems(train: list[Any], labelled: Any) -> tuple[str, ...]:
    """The labelled stems, in the order of ``train``."""
    stems = [s.stem for s in train]
    if labelled is None:
        return tuple(stems)
    if isinstance(labelled, (str, bytes, int)) or not hasattr(labelled, "__iter__"):
        raise TypeError(
            "labelled: expected a collection of stems or samples (pick_labelled(train, n) picks n), "
            f"got {type(labelled).__name__}"
        )
    chosen = set()
    for i, item in enumerate(labelled):
        stem = item if isinstance(item, str) else getattr(item, "stem", None)
        if not isinstance(stem, str):
            raise TypeError(f"labelled[{i}]: expected a stem (str) or a sample with .stem, got {type(item).__name__}")
        chosen.add(stem)
    unknown = sorted(chosen - set(stems))
    if unknown:
        raise ValueError(
            f"labelled: expected stems of train samples, got {len(unknown)} not in train: {unknown[:5]}"
            + (" ..." if len(unknown) > 5 else "")
        )
    return tuple(s for s in stems if s in chosen)


def _check_labels(y: np.ndarray, train: list[Any], labelled: tuple[str, ...]) -> None:
    if y.min() == y.max():
        kind = "non-empty" if y[0] else "empty"
        raise ValueError(
            f"train: expected images with and without the target (the classifier's two classes), got "
            f"{len(y)} images, all with {kind} masks"
        )
    positive = {s.stem for s, label in zip(train, y) if label}
    if labelled and not positive.intersection(labelled):
        raise ValueError(
            f"labelled: expected at least one image with a non-empty mask (or none at all: no segmentation "
            f"training), got {len(labelled)} images, all with empty masks"
        )


def checked_inputs(
    segmenter: TrainableSegmenter, train: Any, val: Any, labelled: Any, config: Any, overrides: dict[str, Any]
) -> tuple[SAMMixConfig, list[Any], list[Any], tuple[str, ...], Any, np.ndarray, np.ndarray]:
    """Everything checked before a file is written: ``(config, train, val, labelled, prompter, x, y)``.

    ``x``: the classifier's inputs, ``(N, 1, S, S)`` images or (``backbone="embedding"``) ``(N, C, h, w)`` embeddings."""
    from ..prompters import CAMBoxPrompter, classifier_arrays

    check_trainable(segmenter)
    config = _config(config, overrides)
    train = _check_samples(train, "train", required=True)
    val = _check_samples(val, "val", required=False)
    labelled = _labelled_stems(train, labelled)
    prompter = CAMBoxPrompter(**config.prompter_params())  # checks cam, input_size vs depth; needs grad-cam
    check_mode(segmenter, config.finetune_config())
    if config.backbone == "embedding":
        if config.mode != "decoder":
            raise ValueError(
                f"backbone: 'embedding' reads the segmenter's frozen image embedding, but mode={config.mode!r} trains "
                "the image encoder (LoRA); use mode='decoder' with it, or backbone='cnn'"
            )
    x, y = classifier_arrays(
        train, backbone=config.backbone, input_size=config.input_size, pool=config.pool, segmenter=segmenter, name="train"
    )
    _check_labels(y, train, labelled)
    return config, train, val, labelled, prompter, x, y


def run_record(
    method: str, segmenter: Segmenter, config: SAMMixConfig, train: Sequence[Any], val: Sequence[Any], labelled: Sequence[str]
) -> dict[str, Any]:
    """The ``record`` of a SAM-Mix / SAM-PP run (what a resumed run must match)."""
    return {
        "method": method,
        "config": config.record(extendable=method == "sam-mix"),
        "segmenter": getattr(segmenter, "model_id", type(segmenter).__name__),
        "train": [s.stem for s in train],
        "labelled": list(labelled),
        "val": [s.stem for s in val],
    }


def pick_labelled(samples: Sequence[Any], n: int, *, seed: int = 0) -> tuple[str, ...]:
    """``n`` stems drawn at random among the samples whose mask is non-empty (SAM-Mix-``n``).

    The images that get a mask drawn are the ones that show the target: the empty
    masks of the others are known anyway (their presence label is 0). The draw
    depends only on the set of stems and ``seed``.

    Args:
        samples: Items with ``stem`` and ``load_mask()`` or ``load() -> (image, mask)``.
        n: How many, ``0 <= n <=`` the number of samples with a non-empty mask.
        seed: Seed of the draw.

    Returns:
        The chosen stems, sorted.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n: expected a non-negative int, got {n!r}")
    samples = _check_samples(samples, "samples", required=False)
    positive = []
    for sample in samples:
        mask = sample.load_mask() if callable(getattr(sample, "load_mask", None)) else sample.load()[1]
        if np.asarray(mask).any():
            positive.append(sample.stem)
    if n > len(positive):
        raise ValueError(f"n: expected at most {len(positive)} (the samples with a non-empty mask), got {n}")
    positive.sort()
    order = np.random.default_rng(seed).permutation(len(positive))[:n]
    return tuple(sorted(positive[i] for i in order))

"""Recorded training prompts: what a fitted prompter gives each training image when fitted without it.

:func:`out_of_fold_prompts` splits the training images into folds, fits the prompter
on all but one fold and records its prompts on the held-out fold. Those are the
prompts the segmenter will get at inference (misplaced, loose, or on an image without
the target), not the near-perfect ones a prompter gives the images it was fitted on;
``finetune(..., train_prompts=...)`` trains the mask decoder on them, and
``RankedPrompter.fit`` learns its ranker on the candidates of such held-out images.
It lives outside ``medsamkit.training`` (which re-exports it) so prompters can use it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ._protocols import PromptProvider, Segmenter, prompts_for
from ._types import Prompts

__all__ = ["out_of_fold_prompts"]

_log = logging.getLogger("medsamkit")


def out_of_fold_prompts(
    fit: Callable[[list[Any]], PromptProvider],
    samples: Sequence[Any],
    segmenter: Segmenter,
    *,
    folds: int = 5,
    seed: int = 0,
) -> dict[str, Prompts]:
    """Each sample's prompts from a prompter fitted on the other folds.

    Args:
        fit: Fits a new prompter on the samples it is given and returns it, e.g.
            ``lambda s: EmbeddingHeadPrompter().fit(s, segmenter=seg, val=val)``
            (a presence threshold calibrated on validation images makes the recorded
            prompts those of the gated prompter).
        samples: Items with ``stem`` and ``load() -> (image, mask)``, unique stems.
        segmenter: The segmenter whose encoding an encoding-reading prompter (e.g.
            the embedding head) gets; wrap it in a ``CachedSegmenter`` so the folds
            and the fine-tuning share one encoding per image.
        folds: Number of folds (2 or more, at most the number of samples); each
            prompter is fitted on about ``(folds - 1) / folds`` of the samples.
        seed: Seed of the assignment to folds.

    Returns:
        ``{stem: Prompts}`` for every sample (empty prompts where the prompter gave none).
    """
    samples = list(samples)
    if isinstance(folds, bool) or not isinstance(folds, int) or not 2 <= folds <= max(2, len(samples)):
        raise ValueError(f"folds: expected an int in [2, {max(2, len(samples))}] (the number of samples), got {folds!r}")
    if len(samples) < 2:
        raise ValueError(f"samples: expected at least 2 samples (one per fold), got {len(samples)}")
    stems = [getattr(s, "stem", None) for s in samples]
    if not all(isinstance(s, str) for s in stems) or len(set(stems)) != len(stems):
        raise ValueError("samples: expected items with unique str stems (MaskFolder items)")
    if not callable(fit):
        raise TypeError(f"fit: expected a callable samples -> fitted prompter, got {type(fit).__name__}")
    order = np.random.default_rng(seed).permutation(len(samples))
    recorded: dict[str, Prompts] = {}
    for k, held in enumerate(np.array_split(order, folds), start=1):
        held_set = set(held.tolist())
        _log.info("out-of-fold prompts: fold %d/%d, fitting on %d samples", k, folds, len(samples) - len(held))
        prompter = fit([s for i, s in enumerate(samples) if i not in held_set])
        if not callable(prompter) or not hasattr(prompter, "requires_target"):
            raise TypeError(f"fit: expected it to return a prompt provider, got {type(prompter).__name__}")
        bind = getattr(prompter, "bind_segmenter", None)
        if callable(bind):
            bind(segmenter)
        uses_encoding = getattr(prompter, "uses_encoding", False)
        for i in held.tolist():
            image, mask = samples[i].load()
            encoding = segmenter.encode(image) if uses_encoding else None
            recorded[samples[i].stem] = prompts_for(prompter, image, target=mask, encoding=encoding)
    return {s.stem: recorded[s.stem] for s in samples}

"""Know when it fails: a quality estimate per automatic result, and how well it ranks failures.

An automatic pipeline has no reference mask at inference, yet some of its results
are wrong. Three signals come for (almost) free with a SAM-family segmenter:

* ``q_iou`` — the segmenter's own predicted IoU, the lowest over the image's prompts;
* ``q_agree`` — agreement under prompt perturbation: the prompts' boxes are shifted
  and scaled by a few percent of their size, decoded again (milliseconds each, the
  encoding is reused) and compared with the result (mean Dice); a mask that changes
  when the box moves a little is one the segmenter is unsure of;
* ``q_presence`` — for providers that decide whether a target is there at all
  (``presence(encoding)``, e.g. :class:`~medsamkit.EmbeddingHeadPrompter`), the
  probability behind the decision that was taken (``p`` when something was
  predicted, ``1 - p`` for an empty result).

``quality`` combines them (the geometric mean of those available). For an empty
result only the presence term exists. :func:`failure_detection` measures how well a
quality column finds the failures (AUROC for Dice below 0.8 and 0.7) and the mean
Dice after setting aside the least confident images for review;
:func:`cases_to_check` lists (and draws) the least confident images first.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["QUALITY_COLUMNS", "auroc", "cases_to_check", "estimate_quality", "failure_detection"]

QUALITY_COLUMNS = ("quality", "q_iou", "q_agree", "q_presence")
"""Per-image quality columns written by ``evaluate(..., quality=True)``."""

_PERTURBATIONS = (
    (-1.0, 0.0, 1.0, 0.0),
    (1.0, 0.0, -1.0, 0.0),
    (0.0, -1.0, 0.0, 1.0),
    (0.0, 1.0, 0.0, -1.0),
    (-1.0, -1.0, -1.0, -1.0),
    (1.0, 1.0, 1.0, 1.0),
)
"""Box edge moves in units of ``fraction x side``: shrink / grow in x, in y, shift both ways."""


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def estimate_quality(
    pipeline: Any,
    result: Any,
    encoding: Any,
    *,
    fraction: float = 0.05,
    n_perturbations: int = 4,
) -> dict[str, float | None]:
    """Quality estimate of one automatic result (higher = more likely right).

    Args:
        pipeline: The :class:`~medsamkit.Pipeline` that produced ``result``.
        result: Its :class:`~medsamkit.SegmentationResult`.
        encoding: The encoding ``result`` was decoded from (reused; nothing is encoded).
        fraction: Box perturbation, as a fraction of each box's width / height.
        n_perturbations: How many perturbed copies of the boxes are decoded (at most 6).

    Returns:
        ``{"quality", "q_iou", "q_agree", "q_presence"}``, each in ``[0, 1]`` or None
        when the signal does not apply (no box prompts, no presence model).
    """
    from .._types import Prompts

    if isinstance(n_perturbations, bool) or not isinstance(n_perturbations, int) or not 0 <= n_perturbations <= 6:
        raise ValueError(f"n_perturbations: expected an int in [0, 6], got {n_perturbations!r}")
    if not isinstance(fraction, (int, float)) or not 0 <= fraction <= 0.5:
        raise ValueError(f"fraction: expected a number in [0, 0.5], got {fraction!r}")
    out: dict[str, float | None] = {"quality": None, "q_iou": None, "q_agree": None, "q_presence": None}
    predicted = bool(result.mask.any())
    presence = getattr(_base_prompter(pipeline.prompter), "presence", None)
    if callable(presence):
        p = float(presence(encoding))
        out["q_presence"] = p if predicted else 1.0 - p
    if result.prompts.n and len(result.scores):
        out["q_iou"] = float(np.clip(np.min(result.scores), 0.0, 1.0))
    boxes = result.prompts.box_xyxy
    if boxes is not None and len(boxes) and n_perturbations:
        size = np.concatenate([boxes[:, 2:] - boxes[:, :2] + 1] * 2, axis=1)
        agreements = []
        for move in _PERTURBATIONS[:n_perturbations]:
            moved = boxes + fraction * size * np.asarray(move, dtype=np.float32)
            moved[:, 2:] = np.maximum(moved[:, 2:], moved[:, :2])
            h, w = encoding.size_hw
            moved[:, 0::2] = np.clip(moved[:, 0::2], 0, w - 1)
            moved[:, 1::2] = np.clip(moved[:, 1::2], 0, h - 1)
            decoded = pipeline.segmenter.decode(encoding, Prompts(box_xyxy=moved))
            mask = (decoded.probabilities > pipeline.threshold).any(axis=0)
            agreements.append(_dice(mask, result.mask))
        out["q_agree"] = float(np.mean(agreements))
    terms = [v for k, v in out.items() if k != "quality" and v is not None]
    if terms:
        out["quality"] = float(np.exp(np.mean(np.log(np.clip(terms, 1e-6, 1.0)))))
    return out


def _base_prompter(prompter: Any) -> Any:
    """Unwrap wrappers such as :class:`~medsamkit.RefinedPrompter` to the provider with ``presence``."""
    seen = 0
    while not callable(getattr(prompter, "presence", None)) and hasattr(prompter, "base") and seen < 8:
        prompter = prompter.base
        seen += 1
    return prompter


def auroc(scores: Sequence[float] | np.ndarray, positives: Sequence[bool] | np.ndarray) -> float | None:
    """Area under the ROC curve of ``scores`` for finding ``positives`` (ties count half).

    Returns None when one class is empty.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positives, dtype=bool)
    if s.shape != y.shape:
        raise ValueError(f"positives: expected {s.shape[0]} labels to match scores, got {y.shape[0]}")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    from scipy.stats import rankdata

    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def failure_detection(
    rows: Sequence[dict[str, Any]],
    *,
    column: str = "quality",
    thresholds: Sequence[float] = (0.8, 0.7),
    review_fraction: float = 0.1,
) -> dict[str, Any]:
    """How well a per-image quality column finds the failures of an automatic run.

    Args:
        rows: Per-image dicts with ``dice`` and ``column`` (the ``metrics.csv`` rows);
            rows missing either are left out.
        column: The quality column (low = suspect).
        thresholds: A result with Dice below a threshold is a failure.
        review_fraction: The least confident fraction set aside for a human.

    Returns:
        ``{"n", "column", "auroc_dice_below_<t>", "n_dice_below_<t>", "mean_dice",
        "mean_dice_after_review", "review_fraction"}``: the AUROC of ``-quality`` for
        finding images with Dice below each threshold, and the mean Dice of the images
        left after removing the ``review_fraction`` least confident.
    """
    if not 0 <= review_fraction < 1:
        raise ValueError(f"review_fraction: expected a number in [0, 1), got {review_fraction!r}")
    pairs = [
        (float(r["dice"]), float(r[column])) for r in rows if r.get("dice") not in (None, "") and r.get(column) not in (None, "")
    ]
    out: dict[str, Any] = {"n": len(pairs), "column": column, "review_fraction": review_fraction}
    if not pairs:
        return out
    dice = np.array([p[0] for p in pairs])
    quality = np.array([p[1] for p in pairs])
    for t in thresholds:
        out[f"auroc_dice_below_{t:g}"] = auroc(-quality, dice < t)
        out[f"n_dice_below_{t:g}"] = int((dice < t).sum())
    out["mean_dice"] = float(dice.mean())
    n_review = round(review_fraction * len(pairs))
    kept = np.argsort(quality, kind="stable")[n_review:]
    out["mean_dice_after_review"] = float(dice[kept].mean()) if len(kept) else None
    out["n_review"] = n_review
    return out


def cases_to_check(
    run_dir: str | Path,
    *,
    out_dir: str | Path | None = None,
    n: int = 20,
    column: str = "quality",
    data: Any = None,
) -> Path:
    """The least confident images of an ``evaluate`` (or ``segment``) run, worst first.

    Reads ``metrics.csv`` of ``run_dir`` (written with ``quality=True``), writes
    ``cases_to_check.csv`` (``rank, stem, <column>, q_*, dice`` when known) and, when
    ``data`` (the evaluated folder or samples) is given, an overlay per listed image
    (``overlays/<rank>_<stem>.png``: the image, the predicted mask and the prompts).

    Args:
        run_dir: An output folder of ``evaluate(..., quality=True)``.
        out_dir: Where to write (default: ``run_dir/cases_to_check``); never inside the data.
        n: How many images to list.
        column: The quality column to rank by (low first).
        data: The samples the run evaluated (for the overlays), or None.

    Returns:
        The path of ``cases_to_check.csv``.
    """
    from .._types import Prompts
    from ..data import atomic_write_text, read_mask

    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.csv"
    if not metrics.is_file():
        raise FileNotFoundError(f"run_dir: expected an evaluate output folder with metrics.csv, got {run_dir}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive int, got {n!r}")
    with metrics.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and column not in rows[0]:
        raise ValueError(
            f"column: {metrics} has no {column!r} column (run evaluate with quality=True / --quality); columns: {sorted(rows[0])}"
        )
    scored = [r for r in rows if r.get(column) not in (None, "")]
    scored.sort(key=lambda r: float(r[column]))
    chosen = scored[:n]
    out = Path(out_dir) if out_dir is not None else run_dir / "cases_to_check"
    out.mkdir(parents=True, exist_ok=True)
    columns = ["rank", "stem", *dict.fromkeys([column, *QUALITY_COLUMNS]), "dice", "n_prompts"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for rank, row in enumerate(chosen, 1):
        writer.writerow([rank, *(row.get(c) or "" for c in columns[1:])])
    path = out / "cases_to_check.csv"
    atomic_write_text(path, buffer.getvalue())
    if data is not None:
        from ..data import MaskFolder
        from ._plots import save_overlay

        by_stem = {s.stem: s for s in (MaskFolder(data) if isinstance(data, (str, Path)) else data)}
        for rank, row in enumerate(chosen, 1):
            sample = by_stem.get(row["stem"])
            mask_path = run_dir / "masks" / f"{row['stem']}.png"
            record = run_dir / "records" / f"{row['stem']}.json"
            if sample is None or not mask_path.is_file() or not record.is_file():
                continue
            image, target = sample.load()
            prompts = Prompts.from_dict(json.loads(record.read_text())["prompts"])
            save_overlay(
                out / "overlays" / f"{rank:03d}_{row['stem']}.png",
                image,
                pred=read_mask(mask_path),
                target=target if target is not None and target.any() else None,
                prompts=prompts,
                title=f"#{rank} {row['stem']}  {column} {float(row[column]):.3f}",
            )
    return path

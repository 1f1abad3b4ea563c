"""Studies: the same images under several prompt providers (papers 000-002).

* :func:`compare_prompters` — one ``evaluate`` per provider on the same images, a
  table in paper 000's layout (mean / median / std of Dice, precision, recall, F1)
  and a detection breakdown that separates *detector misses* (no box, or boxes
  away from the target) from *segmentation error* (Dice where the target was found).
* :func:`box_margin_study` — oracle boxes grown by 0, 5, 10, 20, 30 px (paper 000,
  Figure 1).

With a :class:`~medsamkit.CachedSegmenter` the encoder runs once per image for the
whole study.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._protocols import PromptProvider, Segmenter

__all__ = ["DETECTION_CLASSES", "StudyReport", "box_margin_study", "compare_prompters", "detection_class"]

DETECTION_CLASSES = ("detected", "missed: no prompt", "missed: wrong place", "false positive", "true negative")
"""Per-image detection outcome of a prompt provider, judged against the reference mask."""

SUMMARY_METRICS = ("dice", "precision", "recall", "f1", "iou", "hd95")


def detection_class(prompts: Any, target: np.ndarray) -> str:
    """Whether the prompts found the target.

    ``detected``: the target is non-empty and some box overlaps it or some foreground
    point lies on it. ``missed: no prompt`` / ``missed: wrong place``: the target is
    non-empty and there is no prompt / no prompt touches it. ``false positive``: the
    target is empty but prompts were given. ``true negative``: both empty.

    Args:
        prompts: :class:`~medsamkit.Prompts` in image pixels.
        target: ``(H, W)`` bool reference mask.
    """
    has_target = bool(target.any())
    if prompts.n == 0:
        return "missed: no prompt" if has_target else "true negative"
    if not has_target:
        return "false positive"
    h, w = target.shape
    if prompts.box_xyxy is not None:
        for x0, y0, x1, y1 in prompts.box_xyxy:
            r0, r1 = int(np.clip(np.floor(y0), 0, h - 1)), int(np.clip(np.ceil(y1), 0, h - 1))
            c0, c1 = int(np.clip(np.floor(x0), 0, w - 1)), int(np.clip(np.ceil(x1), 0, w - 1))
            if target[r0 : r1 + 1, c0 : c1 + 1].any():
                return "detected"
    if prompts.points_xy is not None:
        for points, labels in zip(prompts.points_xy, prompts.point_labels):
            for (x, y), label in zip(points, labels):
                if label == 1 and target[int(np.clip(round(y), 0, h - 1)), int(np.clip(round(x), 0, w - 1))]:
                    return "detected"
    return "missed: wrong place"


@dataclass
class StudyReport:
    """Result of a study.

    Attributes:
        out_dir: Study folder (``comparison.csv``, ``comparison.json``, ``dice_boxplot.png``,
            one ``evaluate`` folder per provider).
        table: One row per provider (the ``comparison.csv`` rows).
        reports: The :class:`~medsamkit.EvaluationReport` of each provider.
    """

    out_dir: Path
    table: list[dict[str, Any]]
    reports: dict[str, Any]

    def __str__(self) -> str:
        head = f"{'provider':<28} {'n':>4} {'Dice mean':>9} {'median':>7} {'std':>7} {'prec':>6} {'recall':>6} {'F1':>6} {'detected':>8} {'missed':>6} {'FP':>4} {'Dice|det':>8}"
        lines = [head]
        fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        for r in self.table:
            lines.append(
                f"{r['provider']:<28} {r['n']:>4} {fmt(r['dice_mean'], '>9.4f')} {fmt(r['dice_median'], '>7.4f')} "
                f"{fmt(r['dice_std'], '>7.4f')} {fmt(r['precision_mean'], '>6.3f')} {fmt(r['recall_mean'], '>6.3f')} "
                f"{fmt(r['f1_mean'], '>6.3f')} {r['detected']:>8} {r['missed']:>6} {r['false_positive']:>4} "
                f"{fmt(r['dice_detected_mean'], '>8.4f')}"
                + (
                    f" AUROC<0.8 {fmt(r['auroc_dice_below_0.8'], '.3f')} <0.7 {fmt(r['auroc_dice_below_0.7'], '.3f')}"
                    f" Dice after review {fmt(r['mean_dice_after_review'], '.4f')}"
                    if "auroc_dice_below_0.8" in r
                    else ""
                )
            )
        return "\n".join(lines)


def compare_prompters(
    segmenter: Segmenter,
    data: Any,
    prompters: Mapping[str, PromptProvider],
    *,
    out_dir: str | Path,
    limit: int | None = None,
    threshold: float = 0.5,
    n_overlays: int = 4,
    progress: bool = True,
    allow_missing_masks: bool = False,
    quality: bool = False,
) -> StudyReport:
    """Evaluate the same images with several prompt providers (or whole pipelines).

    Writes ``out_dir/<provider>/`` (a full :func:`~medsamkit.evaluate` folder each,
    resumable), ``comparison.csv`` with one row per provider — ``provider, n,
    {dice,precision,recall,f1,iou,hd95}_{mean,median,std}``, the detection counts
    (``detected``, ``missed_no_prompt``, ``missed_wrong_place``, ``false_positive``,
    ``true_negative``, ``missed = missed_no_prompt + missed_wrong_place``) and
    ``dice_detected_mean`` (Dice over the images whose target was found: the
    segmentation error once detection succeeded) — ``comparison.json`` and a box plot
    of the per-image Dice per provider.

    Args:
        segmenter: The segmenter (wrap it in a ``CachedSegmenter`` so the encoder runs
            once per image for the whole study).
        data: A ``MaskFolder`` (or path).
        prompters: ``{label: prompt provider or Pipeline}``; labels name the
            sub-folders. A provider runs with ``segmenter`` and ``threshold``; a
            :class:`~medsamkit.Pipeline` runs as it is, with its own segmenter and
            threshold (a fine-tuned pipeline beside the zero-shot ones, as in paper
            002's tables).
        out_dir: Study folder.
        limit: Only the first ``limit`` images in sorted order.
        threshold: Probability threshold of every pipeline.
        n_overlays: Overlays per provider.
        progress: Progress bars.
        allow_missing_masks: Go on when some images have no mask (see :func:`~medsamkit.evaluate`).
        quality: Write each result's quality estimate and the failure-detection
            summary (``evaluate(..., quality=True)``; the AUROC columns of the table).
    """
    from .._pipeline import Pipeline
    from .._types import Prompts
    from ..data import atomic_write_text, csv_text
    from ..metrics import summarize
    from ._evaluate import as_samples, evaluate
    from ._plots import save_grouped_boxplot

    if not prompters:
        raise ValueError("prompters: expected at least one {label: prompt provider}, got none")
    samples = as_samples(data)
    if limit is not None:
        samples = samples[:limit]
    out_dir = Path(out_dir)
    from .._outdir import claim_out_dir, input_folders

    # Per-provider folders are claimed and locked by evaluate; here: the study's own files.
    claim_out_dir(
        out_dir,
        inputs=input_folders(samples),
        owned=("comparison.csv", "comparison.json", "dice_boxplot.png", *(_safe_name(label) for label in prompters)),
    )
    by_stem = {s.stem: s for s in samples}
    targets: dict[str, np.ndarray] = {}
    table, reports, dice_groups = [], {}, {}
    for label, prompter in prompters.items():
        folder = _safe_name(label)
        if isinstance(prompter, Pipeline):
            pipeline = prompter
        else:
            pipeline = Pipeline(prompter, segmenter, threshold=threshold)
        report = evaluate(
            pipeline,
            samples,
            out_dir=out_dir / folder,
            n_overlays=n_overlays,
            progress=progress,
            allow_missing_masks=allow_missing_masks,
            quality=quality,
        )
        reports[label] = report
        counts = dict.fromkeys(DETECTION_CLASSES, 0)
        dice_detected = []
        for row in report.rows:
            if row.get("error"):
                continue
            stem = row["stem"]
            if stem not in targets:
                targets[stem] = by_stem[stem].load_mask()
            record = json.loads((out_dir / folder / "records" / f"{stem}.json").read_text())
            outcome = detection_class(Prompts.from_dict(record["prompts"]), targets[stem])
            counts[outcome] += 1
            if outcome == "detected":
                dice_detected.append(row["dice"])
        summary = report.summary["metrics"]
        entry: dict[str, Any] = {"provider": label, "n": report.summary["counts"]["evaluated"]}
        for metric in SUMMARY_METRICS:
            for stat in ("mean", "median", "std"):
                entry[f"{metric}_{stat}"] = summary[metric][stat]
        entry.update(
            {
                "detected": counts["detected"],
                "missed_no_prompt": counts["missed: no prompt"],
                "missed_wrong_place": counts["missed: wrong place"],
                "missed": counts["missed: no prompt"] + counts["missed: wrong place"],
                "false_positive": counts["false positive"],
                "true_negative": counts["true negative"],
                "dice_detected_mean": summarize(dice_detected)["mean"],
                "errors": report.n_errors,
            }
        )
        if quality:
            detection = report.summary.get("failure_detection", {})
            for key in ("auroc_dice_below_0.8", "auroc_dice_below_0.7", "mean_dice_after_review"):
                entry[key] = detection.get(key)
        table.append(entry)
        dice_groups[label] = [r.get("dice") for r in report.rows if not r.get("error")]
    columns = list(table[0])
    atomic_write_text(out_dir / "comparison.csv", csv_text(table, columns))
    atomic_write_text(out_dir / "comparison.json", json.dumps(table, indent=2) + "\n")
    save_grouped_boxplot(out_dir / "dice_boxplot.png", dice_groups, ylabel="Dice", title=f"{len(samples)} images")
    return StudyReport(out_dir=out_dir, table=table, reports=reports)


def box_margin_study(
    segmenter: Segmenter,
    data: Any,
    *,
    out_dir: str | Path,
    margins: Sequence[float] = (0, 5, 10, 20, 30),
    limit: int | None = None,
    progress: bool = True,
    allow_missing_masks: bool = False,
) -> StudyReport:
    """Dice of oracle boxes grown by each margin in pixels (paper 000, Figure 1).

    Args:
        segmenter: The segmenter (a ``CachedSegmenter`` encodes each image once).
        data: A ``MaskFolder`` (or path).
        out_dir: Study folder (``comparison.csv``, ``dice_boxplot.png``: Dice per margin).
        margins: Pixels added to each side of each oracle box.
        limit: Only the first ``limit`` images in sorted order.
        progress: Progress bars.
        allow_missing_masks: Go on when some images have no mask.
    """
    from ..prompters import PerturbedBoxPrompter

    if not margins:
        raise ValueError("margins: expected at least one margin in pixels, got none")
    prompters = {f"margin {float(m):g} px": PerturbedBoxPrompter(margin=float(m)) for m in margins}
    return compare_prompters(
        segmenter,
        data,
        prompters,
        out_dir=out_dir,
        limit=limit,
        n_overlays=2,
        progress=progress,
        allow_missing_masks=allow_missing_masks,
    )


def _safe_name(label: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in label.strip())
    return cleaned.strip("-") or "provider"

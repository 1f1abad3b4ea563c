"""``evaluate``: run a pipeline over a folder, write tables and pictures, resume safely."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CSV_COLUMNS", "EvaluationReport", "evaluate"]

METRIC_COLUMNS = ("dice", "iou", "precision", "recall", "f1", "hd95")
CSV_COLUMNS = ("stem", *METRIC_COLUMNS, "seconds", "n_prompts", "note", "error")
"""Columns of ``metrics.csv``: one row per image."""

RUN_FILE = "run.json"


@dataclass
class EvaluationReport:
    """What :func:`evaluate` wrote and measured.

    Attributes:
        out_dir: The output folder.
        rows: One dict per image (the ``metrics.csv`` rows, sorted by stem).
        summary: Per metric ``{"mean", "median", "std", "n"}`` over the images
            without error, plus counts (the content of ``summary.json``).
        n_evaluated: Images processed in this call (others came from a previous run).
    """

    out_dir: Path
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    n_evaluated: int = 0
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def n_errors(self) -> int:
        """Images that could not be evaluated (unreadable or malformed files)."""
        return len(self.errors)

    def mean(self, metric: str = "dice") -> float | None:
        """Mean of ``metric`` over the images without error (None if none)."""
        return self.summary["metrics"][metric]["mean"]

    def __str__(self) -> str:
        lines = [f"{'metric':<10} {'mean':>8} {'median':>8} {'std':>8} {'n':>5}"]
        for name, stats in self.summary["metrics"].items():
            if stats["n"]:
                lines.append(
                    f"{name:<10} {stats['mean']:>8.4f} {stats['median']:>8.4f} {stats['std']:>8.4f} {stats['n']:>5}"
                )
            else:
                lines.append(f"{name:<10} {'-':>8} {'-':>8} {'-':>8} {0:>5}")
        counts = self.summary["counts"]
        lines.append(
            f"images: {counts['images']}  errors: {counts['errors']}  no prompt: {counts['no_prompt']}"
        )
        return "\n".join(lines)


def _as_samples(data: Any) -> Sequence[Any]:
    from ..data import MaskFolder

    if isinstance(data, (str, Path)):
        return MaskFolder(data)
    if not isinstance(data, Sequence) or isinstance(data, (bytes, str)):
        raise TypeError(f"data: expected a MaskFolder, a folder path or a sequence of Samples, got {type(data).__name__}")
    return data


def _row_for(stem: str, metrics: dict[str, float] | None, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"stem": stem}
    for name in METRIC_COLUMNS:
        value = None if metrics is None else metrics.get(name)
        row[name] = None if value is None or (isinstance(value, float) and math.isnan(value)) else value
    row.update({"seconds": None, "n_prompts": None, "note": None, "error": None})
    row.update(extra)
    return row


def _summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    from ..metrics import summarize

    ok = [r for r in rows if not r.get("error")]
    return {
        "metrics": {name: summarize([r.get(name) for r in ok]) for name in (*METRIC_COLUMNS, "seconds")},
        "counts": {
            "images": len(rows),
            "evaluated": len(ok),
            "errors": len(rows) - len(ok),
            "no_prompt": sum(1 for r in ok if r.get("note") == "no prompt"),
        },
        "errors": {r["stem"]: r["error"] for r in rows if r.get("error")},
    }


def _check_same_run(
    out_dir: Path, run: dict[str, Any], *, keys: Sequence[str] = ("pipeline", "metrics", "spacing")
) -> None:
    """Refuse to resume into ``out_dir`` when its ``run.json`` describes another run."""
    path = out_dir / RUN_FILE
    if not path.is_file():
        return
    previous = json.loads(path.read_text())
    for key in keys:
        if previous.get(key) != run.get(key):
            raise ValueError(
                f"out_dir: {out_dir} holds results of a different run ({key} differs: "
                f"{previous.get(key)!r} there, {run.get(key)!r} now). Use a new out_dir, "
                "or overwrite=True to start again."
            )


def evaluate(
    pipeline: Any,
    data: Any,
    *,
    out_dir: str | Path,
    limit: int | None = None,
    spacing: tuple[float, float] = (1.0, 1.0),
    n_overlays: int = 6,
    save_masks: bool = True,
    overwrite: bool = False,
    progress: bool = True,
) -> EvaluationReport:
    """Segment every image of ``data`` with ``pipeline`` and score it against its mask.

    Writes into ``out_dir``:

    * ``metrics.csv`` — one row per image: ``stem, dice, iou, precision, recall, f1,
      hd95, seconds, n_prompts, note, error`` (``seconds``: prompting, encoding and
      decoding time of that image; ``note``: ``no prompt`` when the provider found
      nothing; ``error``: why an image could not be evaluated).
    * ``summary.json`` — per metric ``mean``, ``median``, ``std`` (population) and
      ``n``; image counts; the errors.
    * ``masks/<stem>.png`` — predicted masks (0/255).
    * ``records/<stem>.json`` — per-image results including the prompts.
    * ``boxplot.png`` and ``overlays/<stem>.png`` (the worst and best images by Dice).
    * ``pipeline.json`` and ``run.json`` — the configuration, to repeat the run.

    Each image's mask and record are written atomically as soon as it is done, and
    ``metrics.csv`` is rewritten atomically after every image, so an interrupted run
    loses nothing finished. Running again with the same ``out_dir`` resumes: images
    with a record are not redone; images that failed are retried. A different
    pipeline configuration in the same ``out_dir`` is refused unless ``overwrite``.

    An unreadable or malformed image or mask does not stop the run: it is named on
    stderr and in the ``error`` column, and counted in ``report.n_errors``.

    Args:
        pipeline: A :class:`~medsamkit.Pipeline` (or any callable
            ``pipeline(image, target=mask) -> SegmentationResult`` with a ``config``).
        data: A :class:`~medsamkit.MaskFolder`, a folder path, or a sequence of samples.
        out_dir: Output folder (created).
        limit: Evaluate only the first ``limit`` images in sorted order.
        spacing: Pixel size ``(row, col)`` for HD95 (default 1: pixels).
        n_overlays: Number of overlay pictures (half worst, half best by Dice).
        save_masks: Write the predicted masks as PNG.
        overwrite: Delete previous results in ``out_dir`` first.
        progress: Show a progress bar.

    Returns:
        An :class:`EvaluationReport`.
    """
    from tqdm.auto import tqdm

    from ..data import atomic_write_text, csv_text, write_mask
    from ..metrics import compute_metrics
    from ._prefetch import prefetch

    samples = _as_samples(data)
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit: expected a positive int, got {limit!r}")
        samples = samples[:limit]
    if isinstance(n_overlays, bool) or not isinstance(n_overlays, int) or n_overlays < 0:
        raise ValueError(f"n_overlays: expected a non-negative int, got {n_overlays!r}")
    out_dir = Path(out_dir)
    records_dir = out_dir / "records"
    if overwrite and out_dir.exists():
        import shutil

        for name in ("records", "masks", "overlays"):
            shutil.rmtree(out_dir / name, ignore_errors=True)
        for name in (RUN_FILE, "metrics.csv", "summary.json", "boxplot.png"):
            (out_dir / name).unlink(missing_ok=True)
    config = pipeline.config.model_dump(mode="json")
    run = {"pipeline": config, "metrics": list(METRIC_COLUMNS), "spacing": [float(s) for s in spacing]}
    _check_same_run(out_dir, run)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        pipeline.save(out_dir)
    except Exception as exc:  # a custom component: keep the documentary config
        atomic_write_text(out_dir / "pipeline.json", json.dumps(config, indent=2) + "\n")
        print(f"medsamkit: note: pipeline cannot be saved for re-running ({exc})", file=sys.stderr)
    atomic_write_text(out_dir / RUN_FILE, json.dumps(run, indent=2) + "\n")

    rows: dict[str, dict[str, Any]] = {}
    for sample in samples:
        record = records_dir / f"{sample.stem}.json"
        if record.is_file():
            row = json.loads(record.read_text())["row"]
            if not row.get("error"):
                rows[sample.stem] = row
    pending = [s for s in samples if s.stem not in rows]
    errors: dict[str, str] = {}

    def flush() -> None:
        ordered = [rows[s.stem] for s in samples if s.stem in rows]
        atomic_write_text(out_dir / "metrics.csv", csv_text(ordered, CSV_COLUMNS))

    bar = tqdm(pending, desc="evaluate", unit="img", disable=not progress, dynamic_ncols=True)
    for sample, loaded, read_error in prefetch(bar, lambda s: s.load()):
        try:
            if read_error is not None:
                raise read_error
            image, mask = loaded
            start = time.perf_counter()
            result = pipeline(image, target=mask)
            seconds = time.perf_counter() - start
            values = compute_metrics(result.mask, mask, spacing=spacing, metrics=METRIC_COLUMNS)
        except Exception as exc:  # one bad file must not stop a long run
            message = f"{type(exc).__name__}: {exc}"
            errors[sample.stem] = message
            print(f"medsamkit: error: {sample.stem}: {message}", file=sys.stderr)
            # Not recorded on disk: a failed image is retried when the run resumes.
            rows[sample.stem] = _row_for(sample.stem, None, error=message)
            flush()
            continue
        row = _row_for(
            sample.stem, values, seconds=round(seconds, 4), n_prompts=result.prompts.n, note=result.note
        )
        if save_masks:
            write_mask(out_dir / "masks" / f"{sample.stem}.png", result.mask)
        atomic_write_text(
            records_dir / f"{sample.stem}.json",
            json.dumps({"row": row, "prompts": result.prompts.to_dict(), "scores": result.scores.tolist()}) + "\n",
        )
        rows[sample.stem] = row
        flush()
        dice_values = [r["dice"] for r in rows.values() if r.get("dice") is not None]
        if dice_values:
            bar.set_postfix(dice=f"{np.mean(dice_values):.3f}")
    bar.close()

    ordered = [rows[s.stem] for s in samples if s.stem in rows]
    flush()
    summary = _summarize(ordered)
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    _pictures(out_dir, samples, ordered, n_overlays=n_overlays, save_masks=save_masks)
    return EvaluationReport(out_dir=out_dir, rows=ordered, summary=summary, n_evaluated=len(pending), errors=errors)


def _pictures(out_dir: Path, samples: Sequence[Any], rows: list[dict[str, Any]], *, n_overlays: int, save_masks: bool) -> None:
    """Box plot of the metrics and overlays of the worst and best images."""
    from .._types import Prompts
    from ..data import read_mask
    from ._plots import save_metric_boxplot, save_overlay

    ok = [r for r in rows if not r.get("error")]
    if not ok:
        return
    save_metric_boxplot(out_dir / "boxplot.png", ok, title=f"{len(ok)} images")
    if not (n_overlays and save_masks):
        return
    scored = sorted((r for r in ok if r.get("dice") is not None), key=lambda r: r["dice"])
    worst = scored[: (n_overlays + 1) // 2]
    best = scored[len(worst) :][-(n_overlays // 2) :] if n_overlays // 2 else []
    by_stem = {s.stem: s for s in samples}
    import shutil

    shutil.rmtree(out_dir / "overlays", ignore_errors=True)  # the worst/best set changes on resume

    def draw(row: dict[str, Any]) -> None:
        record = json.loads((out_dir / "records" / f"{row['stem']}.json").read_text())
        image, target = by_stem[row["stem"]].load()
        pred = read_mask(out_dir / "masks" / f"{row['stem']}.png")
        save_overlay(
            out_dir / "overlays" / f"{row['stem']}.png",
            image,
            pred=pred,
            target=target,
            prompts=Prompts.from_dict(record["prompts"]),
            title=f"{row['stem']}  Dice {row['dice']:.3f}",
        )

    # Reading, drawing and PNG encoding mostly release the GIL: one thread per core.
    from concurrent.futures import ThreadPoolExecutor

    rows = [*worst, *best]
    with ThreadPoolExecutor(max_workers=max(1, min(len(rows), os.cpu_count() or 1))) as pool:
        list(pool.map(draw, rows))

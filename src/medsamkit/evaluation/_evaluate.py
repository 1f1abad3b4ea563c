"""``evaluate``: run a pipeline over a folder, write tables and pictures, resume safely."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CSV_COLUMNS", "EvaluationReport", "evaluate", "evaluate_samples"]

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


class _Summary:
    """``summary.json`` built one row at a time (keeps 8 bytes per image and metric, not the rows)."""

    def __init__(self) -> None:
        from array import array

        self.values = {name: array("d") for name in (*METRIC_COLUMNS, "seconds")}
        self.images = 0
        self.no_prompt = 0
        self.errors: dict[str, str] = {}

    def add(self, row: dict[str, Any]) -> None:
        self.images += 1
        if row.get("error"):
            self.errors[row["stem"]] = row["error"]
            return
        for name, column in self.values.items():
            value = row.get(name)
            column.append(math.nan if value is None else float(value))
        self.no_prompt += row.get("note") == "no prompt"

    def result(self) -> dict[str, Any]:
        from ..metrics import summarize

        evaluated = self.images - len(self.errors)
        return {
            "metrics": {name: summarize(np.frombuffer(column, dtype=np.float64)) for name, column in self.values.items()},
            "counts": {
                "images": self.images,
                "evaluated": evaluated,
                "errors": len(self.errors),
                "no_prompt": self.no_prompt,
            },
            "errors": dict(self.errors),
        }


def _summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    summary = _Summary()
    for row in rows:
        summary.add(row)
    return summary.result()


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


def _finished_row(out_dir: Path, sample: Any) -> dict[str, Any] | None:
    """The row of ``sample`` from a previous run into ``out_dir``, or None if it must be (re)done."""
    record = out_dir / "records" / f"{sample.stem}.json"
    if not record.is_file():
        return None
    row = json.loads(record.read_text())["row"]
    return None if row.get("error") else row


def _evaluate_one(
    pipeline: Any, sample: Any, loaded: Any, read_error: BaseException | None, *, out_dir: Path, spacing: Any, save_masks: bool
) -> dict[str, Any]:
    """Segment and score one sample; write its mask and record; return its ``metrics.csv`` row.

    A failure gives an error row (named on stderr) and writes nothing: a failed image
    is retried when the run resumes.
    """
    from ..data import atomic_write_text, write_mask
    from ..metrics import compute_metrics

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
        print(f"medsamkit: error: {sample.stem}: {message}", file=sys.stderr)
        return _row_for(sample.stem, None, error=message)
    row = _row_for(sample.stem, values, seconds=round(seconds, 4), n_prompts=result.prompts.n, note=result.note)
    if save_masks:
        write_mask(out_dir / "masks" / f"{sample.stem}.png", result.mask)
    atomic_write_text(
        out_dir / "records" / f"{sample.stem}.json",
        json.dumps({"row": row, "prompts": result.prompts.to_dict(), "scores": result.scores.tolist()}) + "\n",
    )
    return row


def evaluate_samples(
    pipeline: Any, samples: Iterable[Any], *, out_dir: Path, spacing: Any, save_masks: bool
) -> Iterator[tuple[Any, dict[str, Any]]]:
    """The per-image loop of both engines: yields ``(sample, row)`` in order.

    Reads the next images in a background thread while the current one is
    segmented; each image's mask and record are written before its row is yielded.
    The local engine runs it over all pending samples, each Ray worker over its batches.
    """
    from ._prefetch import prefetch

    for sample, loaded, read_error in prefetch(samples, lambda s: s.load()):
        yield sample, _evaluate_one(
            pipeline, sample, loaded, read_error, out_dir=out_dir, spacing=spacing, save_masks=save_masks
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
    engine: Any = "local",
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
        engine: ``"local"`` (this process) or ``"ray"`` / a :class:`RayEngine` (Ray Data:
            local Ray, or the cluster ``RAY_ADDRESS`` or ``RayEngine(address=...)``
            names; ``pip install medsamkit[ray]``). Both write the same files; see
            ``docs/ray.md``.

    Returns:
        An :class:`EvaluationReport`.
    """
    from tqdm.auto import tqdm

    from ..data import atomic_write_text, csv_text
    from ._ray import engine_options as parse_engine

    engine_options = parse_engine(engine)
    samples = _as_samples(data)
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit: expected a positive int, got {limit!r}")
        samples = samples[:limit]
    if isinstance(n_overlays, bool) or not isinstance(n_overlays, int) or n_overlays < 0:
        raise ValueError(f"n_overlays: expected a non-negative int, got {n_overlays!r}")
    out_dir = Path(out_dir)
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
        if engine_options is not None:
            raise ValueError(
                f"engine: the Ray engine rebuilds the pipeline on its workers from pipeline.json, "
                f"and this pipeline cannot be saved ({exc})"
            ) from exc
        atomic_write_text(out_dir / "pipeline.json", json.dumps(config, indent=2) + "\n")
        print(f"medsamkit: note: pipeline cannot be saved for re-running ({exc})", file=sys.stderr)
    atomic_write_text(out_dir / RUN_FILE, json.dumps(run, indent=2) + "\n")

    if engine_options is not None:
        return _evaluate_on_ray(
            engine_options, samples, pipeline=pipeline, out_dir=out_dir, spacing=spacing, n_overlays=n_overlays,
            save_masks=save_masks, progress=progress,
        )

    if not isinstance(samples, (list, tuple)) and callable(getattr(samples, "sample_from_row", None)):
        samples = samples[:]  # a CSV listing: read it once, not at every flush
    rows: dict[str, dict[str, Any]] = {}
    for sample in samples:
        row = _finished_row(out_dir, sample)
        if row is not None:
            rows[sample.stem] = row
    pending = [s for s in samples if s.stem not in rows]
    errors: dict[str, str] = {}

    def flush() -> None:
        ordered = [rows[s.stem] for s in samples if s.stem in rows]
        atomic_write_text(out_dir / "metrics.csv", csv_text(ordered, CSV_COLUMNS))

    bar = tqdm(pending, desc="evaluate", unit="img", disable=not progress, dynamic_ncols=True)
    for sample, row in evaluate_samples(pipeline, bar, out_dir=out_dir, spacing=spacing, save_masks=save_masks):
        rows[sample.stem] = row
        if row.get("error"):
            errors[sample.stem] = row["error"]
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
    from ._plots import save_metric_boxplot

    ok = [r for r in rows if not r.get("error")]
    if not ok:
        return
    save_metric_boxplot(out_dir / "boxplot.png", ok, title=f"{len(ok)} images")
    if not (n_overlays and save_masks):
        return
    scored = sorted((r for r in ok if r.get("dice") is not None), key=lambda r: r["dice"])
    _draw_overlays(out_dir, _overlay_rows(scored, n_overlays), {s.stem: s for s in samples})


def _overlay_rows(scored: Sequence[dict[str, Any]], n_overlays: int) -> list[dict[str, Any]]:
    """The worst and best rows of ``scored`` (rows sorted by Dice, ties in sample order)."""
    worst = list(scored[: (n_overlays + 1) // 2])
    best = list(scored[len(worst) :][-(n_overlays // 2) :]) if n_overlays // 2 else []
    return [*worst, *best]


def _draw_overlays(out_dir: Path, rows: list[dict[str, Any]], by_stem: dict[str, Any]) -> None:
    """Overlay pictures of ``rows`` (their masks and records are read back from ``out_dir``)."""
    import shutil

    from .._types import Prompts
    from ..data import read_mask
    from ._plots import save_overlay

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

    with ThreadPoolExecutor(max_workers=max(1, min(len(rows), os.cpu_count() or 1))) as pool:
        list(pool.map(draw, rows))


def _evaluate_on_ray(
    options: Any, samples: Any, *, pipeline: Any, out_dir: Path, spacing: Any, n_overlays: int,
    save_masks: bool, progress: bool,
) -> EvaluationReport:
    """:func:`evaluate` on Ray Data: the workers run :func:`evaluate_samples`, this process streams the rows.

    Called after the run is set up (``run.json``, ``pipeline.json``). The driver keeps
    the summary's columns and one stem per image, never the rows (``report.rows`` reads
    them back from the records).
    """
    import functools

    from ..data import Sample, atomic_write_text
    from ._plots import save_metric_boxplot
    from ._ray import (
        ColumnRow,
        CsvStream,
        Extremes,
        RecordRows,
        cache_of,
        check_rebuildable,
        progress_bar,
        ray_session,
        stream_rows,
    )

    out_dir = out_dir.absolute()  # the workers' working directory is not ours
    check_rebuildable(json.loads((out_dir / "pipeline.json").read_text()))
    total = len(samples)
    summary = _Summary()
    extremes = Extremes(n_overlays if save_masks else 0)
    stems: list[str] = []
    error_rows: dict[str, dict[str, Any]] = {}
    n_evaluated = 0
    dice_sum, dice_n = 0.0, 0
    table = CsvStream(out_dir / "metrics.csv", CSV_COLUMNS)
    committed = False
    bar = progress_bar(total, "evaluate (ray)", progress)
    work = functools.partial(evaluate_samples, spacing=tuple(float(s) for s in spacing), save_masks=save_masks)
    try:
        with ray_session(options.address) as ray:
            rows = stream_rows(
                ray, options, samples, out_dir=out_dir, work=work, finished=_finished_row, cache=cache_of(pipeline)
            )
            for index, item in enumerate(rows):
                row = json.loads(item["row"])
                n_evaluated += not item["reused"]
                stems.append(row["stem"])
                table.write(row)
                summary.add(row)
                if row.get("error"):
                    error_rows[row["stem"]] = row
                    print(f"medsamkit: error: {row['stem']}: {row['error']}", file=sys.stderr)
                elif row.get("dice") is not None:
                    sample = Sample(row["stem"], Path(item["image_path"]), Path(item["mask_path"]))
                    extremes.add(float(row["dice"]), index, row["stem"], sample)
                    dice_sum, dice_n = dice_sum + row["dice"], dice_n + 1
                    bar.set_postfix(dice=f"{dice_sum / dice_n:.3f}", refresh=False)
                bar.update(1)
        committed = True
    finally:
        bar.close()
        table.close(commit=committed)
    result = summary.result()
    atomic_write_text(out_dir / "summary.json", json.dumps(result, indent=2) + "\n")
    n_ok = summary.images - len(summary.errors)
    if n_ok:
        columns = {name: summary.values[name] for name in METRIC_COLUMNS}
        save_metric_boxplot(out_dir / "boxplot.png", [ColumnRow(columns, i) for i in range(n_ok)], title=f"{n_ok} images")
        if n_overlays and save_masks:
            scored, by_stem = extremes.sorted_rows()
            _draw_overlays(out_dir, _overlay_rows(scored, n_overlays), by_stem)
    return EvaluationReport(
        out_dir=out_dir,
        rows=RecordRows(out_dir, stems, error_rows),  # type: ignore[arg-type]
        summary=result,
        n_evaluated=n_evaluated,
        errors=dict(summary.errors),
    )

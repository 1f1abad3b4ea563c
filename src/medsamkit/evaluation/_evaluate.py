"""``evaluate``: run a pipeline over a folder, write tables and pictures, resume safely."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CSV_COLUMNS",
    "EVALUATE_OWNED",
    "EvaluationReport",
    "METRIC_COLUMNS",
    "check_stems",
    "evaluate",
    "evaluate_samples",
    "read_record",
    "sample_key",
    "write_record",
]

METRIC_COLUMNS = ("dice", "iou", "precision", "recall", "f1", "hd95")
CSV_COLUMNS = ("stem", *METRIC_COLUMNS, "seconds", "n_prompts", "note", "error")
"""Columns of ``metrics.csv``: one row per image."""

RUN_FILE = "run.json"
EVALUATE_OWNED = (
    "records",
    "masks",
    "overlays",
    RUN_FILE,
    "metrics.csv",
    "summary.json",
    "boxplot.png",
    "pipeline.json",
    "prompter.*",
    "cases_to_check",
)
"""What :func:`evaluate` writes directly in its output folder (what ``overwrite`` may delete)."""

logger = logging.getLogger("medsamkit")


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

    def __repr__(self) -> str:
        counts = self.summary.get("counts", {})
        dice = self.summary.get("metrics", {}).get("dice", {})
        shown = "-" if dice.get("mean") is None else f"{dice['mean']:.4f}"
        return (
            f"EvaluationReport(out_dir='{self.out_dir}', images={counts.get('images', len(self.rows))}, "
            f"errors={self.n_errors}, dice_mean={shown}, evaluated_now={self.n_evaluated})"
        )

    def to_dataframe(self) -> Any:
        """The per-image rows (``metrics.csv``) as a pandas ``DataFrame`` indexed by stem.

        Raises:
            ImportError: If pandas is not installed (``pip install pandas``).
        """
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("EvaluationReport.to_dataframe needs pandas: pip install pandas") from None
        return pd.DataFrame([{c: r.get(c) for c in CSV_COLUMNS} for r in self.rows], columns=list(CSV_COLUMNS)).set_index("stem")

    def _repr_html_(self) -> str:
        """The summary table for notebooks."""
        import html

        head = "".join(f"<th>{h}</th>" for h in ("metric", "mean", "median", "std", "n"))
        body = []
        for name, stats in self.summary["metrics"].items():
            cells = (
                [name] + [("-" if stats[k] is None else f"{stats[k]:.4f}") for k in ("mean", "median", "std")] + [str(stats["n"])]
            )
            body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
        counts = self.summary["counts"]
        caption = html.escape(
            f"{self.out_dir}: {counts['images']} images, {counts['errors']} errors, {counts['no_prompt']} without prompt"
        )
        return f"<table><caption>{caption}</caption><tr>{head}</tr>{''.join(body)}</table>"

    def __str__(self) -> str:
        lines = [f"{'metric':<10} {'mean':>8} {'median':>8} {'std':>8} {'n':>5}"]
        for name, stats in self.summary["metrics"].items():
            if stats["n"]:
                lines.append(f"{name:<10} {stats['mean']:>8.4f} {stats['median']:>8.4f} {stats['std']:>8.4f} {stats['n']:>5}")
            else:
                lines.append(f"{name:<10} {'-':>8} {'-':>8} {'-':>8} {0:>5}")
        counts = self.summary["counts"]
        lines.append(f"images: {counts['images']}  errors: {counts['errors']}  no prompt: {counts['no_prompt']}")
        return "\n".join(lines)


def as_samples(data: Any) -> Sequence[Any]:
    """``data`` as a sequence of samples: a folder path becomes a :class:`~medsamkit.MaskFolder`."""
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

        return {
            "metrics": {name: summarize(np.frombuffer(column, dtype=np.float64)) for name, column in self.values.items()},
            "counts": {
                "images": self.images,
                "evaluated": self.images - len(self.errors),
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


def check_same_run(out_dir: Path, run: dict[str, Any], *, keys: Sequence[str] = ("pipeline", "metrics", "spacing")) -> None:
    """Refuse to resume into ``out_dir`` when its ``run.json`` describes another run."""
    path = out_dir / RUN_FILE
    if not path.is_file():
        return
    try:
        previous = json.loads(path.read_text())
        if not isinstance(previous, dict):
            raise ValueError("expected a JSON object")
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"out_dir: cannot read {path} ({exc}); it is damaged. Use a new out_dir, or overwrite=True (--overwrite) to start again."
        ) from None
    for key in keys:
        if previous.get(key) != run.get(key):
            raise ValueError(
                f"out_dir: {out_dir} holds results of a different run ({key} differs: "
                f"{previous.get(key)!r} there, {run.get(key)!r} now). Use a new out_dir, "
                "or overwrite=True (--overwrite) to start again."
            )


def check_stems(samples: Sequence[Any], *, name: str = "data") -> None:
    """Refuse stems that are not plain file names (they name output files) or that repeat.

    Raises:
        ValueError: Naming the first bad or repeated stem.
    """
    seen: set[str] = set()
    for sample in samples:
        stem = sample.stem
        if (
            not isinstance(stem, str)
            or stem in ("", ".", "..")
            or "/" in stem
            or "\\" in stem
            or "\x00" in stem
            or os.path.isabs(stem)
        ):
            raise ValueError(
                f"{name}: sample stem {stem!r} is not a plain file name; stems name the output files "
                "(records/<stem>.json, masks/<stem>.png) and must not contain path separators"
            )
        if stem in seen:
            raise ValueError(
                f"{name}: duplicate stem {stem!r}: two samples would write the same output files; "
                "keep one file per stem (e.g. not both case.png and case.jpg)"
            )
        seen.add(stem)


def _digest_file(digest: Any, path: Any) -> None:
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)


def sample_key(sample: Any, run_digest: str) -> str:
    """Content key of one image's result: SHA-256 of the run settings, the image and the mask.

    Files are hashed as stored (no decoding); a sample without ``image_path`` is
    hashed through its loaded arrays. A record whose key differs from the current one
    (image or mask edited, another file under the same stem) is recomputed on resume.
    """
    digest = hashlib.sha256(f"medsamkit-record-v1|{run_digest}|".encode())
    image_path = getattr(sample, "image_path", None)
    if image_path is not None:
        digest.update(b"image|")
        _digest_file(digest, image_path)
        mask_path = getattr(sample, "mask_path", None)
        digest.update(b"|mask|")
        if mask_path is not None:
            _digest_file(digest, mask_path)
        return digest.hexdigest()
    for array in sample.load():
        array = np.ascontiguousarray(array)
        digest.update(f"{array.shape}|{array.dtype.str}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def run_digest(run: dict[str, Any]) -> str:
    """SHA-256 of a run description (``run.json``'s content)."""
    return hashlib.sha256(json.dumps(run, sort_keys=True).encode()).hexdigest()


def read_record(out_dir: Path, stem: str, key: str | None) -> dict[str, Any] | None:
    """The finished record of ``stem`` in ``out_dir`` if it is intact and matches ``key``, else None.

    A damaged record is named in a warning and treated as not done (it is redone).
    """
    path = out_dir / "records" / f"{stem}.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        row = record["row"]
        if not isinstance(row, dict) or row.get("stem") != stem:
            raise ValueError("not a record of this image")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("medsamkit: damaged result %s (%s); evaluating that image again", path, exc)
        return None
    if row.get("error") or record.get("key") != key:
        return None  # failed, or the image, the mask or the settings changed since
    return record


def write_record(out_dir: Path, stem: str, row: dict[str, Any], result: Any, *, key: str, save_mask: bool = True) -> None:
    """Write one finished image: its mask (``masks/<stem>.png``) and then its record (``records/<stem>.json``).

    Both writes are atomic and the record comes last, so a record on disk always has
    its mask. The record holds the metrics row, the prompts, the scores and ``key``
    (:func:`sample_key`), by which a resumed run knows whether it is still valid.
    """
    from ..data import atomic_write_text, write_mask

    if save_mask:
        write_mask(out_dir / "masks" / f"{stem}.png", result.mask)
    record = {"key": key, "row": row, "prompts": result.prompts.to_dict(), "scores": np.asarray(result.scores).tolist()}
    atomic_write_text(out_dir / "records" / f"{stem}.json", json.dumps(record) + "\n")


def _missing_masks(data: Any, samples: Sequence[Any]) -> list[str]:
    """Stems of the images of ``data`` that have no mask (a MaskFolder's unmatched images, samples without one)."""
    missing = list(getattr(data, "unmatched_images", ()) or ())
    missing += [s.stem for s in samples if hasattr(s, "mask_path") and s.mask_path is None]
    return sorted(set(missing))


def sample_key_if_readable(sample: Any, digest: str) -> str:
    """:func:`sample_key`, or ``""`` when a file cannot be read (loading it fails later, with the reason)."""
    try:
        return sample_key(sample, digest)
    except OSError:
        return ""


def split_finished(
    samples: Iterable[Any], out_dir: Path, digest: str
) -> tuple[dict[str, str], dict[str, dict[str, Any]], list[Any]]:
    """Resume: each sample's content key, the rows of its intact matching record, and the samples still to do."""
    keys: dict[str, str] = {}
    rows: dict[str, dict[str, Any]] = {}
    pending = []
    for sample in samples:
        keys[sample.stem] = sample_key_if_readable(sample, digest)
        record = read_record(out_dir, sample.stem, keys[sample.stem]) if keys[sample.stem] else None
        if record is not None:
            rows[sample.stem] = record["row"]
        else:
            pending.append(sample)
    if rows:
        logger.info("medsamkit: reused %d finished result(s) in %s; %d to do", len(rows), out_dir, len(pending))
    return keys, rows, pending


def _finished_row(out_dir: Path, sample: Any, digest: str) -> dict[str, Any] | None:
    """The row of ``sample`` from a previous run into ``out_dir`` still valid for its content, or None."""
    if not (out_dir / "records" / f"{sample.stem}.json").is_file():
        return None  # nothing to hash the image for
    key = sample_key_if_readable(sample, digest)
    record = read_record(out_dir, sample.stem, key) if key else None
    return None if record is None else record["row"]


def _evaluate_one(
    pipeline: Any,
    sample: Any,
    loaded: Any,
    read_error: BaseException | None,
    *,
    out_dir: Path,
    spacing: Any,
    save_masks: bool,
    key: str,
    quality: bool = False,
) -> dict[str, Any]:
    """Segment and score one sample; write its mask and record; return its ``metrics.csv`` row
    (with ``quality``: plus the quality estimate of the result, see :mod:`._quality`).

    A failure gives an error row (logged) and writes nothing: a failed image is
    retried when the run resumes.
    """
    from ..metrics import compute_metrics

    try:
        if read_error is not None:
            raise read_error
        image, mask = loaded
        start = time.perf_counter()
        if quality:
            from ._quality import estimate_quality

            encoding = pipeline.segmenter.encode(image)
            result = pipeline(image, target=mask, encoding=encoding)
            estimate = estimate_quality(pipeline, result, encoding)
        else:
            result, estimate = pipeline(image, target=mask), {}
        seconds = time.perf_counter() - start
        values = compute_metrics(result.mask, mask, spacing=spacing, metrics=METRIC_COLUMNS)
    except Exception as exc:  # one bad file must not stop a long run
        message = f"{type(exc).__name__}: {exc}"
        logger.error("medsamkit: error: %s: %s", sample.stem, message)
        return _row_for(sample.stem, None, error=message)
    row = _row_for(sample.stem, values, seconds=round(seconds, 4), n_prompts=result.prompts.n, note=result.note, **estimate)
    write_record(out_dir, sample.stem, row, result, key=key, save_mask=save_masks)
    return row


def evaluate_samples(
    pipeline: Any,
    samples: Iterable[Any],
    *,
    out_dir: Path,
    spacing: Any,
    save_masks: bool,
    digest: str,
    keys: dict[str, str] | None = None,
    quality: bool = False,
) -> Iterator[tuple[Any, dict[str, Any]]]:
    """The per-image loop of both engines: yields ``(sample, row)`` in order.

    Reads the next images in a background thread while the current one is
    segmented; each image's mask and record (with its content key, from ``keys`` or
    computed with ``digest``) are written before its row is yielded. The local engine
    runs it over all pending samples, each Ray worker over its batches.
    """
    from ._prefetch import prefetch

    for sample, loaded, read_error in prefetch(samples, lambda s: s.load()):
        key = keys[sample.stem] if keys is not None and sample.stem in keys else sample_key_if_readable(sample, digest)
        yield (
            sample,
            _evaluate_one(
                pipeline,
                sample,
                loaded,
                read_error,
                out_dir=out_dir,
                spacing=spacing,
                save_masks=save_masks,
                key=key,
                quality=quality,
            ),
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
    allow_missing_masks: bool = False,
    engine: Any = "local",
    quality: bool = False,
) -> EvaluationReport:
    """Segment every image of ``data`` with ``pipeline`` and score it against its mask.

    Writes into ``out_dir``:

    * ``metrics.csv`` — one row per image: ``stem, dice, iou, precision, recall, f1,
      hd95, seconds, n_prompts, note, error`` (``seconds``: prompting, encoding and
      decoding time of that image; ``note``: ``no prompt`` when the provider found
      nothing; ``error``: why an image could not be evaluated).
    * ``summary.json`` — per metric ``mean``, ``median``, ``std`` (population) and
      ``n``; image counts; the errors; ``complete`` (false while a run is under way or
      after it was interrupted).
    * ``masks/<stem>.png`` — predicted masks (0/255).
    * ``records/<stem>.json`` — per-image results including the prompts and a content
      key of the image, the mask and the settings.
    * ``boxplot.png`` and ``overlays/<stem>.png`` (the worst and best images by Dice).
    * ``pipeline.json`` and ``run.json`` — the configuration, to repeat the run.

    With ``quality=True`` every row also gets a quality estimate of the result
    (``quality, q_iou, q_agree, q_presence``, see
    :func:`~medsamkit.evaluation.estimate_quality`) and ``summary.json`` a
    ``failure_detection`` entry: how well ``quality`` finds the images with Dice
    below 0.8 / 0.7 (AUROC) and the mean Dice after setting aside the 10% least
    confident images (local engine only).

    Each image's mask and record are written atomically as soon as it is done, and
    ``metrics.csv`` is rewritten atomically after every image, so an interrupted run
    loses nothing finished. Running again with the same ``out_dir`` resumes: images
    whose record matches the current image and mask content are not redone; images
    that failed, changed, or whose record is damaged are (re)computed. A different
    pipeline configuration in the same ``out_dir`` is refused unless ``overwrite``.

    ``out_dir`` must not be, contain or lie inside the folders of the images and
    masks; ``overwrite`` deletes only files medsamkit wrote there. While the run
    writes, ``out_dir`` is locked: a second run into it fails at once.

    An unreadable or malformed image or mask does not stop the run: it is named in a
    log message (logger ``"medsamkit"``) and in the ``error`` column, and counted in
    ``report.n_errors``.

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
        allow_missing_masks: Evaluate the images that have a mask even though some
            images of ``data`` have none (they are counted in ``summary.json``).
            Default: refuse, naming them.
        engine: ``"local"`` (this process) or ``"ray"`` / a :class:`RayEngine` (Ray Data:
            local Ray, or the cluster ``RAY_ADDRESS`` or ``RayEngine(address=...)``
            names; ``pip install medsamkit[ray]``). Both write the same files; see
            ``docs/ray.md``.
        quality: Estimate each result's quality (a few extra decodes per image, no
            extra encoding; local engine only).

    Returns:
        An :class:`EvaluationReport`.

    Raises:
        ValueError: On bad arguments, an ``out_dir`` overlapping the data, another
            run's results in ``out_dir``, images without masks (unless
            ``allow_missing_masks``), or duplicate or unsafe stems.
        medsamkit.OutDirLockedError: If another run is writing into ``out_dir``.
    """
    from .._outdir import claim_out_dir, input_folders, out_dir_lock
    from ._ray import engine_options as parse_engine

    engine_options = parse_engine(engine)
    samples = as_samples(data)
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit: expected a positive int, got {limit!r}")
        samples = samples[:limit]
    if isinstance(n_overlays, bool) or not isinstance(n_overlays, int) or n_overlays < 0:
        raise ValueError(f"n_overlays: expected a non-negative int, got {n_overlays!r}")
    check_stems(samples)
    missing = _missing_masks(data, samples)
    if missing and not allow_missing_masks:
        shown = ", ".join(missing[:10]) + (f", ... ({len(missing)} in total)" if len(missing) > 10 else "")
        raise ValueError(
            f"data: {len(missing)} image(s) have no mask: {shown}. Add their masks, or pass "
            "allow_missing_masks=True (--allow-missing-masks) to evaluate the others."
        )
    if missing:  # else keep the samples as they are (a CSV listing stays streamed)
        samples = [s for s in samples if getattr(s, "mask_path", True) is not None]
    out_dir = Path(out_dir)
    config = pipeline.config.model_dump(mode="json")
    from ._quality import QUALITY_COLUMNS

    if quality and engine_options is not None:
        raise ValueError("quality: quality estimates run with the local engine only; use engine='local'")
    measured = [*METRIC_COLUMNS, *QUALITY_COLUMNS] if quality else list(METRIC_COLUMNS)
    run = {"pipeline": config, "metrics": measured, "spacing": [float(s) for s in spacing]}
    inputs = input_folders(data if hasattr(data, "images_dir") else samples)
    claim_out_dir(out_dir, inputs=inputs, owned=EVALUATE_OWNED)  # checks before taking the lock
    with out_dir_lock(out_dir):
        claim_out_dir(out_dir, inputs=inputs, owned=EVALUATE_OWNED, overwrite=overwrite)
        return _evaluate_locked(
            pipeline,
            samples,
            out_dir,
            run,
            spacing=spacing,
            n_overlays=n_overlays,
            save_masks=save_masks,
            progress=progress,
            n_missing=len(missing),
            engine_options=engine_options,
            quality=quality,
        )


def _evaluate_locked(
    pipeline: Any,
    samples: Sequence[Any],
    out_dir: Path,
    run: dict[str, Any],
    *,
    spacing: tuple[float, float],
    n_overlays: int,
    save_masks: bool,
    progress: bool,
    n_missing: int,
    engine_options: Any = None,
    quality: bool = False,
) -> EvaluationReport:
    from tqdm.auto import tqdm

    from ..data import atomic_write_text, csv_text
    from ._quality import QUALITY_COLUMNS, failure_detection

    check_same_run(out_dir, run)
    config = run["pipeline"]
    try:
        pipeline.save(out_dir)
    except Exception as exc:  # a custom component: keep the documentary config
        if engine_options is not None:
            raise ValueError(
                f"engine: the Ray engine rebuilds the pipeline on its workers from pipeline.json, "
                f"and this pipeline cannot be saved ({exc})"
            ) from exc
        atomic_write_text(out_dir / "pipeline.json", json.dumps(config, indent=2) + "\n")
        logger.warning("medsamkit: note: pipeline cannot be saved for re-running (%s)", exc)
    atomic_write_text(out_dir / RUN_FILE, json.dumps(run, indent=2) + "\n")

    digest = run_digest(run)
    if engine_options is not None:
        return _evaluate_on_ray(
            engine_options,
            samples,
            pipeline=pipeline,
            out_dir=out_dir,
            spacing=spacing,
            n_overlays=n_overlays,
            save_masks=save_masks,
            progress=progress,
            digest=digest,
            n_missing=n_missing,
        )
    if not isinstance(samples, (list, tuple)) and callable(getattr(samples, "sample_from_row", None)):
        samples = samples[:]  # a CSV listing: read it once, not at every flush
    keys, rows, pending = split_finished(samples, out_dir, digest)
    errors: dict[str, str] = {}

    def ordered() -> list[dict[str, Any]]:
        return [rows[s.stem] for s in samples if s.stem in rows]

    columns = (*CSV_COLUMNS, *QUALITY_COLUMNS) if quality else CSV_COLUMNS

    def flush() -> None:
        atomic_write_text(out_dir / "metrics.csv", csv_text(ordered(), columns))

    def write_summary(*, complete: bool) -> dict[str, Any]:
        summary = _summarize(ordered())
        summary["counts"]["missing_masks"] = n_missing
        summary["complete"] = complete
        if quality:
            summary["failure_detection"] = failure_detection([r for r in ordered() if not r.get("error")])
        atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary

    if pending:
        write_summary(complete=False)  # a summary on disk never passes for a finished run
    bar = tqdm(pending, desc="evaluate", unit="img", disable=not progress, dynamic_ncols=True)
    loop = evaluate_samples(
        pipeline,
        bar,
        out_dir=out_dir,
        spacing=spacing,
        save_masks=save_masks,
        digest=digest,
        keys=keys,
        quality=quality,
    )
    for sample, row in loop:
        rows[sample.stem] = row
        if row.get("error"):
            errors[sample.stem] = row["error"]
        flush()
        dice_values = [r["dice"] for r in rows.values() if r.get("dice") is not None]
        if dice_values:
            bar.set_postfix(dice=f"{np.mean(dice_values):.3f}")
    bar.close()

    flush()
    summary = write_summary(complete=True)
    done = ordered()
    _pictures(out_dir, samples, done, n_overlays=n_overlays, save_masks=save_masks)
    return EvaluationReport(out_dir=out_dir, rows=done, summary=summary, n_evaluated=len(pending), errors=errors)


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
    options: Any,
    samples: Any,
    *,
    pipeline: Any,
    out_dir: Path,
    spacing: Any,
    n_overlays: int,
    save_masks: bool,
    progress: bool,
    digest: str,
    n_missing: int,
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
    work = functools.partial(evaluate_samples, spacing=tuple(float(s) for s in spacing), save_masks=save_masks, digest=digest)
    finished = functools.partial(_finished_row, digest=digest)
    if (out_dir / "summary.json").is_file():  # a summary on disk never passes for a finished run
        previous = json.loads((out_dir / "summary.json").read_text())
        atomic_write_text(out_dir / "summary.json", json.dumps({**previous, "complete": False}, indent=2) + "\n")
    try:
        with ray_session(options.address) as ray:
            rows = stream_rows(ray, options, samples, out_dir=out_dir, work=work, finished=finished, cache=cache_of(pipeline))
            for index, item in enumerate(rows):
                row = json.loads(item["row"])
                n_evaluated += not item["reused"]
                stems.append(row["stem"])
                table.write(row)
                summary.add(row)
                if row.get("error"):
                    error_rows[row["stem"]] = row
                    logger.error("medsamkit: error: %s: %s", row["stem"], row["error"])
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
    result["counts"]["missing_masks"] = n_missing
    result["complete"] = True
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

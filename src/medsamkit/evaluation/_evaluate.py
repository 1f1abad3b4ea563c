"""``evaluate``: run a pipeline over a folder, write tables and pictures, resume safely."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CSV_COLUMNS", "EVALUATE_OWNED", "EvaluationReport", "METRIC_COLUMNS", "check_stems", "evaluate", "read_record", "sample_key", "write_record"]

METRIC_COLUMNS = ("dice", "iou", "precision", "recall", "f1", "hd95")
CSV_COLUMNS = ("stem", *METRIC_COLUMNS, "seconds", "n_prompts", "note", "error")
"""Columns of ``metrics.csv``: one row per image."""

RUN_FILE = "run.json"
EVALUATE_OWNED = (
    "records", "masks", "overlays", RUN_FILE, "metrics.csv", "summary.json", "boxplot.png", "pipeline.json", "prompter.*",
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
            cells = [name] + [("-" if stats[k] is None else f"{stats[k]:.4f}") for k in ("mean", "median", "std")] + [str(stats["n"])]
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


def write_record(
    out_dir: Path, stem: str, row: dict[str, Any], result: Any, *, key: str, save_mask: bool = True
) -> None:
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

    Returns:
        An :class:`EvaluationReport`.

    Raises:
        ValueError: On bad arguments, an ``out_dir`` overlapping the data, another
            run's results in ``out_dir``, images without masks (unless
            ``allow_missing_masks``), or duplicate or unsafe stems.
        medsamkit.OutDirLockedError: If another run is writing into ``out_dir``.
    """
    from .._outdir import claim_out_dir, input_folders, out_dir_lock

    samples = _as_samples(data)
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
    samples = [s for s in samples if getattr(s, "mask_path", True) is not None]
    out_dir = Path(out_dir)
    config = pipeline.config.model_dump(mode="json")
    run = {"pipeline": config, "metrics": list(METRIC_COLUMNS), "spacing": [float(s) for s in spacing]}
    inputs = input_folders(data if hasattr(data, "images_dir") else samples)
    claim_out_dir(out_dir, inputs=inputs, owned=EVALUATE_OWNED)  # checks before taking the lock
    with out_dir_lock(out_dir):
        claim_out_dir(out_dir, inputs=inputs, owned=EVALUATE_OWNED, overwrite=overwrite)
        return _evaluate_locked(
            pipeline, samples, out_dir, run, spacing=spacing, n_overlays=n_overlays, save_masks=save_masks,
            progress=progress, n_missing=len(missing),
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
) -> EvaluationReport:
    from tqdm.auto import tqdm

    from ..data import atomic_write_text, csv_text
    from ..metrics import compute_metrics
    from ._prefetch import prefetch

    _check_same_run(out_dir, run)
    config = run["pipeline"]
    try:
        pipeline.save(out_dir)
    except Exception as exc:  # a custom component: keep the documentary config
        atomic_write_text(out_dir / "pipeline.json", json.dumps(config, indent=2) + "\n")
        logger.warning("medsamkit: note: pipeline cannot be saved for re-running (%s)", exc)
    atomic_write_text(out_dir / RUN_FILE, json.dumps(run, indent=2) + "\n")

    digest = run_digest(run)
    keys: dict[str, str] = {}
    rows: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    pending = []
    for sample in samples:
        try:
            keys[sample.stem] = sample_key(sample, digest)
        except OSError:  # unreadable file: loading it fails below with the reason, retried next time
            keys[sample.stem] = ""
        record = read_record(out_dir, sample.stem, keys[sample.stem]) if keys[sample.stem] else None
        if record is not None:
            rows[sample.stem] = record["row"]
        else:
            pending.append(sample)
    if rows:
        logger.info("medsamkit: reused %d finished result(s) in %s; %d to do", len(rows), out_dir, len(pending))

    def ordered() -> list[dict[str, Any]]:
        return [rows[s.stem] for s in samples if s.stem in rows]

    def flush() -> None:
        atomic_write_text(out_dir / "metrics.csv", csv_text(ordered(), CSV_COLUMNS))

    def write_summary(*, complete: bool) -> dict[str, Any]:
        summary = _summarize(ordered())
        summary["counts"]["missing_masks"] = n_missing
        summary["complete"] = complete
        atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary

    if pending:
        write_summary(complete=False)  # a summary on disk never passes for a finished run
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
            logger.error("medsamkit: error: %s: %s", sample.stem, message)
            # Not recorded on disk: a failed image is retried when the run resumes.
            rows[sample.stem] = _row_for(sample.stem, None, error=message)
            flush()
            continue
        row = _row_for(
            sample.stem, values, seconds=round(seconds, 4), n_prompts=result.prompts.n, note=result.note
        )
        write_record(out_dir, sample.stem, row, result, key=keys[sample.stem], save_mask=save_masks)
        rows[sample.stem] = row
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

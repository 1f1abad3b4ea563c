"""Volume folders: evaluate (with reference masks) or segment (without) every volume, resumably.

Writes per-volume rows to ``metrics.csv`` (Dice, IoU, NSD, HD95 and ASD in mm), the
predicted masks in the input's format (NIfTI/NRRD/MHA with the image's geometry, or
a DICOM-SEG referencing the DICOM series), and a picture of a few slices with the
contours per volume. Bad files are named and skipped; the run goes on.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["VOLUME_CSV_COLUMNS", "VolumeReport", "evaluate_volumes", "segment_volumes"]

VOLUME_METRICS = ("dice", "iou", "nsd", "hd95", "asd")
VOLUME_CSV_COLUMNS = (
    "stem",
    *VOLUME_METRICS,
    "seconds",
    "n_slices",
    "encoded_slices",
    "seconds_per_encoded_slice",
    "note",
    "error",
)
"""Columns of ``metrics.csv`` for volumes (distances in mm; ``nsd`` at the run's tolerance)."""

_RUN_FILE = "run.json"
PRED_COLOR = (255, 176, 0)
TARGET_COLOR = (0, 200, 80)


@dataclass
class VolumeReport:
    """What :func:`evaluate_volumes` / :func:`segment_volumes` wrote.

    Attributes:
        out_dir: Output folder.
        rows: One dict per volume (the ``metrics.csv`` rows).
        summary: Per metric ``mean/median/std/n`` and counts (``summary.json``).
        n_processed: Volumes processed in this call (others came from a previous run).
        errors: Stem -> error message.
    """

    out_dir: Path
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    n_processed: int = 0
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def n_errors(self) -> int:
        return len(self.errors)

    def mean(self, metric: str = "dice") -> float | None:
        return self.summary["metrics"].get(metric, {}).get("mean")


def _atomic_text(path: Path, text: str) -> None:
    from ..data import atomic_write_text

    atomic_write_text(path, text)


def _csv_text(rows: list[dict[str, Any]]) -> str:
    from ..data import csv_text

    return csv_text(rows, VOLUME_CSV_COLUMNS)


def _clean(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


VOLUME_OWNED = ("records", "masks", "pictures", _RUN_FILE, "metrics.csv", "summary.json", "pipeline.json", "prompter.*")
"""What a volume run writes directly in its output folder (what ``overwrite`` may delete)."""


def _prepare(out_dir: Path, run: dict[str, Any]) -> None:
    path = out_dir / _RUN_FILE
    if path.is_file():
        previous = json.loads(path.read_text())
        for key in run:
            if previous.get(key) != run.get(key):
                raise ValueError(
                    f"out_dir: {out_dir} holds results of a different run ({key} differs: {previous.get(key)!r} there, "
                    f"{run.get(key)!r} now). Use a new out_dir, or overwrite=True to start again."
                )
    out_dir.mkdir(parents=True, exist_ok=True)
    _atomic_text(path, json.dumps(run, indent=2) + "\n")


def _write_prediction(out_dir: Path, sample: Any, image: Any, mask: np.ndarray) -> Path:
    from ..data import write_dicom_seg, write_volume

    fmt = sample.image_format
    if fmt == "dicom":
        return write_dicom_seg(out_dir / "masks" / f"{sample.stem}.dcm", mask, image, label=sample.stem)
    return write_volume(out_dir / "masks" / f"{sample.stem}{fmt}", image, mask)


def _slice_picture(pipeline: Any, image: Any, pred: np.ndarray, target: np.ndarray | None, *, n: int = 3) -> np.ndarray:
    """Up to ``n`` slices side by side (spread over the z range of the prediction and reference) with contours."""
    import cv2

    union = pred if target is None else (pred | target)
    slices = np.flatnonzero(union.any(axis=(1, 2)))
    if slices.size == 0:
        slices = np.array([image.shape[0] // 2])
    picks = sorted({int(slices[round(i)]) for i in np.linspace(0, slices.size - 1, min(n, slices.size))})
    panels = []
    for k in picks:
        shown = pipeline.preprocess_image(image.array[k]) if getattr(pipeline, "preprocess", ()) else image.array[k]
        gray = shown.astype(np.float32)
        lo, hi = float(gray.min()), float(gray.max())
        gray = np.clip((gray - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
        canvas = np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2) if gray.ndim == 2 else gray[..., :3])
        width = max(1, round(max(canvas.shape[:2]) / 300))
        for mask, colour in ((target, TARGET_COLOR), (pred, PRED_COLOR)):
            if mask is None:
                continue
            contours, _ = cv2.findContours(mask[k].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(canvas, contours, -1, colour, width)
        cv2.putText(canvas, f"z={k}", (5, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
        panels.append(canvas)
    return np.concatenate(panels, axis=1)


def _summary(rows: list[dict[str, Any]], names: tuple[str, ...]) -> dict[str, Any]:
    from ..metrics import summarize

    ok = [r for r in rows if not r.get("error")]
    return {
        "metrics": {n: summarize([r.get(n) for r in ok]) for n in (*names, "seconds", "seconds_per_encoded_slice")},
        "counts": {"volumes": len(rows), "processed": len(ok), "errors": len(rows) - len(ok)},
        "errors": {r["stem"]: r["error"] for r in rows if r.get("error")},
    }


def _finished_row(out: Path, sample: Any) -> dict[str, Any] | None:
    """The row of ``sample`` from a previous run into ``out`` (a record without error), or None."""
    record = out / "records" / f"{sample.stem}.json"
    if record.is_file():
        row = json.loads(record.read_text())["row"]
        if not row.get("error"):
            return row
    return None


@dataclass(frozen=True)
class _VolumeRun:
    """What one volume run does to each volume: the settings :func:`evaluate_volumes` and
    :func:`segment_volumes` fix, carried through to the per-volume loop (and to Ray workers).

    Attributes:
        prompt: ``"oracle"``, ``"box3d"``, ``"propagate"`` or ``"auto"``.
        with_masks: Load the reference masks and score against them.
        nsd_tolerance: NSD tolerance in mm.
        label: Reference label of multi-label masks (None: any non-zero).
        box3d: Stem -> 3D box, for ``"box3d"`` without reference masks.
        save_masks: Write the predicted masks.
        pictures: Write a picture of a few slices per volume.
    """

    prompt: str
    with_masks: bool
    nsd_tolerance: float = 2.0
    label: int | None = None
    box3d: dict[str, Any] | None = None
    save_masks: bool = True
    pictures: bool = True


def _volume_rows(
    pipeline: Any, samples: Any, settings: _VolumeRun, *, out_dir: Path, cache: Any = None
) -> Iterator[tuple[Any, dict[str, Any]]]:
    """The per-volume loop of both engines: yields ``(sample, row)`` in order.

    Each volume's mask, picture and record are written before its row is yielded; a
    failure gives an error row (named on stderr) and writes no record, so it is
    retried on resume. The local engine runs it over the pending volumes, each Ray
    worker over its batches.
    """
    from ..data import write_image
    from ..metrics import volume_metrics
    from ._segment import segment_volume, volume_prompt

    for sample in samples:
        try:
            if settings.with_masks:
                image, target_volume = sample.load(label=settings.label)
                target = target_volume.array
            else:
                image, target = sample.load_image(), None
            vp = volume_prompt(settings.prompt, target=target, box3d=(settings.box3d or {}).get(sample.stem))
            start = time.perf_counter()
            result = segment_volume(pipeline, image, vp, cache=cache)
            seconds = time.perf_counter() - start
            pred = result.mask.array
            values = (
                volume_metrics(pred, target, spacing=image.spacing, nsd_tolerance=settings.nsd_tolerance)
                if target is not None
                else {}
            )
            if settings.save_masks:
                _write_prediction(out_dir, sample, image, pred)
            if settings.pictures:
                write_image(out_dir / "pictures" / f"{sample.stem}.png", _slice_picture(pipeline, image, pred, target))
        except Exception as exc:  # one bad volume must not stop the run
            message = f"{type(exc).__name__}: {exc}"
            print(f"medsamkit: error: {sample.stem}: {message}", file=sys.stderr)
            yield sample, {"stem": sample.stem, "error": message}
            continue
        per_slice = result.seconds_per_encoded_slice
        row = {
            "stem": sample.stem,
            **{k: _clean(values.get(k)) for k in VOLUME_METRICS},
            "seconds": round(seconds, 4),
            "n_slices": image.shape[0],
            "encoded_slices": len(result.encoded_slices),
            "seconds_per_encoded_slice": None if per_slice is None else round(per_slice, 4),
            "note": None if result.encoded_slices else "no prompt",
            "error": None,
        }
        record_data = {"row": row, "prompts": {str(k): p.to_dict() for k, p in result.prompts.items()}}
        _atomic_text(out_dir / "records" / f"{sample.stem}.json", json.dumps(record_data) + "\n")
        yield sample, row


def _run_folder(
    pipeline: Any,
    data: Any,
    settings: _VolumeRun,
    *,
    out_dir: str | Path,
    overwrite: bool,
    cache: Any,
    progress: bool,
    limit: int | None = None,
    engine: Any = "local",
) -> VolumeReport:
    from .._outdir import claim_out_dir, input_folders, out_dir_lock
    from .._rayjob import engine_options
    from ..data import VolumeFolder

    options = engine_options(engine)
    if isinstance(data, (str, Path)):
        data = VolumeFolder(data, require_masks=settings.with_masks)
    out = Path(out_dir)
    inputs = input_folders(data)
    inputs += [s.image_path for s in data if s.image_path.is_dir()]  # a DICOM series folder itself
    claim_out_dir(out, inputs=inputs, owned=VOLUME_OWNED)  # checks before taking the lock
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit: expected a positive int, got {limit!r}")
        data = list(data)[:limit]
    with out_dir_lock(out):
        claim_out_dir(out, inputs=inputs, owned=VOLUME_OWNED, overwrite=overwrite)
        return _run_claimed(pipeline, data, out, settings, cache=cache, progress=progress, engine_options=options)


def _run_claimed(
    pipeline: Any,
    data: Any,
    out: Path,
    settings: _VolumeRun,
    *,
    cache: Any,
    progress: bool,
    engine_options: Any = None,
) -> VolumeReport:
    import functools

    from tqdm.auto import tqdm

    run = {
        "pipeline": pipeline.config.model_dump(mode="json"),
        "prompt": settings.prompt,
        "nsd_tolerance_mm": float(settings.nsd_tolerance),
        "label": settings.label,
    }
    _prepare(out, run)
    try:
        pipeline.save(out)
    except Exception as exc:  # a custom component: the run still goes on
        if engine_options is not None:
            raise ValueError(
                f"engine: the Ray engine rebuilds the pipeline on its workers from pipeline.json, "
                f"and this pipeline cannot be saved ({exc})"
            ) from exc
        print(f"medsamkit: note: pipeline cannot be saved for re-running ({exc})", file=sys.stderr)
    work = functools.partial(_volume_rows, settings=settings)
    names = VOLUME_METRICS if settings.with_masks else ()
    if engine_options is not None:  # the same loop on Ray Data workers; the rows stream back here
        from .._rayjob import cache_settings, table_on_ray
        from ..data import VolumeSample

        ordered, n_processed = table_on_ray(
            engine_options,
            data,
            out_dir=out,
            table="metrics.csv",
            columns=VOLUME_CSV_COLUMNS,
            work=work,
            finished=_finished_row,
            cache=cache_settings(cache, pipeline),
            sample_type=VolumeSample,
            on_error=lambda stem, message: print(f"medsamkit: error: {stem}: {message}", file=sys.stderr),
            progress=progress,
            desc="volumes (ray)",
            unit="vol",
        )
        summary = _summary(ordered, names)
        _atomic_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        failed = {r["stem"]: r["error"] for r in ordered if r.get("error")}
        return VolumeReport(out_dir=out, rows=ordered, summary=summary, n_processed=n_processed, errors=failed)
    rows: dict[str, dict[str, Any]] = {}
    for sample in data:
        row = _finished_row(out, sample)
        if row is not None:
            rows[sample.stem] = row
    pending = [s for s in data if s.stem not in rows]
    errors: dict[str, str] = {}

    def flush() -> None:
        _atomic_text(out / "metrics.csv", _csv_text([rows[s.stem] for s in data if s.stem in rows]))

    bar = tqdm(pending, desc="volumes", unit="vol", disable=not progress, dynamic_ncols=True)
    for sample, row in work(pipeline, bar, out_dir=out, cache=cache):
        if row.get("error"):
            errors[sample.stem] = row["error"]
        rows[sample.stem] = row
        flush()
    bar.close()
    ordered = [rows[s.stem] for s in data if s.stem in rows]
    flush()
    summary = _summary(ordered, names)
    _atomic_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return VolumeReport(out_dir=out, rows=ordered, summary=summary, n_processed=len(pending), errors=errors)


def evaluate_volumes(
    pipeline: Any,
    data: Any,
    *,
    out_dir: str | Path,
    prompt: str = "box3d",
    nsd_tolerance: float = 2.0,
    label: int | None = None,
    save_masks: bool = True,
    pictures: bool = True,
    overwrite: bool = False,
    cache: Any = None,
    progress: bool = True,
    limit: int | None = None,
    engine: Any = "local",
) -> VolumeReport:
    """Segment every volume of a folder and score it against its reference mask.

    Writes into ``out_dir``: ``metrics.csv`` (:data:`VOLUME_CSV_COLUMNS`, one row per
    volume; distances in mm from the voxel spacing, NSD at ``nsd_tolerance`` mm),
    ``summary.json``, ``masks/<stem>.<input format>`` (a DICOM-SEG ``<stem>.dcm`` for
    DICOM input), ``pictures/<stem>.png`` (a few slices with the predicted contour in
    amber and the reference in green), ``records/``, ``pipeline.json`` and
    ``run.json``. Running again resumes: finished volumes are kept, failed ones
    retried; another configuration in the same ``out_dir`` is refused unless
    ``overwrite``.

    Args:
        pipeline: A :class:`~medsamkit.Pipeline` (with an intensity step for CT/MR).
        data: A :class:`~medsamkit.data.VolumeFolder` or its root folder.
        out_dir: Output folder (not inside the input folders).
        prompt: ``"oracle"``, ``"box3d"``, ``"propagate"`` (drawn from each reference
            mask) or ``"auto"`` (the pipeline's own prompter + 3D consistency).
        nsd_tolerance: NSD tolerance in mm.
        label: Reference label to segment in multi-label masks (default: any non-zero).
        cache: An :class:`~medsamkit.EmbeddingCache` or folder for encodings.
        limit: Only the first ``limit`` volumes in sorted order.
        engine: ``"local"`` (this process) or ``"ray"`` / a :class:`~medsamkit.RayEngine`
            (Ray Data workers, one volume per worker at a time; ``pip install
            medsamkit[ray]``). Both write the same files; see ``docs/ray.md``.
    """
    return _run_folder(
        pipeline,
        data,
        _VolumeRun(
            prompt=prompt, with_masks=True, nsd_tolerance=nsd_tolerance, label=label, save_masks=save_masks, pictures=pictures
        ),
        out_dir=out_dir,
        overwrite=overwrite,
        cache=cache,
        progress=progress,
        limit=limit,
        engine=engine,
    )


def segment_volumes(
    pipeline: Any,
    data: Any,
    *,
    out_dir: str | Path,
    prompt: str = "auto",
    box3d: dict[str, Any] | None = None,
    pictures: bool = True,
    overwrite: bool = False,
    cache: Any = None,
    progress: bool = True,
    engine: Any = "local",
) -> VolumeReport:
    """Segment every volume of a folder without reference masks.

    ``prompt="auto"`` runs the pipeline's automatic prompter on every slice (then
    3D consistency); ``prompt="box3d"`` takes one box per volume from ``box3d``
    (stem -> ``[x_min, y_min, z_min, x_max, y_max, z_max]``). Masks are written in the
    input's format; ``metrics.csv`` holds timings only. Otherwise as :func:`evaluate_volumes`
    (``engine="ray"`` included).
    """
    if prompt not in ("auto", "box3d"):
        raise ValueError(f"prompt: without reference masks expected 'auto' or 'box3d', got {prompt!r}")
    if prompt == "box3d" and not box3d:
        raise ValueError("box3d: prompt 'box3d' without reference masks needs a box per volume (stem -> 6 numbers)")
    return _run_folder(
        pipeline,
        data,
        _VolumeRun(prompt=prompt, with_masks=False, box3d=box3d, pictures=pictures),
        out_dir=out_dir,
        overwrite=overwrite,
        cache=cache,
        progress=progress,
        engine=engine,
    )

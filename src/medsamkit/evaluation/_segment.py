"""``segment_images``: run a pipeline on images without reference masks and save the masks."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SEGMENT_OWNED", "SegmentReport", "segment_images", "segment_samples"]

SEGMENT_COLUMNS = ("stem", "area_px", "n_prompts", "mean_score", "seconds", "note", "error")
SEGMENT_OWNED = ("records", "masks", "overlays", "run.json", "results.csv", "pipeline.json", "prompter.*")
"""What :func:`segment_images` writes directly in its output folder."""

logger = logging.getLogger("medsamkit")


@dataclass
class SegmentReport:
    """What :func:`segment_images` wrote.

    Attributes:
        out_dir: The output folder.
        rows: One dict per image (the ``results.csv`` rows).
        errors: ``{stem: message}`` for images that could not be segmented.
    """

    out_dir: Path
    rows: list[dict[str, Any]]
    errors: dict[str, str] = field(default_factory=dict)


def segment_images(
    pipeline: Any,
    images: Sequence[Any],
    *,
    out_dir: str | Path,
    n_overlays: int = 6,
    progress: bool = True,
    engine: Any = "local",
) -> SegmentReport:
    """Segment images (no reference needed unless the prompter is an oracle) and save the masks.

    Writes ``masks/<stem>.png``, ``records/<stem>.json`` (prompts and scores),
    ``results.csv`` (``stem, area_px, n_prompts, mean_score, seconds, note, error``),
    ``pipeline.json`` and overlays of the first ``n_overlays`` images. Each image is
    written atomically when done; a second run skips images already done whose image
    (and mask) content is unchanged. ``out_dir`` must not be, contain or lie inside
    the folders of the images and masks, and is locked while the run writes.
    Duplicate stems (``case.png`` and ``case.jpg``) are refused.

    Args:
        pipeline: A :class:`~medsamkit.Pipeline`.
        images: Samples (``MaskFolder(..., require_masks=False)``); a sample's mask is
            passed as ``target`` when it has one.
        out_dir: Output folder.
        n_overlays: Overlay pictures to write.
        progress: Show a progress bar.
        engine: ``"local"`` or ``"ray"`` / a :class:`RayEngine` (see :func:`evaluate`).
    """
    from .._outdir import claim_out_dir, input_folders, out_dir_lock
    from ._evaluate import check_stems
    from ._ray import engine_options as parse_engine

    engine_options = parse_engine(engine)
    check_stems(images, name="images")
    out_dir = Path(out_dir)
    inputs = input_folders(images)
    claim_out_dir(out_dir, inputs=inputs, owned=SEGMENT_OWNED)
    with out_dir_lock(out_dir):
        return _segment_locked(pipeline, images, out_dir, n_overlays=n_overlays, progress=progress, engine_options=engine_options)


def _segment_locked(
    pipeline: Any, images: Sequence[Any], out_dir: Path, *, n_overlays: int, progress: bool, engine_options: Any = None
) -> SegmentReport:
    from tqdm.auto import tqdm

    from ..data import atomic_write_text, csv_text
    from ._evaluate import RUN_FILE, check_same_run, run_digest, split_finished
    from ._plots import save_overlay

    run = {"pipeline": pipeline.config.model_dump(mode="json"), "command": "segment"}
    check_same_run(out_dir, run, keys=("pipeline", "command"))
    atomic_write_text(out_dir / RUN_FILE, json.dumps(run, indent=2) + "\n")
    try:
        pipeline.save(out_dir)
    except Exception as exc:
        if engine_options is not None:
            raise ValueError(
                f"engine: the Ray engine rebuilds the pipeline on its workers from pipeline.json, "
                f"and this pipeline cannot be saved ({exc})"
            ) from exc
        logger.warning("medsamkit: note: pipeline cannot be saved for re-running (%s)", exc)
    digest = run_digest(run)
    if engine_options is not None:
        return _segment_on_ray(
            engine_options,
            images,
            pipeline=pipeline,
            out_dir=out_dir,
            n_overlays=n_overlays,
            progress=progress,
            digest=digest,
        )
    keys, rows, pending = split_finished(images, out_dir, digest)
    errors: dict[str, str] = {}
    overlays = len(list((out_dir / "overlays").glob("*.png")))  # a resumed run keeps counting

    def draw(sample: Any, image: Any, target: Any, result: Any) -> None:
        nonlocal overlays
        if overlays < n_overlays:
            save_overlay(
                out_dir / "overlays" / f"{sample.stem}.png",
                image,
                pred=result.mask,
                target=target,
                prompts=result.prompts,
                title=sample.stem,
            )
            overlays += 1

    bar = tqdm(pending, desc="segment", unit="img", disable=not progress, dynamic_ncols=True)
    for sample, row in segment_samples(pipeline, bar, out_dir=out_dir, digest=digest, keys=keys, on_result=draw):
        rows[sample.stem] = row
        if row.get("error"):
            errors[sample.stem] = row["error"]
            continue
        atomic_write_text(out_dir / "results.csv", csv_text(list(rows.values()), SEGMENT_COLUMNS))
    ordered = [rows[s.stem] for s in images if s.stem in rows]
    atomic_write_text(out_dir / "results.csv", csv_text(ordered, SEGMENT_COLUMNS))
    return SegmentReport(out_dir=out_dir, rows=ordered, errors=errors)


def _finished_segment_row(out_dir: Path, sample: Any, digest: str) -> dict[str, Any] | None:
    """The row of ``sample`` from a previous ``segment`` run into ``out_dir`` still valid for its content, or None."""
    from ._evaluate import read_record, sample_key_if_readable

    if not (out_dir / "records" / f"{sample.stem}.json").is_file():
        return None  # nothing to hash the image for
    key = sample_key_if_readable(sample, digest)
    record = read_record(out_dir, sample.stem, key) if key else None
    return None if record is None else record["row"]


def _load_for_segment(sample: Any) -> tuple[Any, Any]:
    return sample.load_image(), (sample.load_mask() if sample.mask_path is not None else None)


def segment_samples(
    pipeline: Any,
    samples: Iterable[Any],
    *,
    out_dir: Path,
    digest: str,
    keys: dict[str, str] | None = None,
    on_result: Callable[[Any, Any, Any, Any], None] | None = None,
) -> Iterator[tuple[Any, dict[str, Any]]]:
    """The per-image loop of both engines for ``segment``: yields ``(sample, row)`` in order.

    Each image's mask and record (with its content key, from ``keys`` or computed with
    ``digest``) are written before its row is yielded; a failure gives an error row and
    writes nothing (retried on resume). ``on_result(sample, image, target, result)`` is
    called for each success before its record is written.
    """
    from ._evaluate import sample_key_if_readable, write_record
    from ._prefetch import prefetch

    for sample, loaded, read_error in prefetch(samples, _load_for_segment):
        try:
            if read_error is not None:
                raise read_error
            image, target = loaded
            start = time.perf_counter()
            result = pipeline(image, target=target)
            seconds = time.perf_counter() - start
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            logger.error("medsamkit: error: %s: %s", sample.stem, message)
            yield sample, {"stem": sample.stem, "error": message}
            continue
        row = {
            "stem": sample.stem,
            "area_px": int(result.mask.sum()),
            "n_prompts": result.prompts.n,
            "mean_score": float(result.scores.mean()) if result.scores.size else None,
            "seconds": round(seconds, 4),
            "note": result.note,
            "error": None,
        }
        if on_result is not None:
            on_result(sample, image, target, result)
        key = keys[sample.stem] if keys is not None and sample.stem in keys else sample_key_if_readable(sample, digest)
        write_record(out_dir, sample.stem, row, result, key=key)
        yield sample, row


def _segment_on_ray(
    options: Any, images: Any, *, pipeline: Any, out_dir: Path, n_overlays: int, progress: bool, digest: str
) -> SegmentReport:
    """:func:`segment_images` on Ray Data: the workers run :func:`segment_samples`, this process streams the rows."""
    import functools

    from .._types import Prompts
    from ..data import Sample, read_image, read_mask
    from ._plots import save_overlay
    from ._ray import CsvStream, RecordRows, cache_of, check_rebuildable, progress_bar, ray_session, stream_rows

    out_dir = out_dir.absolute()  # the workers' working directory is not ours
    check_rebuildable(json.loads((out_dir / "pipeline.json").read_text()))
    stems: list[str] = []
    error_rows: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    overlays = len(list((out_dir / "overlays").glob("*.png")))  # a resumed run keeps counting
    to_draw: list[Any] = []
    table = CsvStream(out_dir / "results.csv", SEGMENT_COLUMNS)
    committed = False
    bar = progress_bar(len(images), "segment (ray)", progress)
    try:
        with ray_session(options.address) as ray:
            rows = stream_rows(
                ray,
                options,
                images,
                out_dir=out_dir,
                work=functools.partial(segment_samples, digest=digest),
                finished=functools.partial(_finished_segment_row, digest=digest),
                cache=cache_of(pipeline),
            )
            for item in rows:
                row = json.loads(item["row"])
                stems.append(row["stem"])
                table.write(row)
                if row.get("error"):
                    error_rows[row["stem"]] = row
                    errors[row["stem"]] = row["error"]
                    logger.error("medsamkit: error: %s: %s", row["stem"], row["error"])
                elif not item["reused"] and overlays + len(to_draw) < n_overlays:
                    mask = Path(item["mask_path"]) if item["mask_path"] else None
                    to_draw.append(Sample(row["stem"], Path(item["image_path"]), mask))
                bar.update(1)
        committed = True
    finally:
        bar.close()
        table.close(commit=committed)
    for sample in to_draw:  # the first successes, as the local engine draws them
        record = json.loads((out_dir / "records" / f"{sample.stem}.json").read_text())
        save_overlay(
            out_dir / "overlays" / f"{sample.stem}.png",
            read_image(sample.image_path),
            pred=read_mask(out_dir / "masks" / f"{sample.stem}.png"),
            target=read_mask(sample.mask_path) if sample.mask_path is not None else None,
            prompts=Prompts.from_dict(record["prompts"]),
            title=sample.stem,
        )
    return SegmentReport(out_dir=out_dir, rows=RecordRows(out_dir, stems, error_rows), errors=errors)  # type: ignore[arg-type]

"""``segment_images``: run a pipeline on images without reference masks and save the masks."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SEGMENT_OWNED", "SegmentReport", "segment_images"]

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
    """
    from .._outdir import claim_out_dir, input_folders, out_dir_lock
    from ._evaluate import check_stems

    check_stems(images, name="images")
    out_dir = Path(out_dir)
    inputs = input_folders(images)
    claim_out_dir(out_dir, inputs=inputs, owned=SEGMENT_OWNED)
    with out_dir_lock(out_dir):
        return _segment_locked(pipeline, images, out_dir, n_overlays=n_overlays, progress=progress)


def _segment_locked(pipeline: Any, images: Sequence[Any], out_dir: Path, *, n_overlays: int, progress: bool) -> SegmentReport:
    from tqdm.auto import tqdm

    from ..data import atomic_write_text, csv_text
    from ._evaluate import RUN_FILE, _check_same_run, read_record, run_digest, sample_key, write_record
    from ._plots import save_overlay
    from ._prefetch import prefetch

    run = {"pipeline": pipeline.config.model_dump(mode="json"), "command": "segment"}
    _check_same_run(out_dir, run, keys=("pipeline", "command"))
    atomic_write_text(out_dir / RUN_FILE, json.dumps(run, indent=2) + "\n")
    try:
        pipeline.save(out_dir)
    except Exception as exc:
        logger.warning("medsamkit: note: pipeline cannot be saved for re-running (%s)", exc)
    digest = run_digest(run)
    rows: dict[str, dict[str, Any]] = {}
    keys: dict[str, str] = {}
    errors: dict[str, str] = {}
    overlays = len(list((out_dir / "overlays").glob("*.png")))  # a resumed run keeps counting
    pending = []
    for sample in images:
        try:
            keys[sample.stem] = sample_key(sample, digest)
        except OSError:  # loading fails below with the reason
            keys[sample.stem] = ""
        record = read_record(out_dir, sample.stem, keys[sample.stem]) if keys[sample.stem] else None
        if record is not None:
            rows[sample.stem] = record["row"]
        else:
            pending.append(sample)
    if rows:
        logger.info("medsamkit: reused %d finished result(s) in %s; %d to do", len(rows), out_dir, len(pending))

    def load(sample: Any) -> tuple[Any, Any]:
        return sample.load_image(), (sample.load_mask() if sample.mask_path is not None else None)

    bar = tqdm(pending, desc="segment", unit="img", disable=not progress, dynamic_ncols=True)
    for sample, loaded, read_error in prefetch(bar, load):
        try:
            if read_error is not None:
                raise read_error
            image, target = loaded
            start = time.perf_counter()
            result = pipeline(image, target=target)
            seconds = time.perf_counter() - start
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            errors[sample.stem] = message
            logger.error("medsamkit: error: %s: %s", sample.stem, message)
            rows[sample.stem] = {"stem": sample.stem, "error": message}
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
        write_record(out_dir, sample.stem, row, result, key=keys[sample.stem])
        rows[sample.stem] = row
        atomic_write_text(out_dir / "results.csv", csv_text(list(rows.values()), SEGMENT_COLUMNS))
    ordered = [rows[s.stem] for s in images if s.stem in rows]
    atomic_write_text(out_dir / "results.csv", csv_text(ordered, SEGMENT_COLUMNS))
    return SegmentReport(out_dir=out_dir, rows=ordered, errors=errors)

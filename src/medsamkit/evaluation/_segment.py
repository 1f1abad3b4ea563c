"""``segment_images``: run a pipeline on images without reference masks and save the masks."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SegmentReport", "segment_images"]

SEGMENT_COLUMNS = ("stem", "area_px", "n_prompts", "mean_score", "seconds", "note", "error")


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
    written atomically when done; a second run skips images already done.

    Args:
        pipeline: A :class:`~medsamkit.Pipeline`.
        images: Samples (``MaskFolder(..., require_masks=False)``); a sample's mask is
            passed as ``target`` when it has one.
        out_dir: Output folder.
        n_overlays: Overlay pictures to write.
        progress: Show a progress bar.
    """
    from tqdm.auto import tqdm

    from ..data import atomic_write_text, csv_text, write_mask
    from ._evaluate import RUN_FILE, _check_same_run
    from ._plots import save_overlay
    from ._prefetch import prefetch

    out_dir = Path(out_dir)
    run = {"pipeline": pipeline.config.model_dump(mode="json"), "command": "segment"}
    _check_same_run(out_dir, run, keys=("pipeline", "command"))
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / RUN_FILE, json.dumps(run, indent=2) + "\n")
    try:
        pipeline.save(out_dir)
    except Exception as exc:
        print(f"medsamkit: note: pipeline cannot be saved for re-running ({exc})", file=sys.stderr)
    rows: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    overlays = len(list((out_dir / "overlays").glob("*.png")))  # a resumed run keeps counting
    pending = []
    for sample in images:
        record = out_dir / "records" / f"{sample.stem}.json"
        if record.is_file():
            rows[sample.stem] = json.loads(record.read_text())["row"]
        else:
            pending.append(sample)

    def load(sample: Any) -> tuple[Any, Any]:
        return sample.load_image(), (sample.load_mask() if sample.mask_path is not None else None)

    bar = tqdm(pending, desc="segment", unit="img", disable=not progress, dynamic_ncols=True)
    for sample, loaded, read_error in prefetch(bar, load):
        record = out_dir / "records" / f"{sample.stem}.json"
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
            print(f"medsamkit: error: {sample.stem}: {message}", file=sys.stderr)
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
        write_mask(out_dir / "masks" / f"{sample.stem}.png", result.mask)
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
        atomic_write_text(record, json.dumps({"row": row, "prompts": result.prompts.to_dict()}) + "\n")
        rows[sample.stem] = row
        atomic_write_text(out_dir / "results.csv", csv_text(list(rows.values()), SEGMENT_COLUMNS))
    ordered = [rows[s.stem] for s in images if s.stem in rows]
    atomic_write_text(out_dir / "results.csv", csv_text(ordered, SEGMENT_COLUMNS))
    return SegmentReport(out_dir=out_dir, rows=ordered, errors=errors)

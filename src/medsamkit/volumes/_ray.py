"""Volume folders on Ray Data: the local engine's per-volume loop on the workers, the table here.

:func:`evaluate_volumes` / :func:`segment_volumes` with ``engine="ray"`` come here after
the run is set up (``run.json``, ``pipeline.json``). The job is :mod:`medsamkit._rayjob`'s:
each actor rebuilds the pipeline once from ``pipeline.json`` and runs ``_volume_rows``
(the loop the local engine runs, with the run's volume prompt settings as data) on
its volumes, writing their masks, pictures and records; this process streams the
rows back in input order into ``metrics.csv`` and ``summary.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["run_volumes_on_ray"]


def _cache_settings(cache: Any, pipeline: Any) -> dict[str, Any] | None:
    """The embedding cache the workers wrap their segmenter in: ``cache`` (a folder or an
    ``EmbeddingCache``, as ``segment_volume`` takes it), else the pipeline's own."""
    from .._cache import EmbeddingCache
    from .._rayjob import cache_of

    if cache is None:
        return cache_of(pipeline)
    store = cache if isinstance(cache, EmbeddingCache) else EmbeddingCache(Path(cache))
    return {"directory": str(Path(store.directory).absolute()), "max_bytes": store.max_bytes, "decodes": True}


def run_volumes_on_ray(
    options: Any,
    data: Any,
    *,
    pipeline: Any,
    out: Path,
    work: Any,
    names: tuple[str, ...],
    cache: Any,
    progress: bool,
) -> Any:
    """Run ``work`` (a ``functools.partial`` of ``_volume_rows``) over ``data`` on Ray; write the table.

    Returns:
        The :class:`VolumeReport` the local engine would return (``n_processed``: the
        volumes done in this call; the others came from a previous run).
    """
    from .._rayjob import CsvStream, check_rebuildable, progress_bar, ray_session, stream_rows
    from ..data import VolumeSample
    from ._evaluate import VOLUME_CSV_COLUMNS, VolumeReport, _atomic_text, _finished_row, _summary

    where = out.absolute()  # the workers' working directory is not ours
    check_rebuildable(json.loads((where / "pipeline.json").read_text()))
    settings = _cache_settings(cache, pipeline)
    rows: list[dict[str, Any]] = []
    errors: dict[str, str] = {}
    n_processed = 0
    table = CsvStream(where / "metrics.csv", VOLUME_CSV_COLUMNS)
    committed = False
    bar = progress_bar(len(data), "volumes (ray)", progress, unit="vol")
    try:
        with ray_session(options.address) as ray:
            items = stream_rows(
                ray,
                options,
                data,
                out_dir=where,
                work=work,
                finished=_finished_row,
                cache=settings,
                sample_type=VolumeSample,
            )
            for item in items:
                row = json.loads(item["row"])
                n_processed += not item["reused"]
                rows.append(row)
                table.write(row)
                if row.get("error"):
                    errors[row["stem"]] = row["error"]
                    print(f"medsamkit: error: {row['stem']}: {row['error']}", file=sys.stderr)  # as the local engine
                bar.update(1)
        committed = True
    finally:
        bar.close()
        table.close(commit=committed)
    summary = _summary(rows, names)
    _atomic_text(where / "summary.json", json.dumps(summary, indent=2) + "\n")
    return VolumeReport(out_dir=out, rows=rows, summary=summary, n_processed=n_processed, errors=errors)

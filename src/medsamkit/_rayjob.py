"""The Ray Data job behind ``engine="ray"``: the local engine's per-item loop on many workers.

Items (2D images, volumes, or rows of a CSV listing images) are streamed into a file
in ``out_dir``; a Ray Dataset holds the byte range of each block of them; a pool of
actors, each rebuilding the pipeline once from ``out_dir/pipeline.json``, reads its
blocks, sets aside the items a previous run finished (the local engine's own check)
and runs the local engine's own per-item loop (``evaluate_samples``,
``segment_samples``, the volume loop) on the others, so every file is written by
the workers exactly as the local engine writes it; the driver streams the rows back
in input order. Ray is imported only here, only when the engine is used. The
drivers that turn the rows into ``metrics.csv`` / ``summary.json`` live beside their
local engines (:mod:`medsamkit.evaluation`, :mod:`medsamkit.volumes`).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_THREADS_PER_WORKER",
    "TELEMETRY_OFF",
    "THREAD_ENV",
    "CsvStream",
    "RayEngine",
    "cache_of",
    "cache_settings",
    "check_rebuildable",
    "engine_options",
    "limit_threads",
    "progress_bar",
    "ray_session",
    "stream_rows",
    "table_on_ray",
    "thread_limits",
    "worker_pipeline",
]

TELEMETRY_OFF = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DATA_USAGE_DISABLED": "1"}
"""Environment set before Ray is imported and passed to its workers: no usage statistics."""


DEFAULT_THREADS_PER_WORKER = 2
"""Threads (and CPUs) per worker when neither ``workers`` nor ``threads_per_worker`` is given
(fewer on a smaller cluster); why 2, see ``docs/ray.md`` ("Resources")."""


@dataclass(frozen=True)
class RayEngine:
    """Run ``evaluate`` / ``segment`` on Ray Data (``engine=RayEngine(...)``; ``engine="ray"`` = defaults).

    Each worker is a Ray actor holding one pipeline, rebuilt once from the run's
    ``pipeline.json`` (fitted prompter states and fine-tuned weights are files it
    names), never a pickled live object. Workers × threads per worker must not
    exceed the CPUs Ray sees, so torch threads do not fight over cores.

    Args:
        workers: Number of actors. Default: one per GPU when the workers use GPUs,
            else CPUs Ray sees // ``threads_per_worker``.
        threads_per_worker: CPUs reserved for each actor, and the threads its
            torch, OpenVINO, OpenCV and OpenMP/BLAS may use. Default: CPUs Ray sees
            // ``workers`` when ``workers`` is given, else
            :data:`DEFAULT_THREADS_PER_WORKER` (2; 1 on a 1-CPU cluster).
        gpus_per_worker: GPUs per actor. Default: 1 when Ray sees a GPU, else 0. With
            a GPU the segmenter is rebuilt with ``device="cuda"``.
        address: Ray cluster address (``"ray://head:10001"``, ``"auto"``). Default:
            ``$RAY_ADDRESS``, else a local Ray started for the run and stopped after it.
        batch_size: Items (images or volumes) per actor call: the unit Ray retries
            when a worker is lost (Ray Data restarts a dead actor and retries its
            unfinished calls; items the lost attempt finished are not redone).
    """

    workers: int | None = None
    threads_per_worker: int | None = None
    gpus_per_worker: float | None = None
    address: str | None = None
    batch_size: int = 8

    def __post_init__(self) -> None:
        for name in ("workers", "threads_per_worker"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}: expected a positive int or None, got {value!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {self.batch_size!r}")
        gpus = self.gpus_per_worker
        if gpus is not None and (isinstance(gpus, bool) or not isinstance(gpus, (int, float)) or not gpus >= 0):
            raise ValueError(f"gpus_per_worker: expected a number >= 0 or None, got {gpus!r}")
        if self.address is not None and (not isinstance(self.address, str) or not self.address.strip()):
            raise ValueError(f"address: expected a Ray address such as 'ray://head:10001' or 'auto', got {self.address!r}")

    def plan(self, cpus: float, gpus: float) -> tuple[int, int, float]:
        """``(workers, threads_per_worker, gpus_per_worker)`` for a cluster with ``cpus`` and ``gpus``.

        Raises:
            ValueError: If workers × threads per worker exceeds ``cpus`` (the actors
                could not all be placed), or GPUs are asked for and there are none.
        """
        cores = max(1, int(cpus))
        per_gpu = self.gpus_per_worker if self.gpus_per_worker is not None else (1.0 if gpus >= 1 else 0.0)
        workers, threads = self.workers, self.threads_per_worker
        if workers is None and per_gpu > 0:  # one worker per GPU (or share of one), as far as the CPUs go
            workers = max(1, min(int(gpus / per_gpu + 1e-9), cores // (threads or 1)))
        if threads is None:
            threads = max(1, cores // workers) if workers else min(DEFAULT_THREADS_PER_WORKER, cores)
        if workers is None:
            workers = max(1, cores // threads)
        if workers * threads > cores:
            raise ValueError(
                f"workers: {workers} workers x {threads} threads per worker = {workers * threads} CPUs, "
                f"but Ray sees {cores}; use fewer workers or threads per worker"
            )
        if per_gpu * workers > gpus + 1e-9:
            raise ValueError(
                f"gpus_per_worker: {workers} workers x {per_gpu} GPUs = {per_gpu * workers}, but Ray sees {gpus:g} GPUs"
            )
        return workers, threads, float(per_gpu)


def engine_options(engine: Any) -> RayEngine | None:
    """None for the local engine, a :class:`RayEngine` for Ray (``"ray"`` gives the defaults)."""
    if isinstance(engine, str) and engine == "local":
        return None
    if isinstance(engine, str) and engine == "ray":
        return RayEngine()
    if isinstance(engine, RayEngine):
        return engine
    raise ValueError(f"engine: expected 'local', 'ray' or a RayEngine, got {engine!r}")


# -- Ray session -----------------------------------------------------------------------


def _import_ray() -> Any:
    os.environ.update(TELEMETRY_OFF)  # read when Ray is imported and when it starts
    try:
        import ray
        import ray.data
    except ImportError:
        raise ImportError("engine='ray' needs Ray Data: pip install medsamkit[ray]") from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None) -> Iterator[Any]:
    """The ``ray`` module with a connection: the running one, the cluster at ``address``
    (or ``$RAY_ADDRESS``), or a local Ray started here (no dashboard, no usage statistics)
    and shut down on exit."""
    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        kwargs: dict[str, Any] = {
            "address": address,
            "log_to_driver": False,  # the driver names failed images itself
            "logging_level": logging.WARNING,
            "runtime_env": {"env_vars": dict(TELEMETRY_OFF)},
        }
        if address in (None, "local"):
            kwargs["include_dashboard"] = False
        ray.init(**kwargs)
        started = True
    with warnings.catch_warnings():  # Ray's own deprecated fields, touched when the context is created
        warnings.simplefilter("ignore", DeprecationWarning)
        context = ray.data.DataContext.get_current()
    saved = (
        context.execution_options.preserve_order,
        context.enable_progress_bars,
        getattr(context, "print_on_execution_start", True),
    )
    context.execution_options.preserve_order = True  # rows come back in input order
    context.enable_progress_bars = False  # the driver shows one bar
    context.print_on_execution_start = False
    data_logger = logging.getLogger("ray.data")
    level = data_logger.level
    data_logger.setLevel(logging.WARNING)
    try:
        yield ray
    finally:
        data_logger.setLevel(level)
        (context.execution_options.preserve_order, context.enable_progress_bars, context.print_on_execution_start) = saved
        if started:
            ray.shutdown()


# -- items and the workers ------------------------------------------------------


ITEMS_FILE = ".ray-items.csv"
"""The run's items (stem, image path, mask path), written by the driver into ``out_dir`` for the workers;
the dataset holds only the byte range of each block of items.

Paths are kept as the user gave them (relative ones to the driver's working directory,
which the actors move to), so every message naming a file is the local engine's."""


def _write_items(samples: Any, out_dir: Path, rows_per_block: int) -> list[dict[str, int]]:
    """Stream ``samples`` into ``out_dir/ITEMS_FILE``; return the byte range of each block of rows.

    The driver keeps only these ranges (a few bytes per block), never the items: a
    CSV of any size streams through, and the workers read their block from the file.
    """
    path = out_dir / ITEMS_FILE
    blocks: list[dict[str, int]] = []
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        start, rows = 0, 0
        for sample in samples:
            mask = "" if sample.mask_path is None else str(sample.mask_path)
            writer.writerow([sample.stem, str(sample.image_path), mask])
            rows += 1
            if rows == rows_per_block:
                end = handle.tell()
                blocks.append({"start": start, "end": end})
                start, rows = end, 0
        if rows:
            blocks.append({"start": start, "end": handle.tell()})
    return blocks


def _read_block(path: Path, start: int, end: int) -> list[tuple[str, str, str]]:
    """The items ``(stem, image path, mask path or "")`` in bytes ``start:end`` of the items file."""
    import io

    with open(path, "rb") as handle:
        handle.seek(start)
        text = handle.read(end - start).decode("utf-8")
    return [(stem, image, mask) for stem, image, mask in csv.reader(io.StringIO(text, newline=""))]


def _samples_of(items: list[tuple[str, str, str]], sample_type: Any) -> list[Any]:
    """Items as ``sample_type(stem=, image_path=, mask_path=)`` (a ``Sample``, a ``VolumeSample``)."""
    return [sample_type(stem=stem, image_path=Path(image), mask_path=Path(mask) if mask else None) for stem, image, mask in items]


def check_rebuildable(config: Mapping[str, Any]) -> None:
    """Refuse a pipeline config the workers cannot rebuild (custom components, in-memory models)."""
    parts = [config["prompter"], config["segmenter"], *config.get("postprocess", [])]
    for part in parts:
        if str(part["name"]).startswith("python:") or "module" in part.get("params", {}):
            raise ValueError(
                f"engine: the Ray engine rebuilds the pipeline on its workers from pipeline.json, and "
                f"component {part['name']} cannot be rebuilt from its config (a class outside medsamkit's "
                "registry, or a model held in memory); save its weights and use a registered component, "
                "or engine='local'"
            )


def worker_pipeline(out_dir: str | Path, *, device: str | None = None, cache: dict[str, Any] | None = None) -> Any:
    """The pipeline a worker runs: rebuilt from ``out_dir/pipeline.json`` (config as data).

    Args:
        out_dir: The run's folder (its ``pipeline.json`` and the prompter state beside it).
        device: Rebuild the segmenter on this device (``"cuda"`` on GPU workers).
        cache: ``{"directory", "max_bytes", "decodes"}`` of an embedding cache to wrap
            the segmenter in (the folder is per node unless it is on a shared file system).
    """
    from ._cache import CachedSegmenter, EmbeddingCache
    from ._pipeline import CONFIG_FILE, Pipeline

    path = Path(out_dir) / CONFIG_FILE
    config = json.loads(path.read_text())
    if device is not None:
        config["segmenter"]["params"]["device"] = device
    pipeline = Pipeline.from_config(config, base_dir=path.parent)
    if cache is not None:
        store = EmbeddingCache(cache["directory"], max_bytes=int(cache["max_bytes"]))
        pipeline = pipeline.replace(segmenter=CachedSegmenter(pipeline.segmenter, store, decodes=bool(cache["decodes"])))
    return pipeline


THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
"""Environment variables OpenMP and the BLAS libraries read when they load (torch reads ``OMP_NUM_THREADS``)."""


def limit_threads(threads: int) -> None:
    """Hold this process's compute libraries to ``threads`` threads (what a worker with that many CPUs may use).

    * OpenMP / BLAS: :data:`THREAD_ENV`, for the libraries loaded from now on;
    * torch: ``torch.set_num_threads`` if torch is imported (else ``OMP_NUM_THREADS``
      sets it when it is; call again after a lazy import, as the workers do per batch);
    * OpenCV: ``cv2.setNumThreads``;
    * OpenVINO: an accelerated encoder built afterwards compiles with
      ``INFERENCE_NUM_THREADS = torch.get_num_threads()``, so it follows torch.

    torch is not imported for this: a pipeline without a torch model stays light.
    """
    import cv2

    for name in THREAD_ENV:
        os.environ[name] = str(threads)
    if cv2.getNumThreads() != threads:
        cv2.setNumThreads(threads)
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def thread_limits() -> dict[str, Any]:
    """The thread limits in force in this process: torch's (None if torch is not imported), OpenCV's, and :data:`THREAD_ENV`."""
    import cv2

    torch = sys.modules.get("torch")
    return {
        "torch": None if torch is None else torch.get_num_threads(),
        "opencv": cv2.getNumThreads(),
        **{name: os.environ.get(name) for name in THREAD_ENV},
    }


class _Worker:
    """The actors: one pipeline per actor; per call, the items of some blocks, those not
    finished yet through the local engine's per-item loop."""

    def __init__(
        self,
        *,
        work: Callable[..., Iterator[tuple[Any, dict[str, Any]]]],
        finished: Callable[[Path, Any], Any],
        out_dir: str,
        threads: int,
        device: str | None,
        cache: dict[str, Any] | None,
        sample_type: Any,
        cwd: str,
    ) -> None:
        if os.path.isdir(cwd):  # relative paths, and the messages naming them, as in the driver
            os.chdir(cwd)
        self.threads = threads
        limit_threads(threads)  # before the model loads: OpenVINO takes torch's count when it compiles
        self.work = work
        self.finished = finished
        self.out_dir = Path(out_dir)
        self.sample_type = sample_type
        self.pipeline = worker_pipeline(out_dir, device=device, cache=cache)
        limit_threads(threads)  # torch may have been imported by the pipeline

    def thread_limits(self) -> dict[str, Any]:
        """:func:`thread_limits` inside this actor."""
        return thread_limits()

    def _done(self, sample: Any, run_started: int) -> tuple[dict[str, Any] | None, bool]:
        """``(row, reused)`` of an item already finished (``row`` None if not): by a previous
        run (``reused``), or by an attempt of this batch on a worker killed before it
        returned (Ray retries the whole batch), whose record is newer than the run."""
        try:
            row = self.finished(self.out_dir, sample)
        except Exception:  # noqa: BLE001 - a damaged record: do the item again
            return None, False
        if row is None:
            return None, False
        record = self.out_dir / "records" / f"{sample.stem}.json"  # every engine's record of an item
        return row, not (record.is_file() and record.stat().st_mtime_ns >= run_started)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        limit_threads(self.threads)  # cheap; catches a library imported lazily by the last batch
        items_file = self.out_dir / ITEMS_FILE
        run_started = items_file.stat().st_mtime_ns  # the driver wrote it when the run started
        items = [
            item for start, end in zip(batch["start"], batch["end"]) for item in _read_block(items_file, int(start), int(end))
        ]
        samples = _samples_of(items, self.sample_type)
        rows: dict[str, str] = {}
        reused: set[str] = set()
        todo = []
        for sample in samples:
            row, earlier = self._done(sample, run_started)
            if row is None:
                todo.append(sample)
                continue
            rows[sample.stem] = json.dumps(row)
            if earlier:
                reused.add(sample.stem)
        rows.update({sample.stem: json.dumps(row) for sample, row in self.work(self.pipeline, todo, out_dir=self.out_dir)})
        return {
            "stem": [stem for stem, _, _ in items],
            "image_path": [image for _, image, _ in items],
            "mask_path": [mask for _, _, mask in items],
            "row": [rows[stem] for stem, _, _ in items],
            "reused": [stem in reused for stem, _, _ in items],
        }


def cache_settings(cache: Any, pipeline: Any) -> dict[str, Any] | None:
    """The embedding cache the workers wrap their segmenter in: ``cache`` (a folder or an
    ``EmbeddingCache``, as ``segment_volume`` takes it), else the pipeline's own (:func:`cache_of`)."""
    from ._cache import EmbeddingCache

    if cache is None:
        return cache_of(pipeline)
    store = cache if isinstance(cache, EmbeddingCache) else EmbeddingCache(Path(cache))
    return {"directory": str(Path(store.directory).absolute()), "max_bytes": store.max_bytes, "decodes": True}


def cache_of(pipeline: Any) -> dict[str, Any] | None:
    """The embedding cache settings of ``pipeline``'s segmenter (a ``CachedSegmenter``), or None."""
    from ._cache import CachedSegmenter

    segmenter = getattr(pipeline, "segmenter", None)
    if isinstance(segmenter, CachedSegmenter):
        return {
            "directory": str(Path(segmenter.cache.directory).absolute()),
            "max_bytes": segmenter.cache.max_bytes,
            "decodes": segmenter.decodes,
        }
    return None


def stream_rows(
    ray: Any,
    options: RayEngine,
    samples: Any,
    *,
    out_dir: Path,
    work: Callable[..., Any],
    finished: Callable[[Path, Any], Any],
    cache: dict[str, Any] | None = None,
    sample_type: Any = None,
) -> Iterator[dict[str, Any]]:
    """Run ``work`` on Ray over ``samples`` and yield its rows in input order (streaming).

    Args:
        work: ``work(pipeline, samples, *, out_dir) -> iterator of (sample, row)``, the
            local engine's per-item loop (it writes each item's files); a module-level
            function or a ``functools.partial`` of one (sent to the workers: its
            settings travel as data).
        finished: ``finished(out_dir, sample) -> row or None``, the local engine's check
            for an item a previous run finished.
        cache: Embedding cache settings (:func:`cache_of`) the workers wrap their segmenter in.
        sample_type: What the workers rebuild each item as, from its stem and paths
            (default :class:`~medsamkit.data.Sample`; ``VolumeSample`` for volumes).

    Yields:
        ``{"stem", "image_path", "mask_path", "row" (JSON), "reused" (bool)}`` per sample.
    """
    if len(samples) == 0:
        return
    if sample_type is None:
        from .data import Sample

        sample_type = Sample
    resources = ray.cluster_resources()
    workers, threads, gpus = options.plan(resources.get("CPU", 1), resources.get("GPU", 0))
    workers = min(workers, len(samples))  # no actor (and no model load) without an item
    # Blocks of at most batch_size items, and at least one per worker.
    rows_per_block = max(1, min(options.batch_size, math.ceil(len(samples) / workers)))
    blocks = _write_items(samples, out_dir, rows_per_block)
    ds = ray.data.from_items(blocks, override_num_blocks=len(blocks)).map_batches(
        _Worker,
        fn_constructor_kwargs={
            "work": work,
            "finished": finished,
            "out_dir": str(out_dir),
            "threads": threads,
            "device": "cuda" if gpus > 0 else None,
            "cache": cache,
            "sample_type": sample_type,
            "cwd": os.getcwd(),
        },
        batch_size=1,  # one block of items per call
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=threads,
        num_gpus=gpus if gpus > 0 else None,
    )
    from ._outdir import remove_orphans

    try:
        yield from ds.iter_rows()
        remove_orphans(out_dir)  # every worker is done (a worker killed mid-write left its temporary file)
    finally:
        (out_dir / ITEMS_FILE).unlink(missing_ok=True)


# -- the driver -----------------------------------------------------------------------------


class CsvStream:
    """``metrics.csv`` written row by row into a hidden file, renamed into place at the end."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        from .data import csv_text

        self._csv_text = csv_text  # the one table writer: same cells as the local engine's
        self.path = path
        self.columns = columns
        self._header = csv_text([], columns)
        self._partial = path.with_name(f".{path.name}.partial")
        self._file = open(self._partial, "w", encoding="utf-8", newline="")  # noqa: SIM115
        self._file.write(self._header)

    def write(self, row: dict[str, Any]) -> None:
        self._file.write(self._csv_text([row], self.columns)[len(self._header) :])

    def close(self, *, commit: bool) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if commit:
            os.replace(self._partial, self.path)
        else:
            self._partial.unlink(missing_ok=True)


def table_on_ray(
    options: RayEngine,
    samples: Any,
    *,
    out_dir: Path,
    table: str,
    columns: Sequence[str],
    work: Callable[..., Any],
    finished: Callable[[Path, Any], Any],
    cache: dict[str, Any] | None = None,
    sample_type: Any = None,
    on_error: Callable[[str, str], None] | None = None,
    progress: bool = True,
    desc: str = "ray",
    unit: str = "item",
) -> tuple[list[dict[str, Any]], int]:
    """A whole run on Ray whose rows the driver keeps (one per volume, say): :func:`stream_rows`
    into ``out_dir/table`` (a :class:`CsvStream` of ``columns``), with a progress bar.

    Called once the run is set up (``pipeline.json`` in ``out_dir``). ``on_error(stem,
    message)`` is called for each error row as it arrives.

    Returns:
        The rows in input order, and how many items were done in this call (the others
        came from a previous run).
    """
    where = Path(out_dir).absolute()
    check_rebuildable(json.loads((where / "pipeline.json").read_text()))
    rows: list[dict[str, Any]] = []
    done_now = 0
    stream = CsvStream(where / table, columns)
    committed = False
    bar = progress_bar(len(samples), desc, progress, unit=unit)
    try:
        with ray_session(options.address) as ray:
            items = stream_rows(
                ray, options, samples, out_dir=where, work=work, finished=finished, cache=cache, sample_type=sample_type
            )
            for item in items:
                row = json.loads(item["row"])
                done_now += not item["reused"]
                rows.append(row)
                stream.write(row)
                if row.get("error") and on_error is not None:
                    on_error(row["stem"], row["error"])
                bar.update(1)
        committed = True
    finally:
        bar.close()
        stream.close(commit=committed)
    return rows, done_now


def progress_bar(total: int, desc: str, progress: bool, *, unit: str = "img") -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not progress, dynamic_ncols=True)

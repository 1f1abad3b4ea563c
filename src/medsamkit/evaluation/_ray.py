"""The Ray Data engine of ``evaluate`` and ``segment``: the same per-image loop on many workers.

Items (paths from a folder or rows of a CSV) become a Ray Dataset; a cheap task stage
marks the items a previous run finished; a pool of actors, each rebuilding the
pipeline once from ``out_dir/pipeline.json``, runs :func:`evaluate_samples` /
:func:`segment_samples` (the local engine's loop) on the other items, so masks and
records are written by the workers exactly as the local engine writes them; the
driver streams the rows back in input order into ``metrics.csv`` / ``summary.json``.
Ray is imported only here, only when the engine is used.
"""

from __future__ import annotations

import contextlib
import csv
import heapq
import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "TELEMETRY_OFF",
    "ColumnRow",
    "CsvStream",
    "Extremes",
    "RayEngine",
    "RecordRows",
    "cache_of",
    "check_rebuildable",
    "engine_options",
    "progress_bar",
    "ray_session",
    "stream_rows",
    "worker_pipeline",
]

TELEMETRY_OFF = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DATA_USAGE_DISABLED": "1"}
"""Environment set before Ray is imported and passed to its workers: no usage statistics."""


@dataclass(frozen=True)
class RayEngine:
    """Run ``evaluate`` / ``segment`` on Ray Data (``engine=RayEngine(...)``; ``engine="ray"`` = defaults).

    Each worker is a Ray actor holding one pipeline, rebuilt once from the run's
    ``pipeline.json`` (fitted prompter states and fine-tuned weights are files it
    names), never a pickled live object. Workers × threads per worker must not
    exceed the CPUs Ray sees, so torch threads do not fight over cores.

    Args:
        workers: Number of actors. Default: CPUs Ray sees // ``threads_per_worker``.
        threads_per_worker: CPUs reserved for, and torch threads used by, each actor.
            Default: CPUs Ray sees // ``workers`` (1 when neither is given).
        gpus_per_worker: GPUs per actor. Default: 1 when Ray sees a GPU, else 0. With
            a GPU the segmenter is rebuilt with ``device="cuda"``.
        address: Ray cluster address (``"ray://head:10001"``, ``"auto"``). Default:
            ``$RAY_ADDRESS``, else a local Ray started for the run and stopped after it.
        batch_size: Images per actor call: the unit Ray retries when a worker is lost
            (Ray Data restarts a dead actor and retries its unfinished calls).
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
        threads = self.threads_per_worker or max(1, cores // (self.workers or cores))
        workers = self.workers or max(1, cores // threads)
        if workers * threads > cores:
            raise ValueError(
                f"workers: {workers} workers x {threads} threads per worker = {workers * threads} CPUs, "
                f"but Ray sees {cores}; use fewer workers or threads per worker"
            )
        per_gpu = self.gpus_per_worker if self.gpus_per_worker is not None else (1.0 if gpus >= 1 else 0.0)
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


# -- items and stages (run on the workers) ------------------------------------------------


ITEMS_FILE = ".ray-items.csv"
"""The run's items (stem, image path, mask path), written by the driver into ``out_dir`` for the workers."""


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
            mask = "" if sample.mask_path is None else str(Path(sample.mask_path).absolute())
            writer.writerow([sample.stem, str(Path(sample.image_path).absolute()), mask])  # workers have another cwd
            rows += 1
            if rows == rows_per_block:
                end = handle.tell()
                blocks.append({"start": start, "end": end})
                start, rows = end, 0
        if rows:
            blocks.append({"start": start, "end": handle.tell()})
    return blocks


def _read_items(batch: dict[str, Any], path: str, out_dir: str, finished: Callable[[Path, Any], Any]) -> dict[str, list[str]]:
    """Stage 1 (cheap tasks): each block's items, and each item's row from a previous run.

    ``done`` is the row (JSON) of an image a previous run finished (``finished(out_dir,
    sample)``, the local engine's own check), ``""`` for one to do: finished images
    never reach a model.
    """
    import io

    columns: dict[str, list[str]] = {"stem": [], "image_path": [], "mask_path": [], "done": []}
    with open(path, "rb") as handle:
        for start, end in zip(batch["start"], batch["end"]):
            handle.seek(int(start))
            text = handle.read(int(end) - int(start)).decode("utf-8")
            for stem, image, mask in csv.reader(io.StringIO(text, newline="")):
                columns["stem"].append(stem)
                columns["image_path"].append(image)
                columns["mask_path"].append(mask)
                try:
                    row = finished(Path(out_dir), _samples_of({"stem": [stem], "image_path": [image], "mask_path": [mask]})[0])
                except Exception:  # noqa: BLE001 - a damaged record: do the image again
                    row = None
                columns["done"].append("" if row is None else json.dumps(row))
    return columns


def _items_dataset(ray: Any, samples: Any, out_dir: Path, rows_per_block: int, finished: Any) -> Any:
    """A dataset of ``stem, image_path, mask_path, done`` (text; ``""`` for no mask / to do), in input order.

    The item stage asks for no CPU (the model actors may hold all of them) and runs
    at most two tasks at a time (no CPU asked means no bound otherwise).
    """
    blocks = _write_items(samples, out_dir, rows_per_block)
    ds = ray.data.from_items(blocks, override_num_blocks=max(1, len(blocks)))
    return ds.map_batches(
        _read_items,
        fn_kwargs={"path": str(out_dir / ITEMS_FILE), "out_dir": str(out_dir), "finished": finished},
        num_cpus=0,
        batch_size=None,
        compute=ray.data.TaskPoolStrategy(size=2),
    )


def _samples_of(batch: Mapping[str, Any]) -> list[Any]:
    from ..data import Sample

    return [
        Sample(stem=str(stem), image_path=Path(str(image)), mask_path=Path(str(mask)) if mask else None)
        for stem, image, mask in zip(batch["stem"], batch["image_path"], batch["mask_path"])
    ]


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
    from .._cache import CachedSegmenter, EmbeddingCache
    from .._pipeline import CONFIG_FILE, Pipeline

    path = Path(out_dir) / CONFIG_FILE
    config = json.loads(path.read_text())
    if device is not None:
        config["segmenter"]["params"]["device"] = device
    pipeline = Pipeline.from_config(config, base_dir=path.parent)
    if cache is not None:
        store = EmbeddingCache(cache["directory"], max_bytes=int(cache["max_bytes"]))
        pipeline = pipeline.replace(segmenter=CachedSegmenter(pipeline.segmenter, store, decodes=bool(cache["decodes"])))
    return pipeline


class _Worker:
    """Stage 2 (actors): one pipeline per actor, the local engine's per-image loop over each batch."""

    def __init__(
        self,
        *,
        work: Callable[..., Iterator[tuple[Any, dict[str, Any]]]],
        out_dir: str,
        threads: int,
        device: str | None,
        cache: dict[str, Any] | None,
    ) -> None:
        import torch

        torch.set_num_threads(threads)
        self.work = work
        self.out_dir = Path(out_dir)
        self.pipeline = worker_pipeline(out_dir, device=device, cache=cache)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        samples = _samples_of(batch)
        todo = [s for s, done in zip(samples, batch["done"]) if not done]
        new = {sample.stem: json.dumps(row) for sample, row in self.work(self.pipeline, todo, out_dir=self.out_dir)}
        return {
            "stem": [s.stem for s in samples],
            "image_path": [str(s.image_path) for s in samples],
            "mask_path": ["" if s.mask_path is None else str(s.mask_path) for s in samples],
            "row": [str(done) if done else new[s.stem] for s, done in zip(samples, batch["done"])],
            "reused": [bool(done) for done in batch["done"]],
        }


def cache_of(pipeline: Any) -> dict[str, Any] | None:
    """The embedding cache settings of ``pipeline``'s segmenter (a ``CachedSegmenter``), or None."""
    from .._cache import CachedSegmenter

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
) -> Iterator[dict[str, Any]]:
    """Run ``work`` on Ray over ``samples`` and yield its rows in input order (streaming).

    Args:
        work: ``work(pipeline, samples, *, out_dir) -> iterator of (sample, row)``, the
            local engine's per-image loop (it writes each image's files); a module-level
            function or a ``functools.partial`` of one (sent to the workers).
        finished: ``finished(out_dir, sample) -> row or None``, the local engine's check
            for an image a previous run finished.

    Yields:
        ``{"stem", "image_path", "mask_path", "row" (JSON), "reused" (bool)}`` per sample.
    """
    if len(samples) == 0:
        return
    resources = ray.cluster_resources()
    workers, threads, gpus = options.plan(resources.get("CPU", 1), resources.get("GPU", 0))
    # Blocks of at most batch_size items, and at least one per worker.
    rows_per_block = max(1, min(options.batch_size, math.ceil(len(samples) / workers)))
    ds = _items_dataset(ray, samples, out_dir, rows_per_block, finished)
    ds = ds.map_batches(
        _Worker,
        fn_constructor_kwargs={
            "work": work,
            "out_dir": str(out_dir),
            "threads": threads,
            "device": "cuda" if gpus > 0 else None,
            "cache": cache,
        },
        batch_size=options.batch_size,
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=threads,
        num_gpus=gpus if gpus > 0 else None,
    )
    try:
        yield from ds.iter_rows()
    finally:
        (out_dir / ITEMS_FILE).unlink(missing_ok=True)


# -- the driver -----------------------------------------------------------------------------


class RecordRows(Sequence):
    """``report.rows`` of a Ray run without holding the rows: read back from the records."""

    def __init__(self, out_dir: Path, stems: list[str], errors: dict[str, dict[str, Any]]) -> None:
        self._out_dir = out_dir
        self._stems = stems
        self._errors = errors

    def __len__(self) -> int:
        return len(self._stems)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        stem = self._stems[index]
        if stem in self._errors:
            return self._errors[stem]
        return json.loads((self._out_dir / "records" / f"{stem}.json").read_text())["row"]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"<{len(self)} rows read from {self._out_dir / 'records'}>"


class ColumnRow(Mapping):
    """One image's metric values, viewed from the summary's columns (for the box plot)."""

    __slots__ = ("_columns", "_i")

    def __init__(self, columns: dict[str, Any], i: int) -> None:
        self._columns = columns
        self._i = i

    def __getitem__(self, key: str) -> float | None:
        value = self._columns[key][self._i]
        return None if math.isnan(value) else value

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns)

    def __len__(self) -> int:
        return len(self._columns)


class CsvStream:
    """``metrics.csv`` written row by row into a hidden file, renamed into place at the end."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        from ..data import csv_text

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


class Extremes:
    """The ``n`` lowest and highest Dice rows seen, ties in input order (for the overlays)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._low: list[tuple[float, int, str, Any]] = []  # max-heap of the lowest (negated keys)
        self._high: list[tuple[float, int, str, Any]] = []  # min-heap of the highest

    def add(self, dice: float, index: int, stem: str, sample: Any) -> None:
        if self.n == 0:
            return
        low = (-dice, -index, stem, sample)
        if len(self._low) < self.n:
            heapq.heappush(self._low, low)
        elif low > self._low[0]:
            heapq.heapreplace(self._low, low)
        high = (dice, index, stem, sample)
        if len(self._high) < self.n:
            heapq.heappush(self._high, high)
        elif high > self._high[0]:
            heapq.heapreplace(self._high, high)

    def sorted_rows(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Rows ``{"stem", "dice"}`` sorted by (Dice, input order), and samples by stem."""
        found = {i: (d, stem, sample) for d, i, stem, sample in self._high}
        found.update({-i: (-d, stem, sample) for d, i, stem, sample in self._low})
        order = sorted(found, key=lambda i: (found[i][0], i))
        return [{"stem": found[i][1], "dice": found[i][0]} for i in order], {found[i][1]: found[i][2] for i in order}


def progress_bar(total: int, desc: str, progress: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not progress, dynamic_ncols=True)

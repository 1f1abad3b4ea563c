"""The Ray Data engine: the same files as the local engine (2D and volumes), resume, bad files,
a killed worker, thread limits.

One local Ray (2 CPUs, no dashboard, no usage statistics) serves the whole module; it
starts when the first test needs it, and its teardown checks that no process it
started is left behind. Each Ray job starts new worker processes (a second or more
each), so a test runs as few jobs as it can and checks everything one job shows.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from medsamkit import (
    CachedSegmenter,
    CsvSamples,
    EmbeddingCache,
    MaskFolder,
    OracleBoxPrompter,
    Pipeline,
    RayEngine,
    evaluate,
)
from medsamkit.data import Sample, Volume, read_mask, write_image, write_mask, write_volume
from medsamkit.evaluation._ray import TELEMETRY_OFF, check_rebuildable, ray_session
from medsamkit.testing import FakeSegmenter, make_blob_image
from medsamkit.volumes import evaluate_volumes, segment_volumes

SIZE = (48, 64)
N_IMAGES = 12
WORKER_TITLE = "MapWorker(MapBatches(_Worker))"
TIMING = ("seconds", "seconds_per_encoded_slice")


# -- processes -----------------------------------------------------------------------------


def _children() -> dict[int, int]:
    """``{pid: parent pid}`` of every process on the machine (from /proc)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def _descendants(pid: int) -> set[int]:
    parents = _children()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray for this module; on teardown, no process it started may survive."""
    os.environ.update(TELEMETRY_OFF)
    import ray

    before = _descendants(os.getpid())
    # No runtime_env: the workers of a local Ray inherit TELEMETRY_OFF from this process,
    # and without one they start sooner (the two Ray prestarts at init serve the first job).
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    yield ray
    started = _descendants(os.getpid()) - before
    assert started, "Ray started no process: the check below would find nothing"
    ray.shutdown()
    deadline = time.monotonic() + 30
    while _alive(started) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = {pid: _cmdline(pid) for pid in _alive(started)}
    assert not left, f"processes left behind by Ray: {left}"


def _worker_pids() -> list[int]:
    """The model actors' processes (Ray names them after the actor class)."""
    return sorted(pid for pid in _alive(_descendants(os.getpid())) if WORKER_TITLE in _cmdline(pid))


def _kill_a_worker_mid_run(records: Path, before: set[str], killed: dict, stop: threading.Event) -> None:
    """Once a first record not in ``before`` exists: freeze the model actors (SIGSTOP),
    note the finished records, kill (SIGKILL) one actor and let the others go on.

    The actors' pids are looked up ahead (scanning /proc is the slow part), so the
    freeze follows the first new record within milliseconds."""
    pids: list[int] = []
    scanned = 0.0
    while not stop.is_set():
        if time.monotonic() - scanned > 0.05:
            pids, scanned = _worker_pids(), time.monotonic()
        new = records.is_dir() and any(e.name not in before for e in os.scandir(records) if e.name.endswith(".json"))
        if pids and new:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            killed["records"] = {p.name: p.stat().st_mtime_ns for p in records.glob("*.json")}
            os.kill(pids[0], signal.SIGKILL)
            killed["pid"] = pids[0]
            for pid in pids[1:]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            return
        time.sleep(0.002)


@contextlib.contextmanager
def a_worker_killed_mid_run(out: Path):
    """Kill one model actor of the Ray run inside the block once it has finished a first item."""
    killed: dict = {}
    stop = threading.Event()
    before = {p.name for p in (out / "records").glob("*.json")}
    killer = threading.Thread(target=_kill_a_worker_mid_run, args=(out / "records", before, killed, stop), daemon=True)
    killer.start()
    try:
        yield killed
    finally:
        stop.set()
        killer.join()
    assert "pid" in killed, "no worker was killed: the test did not test anything"
    assert not _alive({killed["pid"]})


# -- data ----------------------------------------------------------------------------------


def make_data(root: Path, n: int = N_IMAGES, *, size_hw=SIZE, pairs: bool = False) -> MaskFolder:
    """``n`` blob images with masks (with ``pairs``: images 2k and 2k+1 identical)."""
    for i in range(n):
        k = i // 2 if pairs else i
        image, mask = make_blob_image(size_hw, seed=k, n_blobs=1 + k % 2)
        write_image(root / "images" / f"case_{i:02d}.png", image)
        write_mask(root / "masks" / f"case_{i:02d}.png", mask)
    return MaskFolder(root)


def make_listing(root: Path, n: int = N_IMAGES) -> Path:
    """A CXLSeg-like CSV of ``n + 2`` rows: relative paths in nested folders, masks named
    ``<image>-mask.png``, numeric-looking ids; images 2k and 2k+1 identical; then a
    bad image (``00098``) and one more good one (``00099``)."""
    lines = ["dicom_id,subject_id,path"]
    for i in [*range(n), 98, 99]:
        k = i // 2
        image, mask = make_blob_image(SIZE, seed=k, n_blobs=1 + k % 2)
        rel = f"files/p1{i % 2}/p1000{i}/s5000{i}/{i:05d}.png"
        write_image(root / rel, image)
        write_mask(root / rel.replace(".png", "-mask.png"), mask)
        lines.append(f"{i:05d},{1000 + i},{rel}")
        if i == 98:  # not a PNG (its mask is fine)
            (root / rel).write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    (root / "table.csv").write_text("\n".join(lines) + "\n")
    return root / "table.csv"


def add_bad_file(root: Path) -> None:
    """An image that is not a PNG (its mask is fine)."""
    rng = np.random.default_rng(0)
    (root / "images" / "case_bad.png").write_bytes(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
    write_mask(root / "masks" / "case_bad.png", np.zeros(SIZE, dtype=bool))


def fake_pipeline() -> Pipeline:
    return Pipeline(OracleBoxPrompter(), FakeSegmenter())


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def without_timing(rows):
    return [{k: v for k, v in dict(r).items() if k not in TIMING} for r in rows]


def summary_without_timing(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    for name in TIMING:
        summary["metrics"].pop(name, None)
    return summary


def assert_same_files(local: Path, ray_out: Path, folder: str, pattern: str = "*") -> list[str]:
    """The same file names in ``folder`` of both runs, byte for byte; returns the names."""
    names = sorted(p.name for p in (local / folder).glob(pattern))
    assert names and sorted(p.name for p in (ray_out / folder).glob(pattern)) == names
    for name in names:
        assert (ray_out / folder / name).read_bytes() == (local / folder / name).read_bytes(), name
    return names


def assert_same_outputs(local: Path, ray_out: Path, *, table: str = "metrics.csv", pictures: str = "overlays") -> None:
    """Same rows (but the timings), same summary, byte-identical masks, same records and pictures."""
    assert without_timing(read_rows(ray_out / table)) == without_timing(read_rows(local / table))
    if (local / "summary.json").is_file():
        assert summary_without_timing(ray_out) == summary_without_timing(local)
    assert sorted(p.name for p in (ray_out / pictures).glob("*.png")) == sorted(p.name for p in (local / pictures).glob("*.png"))
    assert_same_files(local, ray_out, "masks")
    for record in (local / "records").glob("*.json"):
        ours, theirs = (json.loads(p.read_text()) for p in (ray_out / "records" / record.name, record))
        for name in TIMING:
            ours["row"].pop(name, None), theirs["row"].pop(name, None)
        assert ours == theirs, record.name
    assert json.loads((ray_out / "pipeline.json").read_text()) == json.loads((local / "pipeline.json").read_text())
    assert not (ray_out / ".ray-items.csv").exists()


def make_volume(seed: int, shape=(6, 32, 40)) -> tuple[Volume, np.ndarray]:
    """A CT-like volume (HU, anisotropic spacing) with an ellipsoid target."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    mask = ((zz - 3) / 2.2) ** 2 + ((yy - 16) / (7 + seed)) ** 2 + ((xx - 20) / 9) ** 2 <= 1
    hu = np.where(mask, 50, -600) + rng.normal(0, 10, shape)
    return Volume(hu.astype(np.int16), spacing=(3.0, 0.8, 0.7), origin=(1.0, 2.0, 3.0 + seed)), mask


def make_volumes(root: Path, n: int, *, masks: bool = True) -> Path:
    for i, suffix in zip(range(n), [".nii.gz", ".nrrd", ".mha"] * n):
        volume, mask = make_volume(i)
        write_volume(root / "images" / f"case{i}{suffix}", volume)
        if masks:
            write_volume(root / "masks" / f"case{i}{suffix}", volume, mask)
    return root


# -- engine options (no Ray needed) ---------------------------------------------------------


def test_plan_splits_the_cores_between_workers_and_threads():
    # Default: workers of 2 threads (one per physical core of a 2-way SMT CPU), fewer threads on 1 CPU.
    assert RayEngine().plan(4, 0) == (2, 2, 0.0)
    assert RayEngine().plan(5, 0) == (2, 2, 0.0)
    assert RayEngine().plan(1, 0) == (1, 1, 0.0)
    assert RayEngine(workers=2).plan(4, 0) == (2, 2, 0.0)
    assert RayEngine(workers=3).plan(8, 0) == (3, 2, 0.0)
    assert RayEngine(threads_per_worker=1).plan(4, 0) == (4, 1, 0.0)
    assert RayEngine(threads_per_worker=3).plan(7, 0) == (2, 3, 0.0)
    # GPUs: one worker per GPU, the CPUs shared out between them.
    assert RayEngine().plan(8, 1) == (1, 8, 1.0)
    assert RayEngine().plan(8, 2) == (2, 4, 1.0)
    assert RayEngine(gpus_per_worker=0.5).plan(8, 1) == (2, 4, 0.5)
    assert RayEngine(threads_per_worker=2).plan(2, 4) == (1, 2, 1.0)  # as many as the CPUs allow
    assert RayEngine(workers=1).plan(2, 2) == (1, 2, 1.0)
    assert RayEngine(workers=2, gpus_per_worker=0).plan(2, 2) == (2, 1, 0.0)


def test_plan_refuses_oversubscription():
    with pytest.raises(ValueError, match=r"workers: 2 workers x 2 threads per worker = 4 CPUs, but Ray sees 2"):
        RayEngine(workers=2, threads_per_worker=2).plan(2, 0)
    with pytest.raises(ValueError, match="gpus_per_worker"):
        RayEngine(workers=2, gpus_per_worker=1).plan(4, 1)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"workers": 0}, "workers"),
        ({"threads_per_worker": 1.5}, "threads_per_worker"),
        ({"batch_size": 0}, "batch_size"),
        ({"gpus_per_worker": -1}, "gpus_per_worker"),
        ({"address": " "}, "address"),
        ({"workers": True}, "workers"),
    ],
)
def test_bad_engine_options_name_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        RayEngine(**kwargs)


def test_unknown_engine_is_refused(tmp_path):
    with pytest.raises(ValueError, match="engine: expected 'local', 'ray' or a RayEngine, got 'spark'"):
        evaluate(fake_pipeline(), make_data(tmp_path / "data", 2), out_dir=tmp_path / "out", engine="spark")


def test_a_local_ray_starts_without_dashboard_or_usage_statistics(monkeypatch):
    """What ``ray.init`` is asked for when medsamkit starts Ray itself (captured, not started)."""
    import ray

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "1")
    with ray_session(None):
        assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0"
    (kwargs, last) = calls
    assert last == "shutdown"
    assert kwargs["include_dashboard"] is False and kwargs["address"] is None
    assert kwargs["runtime_env"]["env_vars"]["RAY_USAGE_STATS_ENABLED"] == "0"

    calls.clear()
    with ray_session("ray://head:10001"):
        pass
    assert calls[0]["address"] == "ray://head:10001" and "include_dashboard" not in calls[0]


def test_csv_samples_read_a_cxlseg_like_table(tmp_path):
    folder = tmp_path / "files" / "p10" / "p10000032" / "s50414267"
    image, mask = make_blob_image(SIZE, seed=1)
    write_image(folder / "00123.png", image)
    write_mask(folder / "00123-mask.png", mask)
    table = tmp_path / "list.csv"
    table.write_text('dicom_id,path,report\n00123,files/p10/p10000032/s50414267/00123.png,"two\nlines"\n')
    samples = CsvSamples(table, image_column="path", mask_suffix="-mask", stem_column="dicom_id")
    assert len(samples) == 1
    (sample,) = list(samples)
    assert sample == Sample("00123", folder / "00123.png", folder / "00123-mask.png")
    np.testing.assert_array_equal(sample.load()[1], mask)
    with pytest.raises(ValueError, match="image_column: .* has no column 'image'"):
        CsvSamples(table, mask_suffix="-mask")
    with pytest.raises(ValueError, match="^mask_column: expected"):
        CsvSamples(table, image_column="path")
    table.write_text("path\na/x.png\nb/x.png\n")
    with pytest.raises(ValueError, match="stem 'x' appears twice .* line 3"):
        len(CsvSamples(table, image_column="path", mask_suffix="-mask"))


def test_a_pipeline_the_workers_cannot_rebuild_is_refused(tmp_path):
    class Mine:
        requires_target = True

        def __call__(self, image, target=None):
            return OracleBoxPrompter()(image, target=target)

    with pytest.raises(ValueError, match=r"engine: the Ray engine rebuilds the pipeline .* cannot be saved \(prompter: python:"):
        evaluate(Pipeline(Mine(), FakeSegmenter()), make_data(tmp_path / "data", 2), out_dir=tmp_path / "o", engine="ray")
    in_memory = {"prompter": {"name": "oracle-box", "params": {}}, "segmenter": {"name": "litemedsam", "params": {"module": "m"}}}
    with pytest.raises(ValueError, match="component litemedsam cannot be rebuilt"):
        check_rebuildable(in_memory)


def test_volume_runs_refuse_what_the_ray_engine_cannot_do(tmp_path):
    class Mine:
        requires_target = True

        def __call__(self, image, target=None):
            return OracleBoxPrompter()(image, target=target)

    root = make_volumes(tmp_path / "vols", 1)
    with pytest.raises(ValueError, match="engine: expected 'local', 'ray' or a RayEngine, got 'spark'"):
        evaluate_volumes(fake_pipeline(), root, out_dir=tmp_path / "a", engine="spark")
    with pytest.raises(ValueError, match=r"engine: the Ray engine rebuilds the pipeline .* cannot be saved \(prompter: python:"):
        evaluate_volumes(Pipeline(Mine(), FakeSegmenter()), root, out_dir=tmp_path / "b", engine="ray", progress=False)


def test_limit_threads_holds_torch_opencv_and_openvino_to_the_count(monkeypatch):
    """In this process (the workers call the same function, see the actor test below):
    an OpenVINO encoder compiled afterwards gets ``INFERENCE_NUM_THREADS`` = the count."""
    import cv2
    import torch

    from medsamkit._rayjob import THREAD_ENV, limit_threads, thread_limits
    from medsamkit.segmenters import _fast

    saved = (torch.get_num_threads(), cv2.getNumThreads(), {name: os.environ.get(name) for name in THREAD_ENV})
    asked: list[int] = []

    def build(encoder, precision, example, num_threads, adapter=None):
        asked.append(num_threads)
        return encoder

    monkeypatch.setattr(_fast, "_build_openvino", build)
    monkeypatch.setattr(_fast, "openvino_available", lambda: True)
    try:
        for threads in (1, 2):
            limit_threads(threads)
            assert thread_limits() == {"torch": threads, "opencv": threads, **dict.fromkeys(THREAD_ENV, str(threads))}
            encoder = _fast.accelerate_encoder(torch.nn.Conv2d(3, 4, 3), precision="fp32", backend="openvino", image_size=16)
            assert encoder.backend == "openvino"
        assert asked == [1, 2]
    finally:
        torch.set_num_threads(saved[0])
        cv2.setNumThreads(saved[1])
        for name, value in saved[2].items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# -- with Ray ------------------------------------------------------------------------------


def test_ray_engine_resumes_and_writes_what_the_local_engine_writes_even_when_a_worker_is_killed(ray_cluster, tmp_path, caplog):
    """One Ray run shows it all: a CSV listing (CXLSeg layout) with ``limit``; it resumes
    a run that finished 4 images and failed on a bad file; two workers write one
    embedding cache at once (images come in identical pairs); one worker is killed
    mid-run. Then the local engine on the same data and cache writes the same files."""
    table = make_listing(tmp_path / "cxlseg")
    samples = CsvSamples(table, image_column="path", mask_suffix="-mask", stem_column="dicom_id")
    cache = EmbeddingCache(tmp_path / "cache")
    pipe = Pipeline(OracleBoxPrompter(), CachedSegmenter(FakeSegmenter(), cache))
    out = tmp_path / "ray"
    earlier = evaluate(pipe, [*samples[:4], samples[N_IMAGES]], out_dir=out, progress=False, n_overlays=0)  # a previous run
    assert set(earlier.errors) == {"00098"} and not (out / "records" / "00098.json").exists()
    finished = {p.name: p.stat().st_mtime_ns for p in (out / "records").glob("*.json")}
    assert len(finished) == 4
    caplog.clear()

    with a_worker_killed_mid_run(out) as killed:
        engine = RayEngine(workers=2, batch_size=2)
        report = evaluate(pipe, samples, out_dir=out, limit=N_IMAGES + 1, progress=False, n_overlays=4, engine=engine)
    assert len(killed["records"]) < N_IMAGES, sorted(killed["records"])  # the run was not over
    # Finished before this run, or before the kill: kept, not redone.
    assert {n: (out / "records" / n).stat().st_mtime_ns for n in killed["records"]} == killed["records"]
    assert {n: (out / "records" / n).stat().st_mtime_ns for n in finished} == finished
    assert report.n_evaluated == N_IMAGES + 1 - 4
    assert "medsamkit: error: 00098:" in caplog.text  # retried, and named by the driver as locally
    assert not (out / "records" / "00098.json").exists()  # retried on the next resume

    entries = cache.entries()
    assert len(entries) == N_IMAGES // 2
    for entry in entries:  # every entry complete and readable
        assert cache.get(entry.stem) is not None
    used = {p: p.stat().st_mtime_ns for p in entries}
    time.sleep(0.01)

    local = evaluate(pipe, samples, out_dir=tmp_path / "local", limit=N_IMAGES + 1, progress=False, n_overlays=4)
    assert sorted(cache.entries()) == sorted(entries)
    assert all(p.stat().st_mtime_ns > used[p] for p in entries)  # all read back (a hit refreshes the entry)
    assert_same_outputs(tmp_path / "local", out)
    assert (out / "boxplot.png").is_file()
    assert report.errors == local.errors and set(report.errors) == {"00098"}
    assert without_timing(report.rows) == without_timing(local.rows)
    assert [r["dice"] for r in report.rows] == [r["dice"] for r in local.rows]  # identical, not close
    assert report.mean("dice") == local.mean("dice")
    stems = [r["stem"] for r in read_rows(out / "metrics.csv")]
    assert stems == [f"{i:05d}" for i in range(N_IMAGES)] + ["00098"]  # input order; 00099 beyond the limit


def test_a_worker_holds_its_libraries_to_its_threads(ray_cluster, tmp_path):
    """An actor with 2 threads on 1 CPU (Ray alone would set OMP_NUM_THREADS=1 there):
    OpenCV, OpenMP/BLAS and torch, imported after the pipeline was built, use 2."""
    from medsamkit._rayjob import THREAD_ENV, _Worker
    from medsamkit.evaluation._evaluate import evaluate_samples

    fake_pipeline().save(tmp_path)
    actor = ray_cluster.remote(num_cpus=1)(_Worker).remote(
        work=evaluate_samples,
        finished=None,
        out_dir=str(tmp_path),
        threads=2,
        device=None,
        cache=None,
        sample_type=Sample,
        cwd=str(tmp_path),
    )
    limits = ray_cluster.get(actor.thread_limits.remote())
    assert limits == {"torch": None, "opencv": 2, **dict.fromkeys(THREAD_ENV, "2")}  # the fake pipeline needs no torch
    torch_threads = ray_cluster.get(actor.__ray_call__.remote(lambda worker: __import__("torch").get_num_threads()))
    assert torch_threads == 2
    ray_cluster.kill(actor)


def test_cli_segment_with_engine_ray(ray_cluster, tmp_path, capsys, monkeypatch):
    """``medsamkit segment`` of a folder given by a relative path (the workers run in the
    driver's directory) with a bad image and an embedding cache; Ray-only options."""
    from medsamkit.cli import main

    make_data(tmp_path / "data", 5)
    add_bad_file(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    common = ["--segmenter", "fake", "--no-progress", "--cache-dir", "cache", "--overlays", "2"]
    ray_args = ["--engine", "ray", "--workers", "2", "--batch-size", "2"]
    segment = ["segment", "data/images", "--reference-masks", "data/masks", *common]
    assert main([*segment, "--out", "seg-ray", *ray_args]) == 1  # the bad image fails, the others are done
    assert len(list((tmp_path / "cache").glob("*/*.npz"))) == 5  # written by the workers
    assert main([*segment, "--out", "seg-local"]) == 1
    assert_same_outputs(tmp_path / "seg-local", tmp_path / "seg-ray", table="results.csv")
    assert "case_bad" in capsys.readouterr().err

    # Ray-only options without --engine ray are a usage error (exit 2), naming the option.
    evaluate_args = ["evaluate", "data", *common]
    assert main([*evaluate_args, "--out", "x", "--workers", "2"]) == 2
    assert "--workers: only used with --engine ray" in capsys.readouterr().err
    assert main([*evaluate_args, "--out", "y", "--engine", "ray", "--workers", "3", "--threads-per-worker", "1"]) == 2
    assert "workers: 3 workers x 1 threads per worker = 3 CPUs, but Ray sees 2" in capsys.readouterr().err


def test_cli_evaluate_a_volume_folder_on_ray_resumes_and_writes_what_the_local_engine_writes(ray_cluster, tmp_path, capsys):
    """``medsamkit evaluate VOLDIR --engine ray`` resuming a run that finished one volume
    and failed on a bad one: per-volume rows (Dice, NSD, HD95 in mm), masks in each
    input's format with its geometry, pictures, the bad volume an error row again; the
    prompt (propagate), window and label travel to the workers as data."""
    from medsamkit.cli import main

    root = make_volumes(tmp_path / "vols", 3)
    volume, mask = make_volume(7)
    values = volume.array.astype(np.float32)
    values[2, 5, 5] = np.nan
    write_volume(root / "images" / "bad.nii.gz", volume, values)
    write_volume(root / "masks" / "bad.nii.gz", volume, mask.astype(np.uint8) * 3)
    for i in range(3):  # label 3 is the target, label 1 a decoy
        path = next((root / "masks").glob(f"case{i}.*"))
        image, target = make_volume(i)
        decoy = np.zeros_like(target)
        decoy[:, :4, :4] = True
        write_volume(path, image, np.where(target, 3, np.where(decoy, 1, 0)).astype(np.uint8))
    args = ["evaluate", str(root), "--segmenter", "fake", "--window=-200,800", "--prompt", "propagate", "--label", "3"]
    args += ["--no-progress"]
    ray_out = tmp_path / "ray"
    assert main([*args, "--out", str(tmp_path / "local")]) == 1  # the bad volume fails, the others are done
    assert main([*args, "--out", str(ray_out), "--limit", "2"]) == 1  # a previous run: bad (failed) and case0
    finished = {p.name: p.stat().st_mtime_ns for p in (ray_out / "records").glob("*.json")}
    assert list(finished) == ["case0.json"]
    capsys.readouterr()

    assert main([*args, "--out", str(ray_out), "--engine", "ray", "--workers", "2", "--batch-size", "1"]) == 1
    assert "medsamkit: error: bad:" in capsys.readouterr().err  # retried, named as locally
    assert {n: (ray_out / "records" / n).stat().st_mtime_ns for n in finished} == finished  # not redone
    assert_same_outputs(tmp_path / "local", ray_out, pictures="pictures")
    assert assert_same_files(tmp_path / "local", ray_out, "masks") == ["case0.nii.gz", "case1.nrrd", "case2.mha"]
    rows = {r["stem"]: r for r in read_rows(ray_out / "metrics.csv")}
    assert list(rows) == ["bad", "case0", "case1", "case2"]
    assert rows["bad"]["error"] and not rows["case0"]["error"] and float(rows["case0"]["dice"]) > 0.5
    assert all(rows[s]["hd95"] and rows[s]["nsd"] for s in ("case0", "case1", "case2"))
    assert json.loads((ray_out / "run.json").read_text())["prompt"] == "propagate"


def test_segment_volumes_on_ray_with_a_box_per_volume_and_a_cache(ray_cluster, tmp_path):
    """``segment_volumes`` without masks: each volume's 3D box travels to the workers as
    data; the workers fill the embedding cache the local run then reads."""
    root = make_volumes(tmp_path / "vols", 2, masks=False)
    boxes = {"case0": [10, 8, 1, 30, 24, 5], "case1": [9, 6, 0, 31, 26, 4]}
    pipe = Pipeline(OracleBoxPrompter(), FakeSegmenter())
    cache = EmbeddingCache(tmp_path / "cache")
    report = segment_volumes(
        pipe, root, out_dir=tmp_path / "ray", prompt="box3d", box3d=boxes, cache=cache, progress=False, engine="ray"
    )
    assert len(cache.entries()) == 5 + 5  # z 1..5 and 0..4: one encoding per slice in the boxes
    local = segment_volumes(pipe, root, out_dir=tmp_path / "local", prompt="box3d", box3d=boxes, cache=cache, progress=False)
    assert len(cache.entries()) == 10
    assert_same_outputs(tmp_path / "local", tmp_path / "ray", pictures="pictures")
    assert [r["encoded_slices"] for r in report.rows] == [r["encoded_slices"] for r in local.rows] == [5, 5]
    assert report.n_processed == 2 and not report.errors


@pytest.mark.real_model
def test_real_litemedsam_on_ray_matches_local_even_when_a_worker_is_killed(ray_cluster, tmp_path, one_torch_thread):
    from medsamkit import LiteMedSAM

    folder = make_data(tmp_path / "data", 6, size_hw=(160, 192))
    pipe = Pipeline(OracleBoxPrompter(), LiteMedSAM())
    local = evaluate(pipe, folder, out_dir=tmp_path / "local", progress=False)

    out = tmp_path / "ray"
    with a_worker_killed_mid_run(out) as killed:
        report = evaluate(pipe, folder, out_dir=out, progress=False, engine=RayEngine(workers=2, batch_size=1))
    # What was finished before the kill was kept, not redone.
    assert {n: (out / "records" / n).stat().st_mtime_ns for n in killed["records"]} == killed["records"]
    assert not report.errors and len(report.rows) == 6
    assert [r["dice"] for r in report.rows] == [r["dice"] for r in local.rows]  # identical, not close
    assert_same_outputs(tmp_path / "local", out)

    # The rerun has nothing left to do.
    assert evaluate(pipe, folder, out_dir=out, progress=False, engine="ray").n_evaluated == 0
    for row in report.rows:
        np.testing.assert_array_equal(
            read_mask(out / "masks" / f"{row['stem']}.png"), read_mask(tmp_path / "local" / "masks" / f"{row['stem']}.png")
        )

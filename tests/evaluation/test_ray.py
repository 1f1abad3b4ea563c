"""The Ray Data engine: the same files as the local engine, resume, bad files, a killed worker.

One local Ray (2 CPUs, no dashboard, no usage statistics) serves the whole module:
starting Ray takes seconds. Its teardown checks that no Ray process is left behind.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from medsamkit import CsvSamples, MaskFolder, OracleBoxPrompter, Pipeline, RayEngine, evaluate, segment_images
from medsamkit.data import Sample, read_mask, write_image, write_mask
from medsamkit.evaluation._ray import TELEMETRY_OFF, check_rebuildable, ray_session
from medsamkit.testing import FakeSegmenter, make_blob_image

SIZE = (96, 128)
N_IMAGES = 10
WORKER_TITLE = "MapWorker(MapBatches(_Worker))"


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

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": dict(TELEMETRY_OFF)},
    )
    yield ray
    started = _descendants(os.getpid())
    ray.shutdown()
    deadline = time.monotonic() + 30
    while _alive(started) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = {pid: _cmdline(pid) for pid in _alive(started)}
    assert not left, f"processes left behind by Ray: {left}"


# -- data ----------------------------------------------------------------------------------


def make_data(root: Path, n: int = N_IMAGES, *, size_hw=SIZE) -> MaskFolder:
    for i in range(n):
        image, mask = make_blob_image(size_hw, seed=i, n_blobs=1 + i % 2)
        write_image(root / "images" / f"case_{i:02d}.png", image)
        write_mask(root / "masks" / f"case_{i:02d}.png", mask)
    return MaskFolder(root)


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
    return [{k: v for k, v in dict(r).items() if k != "seconds"} for r in rows]


def summary_without_timing(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    summary["metrics"].pop("seconds")
    return summary


def assert_same_outputs(local: Path, ray_out: Path, *, table: str = "metrics.csv") -> None:
    """Same rows (but the timings), same summary, byte-identical masks, same records and pictures."""
    assert without_timing(read_rows(ray_out / table)) == without_timing(read_rows(local / table))
    if table == "metrics.csv":
        assert summary_without_timing(ray_out) == summary_without_timing(local)
        assert sorted(p.name for p in (ray_out / "overlays").glob("*.png")) == sorted(
            p.name for p in (local / "overlays").glob("*.png")
        )
        assert (ray_out / "boxplot.png").is_file()
    masks = sorted(p.name for p in (local / "masks").glob("*.png"))
    assert masks and sorted(p.name for p in (ray_out / "masks").glob("*.png")) == masks
    for name in masks:
        assert (ray_out / "masks" / name).read_bytes() == (local / "masks" / name).read_bytes(), name
    for record in (local / "records").glob("*.json"):
        ours, theirs = (json.loads(p.read_text()) for p in (ray_out / "records" / record.name, record))
        ours["row"].pop("seconds"), theirs["row"].pop("seconds")
        assert ours == theirs, record.name
    assert json.loads((ray_out / "pipeline.json").read_text()) == json.loads((local / "pipeline.json").read_text())
    assert not (ray_out / ".ray-items.csv").exists()


# -- engine options (no Ray needed) ---------------------------------------------------------


def test_plan_splits_the_cores_between_workers_and_threads():
    assert RayEngine().plan(4, 0) == (4, 1, 0.0)
    assert RayEngine(workers=2).plan(4, 0) == (2, 2, 0.0)
    assert RayEngine(threads_per_worker=2).plan(5, 0) == (2, 2, 0.0)
    assert RayEngine(workers=1).plan(2, 2) == (1, 2, 1.0)  # Ray sees GPUs: one per worker
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


# -- with Ray ------------------------------------------------------------------------------


def test_ray_engine_writes_what_the_local_engine_writes(ray_cluster, tmp_path, caplog):
    folder = make_data(tmp_path / "data")
    add_bad_file(tmp_path / "data")
    folder = MaskFolder(tmp_path / "data")
    local = evaluate(fake_pipeline(), folder, out_dir=tmp_path / "local", progress=False, n_overlays=4)
    caplog.clear()
    report = evaluate(
        fake_pipeline(),
        folder,
        out_dir=tmp_path / "ray",
        progress=False,
        n_overlays=4,
        engine=RayEngine(workers=2, batch_size=3),
    )
    assert "medsamkit: error: case_bad:" in caplog.text  # named by the driver, as the local engine does
    assert_same_outputs(tmp_path / "local", tmp_path / "ray")
    assert report.errors == local.errors and set(report.errors) == {"case_bad"}
    assert report.n_evaluated == local.n_evaluated == N_IMAGES + 1
    assert without_timing(report.rows) == without_timing(local.rows)
    assert report.mean("dice") == local.mean("dice")
    assert not (tmp_path / "ray" / "records" / "case_bad.json").exists()  # retried on resume

    # Resume: finished images are skipped before any worker sees them (their records stay
    # untouched); the bad file, now fixed, is done.
    image, mask = make_blob_image(SIZE, seed=42)
    write_image(tmp_path / "data" / "images" / "case_bad.png", image)
    write_mask(tmp_path / "data" / "masks" / "case_bad.png", mask)
    records = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ray" / "records").glob("*.json")}
    again = evaluate(fake_pipeline(), MaskFolder(tmp_path / "data"), out_dir=tmp_path / "ray", progress=False, engine="ray")
    assert again.n_evaluated == 1 and not again.errors
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ray" / "records").glob("*.json") if p.name in records} == records
    rows = read_rows(tmp_path / "ray" / "metrics.csv")
    assert [r["stem"] for r in rows] == sorted(r["stem"] for r in rows) and all(not r["error"] for r in rows)


def test_csv_listing_and_limit_on_ray(ray_cluster, tmp_path):
    """A CSV of relative paths in nested folders (CXLSeg layout), with numeric-looking stems."""
    root = tmp_path / "cxlseg"
    lines = ["dicom_id,subject_id,path"]
    for i in range(7):
        image, mask = make_blob_image(SIZE, seed=10 + i)
        rel = f"files/p1{i % 2}/p1000{i}/s5000{i}/{i:05d}.png"
        write_image(root / rel, image)
        write_mask(root / rel.replace(".png", "-mask.png"), mask)
        lines.append(f"{i:05d},{1000 + i},{rel}")
    (root / "table.csv").write_text("\n".join(lines) + "\n")
    samples = CsvSamples(root / "table.csv", image_column="path", mask_suffix="-mask", stem_column="dicom_id")
    evaluate(fake_pipeline(), samples, out_dir=tmp_path / "local", progress=False)
    report = evaluate(fake_pipeline(), samples, out_dir=tmp_path / "ray", progress=False, engine=RayEngine(workers=2))
    assert [r["stem"] for r in report.rows][:2] == ["00000", "00001"]
    assert_same_outputs(tmp_path / "local", tmp_path / "ray")

    limited = evaluate(fake_pipeline(), samples, out_dir=tmp_path / "ray-limit", limit=3, progress=False, engine="ray")
    assert [r["stem"] for r in limited.rows] == ["00000", "00001", "00002"]


def test_segment_on_ray_matches_local(ray_cluster, tmp_path):
    folder = make_data(tmp_path / "data", 6)
    add_bad_file(tmp_path / "data")
    samples = list(MaskFolder(tmp_path / "data"))
    local = segment_images(fake_pipeline(), samples, out_dir=tmp_path / "local", n_overlays=3, progress=False)
    report = segment_images(
        fake_pipeline(),
        samples,
        out_dir=tmp_path / "ray",
        n_overlays=3,
        progress=False,
        engine=RayEngine(workers=2, batch_size=2),
    )
    assert report.errors.keys() == local.errors.keys() == {"case_bad"}
    assert without_timing(report.rows) == without_timing(local.rows)
    assert_same_outputs(tmp_path / "local", tmp_path / "ray", table="results.csv")
    assert sorted(p.name for p in (tmp_path / "ray" / "overlays").glob("*.png")) == sorted(
        p.name for p in (tmp_path / "local" / "overlays").glob("*.png")
    )
    assert len(folder) == 6


def test_workers_share_an_embedding_cache(ray_cluster, tmp_path):
    """Two workers write one cache folder at once (the same entries too: images come in
    identical pairs, one of each pair per worker); a second run reads it back."""
    from medsamkit import CachedSegmenter, EmbeddingCache

    for i in range(8):
        image, mask = make_blob_image(SIZE, seed=i // 2)
        write_image(tmp_path / "data" / "images" / f"case_{i:02d}.png", image)
        write_mask(tmp_path / "data" / "masks" / f"case_{i:02d}.png", mask)
    folder = MaskFolder(tmp_path / "data")
    cache = EmbeddingCache(tmp_path / "cache")
    pipe = Pipeline(OracleBoxPrompter(), CachedSegmenter(FakeSegmenter(), cache))
    first = evaluate(pipe, folder, out_dir=tmp_path / "a", progress=False, engine=RayEngine(workers=2, batch_size=1))
    entries = cache.entries()
    assert len(entries) == 4
    assert [r["dice"] for r in first.rows][::2] == [r["dice"] for r in first.rows][1::2]
    for entry in entries:  # every entry complete and readable
        assert cache.get(entry.stem) is not None
    used = {p: p.stat().st_mtime_ns for p in entries}
    time.sleep(0.01)
    second = evaluate(pipe, folder, out_dir=tmp_path / "b", progress=False, engine=RayEngine(workers=2, batch_size=1))
    assert without_timing(second.rows) == without_timing(first.rows)
    assert sorted(cache.entries()) == sorted(entries)
    assert all(p.stat().st_mtime_ns > used[p] for p in entries)  # every entry was read (a hit refreshes it)


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


def _kill_one_worker_when(records: Path, at_least: int, killed: dict, stop: threading.Event) -> None:
    """Kill (SIGKILL) one model actor's process once ``at_least`` records exist."""
    while not stop.is_set():
        if len(list(records.glob("*.json"))) >= at_least:
            for pid in sorted(_alive(_descendants(os.getpid()))):
                if WORKER_TITLE in _cmdline(pid):
                    killed["records"] = {p.name: p.stat().st_mtime_ns for p in records.glob("*.json")}
                    os.kill(pid, signal.SIGKILL)
                    killed["pid"] = pid
                    return
        time.sleep(0.05)


@pytest.mark.real_model
def test_real_litemedsam_on_ray_matches_local_even_when_a_worker_is_killed(ray_cluster, tmp_path, one_torch_thread):
    from medsamkit import LiteMedSAM

    folder = make_data(tmp_path / "data", 6, size_hw=(160, 192))
    pipe = Pipeline(OracleBoxPrompter(), LiteMedSAM())
    local = evaluate(pipe, folder, out_dir=tmp_path / "local", progress=False)

    out = tmp_path / "ray"
    killed: dict = {}
    stop = threading.Event()
    killer = threading.Thread(target=_kill_one_worker_when, args=(out / "records", 2, killed, stop), daemon=True)
    killer.start()
    try:
        report = evaluate(pipe, folder, out_dir=out, progress=False, engine=RayEngine(workers=2, batch_size=1))
    finally:
        stop.set()
        killer.join()
    assert "pid" in killed, "no worker was killed: the test did not test anything"
    assert not _alive({killed["pid"]})
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


# -- command line ----------------------------------------------------------------------------


def test_cli_evaluate_and_segment_with_engine_ray(ray_cluster, tmp_path, capsys, monkeypatch):
    from medsamkit.cli import main

    make_data(tmp_path / "data", 5)
    monkeypatch.chdir(tmp_path)  # relative paths: the workers run in another directory
    common = ["--segmenter", "fake", "--no-progress", "--cache-dir", "cache"]
    assert main(["evaluate", "data", "--out", "local", *common]) == 0
    ray_args = ["--engine", "ray", "--workers", "2", "--batch-size", "2"]
    assert main(["evaluate", "data", "--out", "ray", *common, *ray_args]) == 0
    assert_same_outputs(tmp_path / "local", tmp_path / "ray")
    assert len(list((tmp_path / "cache").glob("*/*.npz"))) == 5

    # A CSV listing as DATA_DIR (paths relative to the CSV's folder).
    table = tmp_path / "data" / "list.csv"
    table.write_text("image,mask\n" + "".join(f"images/case_{i:02d}.png,masks/case_{i:02d}.png\n" for i in range(5)))
    args = ["evaluate", str(table), "--mask-column", "mask", "--out", str(tmp_path / "csv"), *common, *ray_args]
    assert main(args) == 0
    assert without_timing(read_rows(tmp_path / "csv" / "metrics.csv")) == without_timing(
        read_rows(tmp_path / "ray" / "metrics.csv")
    )

    images = str(tmp_path / "data" / "images")
    refs = ["--reference-masks", str(tmp_path / "data" / "masks")]
    assert main(["segment", images, "--out", str(tmp_path / "seg-local"), *refs, *common]) == 0
    assert main(["segment", images, "--out", str(tmp_path / "seg-ray"), *refs, *common, *ray_args]) == 0
    assert_same_outputs(tmp_path / "seg-local", tmp_path / "seg-ray", table="results.csv")
    capsys.readouterr()

    # Ray-only options without --engine ray are a usage error (exit 2), naming the option.
    assert main(["evaluate", str(tmp_path / "data"), "--out", str(tmp_path / "x"), *common, "--workers", "2"]) == 2
    assert "--workers: only used with --engine ray" in capsys.readouterr().err
    assert (
        main(
            [
                "evaluate",
                str(tmp_path / "data"),
                "--out",
                str(tmp_path / "y"),
                *common,
                "--engine",
                "ray",
                "--workers",
                "3",
                "--threads-per-worker",
                "1",
            ]
        )
        == 2
    )
    assert "workers: 3 workers x 1 threads per worker = 3 CPUs, but Ray sees 2" in capsys.readouterr().err

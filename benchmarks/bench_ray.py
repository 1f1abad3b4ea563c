"""The Ray Data engine: images/s against the local engine, and a 100,000-row CSV on a flat driver.

Two measurements (run from the repository root, nothing else heavy on the machine):

``speed``: the same images with LiteMedSAM (oracle boxes, default ``precision="fast"``,
no embedding cache) through the local engine (all cores, then 1 thread), through two
plain local processes of 1 thread each running concurrently on one half of the images
each (the control without Ray: what the machine gives two independent single-thread
processes), and through Ray with 1 and 2 workers. Ray is started once before its runs
(its start-up is printed separately); each Ray run includes starting its actors and
loading the model in each, each control process its start-up and model load.
``s/image`` is the mean of the ``seconds`` column (one image's segmentation time)::

    .venv/bin/python benchmarks/bench_ray.py speed --data ../shared/data/us-busi --n 60 --out runs/ray-speed

``scale``: a CSV of ``--rows`` rows (a few tiny images, paths repeated, one unique stem
per row) evaluated with the fake segmenter on Ray; prints the driver's resident memory
(RSS) every ``--every`` rows, its peak, and the time per 1,000 rows::

    .venv/bin/python benchmarks/bench_ray.py scale --rows 100000 --out runs/ray-scale
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import medsamkit as msk


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _local_run(data: Path, start: int, stop: int, out: Path, threads: int) -> dict:
    """The local engine on images ``start:stop`` of ``data`` with ``threads`` torch threads."""
    import torch

    torch.set_num_threads(threads)
    folder = msk.MaskFolder(data)[start:stop]
    shutil.rmtree(out, ignore_errors=True)
    pipe = msk.Pipeline(msk.OracleBoxPrompter(), msk.LiteMedSAM())
    began = time.perf_counter()
    report = msk.evaluate(pipe, folder, out_dir=out, progress=False, n_overlays=0)
    assert not report.errors, report.errors
    return {
        "seconds": time.perf_counter() - began,
        "n": len(folder),
        "dice": report.mean("dice"),
        "per_image": report.summary["metrics"]["seconds"]["mean"],
    }


def half(args: argparse.Namespace) -> None:
    """One control process: print its :func:`_local_run` as JSON."""
    print(json.dumps(_local_run(args.data, args.start, args.stop, args.out, args.threads)))


def _control(args: argparse.Namespace, n: int) -> tuple[float, float, float, list[float]]:
    """Two processes of 1 thread, each on one half of the images, at the same time (no Ray).

    Returns wall seconds (launch to both done), mean Dice, mean s/image, and each
    process's mean s/image."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    halves = [(0, n // 2), (n // 2, n)]
    began = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "half", "--data", str(args.data), "--start", str(a), "--stop", str(b)]
            + ["--out", str(args.out / f"control-{i}"), "--threads", "1"],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i, (a, b) in enumerate(halves)
    ]
    outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    seconds = time.perf_counter() - began
    assert all(p.returncode == 0 for p in procs)
    total = sum(o["n"] for o in outs)
    dice = sum(o["dice"] * o["n"] for o in outs) / total
    per_image = sum(o["per_image"] * o["n"] for o in outs) / total
    return seconds, dice, per_image, [o["per_image"] for o in outs]


def speed(args: argparse.Namespace) -> None:
    import torch

    from medsamkit._rayjob import TELEMETRY_OFF

    folder = msk.MaskFolder(args.data)[: args.n]
    cores = os.cpu_count() or 1
    print(f"{len(folder)} images from {args.data}; {cores} cores; torch {torch.__version__}; load {os.getloadavg()}")
    results = []

    def show(label: str, threads: str, seconds: float, dice: float, per_image: float) -> None:
        results.append((label, threads, seconds, len(folder) / seconds, per_image, dice))
        print(
            f"  {label:<30} threads {threads:<9} {seconds:7.1f} s  {len(folder) / seconds:5.2f} img/s  "
            f"{per_image:.3f} s/image  Dice {dice:.4f}"
        )

    def run(label: str, engine, threads: str) -> None:
        out = args.out / label.replace(" ", "-")
        shutil.rmtree(out, ignore_errors=True)
        pipe = msk.Pipeline(msk.OracleBoxPrompter(), msk.LiteMedSAM())
        start = time.perf_counter()
        report = msk.evaluate(pipe, folder, out_dir=out, engine=engine, progress=False, n_overlays=0)
        seconds = time.perf_counter() - start
        assert not report.errors, report.errors
        show(label, threads, seconds, report.mean("dice"), report.summary["metrics"]["seconds"]["mean"])

    torch.set_num_threads(cores)
    run("local", "local", f"{cores}")
    torch.set_num_threads(1)
    run("local 1 thread", "local", "1")
    torch.set_num_threads(cores)
    seconds, dice, per_image, each = _control(args, len(folder))
    show("2 local processes, no Ray", "2 x 1", seconds, dice, per_image)
    print(f"    (s/image of each process: {', '.join(f'{v:.3f}' for v in each)})")

    os.environ.update(TELEMETRY_OFF)
    import ray

    start = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": dict(TELEMETRY_OFF)})
    print(f"  (Ray start-up: {time.perf_counter() - start:.1f} s, not counted below)")
    try:
        run("ray 1 worker", msk.RayEngine(workers=1, threads_per_worker=cores), f"1 x {cores}")
        run("ray 2 workers", msk.RayEngine(workers=2, threads_per_worker=cores // 2), f"2 x {cores // 2}")
    finally:
        ray.shutdown()
    print(f"\nload average after: {os.getloadavg()}")
    print("\n| engine | threads | seconds | images/s | s/image | Dice |\n|---|---|---|---|---|---|")
    for label, threads, seconds, rate, per_image, dice in results:
        print(f"| {label} | {threads} | {seconds:.1f} | {rate:.2f} | {per_image:.3f} | {dice:.4f} |")


def scale(args: argparse.Namespace) -> None:
    from medsamkit.data import write_image, write_mask
    from medsamkit.testing import FakeSegmenter, make_blob_image

    data = args.out / "data"
    n_files = 20
    for i in range(n_files):
        image, mask = make_blob_image((64, 80), seed=i)
        write_image(data / "images" / f"img_{i:02d}.png", image)
        write_mask(data / "masks" / f"img_{i:02d}.png", mask)
    table = data / f"rows_{args.rows}.csv"
    with open(table, "w") as handle:
        handle.write("id,image,mask\n")
        for r in range(args.rows):
            i = r % n_files
            handle.write(f"r{r:07d},images/img_{i:02d}.png,masks/img_{i:02d}.png\n")
    samples = msk.CsvSamples(table, image_column="image", mask_column="mask", stem_column="id")
    out = args.out / f"run_{args.rows}"
    shutil.rmtree(out, ignore_errors=True)
    pipe = msk.Pipeline(msk.OracleBoxPrompter(), FakeSegmenter())

    samples_rss: list[tuple[int, float, float]] = []
    stop = threading.Event()
    start = time.perf_counter()
    rss_at_start = _rss_mib()

    def watch() -> None:  # records done (files in records/) vs driver RSS, every second
        while not stop.wait(1.0):
            done = sum(1 for _ in os.scandir(out / "records")) if (out / "records").is_dir() else 0
            samples_rss.append((done, time.perf_counter() - start, _rss_mib()))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    engine = msk.RayEngine(workers=args.workers, batch_size=args.batch_size)
    report = msk.evaluate(pipe, samples, out_dir=out, engine=engine, progress=True, n_overlays=args.overlays)
    seconds = time.perf_counter() - start
    stop.set()
    watcher.join()
    print(
        f"\nrows: {args.rows}; workers {args.workers}; batch {args.batch_size}; errors {report.n_errors}; Dice {report.mean('dice'):.4f}"
    )
    print(f"wall time {seconds:.0f} s = {1000 * seconds / args.rows:.2f} s per 1,000 rows (including Ray start-up)")
    print(f"driver RSS at start {rss_at_start:.0f} MiB; peak {_peak_rss_mib():.0f} MiB (ru_maxrss)")
    step = max(1, args.rows // 10)
    mark = step
    print("records done | seconds | driver RSS MiB")
    for done, t, rss in samples_rss:
        if done >= mark:
            print(f"{done:>12} | {t:7.0f} | {rss:6.0f}")
            mark = (done // step + 1) * step
    running = [(d, t, r) for d, t, r in samples_rss if args.rows // 10 <= d < args.rows]
    if len(running) > 1:
        (d0, t0, _), (d1, t1, _) = running[0], running[-1]
        print(f"steady rate: {1000 * (t1 - t0) / (d1 - d0):.2f} s per 1,000 rows (records {d0}..{d1})")
        print(f"driver RSS between those points: {min(r for _, _, r in running):.0f}..{max(r for _, _, r in running):.0f} MiB")
    print(f"driver RSS after evaluate returned (box plot, overlays drawn): {_rss_mib():.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("speed")
    sp.add_argument("--data", type=Path, default=Path("../shared/data/us-busi"))
    sp.add_argument("--n", type=int, default=60)
    sp.add_argument("--out", type=Path, default=Path("runs/ray-speed"))
    hf = sub.add_parser("half", help="(internal) one process of the speed control")
    hf.add_argument("--data", type=Path, required=True)
    hf.add_argument("--start", type=int, required=True)
    hf.add_argument("--stop", type=int, required=True)
    hf.add_argument("--out", type=Path, required=True)
    hf.add_argument("--threads", type=int, default=1)
    sc = sub.add_parser("scale")
    sc.add_argument("--rows", type=int, default=100_000)
    sc.add_argument("--workers", type=int, default=2)
    sc.add_argument("--batch-size", type=int, default=64)
    sc.add_argument("--overlays", type=int, default=6)
    sc.add_argument("--out", type=Path, default=Path("runs/ray-scale"))
    args = parser.parse_args()
    {"speed": speed, "half": half, "scale": scale}[args.command](args)


if __name__ == "__main__":
    main()

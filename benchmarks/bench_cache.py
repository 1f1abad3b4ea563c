"""Warm-cache speed-up of repeated ``evaluate`` runs over one folder (embedding + decode cache).

Run: .venv/bin/python benchmarks/bench_cache.py [--data ../shared/data] [--set cxr-shenzhen] [--limit N]

For each LiteMedSAM precision (the fast default and ``float32``) the same folder is
evaluated four times through one ``CachedSegmenter`` on an empty cache folder, each
run into its own output folder, with everything ``evaluate`` writes by default
(metrics.csv, records, masks, box plot, overlays):

1. first run: oracle boxes; every image is encoded and decoded and both are cached;
2. the same pipeline again (a repeated study): no encoder, no decoder;
3. another threshold (0.6): same prompts, so no encoder and no decoder;
4. another prompter (oracle boxes grown by 10 px): no encoder, the decoder runs.

The model is built and used once before the first run, so one-time costs (weights,
OpenVINO compilation) are not counted. Prints wall time, images/s, the speed-up of
each run over the first, the cache counters, and checks that runs 1 and 2 produced
identical metrics. Not a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
from pathlib import Path


def _rows(out_dir: Path) -> list[dict[str, str]]:
    with (out_dir / "metrics.csv").open() as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def main() -> None:
    import torch

    import medsamkit as msk

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    parser.add_argument("--set", default="cxr-shenzhen", help="data set folder under --data (default: cxr-shenzhen)")
    parser.add_argument("--limit", type=int, help="first N images only (default: the whole folder)")
    parser.add_argument("--precisions", nargs="+", default=["fast", "float32"], choices=["fast", "float32"])
    args = parser.parse_args()

    folder = msk.MaskFolder(args.data / args.set)
    if args.limit:
        folder = folder.limit(args.limit)
    load = os.getloadavg()
    print(
        f"{args.set}: {len(folder)} images; torch threads {torch.get_num_threads()}, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    for precision in args.precisions:
        seg = msk.LiteMedSAM(precision=precision)
        image, mask = folder[0].load()
        msk.Pipeline(msk.OracleBoxPrompter(), seg)(image, target=mask)  # build + first use, not timed
        with tempfile.TemporaryDirectory() as tmp:
            cached = msk.CachedSegmenter(seg, Path(tmp) / "cache")
            oracle = msk.Pipeline(msk.OracleBoxPrompter(), cached)
            runs = [
                ("1 first run (oracle boxes)", oracle),
                ("2 same pipeline again", oracle),
                ("3 threshold 0.6", oracle.replace(threshold=0.6)),
                ("4 boxes + 10 px (decoder runs)", oracle.replace(prompter=msk.PerturbedBoxPrompter(margin=10))),
            ]
            walls = []
            print(f"\nprecision={precision!r} (model_id {seg.model_id})")
            print(f"  {'run':<32} {'seconds':>8} {'images/s':>9} {'speed-up':>9}   encodes hit/miss  decodes hit/miss")
            for k, (label, pipeline) in enumerate(runs):
                before = (cached.cache.hits, cached.cache.misses, cached.decode_hits, cached.decode_misses)
                start = time.perf_counter()
                report = msk.evaluate(pipeline, folder, out_dir=Path(tmp) / f"run{k}", progress=False)
                walls.append(time.perf_counter() - start)
                if report.n_errors:
                    raise SystemExit(f"{report.n_errors} images failed: {report.errors}")
                after = (cached.cache.hits, cached.cache.misses, cached.decode_hits, cached.decode_misses)
                d = [a - b for a, b in zip(after, before)]
                print(
                    f"  {label:<32} {walls[-1]:8.1f} {len(folder) / walls[-1]:9.2f} {walls[0] / walls[-1]:8.1f}x"
                    f"   {d[0]:7d} / {d[1]:<7d}  {d[2]:6d} / {d[3]:<6d}"
                )
            same = _rows(Path(tmp) / "run0") == _rows(Path(tmp) / "run1")
            print(f"  runs 1 and 2 give identical metrics: {same}")
    load = os.getloadavg()
    print(f"\nload average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()

"""``medsamkit demo``: the main job on sample data with the bundled LiteMedSAM.

The demo's pipeline is fixed (oracle boxes, LiteMedSAM with its bundled weights and
defaults, no embedding cache), so it takes no segmenter options.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ._errors import UsageError
from ._options import add_progress_option
from ._output import exit_status

__all__ = ["DEMO_SETS", "add_parser", "find_shared_data", "run"]

DEMO_SETS = ("cxr-shenzhen", "ct-chaos-liver", "us-busi", "cxr-montgomery")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    demo = sub.add_parser("demo", help="run the main job on sample data with the bundled LiteMedSAM")
    demo.add_argument(
        "--data",
        type=Path,
        help=f"a shared data folder holding {', '.join(DEMO_SETS)} "
        "(default: $MEDSAMKIT_DATA or the nearest shared/data above the working directory)",
    )
    demo.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (default: out/demo)")
    demo.add_argument("--limit", type=int, default=6, help="images per data set (default: 6)")
    add_progress_option(demo)
    return demo


def find_shared_data(start: Path | None = None) -> Path | None:
    """``$MEDSAMKIT_DATA``, else the nearest ``shared/data`` in the working directory or above."""
    env = os.environ.get("MEDSAMKIT_DATA")
    if env:
        return Path(env)
    start = (start or Path.cwd()).resolve()
    for directory in (start, *start.parents):
        candidate = directory / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return None


def run(args: argparse.Namespace) -> int:
    from .. import OracleBoxPrompter, Pipeline
    from ..data import MaskFolder
    from ..evaluation import evaluate
    from ..segmenters import LiteMedSAM

    data = args.data or find_shared_data()
    if data is None or not data.is_dir():
        raise UsageError(
            f"demo: no sample data found; pass --data DIR (a folder holding {', '.join(DEMO_SETS)}) or set MEDSAMKIT_DATA"
        )
    sets = [name for name in DEMO_SETS if (data / name / "images").is_dir()]
    if not sets:
        raise UsageError(f"--data: expected sub-folders {', '.join(DEMO_SETS)} in {data}, found none")
    print(f"medsamkit demo: LiteMedSAM (bundled weights) + oracle boxes, {args.limit} images per set from {data}")
    pipeline = Pipeline(OracleBoxPrompter(), LiteMedSAM())
    failed: list[str] = []
    results = []
    for name in sets:
        # BUSI's first files in sorted order are all benign; the normal (empty) ones are not in a 6-image demo.
        report = evaluate(
            pipeline, MaskFolder(data / name), out_dir=args.out / name, limit=args.limit, progress=not args.no_progress
        )
        failed += [f"{name}/{stem}" for stem in report.errors]
        results.append((name, report))
    print(f"\n{'data set':<16} {'images':>6} {'Dice mean':>10} {'median':>8} {'IoU mean':>9}")
    for name, report in results:
        d, i = report.summary["metrics"]["dice"], report.summary["metrics"]["iou"]
        if d["n"]:
            print(f"{name:<16} {d['n']:>6} {d['mean']:>10.4f} {d['median']:>8.4f} {i['mean']:>9.4f}")
        else:  # every image of the set failed: no statistics (None), still a table row
            print(f"{name:<16} {0:>6} {'-':>10} {'-':>8} {'-':>9}")
    print(f"\ntables, masks, overlays and box plots: {args.out.resolve()}")
    return exit_status(failed, "image")

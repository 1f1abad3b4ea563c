"""``medsamkit evaluate``: segment a folder of images with reference masks and score the masks."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ._build import pipeline_from_args
from ._checks import add_missing_masks_option, check_data_and_out, check_missing_masks
from ._options import add_data_options, add_pipeline_options

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    ev = sub.add_parser("evaluate", help="segment a folder of images with reference masks and score the masks")
    ev.add_argument("data_dir", type=Path, metavar="DATA_DIR", help="folder with images/ and masks/ sharing file stems")
    ev.add_argument("--out", type=Path, required=True, metavar="OUT_DIR", help="output folder (resumes if it holds a run)")
    ev.add_argument(
        "--spacing",
        type=float,
        nargs=2,
        default=(1.0, 1.0),
        metavar=("ROW", "COL"),
        help="pixel size for HD95 (default: 1 1, pixels)",
    )
    ev.add_argument("--overwrite", action="store_true", help="discard previous results in OUT_DIR")
    add_missing_masks_option(ev)
    add_data_options(ev)
    add_pipeline_options(ev)
    return ev


def run(args: argparse.Namespace) -> int:
    from ..data import MaskFolder
    from ..evaluation import EVALUATE_OWNED, evaluate

    folder = MaskFolder(args.data_dir, images=args.images, masks=args.masks, mask_suffix=args.mask_suffix)
    check_missing_masks(folder, args)  # before the model loads
    check_data_and_out(folder, args.out, owned=EVALUATE_OWNED)
    pipeline = pipeline_from_args(args)
    report = evaluate(
        pipeline,
        folder,
        out_dir=args.out,
        limit=args.limit,
        spacing=tuple(args.spacing),
        n_overlays=args.overlays,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        allow_missing_masks=args.allow_missing_masks,
    )
    print(report)
    print(f"results: {report.out_dir}")
    if report.n_errors:
        print(f"medsamkit: {report.n_errors} image(s) failed: {', '.join(report.errors)}", file=sys.stderr)
        return 1
    return 0

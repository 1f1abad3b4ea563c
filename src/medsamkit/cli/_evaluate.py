"""``medsamkit evaluate``: segment a folder of images with reference masks and score the masks."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ._build import pipeline_from_args
from ._engine import add_engine_options, engine_from_args
from ._errors import UsageError
from ._options import add_data_options, add_pipeline_options

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    ev = sub.add_parser("evaluate", help="segment a folder of images with reference masks and score the masks")
    ev.add_argument(
        "data_dir",
        type=Path,
        metavar="DATA_DIR",
        help="folder with images/ and masks/ sharing file stems, or a CSV (.csv, .csv.gz) listing image paths",
    )
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
    table = ev.add_argument_group("CSV listing", "when DATA_DIR is a CSV file (CXLSeg: --image-column path --mask-suffix -mask --stem-column dicom_id)")
    table.add_argument("--image-column", default="image", help="column with the image paths (default: image)")
    table.add_argument("--mask-column", help="column with the mask paths (default: image path + --mask-suffix)")
    table.add_argument("--stem-column", help="column with a unique id per image (default: the image file stem)")
    table.add_argument("--csv-root", type=Path, metavar="DIR", help="folder relative paths start from (default: the CSV's folder)")
    add_data_options(ev)
    add_pipeline_options(ev)
    add_engine_options(ev)
    return ev


def _data(args: argparse.Namespace) -> Any:
    from ..data import CsvSamples, MaskFolder

    name = args.data_dir.name.lower()
    if args.data_dir.is_file() and (name.endswith(".csv") or name.endswith(".csv.gz")):
        if args.mask_column is None and not args.mask_suffix:
            raise UsageError("--mask-column: a CSV DATA_DIR needs --mask-column or --mask-suffix to find the masks")
        return CsvSamples(
            args.data_dir,
            image_column=args.image_column,
            mask_column=args.mask_column,
            mask_suffix=None if args.mask_column is not None else args.mask_suffix,
            stem_column=args.stem_column,
            root=args.csv_root,
        )
    return MaskFolder(args.data_dir, images=args.images, masks=args.masks, mask_suffix=args.mask_suffix)


def run(args: argparse.Namespace) -> int:
    from ..evaluation import evaluate

    engine = engine_from_args(args)
    folder = _data(args)
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
        engine=engine,
    )
    print(report)
    print(f"results: {report.out_dir}")
    if report.n_errors:
        print(f"medsamkit: {report.n_errors} image(s) failed: {', '.join(report.errors)}", file=sys.stderr)
        return 1
    return 0

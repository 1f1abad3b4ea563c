"""``medsamkit box-margins``: Dice of oracle boxes grown by several margins (paper 000, Figure 1)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._build import build_segmenter
from ._checks import add_missing_masks_option
from ._options import add_progress_option, add_segmenter_options

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    bm = sub.add_parser("box-margins", help="Dice of oracle boxes grown by several margins (paper 000, Figure 1)")
    bm.add_argument("data_dir", type=Path, metavar="DATA_DIR", help="folder with images/ and masks/")
    bm.add_argument("--out", type=Path, required=True, metavar="OUT_DIR", help="study folder (resumable)")
    bm.add_argument(
        "--margins", type=float, nargs="+", default=[0, 5, 10, 20, 30], help="pixels per side (default: 0 5 10 20 30)"
    )
    add_segmenter_options(bm)
    bm.add_argument("--limit", type=int, help="only the first N images in sorted order")
    add_progress_option(bm)
    add_missing_masks_option(bm)
    return bm


def run(args: argparse.Namespace) -> int:
    from ..data import MaskFolder
    from ..evaluation import box_margin_study
    from ._checks import check_data_and_out, check_missing_masks

    folder = MaskFolder(args.data_dir)
    check_missing_masks(folder, args)
    check_data_and_out(folder, args.out)
    report = box_margin_study(
        build_segmenter(args),
        folder,
        out_dir=args.out,
        margins=args.margins,
        limit=args.limit,
        progress=not args.no_progress,
        allow_missing_masks=args.allow_missing_masks,
    )
    print(report)
    print(f"results: {report.out_dir}")
    return 1 if any(r["errors"] for r in report.table) else 0

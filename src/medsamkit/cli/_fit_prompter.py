"""``medsamkit fit-prompter``: fit a learned prompt provider on a training folder and save it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._build import build_segmenter
from ._options import FITTABLE_PROMPTERS, add_progress_option, add_segmenter_options

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    fp = sub.add_parser("fit-prompter", help="fit a learned prompt provider on a training folder and save it")
    fp.add_argument(
        "data_dir", type=Path, metavar="TRAIN_DIR", help="training folder with images/ and masks/ (training images only)"
    )
    fp.add_argument("--prompter", choices=FITTABLE_PROMPTERS, required=True, help="provider to fit")
    fp.add_argument("--out", type=Path, required=True, metavar="FILE", help="where to save it (use with --prompter-state FILE)")
    fp.add_argument("--epochs", type=int, help="training epochs (embedding-head: 40, yolo-box: 100, cam-box: its default)")
    fp.add_argument("--imgsz", type=int, default=640, help="yolo-box: training and prediction image size (default: 640)")
    fp.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    add_segmenter_options(fp, segmenter_help="embedding-head: whose embedding to read (default: litemedsam)")
    fp.add_argument("--limit", type=int, help="only the first N images in sorted order")
    add_progress_option(fp)
    return fp


def run(args: argparse.Namespace) -> int:
    import time

    from ..data import MaskFolder

    folder = MaskFolder(args.data_dir)
    if args.limit is not None:
        folder = folder.limit(args.limit)
    progress = not args.no_progress
    start = time.perf_counter()
    if args.prompter == "mean-mask-points":
        from ..prompters import MeanMaskPointPrompter

        prompter = MeanMaskPointPrompter().fit(folder, progress=progress)
    elif args.prompter == "embedding-head":
        from ..prompters import EmbeddingHeadPrompter

        prompter = EmbeddingHeadPrompter().fit(
            build_segmenter(args), folder, epochs=args.epochs or 40, seed=args.seed, progress=progress
        )
    elif args.prompter == "cam-box":
        from ..prompters import CAMBoxPrompter

        kwargs = {"epochs": args.epochs} if args.epochs else {}
        prompter = CAMBoxPrompter().fit(folder, seed=args.seed, progress=progress, **kwargs)
    else:
        from ..prompters import YOLOBoxPrompter

        prompter = YOLOBoxPrompter(imgsz=args.imgsz).fit(
            folder, epochs=args.epochs or 100, imgsz=args.imgsz, seed=args.seed, progress=progress
        )
    prompter.save(args.out)
    print(f"fitted {args.prompter} on {len(folder)} images in {time.perf_counter() - start:.0f} s; saved {args.out}")
    print(f"use it with: medsamkit evaluate DATA --prompter {args.prompter} --prompter-state {args.out}")
    return 0

"""``medsamkit fit-prompter``: fit a learned prompt provider on a training folder and save it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._build import build_segmenter
from ._errors import UsageError
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
    fp.add_argument(
        "--val-data",
        type=Path,
        metavar="VAL_DIR",
        help="embedding-head: validation folder (with and without the target) to calibrate the presence threshold on",
    )
    fp.add_argument("--flip", action="store_true", help="embedding-head: also train on mirrored images (encodes twice)")
    add_segmenter_options(fp, segmenter_help="embedding-head: whose embedding to read (default: litemedsam)")
    fp.add_argument("--limit", type=int, help="only the first N images in sorted order")
    add_progress_option(fp)
    return fp


def _log_stages() -> None:
    """Without progress bars, say what stage a long fit is in (the ``medsamkit`` logger, INFO, on stderr)."""
    import logging

    logger = logging.getLogger("medsamkit")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("medsamkit: %(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def run(args: argparse.Namespace) -> int:
    import time

    from ..data import MaskFolder

    folder = MaskFolder(args.data_dir)
    if args.limit is not None:
        folder = folder.limit(args.limit)
    progress = not args.no_progress
    if (args.val_data is not None or args.flip) and args.prompter != "embedding-head":
        raise UsageError(f"--val-data and --flip apply to --prompter embedding-head, not {args.prompter}")
    if not progress:
        _log_stages()
    start = time.perf_counter()
    if args.prompter == "mean-mask-points":
        from ..prompters import MeanMaskPointPrompter

        prompter = MeanMaskPointPrompter().fit(folder, progress=progress)
    elif args.prompter == "embedding-head":
        from ..prompters import EmbeddingHeadPrompter

        val = MaskFolder(args.val_data) if args.val_data is not None else None
        prompter = EmbeddingHeadPrompter().fit(
            build_segmenter(args), folder, val=val, epochs=args.epochs or 40, seed=args.seed, flip=args.flip, progress=progress
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
    calibration = getattr(prompter, "presence_calibration", None)
    if calibration and "sensitivity" in calibration:
        print(
            f"presence threshold {calibration['threshold']:.3f} (validation: sensitivity {calibration['sensitivity']:.3f}, "
            f"specificity {calibration['specificity']:.3f})"
        )
    print(f"fitted {args.prompter} on {len(folder)} images in {time.perf_counter() - start:.0f} s; saved {args.out}")
    print(f"use it with: medsamkit evaluate DATA --prompter {args.prompter} --prompter-state {args.out}")
    return 0

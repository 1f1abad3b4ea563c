"""``medsamkit fit-prompter``: fit a learned prompt provider on a training folder and save it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._build import build_segmenter, limited_folder
from ._errors import UsageError
from ._options import add_progress_option, add_segmenter_options, fittable_prompter_choices

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    fp = sub.add_parser("fit-prompter", help="fit a learned prompt provider on a training folder and save it")
    fp.add_argument(
        "data_dir", type=Path, metavar="TRAIN_DIR", help="training folder with images/ and masks/ (training images only)"
    )
    fp.add_argument("--prompter", choices=fittable_prompter_choices(), required=True, help="provider to fit")
    fp.add_argument("--out", type=Path, required=True, metavar="FILE", help="where to save it (use with --prompter-state FILE)")
    fp.add_argument(
        "--epochs",
        type=int,
        help="training epochs (default: the provider's: embedding-head 40, decoder-localiser 8, yolo-box 100, cam-box 40)",
    )
    fp.add_argument("--imgsz", type=int, default=640, help="yolo-box: training and prediction image size (default: 640)")
    fp.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    fp.add_argument(
        "--val-data",
        type=Path,
        metavar="VAL_DIR",
        help="validation folder (embedding-head, decoder-localiser: with and without the target, to calibrate the presence "
        "threshold on; decoder-localiser: also the best epoch)",
    )
    fp.add_argument(
        "--flip", action="store_true", help="embedding-head, decoder-localiser: also train on mirrored images (encodes twice)"
    )
    fp.add_argument(
        "--augment",
        type=int,
        default=0,
        metavar="K",
        help="embedding-head: also train on K augmented copies of each image (scale, shift, rotation, gamma, contrast; "
        "each encoded once)",
    )
    add_segmenter_options(fp, segmenter_help="embedding-head: whose embedding to read (default: litemedsam)")
    fp.add_argument("--limit", type=int, help="only the first N images in sorted order")
    add_progress_option(fp)
    return fp


def _named_parameters(function: Any) -> set[str]:
    """The parameters ``function`` takes by name (not the ones a ``**kwargs`` would swallow)."""
    import inspect

    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name for p in inspect.signature(function).parameters.values() if p.kind in kinds}


def run(args: argparse.Namespace) -> int:
    """Fit the registered learned provider ``--prompter`` through its ``FittablePrompter`` signature."""
    import time

    from .._outdir import check_out_file, input_folders
    from .._registry import fittable_prompters

    cls: Any = fittable_prompters()[args.prompter].cls
    init, fit = _named_parameters(cls.__init__), _named_parameters(cls.fit)
    if args.epochs is not None and "epochs" not in fit:
        raise UsageError(f"--epochs: {args.prompter} has no training epochs")
    folder = limited_folder(args.data_dir, args.limit)
    check_out_file(args.out, inputs=input_folders(folder), name="--out")  # never among the images or masks
    settings: dict[str, Any] = {"progress": not args.no_progress}
    if "seed" in fit:
        settings["seed"] = args.seed
    if args.epochs is not None:
        settings["epochs"] = args.epochs
    if args.flip:
        if "flip" not in fit:
            raise UsageError(f"--flip: {args.prompter} has no mirrored-image training")
        settings["flip"] = True
    if args.augment:
        if "augment" not in fit:
            raise UsageError(f"--augment: {args.prompter} has no augmented-copy training")
        if args.augment < 0:
            raise UsageError(f"--augment: expected K >= 0, got {args.augment}")
        settings["augment"] = args.augment
    if args.val_data is not None:
        settings["val"] = limited_folder(args.val_data, None)
    if getattr(cls, "uses_encoding", False):  # it learns on the segmenter's embedding
        settings["segmenter"] = build_segmenter(args)
    start = time.perf_counter()
    prompter = cls(**({"imgsz": args.imgsz} if "imgsz" in init else {})).fit(folder, **settings)
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

"""``medsamkit sammix``: SAM-Mix (paper 001) or, with ``--two-stage``, the SAM-PP baseline."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._build import build_segmenter, in_same_cache, limited_folder
from ._errors import UsageError
from ._options import add_training_options, training_overrides
from ._output import exit_status, print_dice_row

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    sm = sub.add_parser(
        "sammix",
        help="SAM-Mix (paper 001): a presence classifier and the segmenter it prompts with CAM boxes, "
        "trained together (--two-stage: SAM-PP)",
    )
    sm.add_argument(
        "data_dir", type=Path, nargs="?", metavar="DATA_DIR", help="folder with images/ and masks/, some masks empty (or --data)"
    )
    sm.add_argument("--data", type=Path, metavar="DATA_DIR", help="the same as the positional DATA_DIR")
    sm.add_argument("--out", type=Path, required=True, metavar="RUN_DIR", help="run folder (resumes if it holds this run)")
    sm.add_argument(
        "--two-stage",
        action="store_true",
        help="SAM-PP baseline: fit the classifier first, then fine-tune the segmenter separately on jittered oracle boxes",
    )
    sm.add_argument(
        "--labelled",
        type=int,
        metavar="N",
        help="masks of only N random training images with the target train the segmenter (paper: 5, 50, 100; default: all)",
    )
    sm.add_argument("--test-fraction", type=float, default=0.2, help="held-out test share, evaluated at the end (default: 0.2)")
    sm.add_argument(
        "--warmup-epochs", type=int, default=1, help="sam-mix: first epochs in which only the classifier trains (default: 1)"
    )
    sm.add_argument(
        "--box-fallback",
        choices=("skip", "oracle"),
        default="skip",
        help="sam-mix: a labelled image with the target but no CAM box is skipped (default) or gets its oracle box",
    )
    sm.add_argument(
        "--backbone",
        choices=("cnn", "embedding"),
        default="cnn",
        help="what the presence classifier reads: the image, a CNN trained from scratch (default), or the segmenter's "
        "own frozen image embedding (decoder mode only)",
    )
    add_training_options(
        sm,
        prompter=False,
        mode="lora",
        epochs=10,
        loss="dice",
        batch_size=16,
        lr_help="Adam learning rate of both branches (default: 1e-3, the paper's)",
    )
    return sm


def run(args: argparse.Namespace) -> int:
    import json

    from .. import Pipeline, training
    from ..data import atomic_write_text, train_val_test_split
    from ..evaluation import evaluate

    if (args.data_dir is None) == (args.data is None):
        raise UsageError("give the data folder once: as DATA_DIR or with --data")
    data_dir = args.data_dir or args.data
    overrides = training_overrides(args)
    if args.lr is None:
        overrides.pop("lr")  # SAMMixConfig's default: the paper's 1e-3 for both branches
    if not args.two_stage:
        overrides.update(warmup_epochs=args.warmup_epochs, box_fallback=args.box_fallback)
    if args.backbone != "cnn":  # a "cnn" run passes nothing new: its record stays that of earlier versions
        overrides["backbone"] = args.backbone
    folder = limited_folder(data_dir, args.limit)
    present = {s.stem: bool(s.load_mask().any()) for s in folder}
    split = train_val_test_split(
        folder, val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed, stratify=present
    )
    train = folder.subset(split.train)
    labelled = None if args.labelled is None else training.pick_labelled(train, args.labelled, seed=args.seed)
    from .._outdir import claim_out_dir, input_folders

    claim_out_dir(args.out, inputs=input_folders(folder), name="--out")  # never in the data folders
    atomic_write_text(args.out / "split.json", json.dumps(split.to_dict(), indent=2) + "\n")
    n_labelled = len(split.train) if labelled is None else len(labelled)
    print(
        f"split (seed {args.seed}, stratified by presence): {len(split.train)} train ({n_labelled} with masks used), "
        f"{len(split.val)} val, {len(split.test)} test"
    )
    segmenter = build_segmenter(args)
    fit = training.fit_sam_pp if args.two_stage else training.fit_sammix
    result = fit(
        segmenter,
        train,
        folder.subset(split.val) if split.val else None,
        out_dir=args.out,
        labelled=labelled,
        progress=not args.no_progress,
        seed=args.seed,
        **overrides,
    )
    method = "SAM-PP" if args.two_stage else "SAM-Mix"
    shown = "-" if result.best_val_dice is None else f"{result.best_val_dice:.4f}"
    print(f"{method}: best epoch {result.best_epoch} (val Dice {shown}), threshold {result.threshold}")
    failed: list[str] = []
    if split.test:
        tuned = in_same_cache(result.pipeline, segmenter)
        test = folder.subset(split.test)
        print(f"\n{'test images':<44} {'images':>6} {'Dice mean':>10} {'std':>7}")
        for name, label, pipe in (
            ("test-cam-original", "CAM prompts, original segmenter", Pipeline(result.prompter, segmenter)),
            ("test-trained", f"{method}, trained", tuned),
        ):
            report = evaluate(pipe, test, out_dir=args.out / name, progress=not args.no_progress)
            failed += [f"{name}/{stem}" for stem in report.errors]
            print_dice_row(label, report)
    print(f"run folder: {args.out.resolve()}  (evaluate again with: medsamkit evaluate DATA --pipeline {args.out})")
    return exit_status(failed, "image")

"""``medsamkit finetune``: fine-tune the segmenter on a folder, sweep the threshold, evaluate."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._build import build_segmenter, in_same_cache, limited_folder
from ._options import add_training_options, training_overrides
from ._output import exit_status, print_dice_row

if TYPE_CHECKING:  # pragma: no cover
    from .._protocols import PromptProvider

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    ft = sub.add_parser(
        "finetune", help="fine-tune the segmenter (mask decoder or LoRA) on a folder, sweep the threshold, evaluate"
    )
    ft.add_argument("data_dir", type=Path, metavar="DATA_DIR", help="folder with images/ and masks/")
    ft.add_argument("--out", type=Path, required=True, metavar="RUN_DIR", help="run folder (resumes if it holds this run)")
    ft.add_argument(
        "--test-fraction", type=float, default=0.2, help="held-out test share, evaluated zero-shot and fine-tuned (default: 0.2)"
    )
    add_training_options(ft)
    ft.add_argument(
        "--eval-data",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="also evaluate the fine-tuned pipeline on this whole folder (cross-dataset; repeatable)",
    )
    return ft


def run(args: argparse.Namespace) -> int:
    import json

    from .. import Pipeline
    from ..data import MaskFolder, atomic_write_text, train_val_test_split
    from ..evaluation import evaluate
    from ..prompters import MeanMaskPointPrompter, OracleBoxPrompter, PerturbedBoxPrompter
    from ..training import finetune

    overrides = training_overrides(args)
    folder = limited_folder(args.data_dir, args.limit)
    split = train_val_test_split(folder, val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed)
    from .._outdir import claim_out_dir, input_folders

    claim_out_dir(args.out, inputs=input_folders(folder), name="--out")  # never in the data folders
    atomic_write_text(args.out / "split.json", json.dumps(split.to_dict(), indent=2) + "\n")
    print(f"split (seed {args.seed}): {len(split.train)} train, {len(split.val)} val, {len(split.test)} test")
    segmenter = build_segmenter(args)
    progress = not args.no_progress
    prompter: PromptProvider
    eval_prompter: PromptProvider
    if args.prompter == "mean-mask-points":
        prompter = MeanMaskPointPrompter().fit(folder.subset(split.train), progress=progress)
        eval_prompter = prompter
    else:
        prompter = PerturbedBoxPrompter(jitter_fraction=0.1, seed=args.seed)
        eval_prompter = OracleBoxPrompter()
    zero_shot = Pipeline(eval_prompter, segmenter)
    result = finetune(
        segmenter,
        folder.subset(split.train),
        folder.subset(split.val) if split.val else None,
        out_dir=args.out,
        prompter=prompter,
        eval_prompter=eval_prompter,
        progress=progress,
        seed=args.seed,
        **overrides,
    )
    shown = "-" if result.best_val_dice is None else f"{result.best_val_dice:.4f}"
    print(f"best epoch {result.best_epoch} (val Dice {shown}), threshold {result.threshold}")
    tuned = in_same_cache(result.pipeline, segmenter)
    failed: list[str] = []
    lines = []
    if split.test:
        test = folder.subset(split.test)
        for name, pipe in (("test-zero-shot", zero_shot), ("test-finetuned", tuned)):
            report = evaluate(pipe, test, out_dir=args.out / name, progress=progress)
            failed += [f"{report.out_dir.name}/{stem}" for stem in report.errors]
            lines.append((f"{args.data_dir.name} test, {name.split('-', 1)[1]}", report))
    for other in args.eval_data:
        for name, pipe in (("zero-shot", zero_shot), ("finetuned", tuned)):
            report = evaluate(pipe, MaskFolder(other), out_dir=args.out / f"cross-{other.name}-{name}", progress=progress)
            failed += [f"{report.out_dir.name}/{stem}" for stem in report.errors]
            lines.append((f"{other.name} (cross-dataset), {name}", report))
    if lines:
        print(f"\n{'evaluation':<44} {'images':>6} {'Dice mean':>10} {'std':>7}")
        for label, report in lines:
            print_dice_row(label, report)
    print(f"run folder: {args.out.resolve()}  (evaluate again with: medsamkit evaluate DATA --pipeline {args.out})")
    return exit_status(failed, "image")

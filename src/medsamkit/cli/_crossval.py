"""``medsamkit crossval``: k-fold cross-validation of fine-tuning."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._build import build_segmenter, limited_folder
from ._options import add_training_options, training_overrides
from ._output import exit_status

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    cv = sub.add_parser(
        "crossval", help="k-fold cross-validation: fine-tune on each fold, evaluate its held-out images zero-shot and fine-tuned"
    )
    cv.add_argument("data_dir", type=Path, metavar="DATA_DIR", help="folder with images/ and masks/")
    cv.add_argument(
        "--out", type=Path, required=True, metavar="OUT_DIR", help="output folder (finished folds are skipped when run again)"
    )
    cv.add_argument("--k", type=int, default=5, help="number of folds (default: 5)")
    add_training_options(cv)
    return cv


def run(args: argparse.Namespace) -> int:
    from ..training import crossval

    overrides = training_overrides(args)
    folder = limited_folder(args.data_dir, args.limit)
    result = crossval(
        lambda: build_segmenter(args),
        folder,
        k=args.k,
        out_dir=args.out,
        prompter=args.prompter,
        seed=args.seed,
        val_fraction=args.val_fraction,
        progress=not args.no_progress,
        **overrides,
    )
    print(result)
    print(f"tables and box plot: {args.out.resolve()} (crossval.csv, crossval.json, crossval_boxplot.png)")
    counts = {f"fold_{f['fold']}/{s}": f["settings"][s]["n_errors"] for f in result.folds for s in f["settings"]}
    failed = [f"{n} in {where}" for where, n in counts.items() if n]
    return exit_status(failed, "held-out image", n=sum(counts.values()), see="fold_*/*/metrics.csv")

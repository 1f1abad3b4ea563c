"""Paper 002's prompt comparison: boxes vs mean-mask points vs both, zero-shot and fine-tuned.

Run from the repository root (about 20 minutes on 2 CPU cores, most of it fine-tuning):

    .venv/bin/python benchmarks/prompt_comparison.py --out runs/prompts [--epochs 8]

One seeded split of ``cxr-shenzhen`` (the split of ``medsamkit finetune``: 60 %
train, 20 % validation, 20 % test, seed 0). For each prompt type

* boxes: oracle boxes (training: jittered by up to 10 % of each side, fresh every epoch),
* points: mean-mask points fitted on the training masks only,
* both: each oracle box with the mean-mask points inside it,

LiteMedSAM's mask decoder is fine-tuned on the training images (decoder only,
DiceFocal, Adam 1e-4, best epoch and threshold on validation), and the zero-shot
and fine-tuned pipelines are evaluated on the held-out test images and, as the
cross-dataset test, on all of ``cxr-montgomery`` (``compare_prompters``: one table
per data set with mean / median / std of Dice, precision, recall, F1). Runs resume:
fine-tuning folders and study folders are reused.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import medsamkit as msk
from medsamkit.data import train_val_test_split
from medsamkit.prompters import BoxesWithPointsPrompter
from medsamkit.training import finetune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=Path("runs/prompts"))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    folder = msk.MaskFolder(args.data / "cxr-shenzhen")
    split = train_val_test_split(folder, val_fraction=0.2, test_fraction=0.2, seed=args.seed)
    train, val, test = (folder.subset(s) for s in (split.train, split.val, split.test))
    print(f"cxr-shenzhen: {len(train)} train, {len(val)} val, {len(test)} test (seed {args.seed})")
    seg = msk.CachedSegmenter(msk.LiteMedSAM())
    points = msk.MeanMaskPointPrompter().fit(train)
    oracle = msk.OracleBoxPrompter()
    jittered = msk.PerturbedBoxPrompter(jitter_fraction=0.1, seed=args.seed)
    types = {
        # name: (training prompts, evaluation prompts)
        "boxes": (jittered, oracle),
        "points": (points, points),
        "boxes + points": (BoxesWithPointsPrompter(jittered, points), BoxesWithPointsPrompter(oracle, points)),
    }
    entries: dict[str, object] = {}
    for name, (train_prompter, eval_prompter) in types.items():
        entries[f"{name}, zero-shot"] = eval_prompter
        run_dir = args.out / "finetune" / name.replace(" + ", "-and-")
        result = finetune(
            seg,
            train,
            val,
            out_dir=run_dir,
            prompter=train_prompter,
            eval_prompter=eval_prompter,
            epochs=args.epochs,
            seed=args.seed,
        )
        print(f"{name}: best epoch {result.best_epoch}, val Dice {result.best_val_dice:.4f}, threshold {result.threshold}")
        tuned = result.pipeline
        entries[f"{name}, fine-tuned"] = tuned.replace(segmenter=msk.CachedSegmenter(tuned.segmenter, seg.cache))
    for set_name, data in (
        ("cxr-shenzhen test", test),
        ("cxr-montgomery (cross-dataset)", msk.MaskFolder(args.data / "cxr-montgomery")),
    ):
        study = args.out / ("shenzhen-test" if "shenzhen" in set_name else "montgomery")
        report = msk.compare_prompters(seg, data, entries, out_dir=study, progress=False)
        print(f"\n{set_name}: {len(data)} images")
        print(report)


if __name__ == "__main__":
    main()

"""SAM-Mix vs SAM-PP (paper 001) with few labelled masks, on a seeded split of BUSI (or another folder).

Run from the repository root:

    nice -n 5 .venv/bin/python benchmarks/sammix.py [--labelled 5 50] [--mode decoder|lora] [--epochs 10] \
        [--backbone cnn|embedding] [--cache DIR]

Not a test. The data folder needs images with and without the target (BUSI's
"normal" images have empty masks; the chest X-ray and CT sets in ../shared/data
have the target in every image, so the presence classifier has no negatives).

Split (seed ``--seed``): ``train_val_test_split(val 0.1, test 0.2)`` stratified by
presence, then ``--train`` random training images, ``--val`` random validation
images and ``--test`` random test images (all: ``--test 0``). For each number of
labelled masks ``n`` (``pick_labelled``: ``n`` random training images with the
target) it trains SAM-Mix-n (``fit_sammix``) and SAM-PP-n (``fit_sam_pp``) with the
same settings, plus SAM-PP-0 (the classifier alone, original segmenter), and
evaluates each pipeline on the test images with ``medsamkit.evaluate``; oracle boxes
with the original segmenter are the upper reference. Run folders go to ``--out``;
everything resumes (trained runs and finished evaluations are read back).

Decoder mode (default) trains the mask decoder (fast on a CPU: images are encoded
once, in an embedding cache under ``--out``); ``--mode lora`` trains rank-8 LoRA
adapters on the image encoder as in the paper (the encoder runs forward and
backward for every labelled image of every epoch: slow on a CPU).

``--backbone embedding`` gives the presence classifier the segmenter's own frozen
image embedding instead of a CNN trained from scratch on the image
(``CAMBoxPrompter(backbone="embedding")``; decoder mode only). ``--cache DIR`` puts
the embedding cache there instead of under ``--out`` (e.g. a cache shared with other
benchmarks).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import medsamkit as msk
from medsamkit.training import fit_sam_pp, fit_sammix, pick_labelled


def _split(folder: msk.MaskFolder, *, n_train: int, n_val: int, n_test: int, seed: int):
    present = {s.stem: bool(s.load_mask().any()) for s in folder}
    split = msk.train_val_test_split(folder, val_fraction=0.1, test_fraction=0.2, seed=seed, stratify=present)

    def draw(stems, n, offset):
        if not n or n >= len(stems):
            return sorted(stems)
        return sorted(np.random.default_rng(seed + offset).choice(list(stems), n, replace=False))

    train, val, test = draw(split.train, n_train, 0), draw(split.val, n_val, 1), draw(split.test, n_test, 2)
    return folder.subset(train), folder.subset(val), folder.subset(test), present


def _scores(report, present: dict[str, bool]) -> tuple[float, float, float]:
    """Mean Dice over all test images, those with the target, those without (empty prediction on empty = 1)."""
    dice = {r["stem"]: float(r["dice"]) for r in report.rows if r.get("dice") not in (None, "")}
    with_target = [d for s, d in dice.items() if present[s]]
    without = [d for s, d in dice.items() if not present[s]]
    mean = lambda values: float(np.mean(values)) if values else float("nan")  # noqa: E731
    return mean(list(dice.values())), mean(with_target), mean(without)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data" / "us-busi")
    parser.add_argument("--out", type=Path, default=Path("runs/sammix"))
    parser.add_argument("--train", type=int, default=100, help="training images (presence labels for all)")
    parser.add_argument("--val", type=int, default=40, help="validation images")
    parser.add_argument("--test", type=int, default=0, help="test images (0: the whole test split)")
    parser.add_argument("--labelled", type=int, nargs="+", default=[5, 50], help="masks used for segmentation")
    parser.add_argument("--mode", choices=("decoder", "lora"), default="decoder")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is faster on a busy shared CPU)")
    parser.add_argument("--methods", nargs="+", choices=("sam-mix", "sam-pp"), default=["sam-mix", "sam-pp"])
    parser.add_argument("--backbone", choices=("cnn", "embedding"), default="cnn", help="what the presence classifier reads")
    parser.add_argument("--cache", type=Path, default=None, help="embedding cache folder (default: OUT/embedding-cache)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    folder = msk.MaskFolder(args.data)
    train, val, test, present = _split(folder, n_train=args.train, n_val=args.val, n_test=args.test, seed=args.seed)
    count = lambda samples: sum(present[s.stem] for s in samples)  # noqa: E731
    print(
        f"{args.data.name}: train {len(train)} ({count(train)} with the target), val {len(val)} ({count(val)}), "
        f"test {len(test)} ({count(test)}); mode {args.mode}, {args.epochs} epochs, seed {args.seed}, "
        f"classifier backbone {args.backbone}, "
        f"{torch.get_num_threads()} torch thread(s)"
    )
    # 12 GiB: a shared cache (e.g. the issue-13 benchmarks' one) must not be pruned to the 2 GiB default
    seg = msk.CachedSegmenter(
        msk.LiteMedSAM(), msk.EmbeddingCache(args.cache or args.out / "embedding-cache", max_bytes=12 * 1024**3)
    )
    settings = {"mode": args.mode, "epochs": args.epochs, "seed": args.seed, "backbone": args.backbone}

    rows = []

    def evaluate(name: str, pipeline, run_dir: Path, seconds: float | None, n_labelled) -> None:
        if isinstance(pipeline.segmenter, msk.LiteMedSAM):
            pipeline = pipeline.replace(segmenter=msk.CachedSegmenter(pipeline.segmenter, seg.cache))
        report = msk.evaluate(pipeline, test, out_dir=run_dir / "test", progress=False)
        rows.append((name, n_labelled, *_scores(report, present), seconds))
        print(f"  {name}: test Dice {rows[-1][2]:.4f}", flush=True)

    evaluate("oracle boxes, original", msk.Pipeline(msk.OracleBoxPrompter(), seg), args.out / "oracle", None, "-")
    start = time.perf_counter()
    pp0 = fit_sam_pp(seg, train, val, out_dir=args.out / "sam-pp-0", labelled=[], progress=False, **settings)
    evaluate("SAM-PP-0 (CAM, original)", pp0.pipeline, pp0.run_dir, time.perf_counter() - start, 0)
    for n in args.labelled:
        labelled = pick_labelled(train, n, seed=args.seed)
        for method in args.methods:
            fit = fit_sammix if method == "sam-mix" else fit_sam_pp
            start = time.perf_counter()
            result = fit(seg, train, val, out_dir=args.out / f"{method}-{n}", labelled=labelled, progress=False, **settings)
            seconds = time.perf_counter() - start
            label = f"{'SAM-Mix' if method == 'sam-mix' else 'SAM-PP'}-{n}"
            print(
                f"{label}: best epoch {result.best_epoch}, val Dice {result.best_val_dice}, threshold {result.threshold}, "
                f"{seconds:.0f} s",
                flush=True,
            )
            evaluate(label, result.pipeline, result.run_dir, seconds, n)

    print(f"\n{'pipeline':<28} {'masks':>5} {'Dice all':>9} {'target':>7} {'no target':>9} {'train s':>8}")
    for name, n_labelled, all_, target, empty, seconds in rows:
        shown = "-" if seconds is None else f"{seconds:.0f}"
        print(f"{name:<28} {n_labelled!s:>5} {all_:>9.4f} {target:>7.4f} {empty:>9.4f} {shown:>8}")
    print("(train s: wall time of this call; a resumed run only reads its results back)")


if __name__ == "__main__":
    main()

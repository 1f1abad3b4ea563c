"""Proposals + a learned ranker on BUSI (issue 13): pick the best of many candidate prompts, or none.

Stages (``--stage``), each reusing what the previous ones wrote under ``OUT``:

* ``heads``: the out-of-fold embedding heads (``out_of_fold_prompts``' folds of the
  550 training images of ``automatic_hard.busi_split``; each head fitted on the other
  folds) -> ``OUT/heads/fold-<digest>.pt``;
* ``table-val``: every candidate of the 80 validation images, proposed by the
  550-image head (``--head``), with its features and true Dice -> ``OUT/val_table.npz``;
* ``table-train``: the same for the 550 training images, each proposed by the
  out-of-fold head that never saw it -> ``OUT/train_table.npz``;
* ``select``: rankers trained on the training table, judged on the validation table
  (mean Dice, detected / missed / FP, failure-detection AUROC; nothing decoded);
* ``diagnose-test`` (after ``test``, to explain it, never to choose): the test images'
  candidate table, the pool's upper bound and other ``min_score`` values;
* ``test``: the chosen ranker (``RankedPrompter``: the 550-image head, the ranker,
  ``min_score`` calibrated on validation) saved to ``OUT/ranked.pt`` and evaluated once
  on the 150 test images (``compare_prompters(..., quality=True)``) -> ``OUT/test``.

Run from the repository root; the embedding cache holds the encodings::

    B=".venv/bin/python benchmarks/automatic_ranker.py --out runs/auto-ranker --cache /tmp/s2auto-cache --head runs/auto-hard/heads/head-550.pt"
    $B --stage heads; $B --stage table-val; $B --stage table-train; $B --stage select; $B --stage test
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

import medsamkit as msk
from medsamkit.prompters import RankedPrompter
from medsamkit.training import out_of_fold_prompts

sys.path.insert(0, str(Path(__file__).resolve().parent))
from automatic_hard import benchmark_parser, busi_split, cached_litemedsam  # noqa: E402


def stems_digest(samples) -> str:
    return hashlib.sha256("|".join(sorted(s.stem for s in samples)).encode()).hexdigest()[:12]


def fold_head_fitter(seg, heads: Path, *, epochs: int, seed: int):
    """``fit(samples) -> EmbeddingHeadPrompter``: fitted once per training subset, saved and reloaded after."""

    def fit(samples):
        path = heads / f"fold-{stems_digest(samples)}.pt"
        if path.is_file():
            return msk.EmbeddingHeadPrompter.load(path)
        start = time.perf_counter()
        head = msk.EmbeddingHeadPrompter().fit(samples, segmenter=seg, epochs=epochs, seed=seed)
        head.save(path)
        path.with_suffix(".json").write_text(json.dumps({"seconds": time.perf_counter() - start, "n": len(samples)}) + "\n")
        print(f"fold head on {len(samples)} images: {time.perf_counter() - start:.0f} s", flush=True)
        return head

    return fit


def main() -> None:
    parser = benchmark_parser(__doc__.splitlines()[0], "runs/auto-ranker")
    parser.add_argument(
        "--head", type=Path, default=None, help="a fitted 550-image head (default: fit it, OUT/heads/head-550.pt)"
    )
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--params", type=json.loads, default={}, help="RankedPrompter proposal parameters (JSON)")
    parser.add_argument("--tag", default="", help="suffix of the table files (a proposal variant)")
    parser.add_argument("--hidden", type=int, default=16, help="test: the ranker's width (chosen with --stage select)")
    parser.add_argument("--ranker-epochs", type=int, default=200, help="test: the ranker's epochs")
    parser.add_argument(
        "--stage", choices=("heads", "table-val", "table-train", "select", "test", "cxr", "diagnose-test"), required=True
    )
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    seg = cached_litemedsam(args.cache)
    seg.decodes = False  # the candidates' decoder outputs would crowd the shared cache's encodings out
    if args.stage == "cxr":
        run_cxr(args, seg)
        return
    folder = msk.MaskFolder(args.data / "us-busi")
    train, val, test, _, _ = busi_split(folder, args.seed)
    heads = args.out / "heads"
    heads.mkdir(parents=True, exist_ok=True)
    fit = fold_head_fitter(seg, heads, epochs=args.epochs, seed=args.seed)
    if args.stage == "heads":
        start = time.perf_counter()
        out_of_fold_prompts(fit, folder.subset(train), seg, folds=args.folds, seed=args.seed)
        print(f"{args.folds} out-of-fold heads: {time.perf_counter() - start:.0f} s")
        return
    head = load_head(args, seg, folder, train)
    if args.stage == "table-val":
        start = time.perf_counter()
        table = RankedPrompter(head, **args.params).candidate_table(folder.subset(val), seg, progress=True)
        np.savez(args.out / f"val_table{args.tag}.npz", **table)
        print(f"validation candidates: {len(table['dice'])} for {len(val)} images, {time.perf_counter() - start:.0f} s")
    elif args.stage == "table-train":
        start = time.perf_counter()
        table = RankedPrompter(head, **args.params).out_of_fold_table(
            folder.subset(train), seg, fit, folds=args.folds, seed=args.seed
        )
        np.savez(args.out / f"train_table{args.tag}.npz", **table)
        print(
            f"out-of-fold training candidates: {len(table['dice'])} for {len(train)} images, {time.perf_counter() - start:.0f} s"
        )
    elif args.stage == "select":
        select(args, head)
    elif args.stage == "test":
        run_test(args, seg, head, folder, test)
    elif args.stage == "diagnose-test":  # after the test run, never to choose anything
        path = args.out / f"test_table{args.tag}.npz"
        if not path.is_file():
            np.savez(path, **RankedPrompter(head, **args.params).candidate_table(folder.subset(test), seg, progress=True))
        table = load_table(path)
        prompter = RankedPrompter.load(args.out / "ranked.pt")
        print(
            f"test pool upper bound {pool_bound(table):.4f}; the head's own candidate, no gate {head_candidate(table).mean():.4f}"
        )
        for t in (0.0, 0.2, 0.3, 0.4, prompter.min_score):
            prompter.min_score = t
            print(f"min_score {t:.3f}:", {k: round(v, 4) for k, v in summary(prompter, table).items()})


def run_cxr(args, seg) -> None:
    """cxr-shenzhen (the split of automatic_hard.py --cxr: 47 training, 12 test images, no validation: lungs are
    always there, so ``min_score`` stays 0) and cross-dataset on all 13 cxr-montgomery images."""
    from medsamkit.data import train_val_test_split

    folder = msk.MaskFolder(args.data / "cxr-shenzhen")
    split = train_val_test_split(folder, val_fraction=0.0, test_fraction=0.2, seed=args.seed)
    out = args.out / "cxr"
    (out / "heads").mkdir(parents=True, exist_ok=True)
    fit = fold_head_fitter(seg, out / "heads", epochs=args.epochs, seed=args.seed)
    head = fit(folder.subset(split.train))  # the head of all 47 training images
    start = time.perf_counter()
    prompter = RankedPrompter(head, **args.params).fit(
        folder.subset(split.train), segmenter=seg, folds=args.folds, seed=args.seed, fit_base=fit
    )
    print(f"ranker fitted on the out-of-fold candidates of {len(split.train)} images in {time.perf_counter() - start:.0f} s")
    prompter.save(out / "ranked-shenzhen.pt")
    providers = {"oracle boxes": msk.OracleBoxPrompter(), "embedding head": head, "ranked": prompter}
    for name, data in (
        ("shenzhen-test", folder.subset(split.test)),
        ("montgomery", msk.MaskFolder(args.data / "cxr-montgomery")),
    ):
        report = msk.compare_prompters(seg, data, providers, out_dir=out / name, progress=False)
        print(name)
        print(report)


def load_table(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def load_head(args, seg, folder, train) -> msk.EmbeddingHeadPrompter:
    path = args.head or args.out / "heads" / f"head-{len(train)}.pt"
    if not Path(path).is_file():
        start = time.perf_counter()
        msk.EmbeddingHeadPrompter().fit(folder.subset(train), segmenter=seg, epochs=args.epochs, seed=args.seed).save(path)
        print(f"head fitted on {len(train)} images in {time.perf_counter() - start:.0f} s")
    head = msk.EmbeddingHeadPrompter.load(path)
    head.bind_segmenter(seg)
    return head


def summary(prompter: RankedPrompter, table: dict[str, np.ndarray]) -> dict[str, float]:
    """Validation figures of a ranker, from a candidate table (no decoding)."""
    sel = prompter.selection(table)
    empty = table["empty"]
    given = sel["score"] >= prompter.min_score
    dice = sel["dice"]
    quality = np.where(given, sel["score"], 1 - np.clip(sel["score"], 0, 1))
    out = {
        "mean": float(dice.mean()),
        "median": float(np.median(dice)),
        "detected": int((given & ~empty).sum()),
        "missed": int((~given & ~empty).sum()),
        "fp": int((given & empty).sum()),
        "dice_detected": float(dice[given & ~empty].mean()) if (given & ~empty).any() else float("nan"),
        "min_score": prompter.min_score,
    }
    for t in (0.8, 0.7):
        out[f"auroc<{t}"] = msk.evaluation.auroc(-quality, dice < t) or float("nan")
    return out


def pool_bound(table: dict[str, np.ndarray]) -> float:
    """Mean Dice when every image got its best candidate (or nothing, for an image without the target)."""
    best = []
    for i, empty in enumerate(table["empty"]):
        rows = table["dice"][table["group"] == i]
        best.append(1.0 if empty else (float(rows.max()) if len(rows) else 0.0))
    return float(np.mean(best))


def head_candidate(table: dict[str, np.ndarray]) -> np.ndarray:
    """Per image, the Dice of the head's own prompt without a presence gate (its multi-box candidate or its largest
    box at 0.5; an image without either gets an empty result: 1 without the target, 0 with it)."""
    source = table["features"][:, -1]
    out = table["empty"].astype(np.float64)
    for i in range(len(table["empty"])):
        rows = np.flatnonzero(table["group"] == i)
        pick = [r for r in rows if source[r] == 1] or [r for r in rows if source[r] == 2]
        if pick:
            out[i] = table["dice"][pick[0]]
    return out


def select(args, head) -> None:
    train_t, val_t = load_table(args.out / f"train_table{args.tag}.npz"), load_table(args.out / f"val_table{args.tag}.npz")
    print(f"training candidates {len(train_t['dice'])} ({len(train_t['empty'])} images); validation {len(val_t['dice'])}")
    print(f"pool upper bound: train {pool_bound(train_t):.4f}, validation {pool_bound(val_t):.4f}")
    rows = []
    for hidden in (16, 32, 64):
        for epochs in (200, 600):
            p = RankedPrompter(head, hidden=hidden, **args.params).fit_ranker(train_t, epochs=epochs, seed=args.seed)
            p.calibrate(val_t)
            rows.append({"ranker": f"mlp h{hidden} e{epochs}", **summary(p, val_t)})
            p.min_score = 0.0
            rows.append({"ranker": f"mlp h{hidden} e{epochs}, no gate", **summary(p, val_t)})
    for seed in (1, 2):  # the spread over the ranker's initialisation
        p = RankedPrompter(head, hidden=16, **args.params).fit_ranker(train_t, epochs=200, seed=seed)
        p.calibrate(val_t)
        rows.append({"ranker": f"mlp h16 e200 seed {seed}", **summary(p, val_t)})
    from sklearn.ensemble import HistGradientBoostingRegressor

    class Boosted(RankedPrompter):  # comparison only: scikit-learn trees cannot be saved without pickle
        def predict(self, features):
            return np.clip(self.gbm.predict(np.asarray(features, dtype=np.float32)), 0, 1)

    for depth in (3, None):
        p = Boosted(head, **args.params)
        p.gbm = HistGradientBoostingRegressor(max_depth=depth, max_iter=300, learning_rate=0.05, random_state=args.seed)
        p.gbm.fit(train_t["features"], train_t["dice"])
        p.calibrate(val_t)
        rows.append({"ranker": f"gbm depth {depth}", **summary(p, val_t)})
    rows.append({"ranker": "the head's own candidate (no gate)", "mean": float(head_candidate(val_t).mean())})
    for r in rows:
        print("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()), flush=True)
    (args.out / "select.json").write_text(json.dumps(rows, indent=1) + "\n")


def run_test(args, seg, head, folder, test) -> None:
    train_t, val_t = load_table(args.out / f"train_table{args.tag}.npz"), load_table(args.out / f"val_table{args.tag}.npz")
    prompter = RankedPrompter(head, hidden=args.hidden, **args.params).fit_ranker(
        train_t, epochs=args.ranker_epochs, seed=args.seed
    )
    prompter.calibrate(val_t)
    print("validation:", summary(prompter, val_t))
    prompter.save(args.out / "ranked.pt")
    prompter = RankedPrompter.load(args.out / "ranked.pt")
    report = msk.compare_prompters(
        seg, folder.subset(test), {"ranked": prompter}, out_dir=args.out / "test", quality=True, progress=False
    )
    print(report)
    import csv

    with (args.out / "test" / "ranked" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    for column in msk.evaluation.QUALITY_COLUMNS:
        kept = [r for r in rows if r.get(column) not in (None, "")]
        print(column, msk.failure_detection(kept, column=column))


if __name__ == "__main__":
    main()

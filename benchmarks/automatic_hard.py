"""Fully automatic prompting on hard images (issue 13): BUSI providers, learning curve, failure detection.

us-busi, the same seeded stratified split as ``benchmarks/automatic_prompting.py``
(seed 0: 150 test images of which 26 normal). The remaining 630 labelled images are
split (seed 0, stratified) into a training part (550) and a validation part (80) used
only to calibrate the presence threshold; nothing is fitted on the test images.

Providers measured (``compare_prompters``, quality estimates on):

* ``head-100``: the embedding head fitted on the same 100 training images as
  docs/results.md's BUSI table (no validation: no presence gate);
* ``head-100 + refine``: the same, its boxes refined with the segmenter's masks;
* ``head-550``, ``head-550 + presence``, ``head-550 + presence + refine``: fitted on
  all 550 training images, presence threshold calibrated on the 80 validation images;
* learning curve: ``head-<n> + presence + refine`` for n = 25, 50, 100, 200, 550.

Run from the repository root (the embedding cache makes re-runs cheap)::

    .venv/bin/python benchmarks/automatic_hard.py --out runs/auto-hard --cache /tmp/h13cache

Writes ``OUT/study`` (the comparison), ``OUT/curve.csv`` and ``OUT/curve.png`` (the
learning curve), ``OUT/heads/*.pt`` (fitted heads, reused on a second run) with
their fit times, and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import medsamkit as msk
from medsamkit.data import train_val_test_split


def benchmark_parser(description: str, out: str) -> argparse.ArgumentParser:
    """The options every issue-13 benchmark takes: ``--data`` (the shared data folder), ``--out``
    and ``--cache`` (the embedding cache folder)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=Path(out))
    parser.add_argument("--cache", type=Path, default=None, help="embedding cache folder (default: the user cache)")
    return parser


def cached_litemedsam(cache: Path | None, gib: int = 12) -> msk.CachedSegmenter:
    """LiteMedSAM (default fast encoder) behind a ``gib`` GiB embedding cache in ``cache``."""
    return msk.CachedSegmenter(msk.LiteMedSAM(), msk.EmbeddingCache(cache, max_bytes=gib * 1024**3))


def busi_split(
    folder: msk.MaskFolder, seed: int = 0, n_val: int = 80
) -> tuple[list[str], list[str], list[str], list[str], dict[str, str]]:
    """``(train, val, test, pool, labels)``: the test split of automatic_prompting.py; the rest
    (``pool``, in that script's order) split into train / val."""
    labels = {s.stem: ("empty" if not s.load_mask().any() else "target") for s in folder}
    split = train_val_test_split(folder, val_fraction=0.0, test_fraction=min(0.9, 150 / len(folder)), seed=seed, stratify=labels)
    pool = list(split.train)
    inner = train_val_test_split(
        pool, val_fraction=0.0, test_fraction=n_val / len(pool), seed=seed, stratify={k: labels[k] for k in pool}
    )
    return list(inner.train), list(inner.test), list(split.test), pool, labels


def subset(stems: list[str], n: int, labels: dict[str, str], seed: int = 0) -> list[str]:
    """A seeded, stratified subset of ``n`` stems (all when ``n >= len(stems)``)."""
    if n >= len(stems):
        return stems
    keep = 1 - n / len(stems)
    return list(
        train_val_test_split(stems, val_fraction=0.0, test_fraction=keep, seed=seed, stratify={k: labels[k] for k in stems}).train
    )


def fit_head(
    seg, folder, train, val, path: Path, *, epochs: int, seed: int, flip: bool = False, augment_copies: int = 0
) -> msk.EmbeddingHeadPrompter:
    """Fit (or load) a head; with ``val`` its presence threshold is (re)calibrated there (cheap: cached encodings).
    ``flip``: also train on the mirrored training images (``fit(..., flip=True)``). ``augment_copies``: also train on
    that many augmented copies of each training image (``fit(..., augment=K)``; progress bars on)."""
    if path.is_file():
        head = msk.EmbeddingHeadPrompter.load(path, presence_rule="accuracy")
        if val:
            head.calibrate_presence(seg, folder.subset(val))
        print(f"  {path.name}: loaded; presence {head.presence_calibration}")
        return head
    import os

    samples = list(folder.subset(train))
    start = time.perf_counter()
    head = msk.EmbeddingHeadPrompter().fit(
        samples,
        segmenter=seg,
        val=folder.subset(val) if val else None,
        epochs=epochs,
        seed=seed,
        flip=flip,
        augment=augment_copies,
        progress=augment_copies > 0,
    )
    seconds = time.perf_counter() - start
    head.save(path)
    path.with_suffix(".json").write_text(
        json.dumps(
            {
                "seconds": seconds,
                "n_train": len(train),
                "n_val": len(val or []),
                "flip": flip,
                "augment_copies": augment_copies,
                "n_samples": len(samples) * (1 + augment_copies),
                "load_average_at_end": os.getloadavg(),
                "presence": head.presence_calibration,
            }
        )
        + "\n"
    )
    print(f"  {path.name}: fitted on {len(train)} images in {seconds:.0f} s; presence {head.presence_calibration}")
    return head


def cxr(args: argparse.Namespace, seg: msk.CachedSegmenter) -> None:
    """cxr-shenzhen (seeded split of automatic_prompting.py: 47 train, 12 test) and cross-dataset to cxr-montgomery."""
    folder = msk.MaskFolder(args.data / "cxr-shenzhen")
    split = train_val_test_split(folder, val_fraction=0.0, test_fraction=0.2, seed=args.seed)
    out = args.out / "cxr"
    (out / "heads").mkdir(parents=True, exist_ok=True)
    head = fit_head(seg, folder, list(split.train), None, out / "heads" / "head-shenzhen.pt", epochs=args.epochs, seed=args.seed)
    providers = {
        "oracle boxes": msk.OracleBoxPrompter(),
        "embedding head": head,
        "embedding head + refine": msk.RefinedPrompter(head),
        "embedding head + refine 5%": msk.RefinedPrompter(head, margin_fraction=0.05),
    }
    for name, data in (
        ("shenzhen-test", folder.subset(split.test)),
        ("montgomery", msk.MaskFolder(args.data / "cxr-montgomery")),
    ):
        report = msk.compare_prompters(seg, data, providers, out_dir=out / name, quality=True, progress=False)
        print(name)
        print(report)


def _rows(metrics: Path) -> list[dict[str, str]]:
    import csv

    with metrics.open() as handle:
        return list(csv.DictReader(handle))


def print_prompt_counts(metrics: Path) -> None:
    """How often a provider's study folder predicted something (lesion / normal images), lesion images below Dice 0.5."""
    rows = _rows(metrics)
    lesion = [r for r in rows if not r["stem"].startswith("normal")]
    normal = [r for r in rows if r["stem"].startswith("normal")]
    given = lambda r: int(r["n_prompts"] or 0) > 0  # noqa: E731
    print(
        f"{metrics.parent.name}: prompt on {sum(map(given, lesion))}/{len(lesion)} lesion images, "
        f"none on {sum(not given(r) for r in normal)}/{len(normal)} normal images; "
        f"lesion images with Dice < 0.5: {sum(float(r['dice']) < 0.5 for r in lesion)}"
    )


def print_failure_detection(metrics: Path, *, skip_empty: bool = False) -> None:
    """Failure detection per quality column of one metrics.csv (rows lacking a column left out; ``skip_empty``:
    columns no row has are not printed)."""
    rows = _rows(metrics)
    for column in msk.evaluation.QUALITY_COLUMNS:
        kept = [r for r in rows if r.get(column) not in (None, "")]
        if skip_empty and not kept:
            continue
        fd = msk.failure_detection(kept, column=column)
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        print(
            f"  {column:<10} n {fd['n']:>3}  AUROC Dice<0.8 {fmt(fd.get('auroc_dice_below_0.8'))}  "
            f"<0.7 {fmt(fd.get('auroc_dice_below_0.7'))}  mean {fmt(fd.get('mean_dice'))}  "
            f"after review {fmt(fd.get('mean_dice_after_review'))}"
        )


def quality_table(out: Path) -> None:
    """Failure detection per quality column for every provider of ``OUT/study-quality`` (rows lacking a column left out),
    and per provider of ``OUT/study``: how often something was predicted (sensitivity on lesion images, specificity on
    normal ones) and how many lesion images stay below Dice 0.5."""
    for metrics in sorted((out / "study").glob("*/metrics.csv")):
        print_prompt_counts(metrics)

    for metrics in sorted((out / "study-quality").glob("*/metrics.csv")):
        print(metrics.parent.name)
        print_failure_detection(metrics)


def val_variants(args: argparse.Namespace, seg: msk.CachedSegmenter) -> None:
    """Box-selection variants of the 550-image head on the 80 validation images (never the test split)."""
    folder = msk.MaskFolder(args.data / "us-busi")
    train, val, _, _, _ = busi_split(folder, args.seed)
    path = args.out / "heads" / f"head-{len(train)}.pt"

    def head(**overrides):
        return msk.EmbeddingHeadPrompter.load(path, **overrides)

    variants = {
        "default (up to 4 boxes, union)": msk.Pipeline(head(), seg),
        "one box (max_boxes=1)": msk.Pipeline(head(max_boxes=1), seg),
        "best predicted IoU (combine='best')": msk.Pipeline(head(), seg, combine="best"),
        "one box, map threshold 0.3": msk.Pipeline(head(max_boxes=1, threshold=0.3), seg),
    }
    report = msk.compare_prompters(seg, folder.subset(val), variants, out_dir=args.out / "val-variants", progress=False)
    print(report)


def validate_or_test(args: argparse.Namespace, seg, folder, val, test, variants: dict, *, tag: str) -> None:
    """Head variants on the validation images (``OUT/val-<tag>``), or with ``--test VARIANT`` that variant with
    presence and + refine 5% on the test images (``OUT/test-<tag>``, with the quality estimate)."""
    if args.test is None:
        report = msk.compare_prompters(seg, folder.subset(val), variants, out_dir=args.out / f"val-{tag}", progress=False)
        print(report)
        return
    if args.test not in variants:
        raise SystemExit(f"--test: expected one of {sorted(variants)}, got {args.test!r}")
    chosen = variants[args.test]
    providers = {
        f"{args.test} + presence": chosen,
        f"{args.test} + presence + refine 5%": msk.RefinedPrompter(chosen, margin_fraction=0.05),
    }
    report = msk.compare_prompters(
        seg, folder.subset(test), providers, out_dir=args.out / f"test-{tag}", quality=True, progress=False
    )
    print(report)


def flip_train(args: argparse.Namespace, seg: msk.CachedSegmenter) -> None:
    """Flip augmentation in training: the 550-image head refitted with ``fit(..., flip=True)`` (``OUT/heads/head-550-flip.pt``)
    beside the plain ``OUT/heads/head-550.pt`` (fitted when missing), with and without test flip. Validation by default;
    ``--test VARIANT`` evaluates that one variant (and it + refine 5%) on the 150 test images."""
    folder = msk.MaskFolder(args.data / "us-busi")
    train, val, test, _, _ = busi_split(folder, args.seed)
    heads_dir = args.out / "heads"
    heads_dir.mkdir(parents=True, exist_ok=True)
    paths = {"head": heads_dir / f"head-{len(train)}.pt", "flip-trained head": heads_dir / f"head-{len(train)}-flip.pt"}
    for name, path in paths.items():
        fit_head(seg, folder, train, val, path, epochs=args.epochs, seed=args.seed, flip=name.startswith("flip"))
    variants = {}
    for name, path in paths.items():
        for test_flip in (False, True):
            # the presence threshold calibrated on the validation images at fit time (on the plain map)
            variants[name + (" + test flip" if test_flip else "")] = msk.EmbeddingHeadPrompter.load(path, test_flip=test_flip)
    validate_or_test(args, seg, folder, val, test, variants, tag="flip-train")


def augment_train(args: argparse.Namespace, seg: msk.CachedSegmenter) -> None:
    """More augmentation in training: the 550-image head fitted as the flip-trained one (``flip=True``, same epochs,
    seed, presence calibrated on the 80 validation images) on the training images plus ``--augment-train K``
    augmented copies of each (``fit(..., augment=K)``; every copy mirrored too), ``OUT/heads/head-550-aug<K>-flip.pt``,
    against ``OUT/heads/head-550-flip.pt`` (fitted when missing), both with and without test flip, on validation.
    ``--test VARIANT`` evaluates that variant (and it + refine 5%) on the 150 test images."""
    folder = msk.MaskFolder(args.data / "us-busi")
    train, val, test, _, _ = busi_split(folder, args.seed)
    heads_dir = args.out / "heads"
    heads_dir.mkdir(parents=True, exist_ok=True)
    k = args.augment_train
    paths = {
        "flip-trained head": (heads_dir / f"head-{len(train)}-flip.pt", 0),
        f"flip + augment x{k} head": (heads_dir / f"head-{len(train)}-aug{k}-flip.pt", k),
    }
    for path, copies in paths.values():
        fit_head(seg, folder, train, val, path, epochs=args.epochs, seed=args.seed, flip=True, augment_copies=copies)
    variants = {}
    for name, (path, _) in paths.items():
        for test_flip in (False, True):
            variants[name + (" + test flip" if test_flip else "")] = msk.EmbeddingHeadPrompter.load(path, test_flip=test_flip)
    validate_or_test(args, seg, folder, val, test, variants, tag=f"aug{k}")


def cam_embedding(args: argparse.Namespace, seg: msk.CachedSegmenter) -> None:
    """CAM boxes from a presence classifier on the segmenter's embedding (``CAMBoxPrompter(backbone="embedding")``),
    fitted on the 550 training images (image-level labels only; best epoch by validation loss), against the 550-image
    head on the 80 validation images. ``--test VARIANT`` runs one of them on the test split."""
    from medsamkit.prompters import CAMBoxPrompter

    folder = msk.MaskFolder(args.data / "us-busi")
    train, val, test, _, _ = busi_split(folder, args.seed)
    heads_dir = args.out / "heads"
    heads_dir.mkdir(parents=True, exist_ok=True)
    head = fit_head(seg, folder, train, val, heads_dir / f"head-{len(train)}.pt", epochs=args.epochs, seed=args.seed)
    tag = "" if args.epochs == 40 else f"-e{args.epochs}"  # --epochs: the classifier's (the head is loaded when saved)
    path = heads_dir / f"cam-embedding-{len(train)}{tag}.pt"
    if path.is_file():
        cam = CAMBoxPrompter.load(path)
    else:
        start = time.perf_counter()
        cam = CAMBoxPrompter(backbone="embedding").fit(
            folder.subset(train), segmenter=seg, val=folder.subset(val), epochs=args.epochs, seed=args.seed, progress=True
        )
        cam.save(path)
        print(f"  {path.name}: fitted in {time.perf_counter() - start:.0f} s; best epoch {cam.train_info['best_epoch']}")
    for row in cam.history:
        print(
            f"  epoch {row['epoch']}: loss {row['loss']:.4f}, val loss {row['val_loss']:.4f}, val accuracy {row['val_accuracy']:.3f}"
        )
    variants = {"head": head, "CAM boxes, embedding classifier": cam}
    if args.test is None:
        print(
            msk.compare_prompters(seg, folder.subset(val), variants, out_dir=args.out / f"val-cam-embedding{tag}", progress=False)
        )
        return
    if args.test not in variants:
        raise SystemExit(f"--test: expected one of {sorted(variants)}, got {args.test!r}")
    chosen = {args.test: variants[args.test]}
    print(msk.compare_prompters(seg, folder.subset(test), chosen, out_dir=args.out / f"test-cam-embedding{tag}", progress=False))


def main() -> None:
    parser = benchmark_parser(__doc__.splitlines()[0], "runs/auto-hard")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--curve", nargs="*", type=int, default=[25, 50, 100, 200, 550])
    parser.add_argument("--skip-study", action="store_true")
    parser.add_argument("--cxr", action="store_true", help="only the chest X-ray part (Shenzhen, Shenzhen -> Montgomery)")
    parser.add_argument("--quality-table", action="store_true", help="only print failure detection per quality column")
    parser.add_argument("--val-variants", action="store_true", help="only the box-selection variants on the validation images")
    parser.add_argument(
        "--flip-train",
        action="store_true",
        help="only flip augmentation in training: the 550-image head fitted with flip=True vs the plain one, on validation",
    )
    parser.add_argument(
        "--augment-train",
        type=int,
        default=0,
        metavar="K",
        help="only more augmentation in training: the flip-trained 550-image head refitted on the training images plus "
        "K augmented copies of each (scale, shift, rotation, gamma, contrast) vs the flip-trained one, on validation",
    )
    parser.add_argument("--cache-gib", type=int, default=12, help="size bound of the embedding cache in GiB")
    parser.add_argument(
        "--cam-embedding",
        action="store_true",
        help="only CAM boxes of a presence classifier on the segmenter's embedding vs the head, on validation",
    )
    parser.add_argument(
        "--test",
        default=None,
        metavar="VARIANT",
        help="with --flip-train, --augment-train or --cam-embedding: the variant chosen on validation, run on the test split",
    )
    args = parser.parse_args()
    if args.quality_table:
        quality_table(args.out)
        return
    import torch

    torch.set_num_threads(1)  # small heads and single-image decodes: threads only wait for each other on a busy machine
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.augment_train < 0:
        raise SystemExit(f"--augment-train: expected K >= 0, got {args.augment_train}")
    seg = cached_litemedsam(args.cache, args.cache_gib)
    if args.cxr:
        cxr(args, seg)
        return
    if args.val_variants:
        val_variants(args, seg)
        return
    if args.flip_train:
        flip_train(args, seg)
        return
    if args.augment_train:
        augment_train(args, seg)
        return
    if args.cam_embedding:
        cam_embedding(args, seg)
        return
    folder = msk.MaskFolder(args.data / "us-busi")
    train, val, test_stems, pool, labels = busi_split(folder, args.seed)
    test = folder.subset(test_stems)
    print(
        f"us-busi: train {len(train)}, validation {len(val)}, test {len(test)} ({sum(labels[s] == 'empty' for s in test_stems)} normal)"
    )
    heads_dir = args.out / "heads"
    heads_dir.mkdir(parents=True, exist_ok=True)
    # The 100 training images of benchmarks/automatic_prompting.py (its seeded subset of the 630).
    pool_100 = subset(pool, 100, labels, args.seed)
    if not args.skip_study:
        head_100 = fit_head(seg, folder, pool_100, None, heads_dir / "head-100-noval.pt", epochs=args.epochs, seed=args.seed)
        head_all = fit_head(seg, folder, train, val, heads_dir / f"head-{len(train)}.pt", epochs=args.epochs, seed=args.seed)
        no_gate = msk.EmbeddingHeadPrompter.load(heads_dir / f"head-{len(train)}.pt", presence_threshold=0.0)
        if head_all.presence_calibration:  # the saved file may predate a recalibration
            head_all.save(heads_dir / f"head-{len(train)}.pt")
        n = len(train)
        providers = {
            "oracle boxes": msk.OracleBoxPrompter(),
            "head-100": head_100,
            "head-100 + refine 5%": msk.RefinedPrompter(head_100, margin_fraction=0.05),
            f"head-{n}": no_gate,
            f"head-{n} + presence": head_all,
        }
        report = msk.compare_prompters(seg, test, providers, out_dir=args.out / "study", progress=False)
        print(report)
        best = {
            f"head-{n} + presence + refine": msk.RefinedPrompter(head_all),
            f"head-{n} + presence + refine 5%": msk.RefinedPrompter(head_all, margin_fraction=0.05),
        }
        report = msk.compare_prompters(seg, test, best, out_dir=args.out / "study-quality", quality=True, progress=False)
        print(report)
    rows = []
    for n in args.curve:
        stems = subset(train, n, labels, args.seed)
        head = fit_head(seg, folder, stems, val, heads_dir / f"head-{len(stems)}.pt", epochs=args.epochs, seed=args.seed)
        pipe = msk.Pipeline(msk.RefinedPrompter(head, margin_fraction=0.05), seg)
        rep = msk.evaluate(pipe, test, out_dir=args.out / "curve" / f"n{len(stems)}", progress=False, n_overlays=0)
        fit_info = json.loads((heads_dir / f"head-{len(stems)}.json").read_text())
        rows.append(
            {
                "n_train": len(stems),
                "dice_mean": rep.mean("dice"),
                "dice_median": rep.summary["metrics"]["dice"]["median"],
                "fit_seconds": round(fit_info["seconds"], 1),
                "presence_threshold": round(head.presence_threshold, 4),
            }
        )
        print(rows[-1])
    if rows:
        from medsamkit.data import atomic_write_text

        columns = list(rows[0])
        atomic_write_text(
            args.out / "curve.csv", ",".join(columns) + "\n" + "".join(",".join(str(r[c]) for c in columns) + "\n" for r in rows)
        )
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot([r["n_train"] for r in rows], [r["dice_mean"] for r in rows], "o-", label="embedding head + presence + refine 5%")
        ax.axhline(0.9402, color="gray", ls="--", label="oracle boxes (0.940)")
        ax.set_xscale("log")
        ax.set_xlabel("labelled training images")
        ax.set_ylabel("mean Dice, 150 test images")
        ax.set_title("us-busi, fully automatic")
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        fig.savefig(args.out / "curve.png", dpi=120)
        print(f"learning curve: {args.out / 'curve.csv'}, {args.out / 'curve.png'}")


if __name__ == "__main__":
    main()

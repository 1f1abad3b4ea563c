"""Issue 13: fine-tune LiteMedSAM's mask decoder on the automatic prompts themselves (SAM-Mix's coupling).

us-busi, the split of ``benchmarks/automatic_hard.py`` (550 train, 80 validation,
150 test). Stages (each writes into ``OUT`` and is reused by the next run):

* ``oof``: out-of-fold embedding-head boxes for the 550 training images
  (``medsamkit.training.out_of_fold_prompts``: ``--folds`` heads, each fitted on the
  other folds, presence calibrated on the validation images) -> ``OUT/oof_prompts.json``;
* ``ft-oracle``: decoder fine-tuned on jittered oracle boxes (``finetune``'s default
  prompts), validated with the 550-image head's prompts -> ``OUT/ft-oracle``;
* ``ft-auto``: the same, but each epoch ``--share`` of the images get their
  out-of-fold head boxes (``finetune(..., train_prompts=...)``) -> ``OUT/ft-auto``;
* ``eval``: the 150 test images with the 550-image head + presence (and + refine 5%,
  and oracle boxes) under the original, the oracle-tuned and the auto-tuned decoder.

The 550-image head is ``OUT/heads/head-550.pt`` (``automatic_hard.py``'s; fitted here
when missing). The fine-tuned decoders are evaluated by loading their decoder weights
into the cached segmenter (decoder-only tuning leaves the encoder bit-identical, so
the cached encodings are the tuned model's too; the decode cache keys on the decoder
weights). Run from the repository root::

    .venv/bin/python benchmarks/decoder_on_auto_prompts.py --out runs/auto-ft --cache /tmp/s2auto-cache --stage oof
    .venv/bin/python benchmarks/decoder_on_auto_prompts.py --out runs/auto-ft --cache /tmp/s2auto-cache --stage ft-oracle
    .venv/bin/python benchmarks/decoder_on_auto_prompts.py --out runs/auto-ft --cache /tmp/s2auto-cache --stage ft-auto
    .venv/bin/python benchmarks/decoder_on_auto_prompts.py --out runs/auto-ft --cache /tmp/s2auto-cache --stage eval

``--cxr`` runs the same stages on cxr-shenzhen (the seeded 47 / 12 split of
``automatic_prompting.py``, no validation images: the head's training images are
split once more, 37 / 10, for validation) and evaluates on its test images and on
cxr-montgomery (cross-dataset).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

import medsamkit as msk
from medsamkit.data import train_val_test_split
from medsamkit.training import finetune, out_of_fold_prompts

sys.path.insert(0, str(Path(__file__).resolve().parent))
from automatic_hard import benchmark_parser, busi_split, cached_litemedsam  # noqa: E402


def load_prompts(path: Path) -> dict[str, msk.Prompts]:
    data = json.loads(path.read_text())
    return {
        stem: msk.Prompts(box_xyxy=np.asarray(boxes, dtype=np.float32).reshape(-1, 4)) if boxes else msk.Prompts.empty()
        for stem, boxes in data.items()
    }


def save_prompts(path: Path, prompts: dict[str, msk.Prompts]) -> None:
    data = {stem: ([] if p.box_xyxy is None else np.asarray(p.box_xyxy).tolist()) for stem, p in prompts.items()}
    path.write_text(json.dumps(data) + "\n")


def tuned_copy(seg: msk.CachedSegmenter, run_dir: Path) -> tuple[msk.CachedSegmenter, str]:
    """A cached LiteMedSAM sharing ``seg``'s encodings, with the decoder of ``run_dir/model.pth`` (a finished run)
    or, for a run stopped early, of the best epoch so far in ``run_dir/last.pt``; and which one it is."""
    import torch

    base = msk.LiteMedSAM()
    if (run_dir / "model.pth").is_file():
        state = torch.load(run_dir / "model.pth", map_location="cpu", weights_only=True)
        decoder = {k.removeprefix("mask_decoder."): v for k, v in state.items() if k.startswith("mask_decoder.")}
        what = "finished run"
    else:
        last = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
        decoder = last["best"]["parts"]["decoder"]
        what = f"stopped after epoch {last['epoch']}, best epoch {last['best']['epoch']}"
    base.model.mask_decoder.load_state_dict(decoder)
    return msk.CachedSegmenter(base, seg.cache), what


def setup(args: argparse.Namespace, seg: msk.CachedSegmenter):
    """``(folder, train, val, tests, head)``: the data of the run and its fitted head."""
    heads = args.out / "heads"
    heads.mkdir(parents=True, exist_ok=True)
    if args.cxr:
        folder = msk.MaskFolder(args.data / "cxr-shenzhen")
        split = train_val_test_split(folder, val_fraction=0.0, test_fraction=0.2, seed=args.seed)
        inner = train_val_test_split(list(split.train), val_fraction=0.0, test_fraction=10 / len(split.train), seed=args.seed)
        train, val = list(inner.train), list(inner.test)
        tests = {"shenzhen-test": folder.subset(split.test), "montgomery": msk.MaskFolder(args.data / "cxr-montgomery")}
        head_path, head_val = heads / "head-shenzhen.pt", None  # lungs are always there: no presence gate
    else:
        folder = msk.MaskFolder(args.data / "us-busi")
        train, val, test, _, _ = busi_split(folder, args.seed)
        tests = {"busi-test": folder.subset(test)}
        head_path, head_val = heads / f"head-{len(train)}.pt", val
    if head_path.is_file():
        head = msk.EmbeddingHeadPrompter.load(head_path)
    else:
        start = time.perf_counter()
        val_samples = folder.subset(head_val) if head_val else None
        head = msk.EmbeddingHeadPrompter().fit(
            folder.subset(train), segmenter=seg, val=val_samples, epochs=args.epochs, seed=args.seed
        )
        head.save(head_path)
        print(f"head fitted on {len(train)} images in {time.perf_counter() - start:.0f} s")
    return folder, train, val, tests, head


def main() -> None:
    parser = benchmark_parser(__doc__.splitlines()[0], "runs/auto-ft")
    parser.add_argument("--stage", choices=("oof", "ft-oracle", "ft-auto", "eval"), required=True)
    parser.add_argument("--cxr", action="store_true", help="cxr-shenzhen (and Montgomery cross-dataset) instead of us-busi")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=40, help="head epochs")
    parser.add_argument("--ft-epochs", type=int, default=8)
    parser.add_argument("--share", type=float, default=0.5, help="recorded_share of ft-auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--decoders", nargs="*", default=["ft-oracle", "ft-auto"], help="eval: the tuned decoders")
    parser.add_argument("--with-original", action="store_true", help="eval: also the original decoder (default with --cxr)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.cxr:
        args.out = args.out / "cxr"
        args.with_original = True
    args.out.mkdir(parents=True, exist_ok=True)
    seg = cached_litemedsam(args.cache)
    folder, train, val, tests, head = setup(args, seg)
    oof_path = args.out / "oof_prompts.json"

    if args.stage == "oof":
        start = time.perf_counter()
        val_samples = folder.subset(val) if not args.cxr else None

        def fit(samples):
            return msk.EmbeddingHeadPrompter().fit(samples, segmenter=seg, val=val_samples, epochs=args.epochs, seed=args.seed)

        prompts = out_of_fold_prompts(fit, folder.subset(train), seg, folds=args.folds, seed=args.seed)
        save_prompts(oof_path, prompts)
        n_given = sum(p.n > 0 for p in prompts.values())
        print(f"out-of-fold prompts: {n_given}/{len(prompts)} images got boxes, {time.perf_counter() - start:.0f} s")
        return

    if args.stage in ("ft-oracle", "ft-auto"):
        recorded = load_prompts(oof_path) if args.stage == "ft-auto" else None
        start = time.perf_counter()
        result = finetune(
            seg,
            folder.subset(train),
            folder.subset(val),
            out_dir=args.out / args.stage,
            eval_prompter=head,
            train_prompts=recorded,
            epochs=args.ft_epochs,
            patience=3,
            recorded_share=args.share,
            progress=False,
        )
        seconds = time.perf_counter() - start
        (args.out / args.stage / "fit_seconds.json").write_text(json.dumps({"seconds": seconds}) + "\n")
        print(f"{args.stage}: best epoch {result.best_epoch}, val Dice {result.best_val_dice:.4f}, {seconds:.0f} s")
        print(result.history, result.sweep)
        return

    decoders = {"original decoder": seg} if args.with_original else {}
    for name in args.decoders:
        if (args.out / name / "model.pth").is_file() or (args.out / name / "last.pt").is_file():
            decoders[f"decoder {name}"], what = tuned_copy(seg, args.out / name)
            print(f"decoder {name}: {what}")
    for data_name, data in tests.items():
        for dec_name, dec in decoders.items():
            out = args.out / "eval" / data_name / dec_name.replace(" ", "-")
            plain = {"oracle boxes": msk.OracleBoxPrompter(), "head": head}
            report = msk.compare_prompters(dec, data, plain, out_dir=out, progress=False)
            print(f"== {data_name}, {dec_name}")
            print(report)
            refined = {"head + refine 5%": msk.RefinedPrompter(head, margin_fraction=0.05)}
            report = msk.compare_prompters(dec, data, refined, out_dir=out / "quality", quality=True, progress=False)
            print(report)
            for metrics in sorted((out / "quality").glob("*/metrics.csv")):
                import csv

                with metrics.open() as handle:
                    rows = list(csv.DictReader(handle))
                for column in msk.evaluation.QUALITY_COLUMNS:
                    kept = [r for r in rows if r.get(column) not in (None, "")]
                    fd = msk.failure_detection(kept, column=column)
                    print(
                        f"  {metrics.parent.name} {column}: n {fd['n']}, "
                        + ", ".join(f"{k} {v:.3f}" for k, v in fd.items() if k != "n" and isinstance(v, float))
                    )


if __name__ == "__main__":
    main()

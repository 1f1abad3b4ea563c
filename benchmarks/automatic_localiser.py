"""Issue 13: the decoder localiser (``DecoderLocaliserPrompter``) on BUSI, fully automatic.

A copy of LiteMedSAM's mask decoder fine-tuned to segment the lesion with no prompt
(encoder frozen, encodings from the embedding cache); its coarse mask gives the boxes
of the ordinary prompted pass, its presence output gates normal images. The split is
``automatic_hard.py``'s (``busi_split``: 550 train / 80 validation / the fixed
150-image test split); nothing is fitted or chosen on the test images.

Run from the repository root (variants on validation first, then the chosen one on
the test split once)::

    B=".venv/bin/python benchmarks/automatic_localiser.py --out runs/auto-loc --cache /tmp/s2auto-cache"
    $B --variants p2 p2-flip            # fit, then the validation images
    $B --variants p2-flip --test        # the 150 test images (quality estimates on)
    $B --cxr --variants p2              # cxr-shenzhen (47 train) and cxr-montgomery (cross-dataset)

Writes ``OUT/fits/<variant>.pt`` (+ ``.json``: fit seconds, presence calibration;
``OUT/fits/<variant>/``: the training loop's history, curve and ``last.pt``, so an
interrupted fit resumes), ``OUT/val`` / ``OUT/test`` (``compare_prompters`` studies)
and prints the tables and the failure-detection AUROC per quality column.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import medsamkit as msk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from automatic_hard import (  # noqa: E402
    benchmark_parser,
    busi_split,
    cached_litemedsam,
    print_failure_detection,
    print_prompt_counts,
    subset,
)

VARIANTS: dict[str, dict] = {
    # name: (constructor parameters, fit settings)
    "p2": {"init": {"pool": 2}, "fit": {}},
    "p2-flip": {"init": {"pool": 2}, "fit": {"flip": True}},
    "p2-tok2": {"init": {"pool": 2, "prompt_tokens": 2}, "fit": {}},
    "p1": {"init": {"pool": 1}, "fit": {}},
}


def fit_localiser(seg, folder, train, val, path: Path, variant: str, *, epochs: int, seed: int) -> msk.DecoderLocaliserPrompter:
    """Fit (or load) a localiser; its loop folder beside the file makes an interrupted fit resume."""
    if path.is_file():
        loc = msk.DecoderLocaliserPrompter.load(path)
        print(f"  {path.name}: loaded; presence {loc.presence_calibration}")
        return loc
    spec = VARIANTS[variant]
    start = time.perf_counter()
    loc = msk.DecoderLocaliserPrompter(**spec["init"]).fit(
        folder.subset(train),
        segmenter=seg,
        val=folder.subset(val) if val else None,
        epochs=epochs,
        seed=seed,
        out_dir=path.with_suffix(""),
        **spec["fit"],
    )
    seconds = time.perf_counter() - start
    loc.save(path)
    info = {"seconds": seconds, "n_train": len(train), "n_val": len(val or []), "presence": loc.presence_calibration}
    path.with_suffix(".json").write_text(json.dumps({**info, "history": loc.history}) + "\n")
    print(f"  {path.name}: fitted on {len(train)} images in {seconds:.0f} s; presence {loc.presence_calibration}")
    return loc


def failure_table(study: Path) -> None:
    """Failure-detection AUROC per quality column for every provider of a study folder (rows lacking a column left out),
    and how often something was predicted on lesion / normal images."""
    for metrics in sorted(study.glob("*/metrics.csv")):
        print_prompt_counts(metrics)
        print_failure_detection(metrics, skip_empty=True)


def coarse_only(seg, folder, stems, path: Path) -> None:
    """The localiser's own presence-gated coarse mask as the result (no prompted pass): mean / median Dice."""
    import numpy as np

    loc = msk.DecoderLocaliserPrompter.load(path)
    dice = []
    for sample in folder.subset(stems):
        image, mask = sample.load()
        enc = seg.encode(image)
        pred = (loc.probability_map(enc) > loc.threshold) & (loc.presence(enc) >= loc.presence_threshold)
        dice.append(msk.metrics.dice(pred, mask) if pred.any() or mask.any() else 1.0)
    print(f"{path.stem}: coarse mask alone, {len(dice)} images: Dice mean {np.mean(dice):.4f}, median {np.median(dice):.4f}")


def providers_for(path: Path, name: str) -> dict:
    loc = msk.DecoderLocaliserPrompter.load(path)
    flip = msk.DecoderLocaliserPrompter.load(path, test_flip=True)
    return {
        f"loc-{name}": loc,
        f"loc-{name} + test flip": flip,
        f"loc-{name} + refine 5%": msk.RefinedPrompter(loc, margin_fraction=0.05),
        f"loc-{name} + test flip + refine 5%": msk.RefinedPrompter(flip, margin_fraction=0.05),
    }


def cxr(args: argparse.Namespace, seg) -> None:
    """cxr-shenzhen (automatic_prompting.py's seeded split: 47 train, 12 test; 37/10 train/val inside the 47, as in
    decoder_on_auto_prompts.py) and cross-dataset to all 13 cxr-montgomery images."""
    from medsamkit.data import train_val_test_split

    folder = msk.MaskFolder(args.data / "cxr-shenzhen")
    split = train_val_test_split(folder, val_fraction=0.0, test_fraction=0.2, seed=args.seed)
    inner = train_val_test_split(list(split.train), val_fraction=0.0, test_fraction=10 / len(split.train), seed=args.seed)
    out = args.out / "cxr"
    (out / "fits").mkdir(parents=True, exist_ok=True)
    fit_seg, tag = seg, ""
    if args.decoder is not None:  # prompts from the localiser, masks from a decoder tuned on Shenzhen
        from decoder_on_auto_prompts import tuned_copy

        seg, what = tuned_copy(seg, args.decoder)
        tag = "-tuned"
        print(f"segmenter decoder: {what}")
    for variant in args.variants:
        path = out / "fits" / f"{variant}.pt"
        fit_localiser(fit_seg, folder, list(inner.train), list(inner.test), path, variant, epochs=args.epochs, seed=args.seed)
        providers = {"oracle boxes": msk.OracleBoxPrompter(), **providers_for(path, variant)}
        for name, data in (
            ("shenzhen-test", folder.subset(split.test)),
            ("montgomery", msk.MaskFolder(args.data / "cxr-montgomery")),
        ):
            print(name)
            print(msk.compare_prompters(seg, data, providers, out_dir=out / f"{name}-{variant}{tag}", progress=False))


def main() -> None:
    parser = benchmark_parser(__doc__.splitlines()[0], "runs/auto-loc")
    parser.add_argument("--variants", nargs="+", default=["p2"], choices=sorted(VARIANTS))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--n-train", type=int, default=None, help="a seeded stratified subset of the 550 training images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test", action="store_true", help="the 150 test images (only for the variant chosen on validation)")
    parser.add_argument("--cxr", action="store_true", help="only the chest X-ray part")
    parser.add_argument(
        "--decoder",
        type=Path,
        default=None,
        help="--cxr: segment with the decoder of this decoder_on_auto_prompts.py run (e.g. OUT/ft-oracle); the localiser "
        "is fitted (or loaded) as without it",
    )
    parser.add_argument("--coarse", action="store_true", help="only the localiser's coarse mask as the result (validation)")
    parser.add_argument("--table", type=Path, default=None, help="only print the failure-detection table of a study folder")
    args = parser.parse_args()
    if args.table is not None:
        failure_table(args.table)
        return
    import torch

    torch.set_num_threads(1)  # a shared 2-core machine: threads only wait for each other
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    seg = cached_litemedsam(args.cache)
    if args.cxr:
        cxr(args, seg)
        return
    folder = msk.MaskFolder(args.data / "us-busi")
    train, val, test, _, labels = busi_split(folder, args.seed)
    if args.n_train is not None:
        train = subset(train, args.n_train, labels, args.seed)
    (args.out / "fits").mkdir(parents=True, exist_ok=True)
    for variant in args.variants:
        tag = variant if args.n_train is None else f"{variant}-n{len(train)}"
        path = args.out / "fits" / f"{tag}.pt"
        fit_localiser(seg, folder, train, val, path, variant, epochs=args.epochs, seed=args.seed)
        if args.coarse:
            coarse_only(seg, folder, val, path)
            continue
        where, stems = ("test", test) if args.test else ("val", val)
        providers = providers_for(path, tag)
        study = args.out / where / tag
        print(msk.compare_prompters(seg, folder.subset(stems), providers, out_dir=study, quality=True, progress=False))
        failure_table(study)


if __name__ == "__main__":
    main()

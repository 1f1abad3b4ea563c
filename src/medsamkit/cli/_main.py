"""Argument parsing and the sub-commands of ``medsamkit``.

Exit status: 0 on success, 1 when some images could not be processed (they are
named on stderr and in the output table), 2 for bad arguments or set-up errors.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]

PROMPTER_CHOICES = ("oracle-box", "perturbed-box", "mean-mask-points", "yolo-box", "cam-box", "embedding-head", "fixed")
SEGMENTER_CHOICES = (
    "litemedsam",
    "sam-vit-b",
    "sam-vit-l",
    "sam-vit-h",
    "hq-sam-vit-b",
    "hq-sam-vit-l",
    "hq-sam-vit-h",
    "fake",
)
FITTABLE_PROMPTERS = ("mean-mask-points", "embedding-head", "yolo-box", "cam-box")
DEMO_SETS = ("cxr-shenzhen", "ct-chaos-liver", "us-busi", "cxr-montgomery")


class UsageError(Exception):
    """A problem with the command's arguments or inputs (exit status 2)."""


def _add_pipeline_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("pipeline")
    group.add_argument("--prompter", choices=PROMPTER_CHOICES, default="oracle-box", help="prompt provider (default: oracle-box)")
    group.add_argument("--segmenter", choices=SEGMENTER_CHOICES, default="litemedsam", help="segmenter (default: litemedsam, weights bundled; fake: weight-free test double)")
    group.add_argument("--checkpoint", type=Path, help="segmenter weights (default: the bundled LiteMedSAM weights; SAM/HQ-SAM also look in $MEDSAMKIT_SAM_CHECKPOINT_DIR)")
    group.add_argument("--precision", choices=("fast", "float32"), help="image encoder numerics: fast (bfloat16 where the CPU has it; LiteMedSAM's default) or float32 (exact; SAM/HQ-SAM's default)")
    group.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    group.add_argument("--threshold", type=float, default=0.5, help="probability threshold (default: 0.5)")
    group.add_argument("--combine", choices=("union", "best"), default="union", help="how prompt masks combine (default: union)")
    group.add_argument("--box-mode", choices=("components", "whole"), default="components", help="oracle boxes: one per component or one around the mask")
    group.add_argument("--min-area", type=int, default=16, help="oracle boxes: smallest component in pixels that gets a box (default: 16)")
    group.add_argument("--margin", type=float, default=0.0, help="perturbed-box: pixels added to every box side")
    group.add_argument("--jitter", type=float, default=0.0, help="perturbed-box: max random shift of each box coordinate in pixels")
    group.add_argument("--seed", type=int, default=0, help="perturbed-box: jitter seed (default: 0)")
    group.add_argument("--prompter-state", type=Path, help="mean-mask-points, yolo-box, embedding-head: the file saved by the prompter's save() (or medsamkit fit-prompter)")
    group.add_argument("--fit-masks", type=Path, help="mean-mask-points: fit on the masks of this MaskFolder instead of --prompter-state")
    group.add_argument("--box", type=float, nargs=4, action="append", metavar=("X0", "Y0", "X1", "Y1"), help="fixed: a box in pixels (repeatable)")
    group.add_argument("--keep-largest", type=int, metavar="N", help="post-process: keep the N largest components")
    group.add_argument("--fill-holes", action="store_true", help="post-process: fill holes")
    group.add_argument("--cache-dir", type=Path, help="embedding cache folder (default: $MEDSAMKIT_CACHE_DIR or ~/.cache/medsamkit/embeddings)")
    group.add_argument("--cache-size-gb", type=float, default=2.0, help="embedding cache size bound in GiB (default: 2)")
    group.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    group.add_argument("--pipeline", type=Path, metavar="DIR_OR_JSON", help="rebuild the pipeline from a saved pipeline.json (other pipeline options are ignored)")


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", default="images", help="images subfolder (default: images)")
    parser.add_argument("--masks", default="masks", help="masks subfolder (default: masks)")
    parser.add_argument("--mask-suffix", default="", help="mask stem = image stem + this suffix (CXLSeg: -mask)")
    parser.add_argument("--limit", type=int, help="process only the first N images in sorted order")
    parser.add_argument("--overlays", type=int, default=6, help="number of overlay pictures (default: 6)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _add_training_options(
    parser: argparse.ArgumentParser,
    *,
    prompter: bool = True,
    mode: str = "decoder",
    epochs: int = 20,
    lr_help: str = "Adam learning rate (default: 1e-4 for decoder, 1e-3 for lora)",
    loss: str = "dicefocal",
    batch_size: int = 4,
) -> None:
    """Options shared by ``finetune``, ``crossval`` and ``sammix`` (``sammix``: no ``--prompter``, its own defaults)."""
    parser.add_argument("--segmenter", choices=SEGMENTER_CHOICES, default="litemedsam", help="segmenter to fine-tune (default: litemedsam)")
    parser.add_argument("--checkpoint", type=Path, help="starting weights (default: the bundled LiteMedSAM weights)")
    parser.add_argument("--precision", choices=("fast", "float32"), help="image encoder numerics: fast (bfloat16 where the CPU has it; LiteMedSAM's default) or float32 (exact; SAM/HQ-SAM's default)")
    modes = {"decoder": "decoder (the mask decoder)", "lora": "lora (LoRA adapters on the image encoder's qkv layers; needs peft)"}
    parser.add_argument("--mode", choices=("decoder", "lora"), default=mode,
                        help=f"what trains: {modes['decoder']} or {modes['lora']} (default: {mode})")
    parser.add_argument("--lora-rank", type=int, default=8, help="lora: adapter rank (default: 8)")
    parser.add_argument("--train-decoder", action="store_true", help="lora: also train the mask decoder")
    if prompter:
        parser.add_argument("--prompter", choices=("mean-mask-points", "perturbed-box"), default="mean-mask-points",
                            help="training prompts: mean-mask points fitted on the training split (default) or jittered oracle boxes")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="validation share for early stopping and the threshold sweep (default: 0.2)")
    parser.add_argument("--epochs", type=int, default=epochs, help=f"maximum epochs (default: {epochs})")
    parser.add_argument("--lr", type=float, help=lr_help)
    parser.add_argument("--weight-decay", type=float, default=0.0, help="Adam weight decay (default: 0)")
    parser.add_argument("--loss", choices=("dicefocal", "dice", "dicece"), default=loss, help=f"loss (default: {loss})")
    parser.add_argument("--batch-size", type=int, default=batch_size, help=f"images per optimiser step (default: {batch_size})")
    parser.add_argument("--patience", type=int, default=5, help="early stopping patience in epochs, 0 = off (default: 5)")
    parser.add_argument("--seed", type=int, default=0, help="split, shuffling and jitter seed (default: 0)")
    parser.add_argument("--limit", type=int, help="use only the first N images of DATA_DIR in sorted order")
    parser.add_argument("--cache-dir", type=Path, help="embedding cache folder (default: $MEDSAMKIT_CACHE_DIR or ~/.cache/medsamkit/embeddings)")
    parser.add_argument("--no-cache", action="store_true", help="do not use the embedding cache")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _training_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """FinetuneConfig settings from the shared training options (seed excluded)."""
    overrides: dict[str, Any] = {
        "mode": args.mode,
        "epochs": args.epochs,
        "lr": args.lr if args.lr is not None else (1e-3 if args.mode == "lora" else 1e-4),
        "weight_decay": args.weight_decay,
        "loss": args.loss,
        "batch_size": args.batch_size,
        "patience": args.patience,
    }
    if args.mode == "lora":
        overrides.update(lora_rank=args.lora_rank, train_decoder=args.train_decoder)
    elif args.train_decoder or args.lora_rank != 8:
        raise UsageError("--lora-rank and --train-decoder need --mode lora")
    return overrides


def _segmenter_params(args: argparse.Namespace) -> dict[str, Any]:
    """``--checkpoint`` and ``--precision`` as segmenter constructor arguments (only those given)."""
    params: dict[str, Any] = {}
    if args.checkpoint is not None:
        params["checkpoint"] = args.checkpoint
    if args.precision is not None:
        if args.segmenter == "fake":
            raise UsageError("--precision applies to LiteMedSAM, SAM and HQ-SAM, not to the fake segmenter")
        params["precision"] = args.precision
    return params


def _training_segmenter(args: argparse.Namespace) -> Any:
    """The segmenter to fine-tune, in the embedding cache unless --no-cache (or the fake one)."""
    from .._registry import load_segmenter

    segmenter = load_segmenter(args.segmenter, **_segmenter_params(args))
    if not args.no_cache and args.segmenter != "fake":
        from .._cache import CachedSegmenter, EmbeddingCache

        segmenter = CachedSegmenter(segmenter, EmbeddingCache(args.cache_dir))
    return segmenter


def _add_study_options(parser: argparse.ArgumentParser, *, segmenter_help: str = "segmenter (default: litemedsam)") -> None:
    """Options of the commands that build their segmenter with ``_study_segmenter``."""
    parser.add_argument("--segmenter", choices=SEGMENTER_CHOICES, default="litemedsam", help=segmenter_help)
    parser.add_argument("--checkpoint", type=Path, help="segmenter weights")
    parser.add_argument("--precision", choices=("fast", "float32"), help="image encoder numerics: fast (bfloat16 where the CPU has it; LiteMedSAM's default) or float32 (exact; SAM/HQ-SAM's default)")
    parser.add_argument("--limit", type=int, help="only the first N images in sorted order")
    parser.add_argument("--cache-dir", type=Path, help="embedding cache folder")
    parser.add_argument("--no-cache", action="store_true", help="do not use the embedding cache")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The ``medsamkit`` argument parser."""
    from .. import __version__

    parser = argparse.ArgumentParser(prog="medsamkit", description="Fully automatic medical image segmentation with SAM-family models.")
    parser.add_argument("--version", action="version", version=f"medsamkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ev = sub.add_parser("evaluate", help="segment a folder of images with reference masks and score the masks")
    ev.add_argument("data_dir", type=Path, metavar="DATA_DIR", help="folder with images/ and masks/ sharing file stems")
    ev.add_argument("--out", type=Path, required=True, metavar="OUT_DIR", help="output folder (resumes if it holds a run)")
    ev.add_argument("--spacing", type=float, nargs=2, default=(1.0, 1.0), metavar=("ROW", "COL"), help="pixel size for HD95 (default: 1 1, pixels)")
    ev.add_argument("--overwrite", action="store_true", help="discard previous results in OUT_DIR")
    _add_data_options(ev)
    _add_pipeline_options(ev)

    sg = sub.add_parser("segment", help="segment an image or a folder of images and save the masks")
    sg.add_argument("input", type=Path, metavar="IMAGE_OR_DIR", help="an image file, a folder of images, or a folder with images/")
    sg.add_argument("--out", type=Path, required=True, metavar="OUT_DIR", help="output folder")
    sg.add_argument("--reference-masks", type=Path, metavar="DIR", help="folder of reference masks (same stems) for oracle prompters")
    _add_data_options(sg)
    _add_pipeline_options(sg)

    ft = sub.add_parser("finetune", help="fine-tune the segmenter (mask decoder or LoRA) on a folder, sweep the threshold, evaluate")
    ft.add_argument("data_dir", type=Path, metavar="DATA_DIR", help="folder with images/ and masks/")
    ft.add_argument("--out", type=Path, required=True, metavar="RUN_DIR", help="run folder (resumes if it holds this run)")
    ft.add_argument("--test-fraction", type=float, default=0.2, help="held-out test share, evaluated zero-shot and fine-tuned (default: 0.2)")
    _add_training_options(ft)
    ft.add_argument("--eval-data", type=Path, action="append", default=[], metavar="DIR",
                    help="also evaluate the fine-tuned pipeline on this whole folder (cross-dataset; repeatable)")

    sm = sub.add_parser("sammix", help="SAM-Mix (paper 001): a presence classifier and the segmenter it prompts with CAM boxes, trained together (--two-stage: SAM-PP)")
    sm.add_argument("data_dir", type=Path, nargs="?", metavar="DATA_DIR", help="folder with images/ and masks/, some masks empty (or --data)")
    sm.add_argument("--data", type=Path, metavar="DATA_DIR", help="the same as the positional DATA_DIR")
    sm.add_argument("--out", type=Path, required=True, metavar="RUN_DIR", help="run folder (resumes if it holds this run)")
    sm.add_argument("--two-stage", action="store_true",
                    help="SAM-PP baseline: fit the classifier first, then fine-tune the segmenter separately on jittered oracle boxes")
    sm.add_argument("--labelled", type=int, metavar="N",
                    help="masks of only N random training images with the target train the segmenter (paper: 5, 50, 100; default: all)")
    sm.add_argument("--test-fraction", type=float, default=0.2, help="held-out test share, evaluated at the end (default: 0.2)")
    sm.add_argument("--warmup-epochs", type=int, default=1, help="sam-mix: first epochs in which only the classifier trains (default: 1)")
    sm.add_argument("--box-fallback", choices=("skip", "oracle"), default="skip",
                    help="sam-mix: a labelled image with the target but no CAM box is skipped (default) or gets its oracle box")
    _add_training_options(sm, prompter=False, mode="lora", epochs=10, loss="dice", batch_size=16,
                          lr_help="Adam learning rate of both branches (default: 1e-3, the paper's)")

    cv = sub.add_parser("crossval", help="k-fold cross-validation: fine-tune on each fold, evaluate its held-out images zero-shot and fine-tuned")
    cv.add_argument("data_dir", type=Path, metavar="DATA_DIR", help="folder with images/ and masks/")
    cv.add_argument("--out", type=Path, required=True, metavar="OUT_DIR", help="output folder (finished folds are skipped when run again)")
    cv.add_argument("--k", type=int, default=5, help="number of folds (default: 5)")
    _add_training_options(cv)

    fp = sub.add_parser("fit-prompter", help="fit a learned prompt provider on a training folder and save it")
    fp.add_argument("data_dir", type=Path, metavar="TRAIN_DIR", help="training folder with images/ and masks/ (training images only)")
    fp.add_argument("--prompter", choices=FITTABLE_PROMPTERS, required=True, help="provider to fit")
    fp.add_argument("--out", type=Path, required=True, metavar="FILE", help="where to save it (use with --prompter-state FILE)")
    fp.add_argument("--epochs", type=int, help="training epochs (embedding-head: 40, yolo-box: 100, cam-box: its default)")
    fp.add_argument("--imgsz", type=int, default=640, help="yolo-box: training and prediction image size (default: 640)")
    fp.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    _add_study_options(fp, segmenter_help="embedding-head: whose embedding to read (default: litemedsam)")

    cp = sub.add_parser("compare", help="evaluate the same images with several prompt providers (detector misses vs segmentation error)")
    cp.add_argument("data_dir", type=Path, metavar="DATA_DIR", help="folder with images/ and masks/")
    cp.add_argument("--out", type=Path, required=True, metavar="OUT_DIR", help="study folder (resumable)")
    cp.add_argument("--with", dest="providers", action="append", required=True, metavar="NAME[:KEY=VALUE,...]",
                    help="a prompt provider, e.g. oracle-box, perturbed-box:margin=10, embedding-head:state=head.pt, "
                    "yolo-box:state=yolo.npz, mean-mask-points:state=points.npz (repeatable)")
    cp.add_argument("--threshold", type=float, default=0.5, help="probability threshold (default: 0.5)")
    _add_study_options(cp)

    bm = sub.add_parser("box-margins", help="Dice of oracle boxes grown by several margins (paper 000, Figure 1)")
    bm.add_argument("data_dir", type=Path, metavar="DATA_DIR", help="folder with images/ and masks/")
    bm.add_argument("--out", type=Path, required=True, metavar="OUT_DIR", help="study folder (resumable)")
    bm.add_argument("--margins", type=float, nargs="+", default=[0, 5, 10, 20, 30], help="pixels per side (default: 0 5 10 20 30)")
    _add_study_options(bm)

    demo = sub.add_parser("demo", help="run the main job on sample data with the bundled LiteMedSAM")
    demo.add_argument("--data", type=Path, help=f"a shared data folder holding {', '.join(DEMO_SETS)} (default: $MEDSAMKIT_DATA or the nearest shared/data above the working directory)")
    demo.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (default: out/demo)")
    demo.add_argument("--limit", type=int, default=6, help="images per data set (default: 6)")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _pipeline_from_args(args: argparse.Namespace) -> Any:
    from .. import FillHoles, KeepLargestComponents, Pipeline, Prompts
    from .._registry import build_prompter, load_segmenter

    if args.pipeline is not None:
        return _with_cache(Pipeline.load(args.pipeline), args)
    if args.prompter == "oracle-box":
        prompter = build_prompter("oracle-box", mode=args.box_mode, min_area=args.min_area)
    elif args.prompter == "perturbed-box":
        prompter = build_prompter(
            "perturbed-box", margin=args.margin, jitter=args.jitter, seed=args.seed, mode=args.box_mode, min_area=args.min_area
        )
    elif args.prompter == "mean-mask-points":
        from ..data import MaskFolder
        from ..prompters import MeanMaskPointPrompter

        if args.fit_masks is not None:
            prompter = MeanMaskPointPrompter().fit(MaskFolder(args.fit_masks), progress=not args.no_progress)
        elif args.prompter_state is not None:
            prompter = MeanMaskPointPrompter.load(args.prompter_state)
        else:
            raise UsageError("--prompter mean-mask-points needs --prompter-state FILE.npz or --fit-masks TRAIN_DIR")
    elif args.prompter in ("yolo-box", "cam-box", "embedding-head"):
        if args.prompter_state is None:
            raise UsageError(
                f"--prompter {args.prompter} needs --prompter-state FILE (saved by the prompter's save(); "
                "fit one with: medsamkit fit-prompter TRAIN_DIR --prompter ... --out FILE)"
            )
        prompter = build_prompter(args.prompter, state=args.prompter_state)
    else:
        if not args.box:
            raise UsageError("--prompter fixed needs at least one --box X0 Y0 X1 Y1")
        prompter = build_prompter("fixed", prompts=Prompts(box_xyxy=args.box).to_dict())
    seg_params: dict[str, Any] = {} if args.segmenter == "fake" else {"device": args.device}
    segmenter = load_segmenter(args.segmenter, **seg_params, **_segmenter_params(args))
    post: list[Any] = []
    if args.keep_largest is not None:
        post.append(KeepLargestComponents(args.keep_largest))
    if args.fill_holes:
        post.append(FillHoles())
    pipeline = Pipeline(prompter, segmenter, threshold=args.threshold, combine=args.combine, postprocess=post)
    return _with_cache(pipeline, args)


def _with_cache(pipeline: Any, args: argparse.Namespace) -> Any:
    """Wrap the pipeline's segmenter in the embedding cache unless ``--no-cache``."""
    from .._cache import CachedSegmenter, EmbeddingCache

    if args.no_cache:
        return pipeline
    if not args.cache_size_gb > 0:
        raise UsageError(f"--cache-size-gb: expected a positive number, got {args.cache_size_gb}")
    cache = EmbeddingCache(args.cache_dir, max_bytes=int(args.cache_size_gb * 1024**3))
    return pipeline.replace(segmenter=CachedSegmenter(pipeline.segmenter, cache))


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ..data import MaskFolder
    from ..evaluation import evaluate

    folder = MaskFolder(args.data_dir, images=args.images, masks=args.masks, mask_suffix=args.mask_suffix)
    pipeline = _pipeline_from_args(args)
    report = evaluate(
        pipeline,
        folder,
        out_dir=args.out,
        limit=args.limit,
        spacing=tuple(args.spacing),
        n_overlays=args.overlays,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(report)
    print(f"results: {report.out_dir}")
    if report.n_errors:
        print(f"medsamkit: {report.n_errors} image(s) failed: {', '.join(report.errors)}", file=sys.stderr)
        return 1
    return 0


def _segment_samples(args: argparse.Namespace) -> list[Any]:
    from ..data import IMAGE_SUFFIXES, MaskFolder, Sample

    path: Path = args.input
    if path.is_file():
        samples = [Sample(stem=path.stem, image_path=path)]
    elif (path / args.images).is_dir():
        samples = list(MaskFolder(path, images=args.images, masks=args.masks, mask_suffix=args.mask_suffix, require_masks=False))
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        if not files:
            raise UsageError(f"IMAGE_OR_DIR: expected image files in {path}, found none")
        samples = [Sample(stem=p.stem, image_path=p) for p in files]
    else:
        raise UsageError(f"IMAGE_OR_DIR: {path} does not exist")
    if args.reference_masks is not None:
        matched = []
        for s in samples:
            masks = [p for p in args.reference_masks.glob(f"{s.stem}{args.mask_suffix}.*") if p.suffix.lower() in IMAGE_SUFFIXES]
            matched.append(Sample(stem=s.stem, image_path=s.image_path, mask_path=masks[0] if masks else s.mask_path))
        samples = matched
    if args.limit is not None:
        samples = samples[: args.limit]
    return samples


def _cmd_segment(args: argparse.Namespace) -> int:
    from ..evaluation import segment_images

    samples = _segment_samples(args)
    pipeline = _pipeline_from_args(args)
    if getattr(pipeline.prompter, "requires_target", False) and any(s.mask_path is None for s in samples):
        missing = [s.stem for s in samples if s.mask_path is None][:5]
        raise UsageError(
            f"--prompter {args.prompter} reads reference masks, but none were found for {missing}; "
            "pass --reference-masks DIR, or use --prompter fixed/mean-mask-points"
        )
    report = segment_images(pipeline, samples, out_dir=args.out, n_overlays=args.overlays, progress=not args.no_progress)
    done = sum(1 for r in report.rows if not r.get("error"))
    print(f"segmented {done} image(s); masks in {report.out_dir / 'masks'}")
    if report.errors:
        print(f"medsamkit: {len(report.errors)} image(s) failed: {', '.join(report.errors)}", file=sys.stderr)
        return 1
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    import json

    from .. import Pipeline
    from .._cache import CachedSegmenter
    from ..data import MaskFolder, atomic_write_text, train_val_test_split
    from ..evaluation import evaluate
    from ..training import finetune
    from ..prompters import MeanMaskPointPrompter, OracleBoxPrompter, PerturbedBoxPrompter

    overrides = _training_overrides(args)
    folder = MaskFolder(args.data_dir)
    if args.limit is not None:
        folder = folder.limit(args.limit)
    split = train_val_test_split(folder, val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "split.json", json.dumps(split.to_dict(), indent=2) + "\n")
    print(f"split (seed {args.seed}): {len(split.train)} train, {len(split.val)} val, {len(split.test)} test")
    segmenter = _training_segmenter(args)
    progress = not args.no_progress
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
    tuned = result.pipeline
    if isinstance(segmenter, CachedSegmenter):
        tuned = tuned.replace(segmenter=CachedSegmenter(tuned.segmenter, segmenter.cache))
    failed = 0
    lines = []
    if split.test:
        test = folder.subset(split.test)
        for name, pipe in (("test-zero-shot", zero_shot), ("test-finetuned", tuned)):
            report = evaluate(pipe, test, out_dir=args.out / name, progress=progress)
            failed += report.n_errors
            lines.append((f"{args.data_dir.name} test, {name.split('-', 1)[1]}", report))
    for other in args.eval_data:
        for name, pipe in (("zero-shot", zero_shot), ("finetuned", tuned)):
            report = evaluate(pipe, MaskFolder(other), out_dir=args.out / f"cross-{other.name}-{name}", progress=progress)
            failed += report.n_errors
            lines.append((f"{other.name} (cross-dataset), {name}", report))
    if lines:
        print(f"\n{'evaluation':<44} {'images':>6} {'Dice mean':>10} {'std':>7}")
        for label, report in lines:
            _print_dice_row(label, report)
    print(f"run folder: {args.out.resolve()}  (evaluate again with: medsamkit evaluate DATA --pipeline {args.out})")
    return 1 if failed else 0


def _print_dice_row(label: str, report: Any) -> None:
    """One line of the evaluation tables: label, images, Dice mean and std."""
    d = report.summary["metrics"]["dice"]
    mean = "-" if d["mean"] is None else f"{d['mean']:.4f}"
    std = "-" if d["std"] is None else f"{d['std']:.4f}"
    print(f"{label:<44} {d['n']:>6} {mean:>10} {std:>7}")


def _cmd_sammix(args: argparse.Namespace) -> int:
    import json

    from .. import Pipeline
    from .._cache import CachedSegmenter
    from ..data import MaskFolder, atomic_write_text, train_val_test_split
    from ..evaluation import evaluate
    from ..training import _sammix

    if (args.data_dir is None) == (args.data is None):
        raise UsageError("give the data folder once: as DATA_DIR or with --data")
    data_dir = args.data_dir or args.data
    overrides = _training_overrides(args)
    if args.lr is None:
        overrides.pop("lr")  # SAMMixConfig's default: the paper's 1e-3 for both branches
    if not args.two_stage:
        overrides.update(warmup_epochs=args.warmup_epochs, box_fallback=args.box_fallback)
    folder = MaskFolder(data_dir)
    if args.limit is not None:
        folder = folder.limit(args.limit)
    present = {s.stem: bool(s.load_mask().any()) for s in folder}
    split = train_val_test_split(folder, val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed, stratify=present)
    train = folder.subset(split.train)
    labelled = None if args.labelled is None else _sammix.pick_labelled(train, args.labelled, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "split.json", json.dumps(split.to_dict(), indent=2) + "\n")
    n_labelled = len(split.train) if labelled is None else len(labelled)
    print(f"split (seed {args.seed}, stratified by presence): {len(split.train)} train ({n_labelled} with masks used), "
          f"{len(split.val)} val, {len(split.test)} test")
    segmenter = _training_segmenter(args)
    fit = _sammix.fit_sam_pp if args.two_stage else _sammix.fit_sammix
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
    failed = 0
    if split.test:
        tuned = result.pipeline
        if isinstance(segmenter, CachedSegmenter):
            tuned = tuned.replace(segmenter=CachedSegmenter(tuned.segmenter, segmenter.cache))
        test = folder.subset(split.test)
        print(f"\n{'test images':<44} {'images':>6} {'Dice mean':>10} {'std':>7}")
        for name, label, pipe in (
            ("test-cam-original", "CAM prompts, original segmenter", Pipeline(result.prompter, segmenter)),
            ("test-trained", f"{method}, trained", tuned),
        ):
            report = evaluate(pipe, test, out_dir=args.out / name, progress=not args.no_progress)
            failed += report.n_errors
            _print_dice_row(label, report)
    print(f"run folder: {args.out.resolve()}  (evaluate again with: medsamkit evaluate DATA --pipeline {args.out})")
    return 1 if failed else 0


def _cmd_crossval(args: argparse.Namespace) -> int:
    from ..data import MaskFolder
    from ..training import crossval

    overrides = _training_overrides(args)
    folder = MaskFolder(args.data_dir)
    if args.limit is not None:
        folder = folder.limit(args.limit)
    result = crossval(
        lambda: _training_segmenter(args),
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
    failed = sum(f["settings"][s]["n_errors"] for f in result.folds for s in f["settings"])
    if failed:
        print(f"medsamkit: {failed} held-out evaluation(s) failed; see fold_*/*/metrics.csv", file=sys.stderr)
        return 1
    return 0


def _parse_value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _provider_from_spec(spec: str) -> Any:
    """``name[:key=value,...]`` -> a prompt provider built by the registry."""
    from .._registry import build_prompter

    name, _, rest = spec.partition(":")
    params: dict[str, Any] = {}
    for part in filter(None, rest.split(",")):
        key, sep, value = part.partition("=")
        if not sep:
            raise UsageError(f"--with {spec}: expected KEY=VALUE after the provider name, got {part!r}")
        params[key.strip().replace("-", "_")] = _parse_value(value.strip())
    return build_prompter(name.strip(), **params)


def _study_segmenter(args: argparse.Namespace) -> Any:
    from .._cache import CachedSegmenter, EmbeddingCache
    from .._registry import load_segmenter

    segmenter = load_segmenter(args.segmenter, **_segmenter_params(args))
    return segmenter if args.no_cache else CachedSegmenter(segmenter, EmbeddingCache(args.cache_dir))


def _cmd_fit_prompter(args: argparse.Namespace) -> int:
    import time

    from ..data import MaskFolder

    folder = MaskFolder(args.data_dir)
    if args.limit is not None:
        folder = folder.limit(args.limit)
    progress = not args.no_progress
    start = time.perf_counter()
    if args.prompter == "mean-mask-points":
        from ..prompters import MeanMaskPointPrompter

        prompter = MeanMaskPointPrompter().fit(folder, progress=progress)
    elif args.prompter == "embedding-head":
        from ..prompters import EmbeddingHeadPrompter

        prompter = EmbeddingHeadPrompter().fit(
            _study_segmenter(args), folder, epochs=args.epochs or 40, seed=args.seed, progress=progress
        )
    elif args.prompter == "cam-box":
        from ..prompters import CAMBoxPrompter

        kwargs = {"epochs": args.epochs} if args.epochs else {}
        prompter = CAMBoxPrompter().fit(folder, seed=args.seed, progress=progress, **kwargs)
    else:
        from ..prompters import YOLOBoxPrompter

        prompter = YOLOBoxPrompter(imgsz=args.imgsz).fit(
            folder, epochs=args.epochs or 100, imgsz=args.imgsz, seed=args.seed, progress=progress
        )
    prompter.save(args.out)
    print(f"fitted {args.prompter} on {len(folder)} images in {time.perf_counter() - start:.0f} s; saved {args.out}")
    print(f"use it with: medsamkit evaluate DATA --prompter {args.prompter} --prompter-state {args.out}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from ..data import MaskFolder
    from ..evaluation import compare_prompters

    providers = {spec: _provider_from_spec(spec) for spec in args.providers}
    report = compare_prompters(
        _study_segmenter(args), MaskFolder(args.data_dir), providers, out_dir=args.out, limit=args.limit,
        threshold=args.threshold, progress=not args.no_progress,
    )
    print(report)
    print(f"results: {report.out_dir}")
    return 1 if any(r["errors"] for r in report.table) else 0


def _cmd_box_margins(args: argparse.Namespace) -> int:
    from ..data import MaskFolder
    from ..evaluation import box_margin_study

    report = box_margin_study(
        _study_segmenter(args), MaskFolder(args.data_dir), out_dir=args.out, margins=args.margins, limit=args.limit,
        progress=not args.no_progress,
    )
    print(report)
    print(f"results: {report.out_dir}")
    return 1 if any(r["errors"] for r in report.table) else 0


def find_shared_data(start: Path | None = None) -> Path | None:
    """``$MEDSAMKIT_DATA``, else the nearest ``shared/data`` in the working directory or above."""
    env = os.environ.get("MEDSAMKIT_DATA")
    if env:
        return Path(env)
    start = (start or Path.cwd()).resolve()
    for directory in (start, *start.parents):
        candidate = directory / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return None


def _cmd_demo(args: argparse.Namespace) -> int:
    from .. import OracleBoxPrompter, Pipeline
    from ..data import MaskFolder
    from ..evaluation import evaluate
    from ..segmenters import LiteMedSAM

    data = args.data or find_shared_data()
    if data is None or not data.is_dir():
        raise UsageError(
            "demo: no sample data found; pass --data DIR (a folder holding "
            f"{', '.join(DEMO_SETS)}) or set MEDSAMKIT_DATA"
        )
    sets = [name for name in DEMO_SETS if (data / name / "images").is_dir()]
    if not sets:
        raise UsageError(f"--data: expected sub-folders {', '.join(DEMO_SETS)} in {data}, found none")
    print(f"medsamkit demo: LiteMedSAM (bundled weights) + oracle boxes, {args.limit} images per set from {data}")
    pipeline = Pipeline(OracleBoxPrompter(), LiteMedSAM())
    failed = 0
    results = []
    for name in sets:
        # BUSI's first files in sorted order are all benign; the normal (empty) ones are not in a 6-image demo.
        report = evaluate(pipeline, MaskFolder(data / name), out_dir=args.out / name, limit=args.limit, progress=not args.no_progress)
        failed += report.n_errors
        results.append((name, report))
    print(f"\n{'data set':<16} {'images':>6} {'Dice mean':>10} {'median':>8} {'IoU mean':>9}")
    for name, report in results:
        d, i = report.summary["metrics"]["dice"], report.summary["metrics"]["iou"]
        if d["n"]:
            print(f"{name:<16} {d['n']:>6} {d['mean']:>10.4f} {d['median']:>8.4f} {i['mean']:>9.4f}")
        else:  # every image of the set failed: no statistics (None), still a table row
            print(f"{name:<16} {0:>6} {'-':>10} {'-':>8} {'-':>9}")
    print(f"\ntables, masks, overlays and box plots: {args.out.resolve()}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """Run the ``medsamkit`` command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {
        "evaluate": _cmd_evaluate,
        "segment": _cmd_segment,
        "finetune": _cmd_finetune, "compare": _cmd_compare, "fit-prompter": _cmd_fit_prompter, "box-margins": _cmd_box_margins,
        "crossval": _cmd_crossval,
        "sammix": _cmd_sammix,
        "demo": _cmd_demo,
    }
    try:
        return handlers[args.command](args)
    except UsageError as exc:
        print(f"medsamkit: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError, TypeError, ImportError) as exc:  # OSError: e.g. an unreadable --fit-masks mask; ImportError: an optional package (peft, segment-anything)
        print(f"medsamkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medsamkit: interrupted; finished images are saved, run the same command again to resume", file=sys.stderr)
        return 130

"""Command-line options shared by several commands, each defined once."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Protocol

from ._errors import UsageError

__all__ = [
    "add_data_options",
    "add_pipeline_options",
    "add_progress_option",
    "add_segmenter_options",
    "add_training_options",
    "fittable_prompter_choices",
    "prompter_choices",
    "segmenter_choices",
    "training_overrides",
]


def prompter_choices() -> list[str]:
    """The registered prompt provider names (the registry is the only list of them)."""
    from .._registry import components

    return list(components("prompter"))


def segmenter_choices() -> list[str]:
    """The registered segmenter names."""
    from .._registry import components

    return list(components("segmenter"))


def fittable_prompter_choices() -> list[str]:
    """The registered learned prompt providers (``fit-prompter``)."""
    from .._registry import fittable_prompters

    return list(fittable_prompters())


class _Target(Protocol):
    """An argument parser or an argument group."""

    def add_argument(self, *args: Any, **kwargs: Any) -> Any: ...


def add_segmenter_options(
    parser: _Target,
    *,
    segmenter_help: str = "segmenter (default: litemedsam, weights bundled; fake: weight-free test double)",
    checkpoint_help: str = "segmenter weights (default: the bundled LiteMedSAM weights; "
    "SAM/HQ-SAM also look in $MEDSAMKIT_SAM_CHECKPOINT_DIR)",
    device: bool = False,
) -> None:
    """The options :func:`medsamkit.cli._build.build_segmenter` reads: segmenter, weights, numerics, cache."""
    parser.add_argument("--segmenter", choices=segmenter_choices(), default="litemedsam", help=segmenter_help)
    parser.add_argument("--checkpoint", type=Path, help=checkpoint_help)
    parser.add_argument(
        "--precision",
        choices=("fast", "float32", "int8"),
        help="image encoder numerics: fast (bfloat16 where the CPU has it; LiteMedSAM's default), "
        "float32 (exact; SAM/HQ-SAM's default) or int8 (LiteMedSAM, opt-in, needs --calibration and "
        'pip install "medsamkit[int8]")',
    )
    parser.add_argument(
        "--resize-filter",
        choices=("area", "linear", "pil-bilinear", "pil-bicubic"),
        help="LiteMedSAM: how the image is resized to the 256 px input: area (OpenCV INTER_AREA, the default), "
        "linear (OpenCV INTER_LINEAR), pil-bilinear or pil-bicubic (Pillow, antialiased); see docs/results.md",
    )
    parser.add_argument(
        "--calibration",
        type=Path,
        help="--precision int8: calibration images, a folder of 2D images or a volume (up to 32 of its slices), "
        "given the same intensity steps (--window ...) as the images to segment",
    )
    if device:
        parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument(
        "--cache-dir", type=Path, help="embedding cache folder (default: $MEDSAMKIT_CACHE_DIR or ~/.cache/medsamkit/embeddings)"
    )
    parser.add_argument("--cache-size-gb", type=float, default=2.0, help="embedding cache size bound in GiB (default: 2)")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")


def add_progress_option(parser: _Target) -> None:
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def add_pipeline_options(parser: argparse.ArgumentParser) -> None:
    """The pipeline of ``evaluate`` and ``segment``: prompter, segmenter, threshold, post-processing."""
    group = parser.add_argument_group("pipeline")
    group.add_argument(
        "--prompter", choices=prompter_choices(), default="oracle-box", help="prompt provider (default: oracle-box)"
    )
    add_segmenter_options(group, device=True)
    group.add_argument("--threshold", type=float, default=0.5, help="probability threshold (default: 0.5)")
    group.add_argument("--combine", choices=("union", "best"), default="union", help="how prompt masks combine (default: union)")
    group.add_argument(
        "--box-mode",
        choices=("components", "whole"),
        default="components",
        help="oracle boxes: one per component or one around the mask",
    )
    group.add_argument(
        "--min-area", type=int, default=16, help="oracle boxes: smallest component in pixels that gets a box (default: 16)"
    )
    group.add_argument("--margin", type=float, default=0.0, help="perturbed-box: pixels added to every box side")
    group.add_argument(
        "--jitter", type=float, default=0.0, help="perturbed-box: max random shift of each box coordinate in pixels"
    )
    group.add_argument("--seed", type=int, default=0, help="perturbed-box: jitter seed (default: 0)")
    group.add_argument(
        "--prompter-state",
        type=Path,
        help=f"learned prompters ({', '.join(fittable_prompter_choices())}): the file saved by the prompter's save() "
        "(or medsamkit fit-prompter)",
    )
    group.add_argument(
        "--fit-masks", type=Path, help="mean-mask-points: fit on the masks of this MaskFolder instead of --prompter-state"
    )
    group.add_argument(
        "--box",
        type=float,
        nargs=4,
        action="append",
        metavar=("X0", "Y0", "X1", "Y1"),
        help="fixed: a box in pixels (repeatable)",
    )
    group.add_argument(
        "--refine",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="re-box the prompter's boxes from the segmenter's own masks, at most ROUNDS rounds until stable "
        "(RefinedPrompter; default: 0, off)",
    )
    group.add_argument("--keep-largest", type=int, metavar="N", help="post-process: keep the N largest components")
    group.add_argument("--fill-holes", action="store_true", help="post-process: fill holes")
    # -- intensity steps (issue 11): saved in pipeline.json as "preprocess" --
    group.add_argument(
        "--window",
        metavar="PRESET|L,W",
        help="pre-process: CT window, a preset (abdomen, soft-tissue, liver, lung, bone, brain, mediastinum) or LEVEL,WIDTH in HU",
    )
    group.add_argument(
        "--percentile-clip",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="pre-process: clip each image to these percentiles (MR, ultrasound)",
    )
    group.add_argument("--clahe", action="store_true", help="pre-process: CLAHE (after --window / --percentile-clip)")
    group.add_argument(
        "--pipeline",
        type=Path,
        metavar="DIR_OR_JSON",
        help="rebuild the pipeline from a saved pipeline.json (other pipeline options are ignored)",
    )


def add_volume_options(parser: argparse.ArgumentParser, *, prompts: tuple[str, ...], default: str) -> None:
    """Options for 3D volumes (NIfTI/NRRD/MHA files or DICOM series folders) of ``evaluate`` and ``segment``."""
    group = parser.add_argument_group("volumes (.nii.gz/.nrrd/.mha or DICOM series folders)")
    group.add_argument(
        "--prompt",
        choices=prompts,
        help=f"volume prompt (default: {default}): oracle = per-slice boxes of the reference mask, box3d = one 3D box, "
        "propagate = from the middle slice's box, auto = the --prompter on every slice + 3D consistency",
    )
    group.add_argument("--nsd-tolerance", type=float, default=2.0, metavar="MM", help="NSD tolerance in mm (default: 2)")
    group.add_argument("--label", type=int, help="label to segment in multi-label reference masks (default: any non-zero)")


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """The image folder layout and output options of ``evaluate`` and ``segment``."""
    parser.add_argument("--images", default="images", help="images subfolder (default: images)")
    parser.add_argument("--masks", default="masks", help="masks subfolder (default: masks)")
    parser.add_argument("--mask-suffix", default="", help="mask stem = image stem + this suffix (CXLSeg: -mask)")
    parser.add_argument("--limit", type=int, help="process only the first N images in sorted order")
    parser.add_argument("--overlays", type=int, default=6, help="number of overlay pictures (default: 6)")
    add_progress_option(parser)


def add_training_options(
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
    add_segmenter_options(
        parser,
        segmenter_help="segmenter to fine-tune (default: litemedsam)",
        checkpoint_help="starting weights (default: the bundled LiteMedSAM weights)",
    )
    modes = {
        "decoder": "decoder (the mask decoder)",
        "lora": "lora (LoRA adapters on the image encoder's qkv layers; needs peft)",
    }
    parser.add_argument(
        "--mode",
        choices=("decoder", "lora"),
        default=mode,
        help=f"what trains: {modes['decoder']} or {modes['lora']} (default: {mode})",
    )
    parser.add_argument("--lora-rank", type=int, default=8, help="lora: adapter rank (default: 8)")
    parser.add_argument("--train-decoder", action="store_true", help="lora: also train the mask decoder")
    if prompter:
        parser.add_argument(
            "--prompter",
            choices=("mean-mask-points", "perturbed-box"),
            default="mean-mask-points",
            help="training prompts: mean-mask points fitted on the training split (default) or jittered oracle boxes",
        )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="validation share for early stopping and the threshold sweep (default: 0.2)",
    )
    parser.add_argument("--epochs", type=int, default=epochs, help=f"maximum epochs (default: {epochs})")
    parser.add_argument("--lr", type=float, help=lr_help)
    parser.add_argument("--weight-decay", type=float, default=0.0, help="Adam weight decay (default: 0)")
    parser.add_argument("--loss", choices=("dicefocal", "dice", "dicece"), default=loss, help=f"loss (default: {loss})")
    parser.add_argument("--batch-size", type=int, default=batch_size, help=f"images per optimiser step (default: {batch_size})")
    parser.add_argument("--patience", type=int, default=5, help="early stopping patience in epochs, 0 = off (default: 5)")
    parser.add_argument("--seed", type=int, default=0, help="split, shuffling and jitter seed (default: 0)")
    parser.add_argument("--limit", type=int, help="use only the first N images of DATA_DIR in sorted order")
    add_progress_option(parser)


def training_overrides(args: argparse.Namespace) -> dict[str, Any]:
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

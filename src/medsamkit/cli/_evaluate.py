"""``medsamkit evaluate``: segment a folder of images with reference masks and score the masks."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ._build import pipeline_from_args
from ._checks import add_missing_masks_option, check_data_and_out, check_missing_masks
from ._errors import UsageError
from ._options import add_data_options, add_pipeline_options, add_volume_options

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    ev = sub.add_parser("evaluate", help="segment a folder of images with reference masks and score the masks")
    ev.add_argument(
        "data_dir",
        type=Path,
        metavar="DATA_DIR",
        help="folder with images/ and masks/ sharing file stems (2D images, or volumes: .nii.gz/.nrrd/.mha/DICOM series)",
    )
    ev.add_argument("--out", type=Path, required=True, metavar="OUT_DIR", help="output folder (resumes if it holds a run)")
    ev.add_argument(
        "--spacing",
        type=float,
        nargs=2,
        default=(1.0, 1.0),
        metavar=("ROW", "COL"),
        help="pixel size for HD95 (default: 1 1, pixels)",
    )
    ev.add_argument("--overwrite", action="store_true", help="discard previous results in OUT_DIR")
    add_missing_masks_option(ev)
    add_data_options(ev)
    add_pipeline_options(ev)
    add_volume_options(ev, prompts=("oracle", "box3d", "propagate", "auto"), default="box3d")
    return ev


def run(args: argparse.Namespace) -> int:
    from ..data import MaskFolder, looks_like_volume_folder
    from ..evaluation import EVALUATE_OWNED, evaluate

    if looks_like_volume_folder(args.data_dir, images=args.images):
        return _run_volumes(args)
    if args.prompt is not None or args.label is not None:
        raise UsageError(f"--prompt/--label apply to volume folders; {args.data_dir / args.images} holds 2D images")

    folder = MaskFolder(args.data_dir, images=args.images, masks=args.masks, mask_suffix=args.mask_suffix)
    check_missing_masks(folder, args)  # before the model loads
    check_data_and_out(folder, args.out, owned=EVALUATE_OWNED)
    pipeline = pipeline_from_args(args)
    report = evaluate(
        pipeline,
        folder,
        out_dir=args.out,
        limit=args.limit,
        spacing=tuple(args.spacing),
        n_overlays=args.overlays,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        allow_missing_masks=args.allow_missing_masks,
    )
    print(report)
    print(f"results: {report.out_dir}")
    if report.n_errors:
        print(f"medsamkit: {report.n_errors} image(s) failed: {', '.join(report.errors)}", file=sys.stderr)
        return 1
    return 0


def _run_volumes(args: argparse.Namespace) -> int:
    """``evaluate`` on a folder of volumes (issue 11): per-volume Dice, NSD, HD95 in mm."""
    from ..data import VolumeFolder
    from ..volumes import evaluate_volumes

    folder = VolumeFolder(args.data_dir, images=args.images, masks=args.masks)
    pipeline = pipeline_from_args(args)
    prompt = args.prompt or "box3d"
    if prompt == "auto" and getattr(pipeline.prompter, "requires_target", False):
        raise UsageError("--prompt auto runs the --prompter on every slice; choose an automatic one (not oracle-box/perturbed-box)")
    report = evaluate_volumes(
        pipeline,
        folder,
        out_dir=args.out,
        limit=args.limit,
        prompt=prompt,
        nsd_tolerance=args.nsd_tolerance,
        label=args.label,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(f"{'volume':<24} {'dice':>7} {'nsd':>7} {'hd95 mm':>8} {'s/slice':>8}")
    for row in report.rows:
        if row.get("error"):
            print(f"{row['stem']:<24} error: {row['error']}")
            continue
        cells = [f"{row[k]:.4f}" if row.get(k) is not None else "-" for k in ("dice", "nsd")]
        hd95 = f"{row['hd95']:.2f}" if row.get("hd95") is not None else "-"
        per = f"{row['seconds_per_encoded_slice']:.3f}" if row.get("seconds_per_encoded_slice") is not None else "-"
        print(f"{row['stem']:<24} {cells[0]:>7} {cells[1]:>7} {hd95:>8} {per:>8}")
    print(f"results: {report.out_dir}")
    if report.n_errors:
        print(f"medsamkit: {report.n_errors} volume(s) failed: {', '.join(report.errors)}", file=sys.stderr)
        return 1
    return 0

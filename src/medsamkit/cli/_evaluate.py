"""``medsamkit evaluate``: segment a folder of images with reference masks and score the masks."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._build import pipeline_from_args, volume_pipeline_from_args
from ._checks import add_missing_masks_option, check_data_and_out, check_missing_masks
from ._engine import add_engine_options, engine_from_args
from ._errors import UsageError
from ._options import add_data_options, add_pipeline_options, add_volume_options
from ._output import exit_status

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    ev = sub.add_parser("evaluate", help="segment a folder of images with reference masks and score the masks")
    ev.add_argument(
        "data_dir",
        type=Path,
        metavar="DATA_DIR",
        help="folder with images/ and masks/ sharing file stems (2D images, or volumes: .nii.gz/.nrrd/.mha/DICOM series), or a CSV (.csv, .csv.gz) listing 2D image paths",
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
    table = ev.add_argument_group(
        "CSV listing", "when DATA_DIR is a CSV file (CXLSeg: --image-column path --mask-suffix -mask --stem-column dicom_id)"
    )
    table.add_argument("--image-column", default="image", help="column with the image paths (default: image)")
    table.add_argument("--mask-column", help="column with the mask paths (default: image path + --mask-suffix)")
    table.add_argument("--stem-column", help="column with a unique id per image (default: the image file stem)")
    table.add_argument(
        "--csv-root", type=Path, metavar="DIR", help="folder relative paths start from (default: the CSV's folder)"
    )
    add_missing_masks_option(ev)
    ev.add_argument(
        "--quality",
        action="store_true",
        help="estimate each result's quality (predicted IoU, agreement under box perturbation, presence) into "
        "metrics.csv, and how well it finds failures into summary.json",
    )
    ev.add_argument(
        "--cases-to-check",
        type=int,
        metavar="N",
        help="with --quality: list the N least confident images in OUT_DIR/cases_to_check/ (CSV and overlays)",
    )
    add_data_options(ev)
    add_pipeline_options(ev)
    add_volume_options(ev, prompts=("oracle", "box3d", "propagate", "auto"), default="box3d")
    add_engine_options(ev)
    return ev


def _is_csv(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and (name.endswith(".csv") or name.endswith(".csv.gz"))


def _data(args: argparse.Namespace) -> Any:
    from ..data import CsvSamples, MaskFolder

    if _is_csv(args.data_dir):
        if args.mask_column is None and not args.mask_suffix:
            raise UsageError("--mask-column: a CSV DATA_DIR needs --mask-column or --mask-suffix to find the masks")
        return CsvSamples(
            args.data_dir,
            image_column=args.image_column,
            mask_column=args.mask_column,
            mask_suffix=None if args.mask_column is not None else args.mask_suffix,
            stem_column=args.stem_column,
            root=args.csv_root,
        )
    return MaskFolder(args.data_dir, images=args.images, masks=args.masks, mask_suffix=args.mask_suffix)


def run(args: argparse.Namespace) -> int:
    from ..data import looks_like_volume_folder
    from ..evaluation import EVALUATE_OWNED, evaluate

    engine = engine_from_args(args)
    csv_listing = _is_csv(args.data_dir)
    if not csv_listing and looks_like_volume_folder(args.data_dir, images=args.images):
        return _run_volumes(args, engine)
    if args.prompt is not None or args.label is not None:
        raise UsageError(f"--prompt/--label apply to volume folders; {args.data_dir / args.images} holds 2D images")

    folder = _data(args)
    if args.cases_to_check is not None and (not args.quality or args.cases_to_check < 1):
        raise UsageError(f"--cases-to-check: expected a positive N together with --quality, got {args.cases_to_check}")
    if not csv_listing:
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
        engine=engine,
        quality=args.quality,
    )
    print(report)
    if args.quality:
        detection = report.summary.get("failure_detection", {})
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        print(
            f"failure detection (quality): AUROC Dice<0.8 {fmt(detection.get('auroc_dice_below_0.8'))}, "
            f"Dice<0.7 {fmt(detection.get('auroc_dice_below_0.7'))}; mean Dice {fmt(detection.get('mean_dice'))}, "
            f"after setting aside the {detection.get('n_review', 0)} least confident {fmt(detection.get('mean_dice_after_review'))}"
        )
        if args.cases_to_check:
            from ..evaluation import cases_to_check

            path = cases_to_check(report.out_dir, n=args.cases_to_check, data=folder)
            print(f"cases to check: {path}")
    print(f"results: {report.out_dir}")
    return exit_status(report.errors, "image")


def _run_volumes(args: argparse.Namespace, engine: Any) -> int:
    """``evaluate`` on a folder of volumes (issue 11): per-volume Dice, NSD, HD95 in mm."""
    from ..data import VolumeFolder
    from ..volumes import evaluate_volumes

    folder = VolumeFolder(args.data_dir, images=args.images, masks=args.masks)
    prompt = args.prompt or "box3d"
    pipeline = volume_pipeline_from_args(args, prompt)
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
        engine=engine,
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
    return exit_status(report.errors, "volume")

"""``medsamkit segment``: segment an image or a folder of images and save the masks."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ._build import pipeline_from_args
from ._engine import add_engine_options, engine_from_args
from ._errors import UsageError
from ._options import add_data_options, add_pipeline_options

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    sg = sub.add_parser("segment", help="segment an image or a folder of images and save the masks")
    sg.add_argument(
        "input", type=Path, metavar="IMAGE_OR_DIR", help="an image file, a folder of images, or a folder with images/"
    )
    sg.add_argument("--out", type=Path, required=True, metavar="OUT_DIR", help="output folder")
    sg.add_argument(
        "--reference-masks", type=Path, metavar="DIR", help="folder of reference masks (same stems) for oracle prompters"
    )
    add_data_options(sg)
    add_pipeline_options(sg)
    add_engine_options(sg)
    return sg


def _samples(args: argparse.Namespace) -> list[Any]:
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


def run(args: argparse.Namespace) -> int:
    from ..evaluation import segment_images

    engine = engine_from_args(args)
    samples = _samples(args)
    pipeline = pipeline_from_args(args)
    if getattr(pipeline.prompter, "requires_target", False) and any(s.mask_path is None for s in samples):
        missing = [s.stem for s in samples if s.mask_path is None][:5]
        raise UsageError(
            f"--prompter {args.prompter} reads reference masks, but none were found for {missing}; "
            "pass --reference-masks DIR, or use --prompter fixed/mean-mask-points"
        )
    report = segment_images(
        pipeline, samples, out_dir=args.out, n_overlays=args.overlays, progress=not args.no_progress, engine=engine
    )
    done = sum(1 for r in report.rows if not r.get("error"))
    print(f"segmented {done} image(s); masks in {report.out_dir / 'masks'}")
    if report.errors:
        print(f"medsamkit: {len(report.errors)} image(s) failed: {', '.join(report.errors)}", file=sys.stderr)
        return 1
    return 0

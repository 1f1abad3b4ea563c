"""``medsamkit segment``: segment an image or a folder of images and save the masks."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._build import pipeline_from_args, volume_pipeline_from_args
from ._engine import add_engine_options, engine_from_args
from ._errors import UsageError
from ._options import add_data_options, add_pipeline_options, add_volume_options
from ._output import exit_status

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
    add_volume_options(sg, prompts=("auto", "box3d"), default="auto")
    sg.add_argument(
        "--box3d",
        type=float,
        nargs=6,
        metavar=("X0", "Y0", "Z0", "X1", "Y1", "Z1"),
        help="volumes, --prompt box3d: the 3D box in voxel indices (one input volume)",
    )
    add_engine_options(sg)
    return sg


def _samples(args: argparse.Namespace) -> list[Any]:
    from ..data import MaskFolder, Sample, image_samples, match_masks

    path: Path = args.input
    if path.is_file():
        samples = [Sample(stem=path.stem, image_path=path)]
    elif (path / args.images).is_dir():
        samples = list(MaskFolder(path, images=args.images, masks=args.masks, mask_suffix=args.mask_suffix, require_masks=False))
    elif path.is_dir():
        try:
            samples = image_samples(path)  # refuses case.png + case.jpg: one result would overwrite the other
        except ValueError as exc:
            raise UsageError(f"IMAGE_OR_DIR: {exc}") from None
    else:
        raise UsageError(f"IMAGE_OR_DIR: {path} does not exist")
    if args.reference_masks is not None:
        samples = match_masks(samples, args.reference_masks, mask_suffix=args.mask_suffix)  # exact names
    if args.limit is not None:
        samples = samples[: args.limit]
    return samples


def _volume_samples(args: argparse.Namespace) -> list[Any] | None:
    """The input as volumes (a volume file, a DICOM series folder, or a folder with images/ of volumes), else None."""
    from ..data import VolumeFolder, VolumeSample, is_volume_path, looks_like_volume_folder, volume_stem

    path: Path = args.input
    if looks_like_volume_folder(path, images=args.images):
        samples = list(VolumeFolder(path, images=args.images, masks=args.masks, require_masks=False))
    elif path.exists() and is_volume_path(path) and not (path.is_file() and path.suffix.lower() in (".dcm", ".dicom")):
        samples = [VolumeSample(path.name if path.is_dir() else volume_stem(path.name), path)]
    else:
        return None
    return samples[: args.limit] if args.limit is not None else samples


def _run_volumes(args: argparse.Namespace, samples: list[Any], engine: Any) -> int:
    from ..volumes import segment_volumes

    prompt = args.prompt or "auto"
    boxes = None
    if prompt == "box3d":
        if args.box3d is None or len(samples) != 1:
            raise UsageError("--prompt box3d needs --box3d X0 Y0 Z0 X1 Y1 Z1 and one input volume")
        boxes = {samples[0].stem: list(args.box3d)}
    pipeline = volume_pipeline_from_args(args, prompt)
    report = segment_volumes(
        pipeline, samples, out_dir=args.out, prompt=prompt, box3d=boxes, progress=not args.no_progress, engine=engine
    )
    done = sum(1 for r in report.rows if not r.get("error"))
    print(f"segmented {done} volume(s); masks in {report.out_dir / 'masks'}")
    return exit_status(report.errors, "volume")


def run(args: argparse.Namespace) -> int:
    from .._outdir import check_out_dir, input_folders
    from ..evaluation import SEGMENT_OWNED, segment_images

    engine = engine_from_args(args)
    volumes = _volume_samples(args)
    if volumes is not None:
        return _run_volumes(args, volumes, engine)

    samples = _samples(args)
    inputs = input_folders(samples)
    if args.reference_masks is not None:
        inputs.append(args.reference_masks)
    check_out_dir(args.out, inputs=inputs, owned=SEGMENT_OWNED, name="--out")  # before the model loads
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
    return exit_status(report.errors, "image")

"""``medsamkit compare``: evaluate the same images with several prompt providers."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._build import build_segmenter
from ._checks import add_missing_masks_option
from ._errors import UsageError
from ._options import add_progress_option, add_segmenter_options

__all__ = ["add_parser", "provider_from_spec", "run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    cp = sub.add_parser(
        "compare", help="evaluate the same images with several prompt providers (detector misses vs segmentation error)"
    )
    cp.add_argument("data_dir", type=Path, metavar="DATA_DIR", help="folder with images/ and masks/")
    cp.add_argument("--out", type=Path, required=True, metavar="OUT_DIR", help="study folder (resumable)")
    cp.add_argument(
        "--with",
        dest="providers",
        action="append",
        required=True,
        metavar="NAME[:KEY=VALUE,...]",
        help="a prompt provider, e.g. oracle-box, perturbed-box:margin=10, embedding-head:state=head.pt, "
        "yolo-box:state=yolo.npz, mean-mask-points:state=points.npz (repeatable)",
    )
    cp.add_argument("--threshold", type=float, default=0.5, help="probability threshold (default: 0.5)")
    add_segmenter_options(cp)
    cp.add_argument("--limit", type=int, help="only the first N images in sorted order")
    add_progress_option(cp)
    add_missing_masks_option(cp)
    return cp


def _parse_value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def provider_from_spec(spec: str) -> Any:
    """``name[:key=value,...]`` -> a prompt provider built by the registry."""
    from .. import build_prompter

    name, _, rest = spec.partition(":")
    params: dict[str, Any] = {}
    for part in filter(None, rest.split(",")):
        key, sep, value = part.partition("=")
        if not sep:
            raise UsageError(f"--with {spec}: expected KEY=VALUE after the provider name, got {part!r}")
        params[key.strip().replace("-", "_")] = _parse_value(value.strip())
    return build_prompter(name.strip(), **params)


def run(args: argparse.Namespace) -> int:
    from ..data import MaskFolder
    from ..evaluation import compare_prompters
    from ._checks import check_data_and_out, check_missing_masks

    folder = MaskFolder(args.data_dir)
    check_missing_masks(folder, args)
    check_data_and_out(folder, args.out)
    providers = {spec: provider_from_spec(spec) for spec in args.providers}
    report = compare_prompters(
        build_segmenter(args),
        folder,
        providers,
        out_dir=args.out,
        limit=args.limit,
        threshold=args.threshold,
        progress=not args.no_progress,
        allow_missing_masks=args.allow_missing_masks,
    )
    print(report)
    print(f"results: {report.out_dir}")
    return 1 if any(r["errors"] for r in report.table) else 0

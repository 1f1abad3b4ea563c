"""``--engine ray [--workers N] [--threads-per-worker T] [--ray-address ADDR]`` of ``evaluate`` and ``segment``
(2D folders, CSV listings and volume folders)."""

from __future__ import annotations

import argparse
from typing import Any

from ._errors import UsageError

__all__ = ["add_engine_options", "engine_from_args"]


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """Options choosing where the images are processed (this process, or Ray Data)."""
    group = parser.add_argument_group("engine", "run on Ray Data (pip install medsamkit[ray]; see docs/ray.md)")
    group.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this process (default); ray: Ray Data workers (a local Ray, or the cluster --ray-address/RAY_ADDRESS names)",
    )
    group.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="Ray workers (default: one per GPU with GPUs, else CPUs Ray sees / threads per worker)",
    )
    group.add_argument(
        "--threads-per-worker",
        type=int,
        metavar="T",
        help="CPUs per Ray worker, and the threads its torch/OpenVINO/OpenCV use (default: CPUs / workers with --workers, else 2)",
    )
    group.add_argument(
        "--gpus-per-worker", type=float, metavar="G", help="GPUs per Ray worker (default: 1 when Ray sees GPUs, else 0)"
    )
    group.add_argument("--batch-size", type=int, default=8, metavar="B", help="images per Ray worker call (default: 8)")
    group.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="Ray cluster address, e.g. ray://head:10001 (default: $RAY_ADDRESS, else a local Ray)",
    )


def engine_from_args(args: argparse.Namespace) -> Any:
    """``"local"`` or a :class:`~medsamkit.RayEngine` from the options."""
    ray_only = {
        "--workers": args.workers,
        "--threads-per-worker": args.threads_per_worker,
        "--gpus-per-worker": args.gpus_per_worker,
        "--ray-address": args.ray_address,
    }
    if args.engine == "local":
        given = [name for name, value in ray_only.items() if value is not None]
        if given:
            raise UsageError(f"{given[0]}: only used with --engine ray, got --engine local")
        return "local"
    from ..evaluation import RayEngine

    return RayEngine(
        workers=args.workers,
        threads_per_worker=args.threads_per_worker,
        gpus_per_worker=args.gpus_per_worker,
        address=args.ray_address,
        batch_size=args.batch_size,
    )

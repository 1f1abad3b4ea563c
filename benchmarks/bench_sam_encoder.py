"""SAM / HQ-SAM image encoder: float32 reference vs ``precision="fast"`` (bfloat16).

Run: .venv/bin/python benchmarks/bench_sam_encoder.py [--model-type vit_b] [--checkpoint FILE] [--hq] [--images 4]

Without ``--checkpoint`` the full-size architecture is built with random weights
(``torch.manual_seed(0)``): the official weights cannot be downloaded here, and the
speed does not depend on the values; the agreement figures then describe the
numerics of a random network, not Dice on real masks. With a checkpoint the same
figures are printed for the real model. Prints the build time of the fast encoder
(conversion, then cached on disk), per-image median encoder times of both, the
speed-up, the relative error of the embedding, and the agreement of the
thresholded masks of one oracle box per chest X-ray (``../shared/data/cxr-shenzhen``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from pathlib import Path

import numpy as np


def main() -> None:
    import torch

    import medsamkit as msk
    from medsamkit.segmenters import _sam

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    parser.add_argument("--model-type", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
    parser.add_argument("--checkpoint", type=Path, help="official SAM / HQ-SAM weights (default: random weights)")
    parser.add_argument("--hq", action="store_true", help="HQ-SAM instead of SAM")
    parser.add_argument("--images", type=int, default=4, help="chest X-rays to time (default 4)")
    args = parser.parse_args()

    cls = msk.HQSAM if args.hq else msk.SAM
    family = _sam._HQ if args.hq else _sam._SAM
    if args.checkpoint:
        exact = cls(args.model_type, checkpoint=args.checkpoint)
        fast = cls(args.model_type, checkpoint=args.checkpoint, precision="fast")
        weights = str(args.checkpoint)
    else:
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = _sam._import(family).sam_model_registry[args.model_type](checkpoint=None).eval()
        exact, fast = cls(args.model_type, model=model), cls(args.model_type, model=model, precision="fast")
        weights = "random (seed 0)"
    load = os.getloadavg()
    print(
        f"{cls.__name__} {args.model_type}, weights {weights}; torch threads {torch.get_num_threads()}, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    start = time.perf_counter()
    backend = fast.encoder_backend  # builds (converts or reads the converted model, compiles)
    print(f"fast encoder: backend {backend!r}, built in {time.perf_counter() - start:.1f} s; model_id {fast.model_id}")

    folder = msk.MaskFolder(args.data / "cxr-shenzhen").limit(args.images)
    times: dict[str, list[float]] = {"float32": [], "fast": []}
    errors, agreement = [], []
    for sample in folder:
        image, mask = sample.load()
        encodings = {}
        for name, seg in (("float32", exact), ("fast", fast)):
            t = time.perf_counter()
            encodings[name] = seg.encode(image)
            times[name].append(time.perf_counter() - t)
        a, b = encodings["float32"].features, encodings["fast"].features
        a, b = (a[0], b[0]) if isinstance(a, tuple) else (a, b)
        errors.append(float((b - a).norm() / a.norm()))
        box = msk.Prompts(box_xyxy=msk.mask_to_xyxy(mask)[None])
        p32 = exact.decode(encodings["float32"], box).probabilities[0] > 0.5
        p16 = fast.decode(encodings["fast"], box).probabilities[0] > 0.5
        agreement.append(float(np.mean(p32 == p16)))
    m32, m16 = statistics.median(times["float32"]), statistics.median(times["fast"])
    print(f"encode, median of {len(folder)} images: float32 {m32:.2f} s, fast {m16:.2f} s, speed-up {m32 / m16:.1f}x")
    print(f"embedding relative error (fast vs float32): mean {np.mean(errors):.4f}, max {np.max(errors):.4f}")
    print(f"mask pixel agreement, one box per image: mean {np.mean(agreement):.4f}, min {np.min(agreement):.4f}")


if __name__ == "__main__":
    main()

"""Time of slice-by-slice volume segmentation: per volume, per encoded slice, cold vs warm cache.

Run from the repository root:

    .venv/bin/python benchmarks/bench_volume.py \
        [--image ../shared/data/volumes/pyradiomics_lung_ct/images/lung2.nii.gz] \
        [--mask ../shared/data/volumes/pyradiomics_lung_ct/masks/lung2.nii.gz] \
        [--prompt box3d] [--window lung] [--precision fast]

LiteMedSAM (bundled weights) segments the volume with the given volume prompt
(drawn from the reference mask) and intensity window, three times:

1. no cache (the model was already built and run once on a dummy slice, so weight
   loading and compilation are not counted);
2. through an empty embedding cache (cold: every slice encoded and stored);
3. the same again (warm: every encoding read from the cache).

Prints seconds per volume and per encoded slice, the warm speed-up, and Dice, NSD
(2 mm) and HD95 (mm) of run 1 (identical across runs, checked). Not a test: timings
depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import medsamkit as msk
from medsamkit._intensity import parse_window
from medsamkit.data import read_volume
from medsamkit.metrics import volume_metrics
from medsamkit.volumes import segment_volume, volume_prompt

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "volumes" / "pyradiomics_lung_ct"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image", type=Path, default=DATA / "images" / "lung2.nii.gz")
    parser.add_argument("--mask", type=Path, default=DATA / "masks" / "lung2.nii.gz")
    parser.add_argument("--prompt", default="box3d", choices=["oracle", "box3d", "propagate"])
    parser.add_argument("--window", default="lung", help="preset name or LEVEL,WIDTH")
    parser.add_argument("--precision", default="fast", choices=["fast", "float32"])
    args = parser.parse_args()

    image = read_volume(args.image)
    target = read_volume(args.mask).array > 0
    print(
        f"volume {args.image.name}: {image.shape} (D, H, W), spacing {image.spacing} mm; prompt {args.prompt}, window {args.window}"
    )
    segmenter = msk.LiteMedSAM(precision=args.precision)
    pipe = msk.Pipeline(msk.OracleBoxPrompter(), segmenter, preprocess=[parse_window(args.window)])
    segmenter.encode(np.zeros((image.shape[1], image.shape[2]), np.uint8))  # build/compile once, not counted

    runs = []
    with tempfile.TemporaryDirectory() as cache_dir:
        for name, cache in (("no cache", None), ("cold cache", cache_dir), ("warm cache", cache_dir)):
            prompt = volume_prompt(args.prompt, target=target)
            start = time.perf_counter()
            result = segment_volume(pipe, image, prompt, cache=cache)
            seconds = time.perf_counter() - start
            runs.append((name, seconds, result))
            n = len(result.encoded_slices)
            print(
                f"{name:<11} {seconds:7.2f} s/volume  {n} encoded slices  {seconds / max(n, 1):6.3f} s/encoded slice"
                f"  cache hits {result.cache_hits}"
            )
    masks = [r.mask.array for _, _, r in runs]
    assert all(np.array_equal(masks[0], m) for m in masks[1:]), "cached runs must give the same mask"
    print(f"warm-cache speed-up over no cache: {runs[0][1] / runs[2][1]:.1f}x")
    metrics = volume_metrics(masks[0], target, spacing=image.spacing, nsd_tolerance=2.0)
    print("Dice {dice:.4f}  NSD(2 mm) {nsd:.4f}  HD95 {hd95:.2f} mm  ASD {asd:.2f} mm".format(**metrics))


if __name__ == "__main__":
    main()

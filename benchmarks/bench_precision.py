"""Speed and Dice of LiteMedSAM's opt-in int8 encoder against the default (bf16), image by image.

Run from the repository root:

    .venv/bin/python benchmarks/bench_precision.py [--data ../shared/data] [--float32]

Two segmenters in one process: ``precision="fast"`` (the default, OpenVINO bf16 on
a CPU with AVX-512 BF16) and ``precision="int8"`` (NNCF post-training quantization,
calibrated on the set below). Every image is encoded by both, interleaved
(bf16, int8, bf16, int8, ...) so load from other processes hits both alike; the
speed figure is the median of the per-image ratios ``bf16 time / int8 time``.
Masks come from oracle boxes (``OracleBoxPrompter``, one box per component, as
``medsamkit evaluate --prompter oracle-box``); Dice against the reference masks.

Evaluation sets (fixed, sorted file names):

* cxr-shenzhen: the last 20 images;
* us-busi: ``benign_001``-``benign_020`` and ``malignant_001``-``malignant_020``;
* ct-chaos-liver: all 20 slices;
* lung2 (pyradiomics, lung window): one 3D box around the tumour (``box3d``), volume Dice.

Calibration set (disjoint from all of them, 24 images): the first 8 cxr-shenzhen
images, 4 benign and 4 malignant BUSI images from number 101 on, and 8 lung2 slices
outside the tumour's z-range (lung window). The liver CT gets no images of its own
in the calibration set. ``--float32`` adds the exact reference encoder (slow).
``--scheme`` quantizes with another NNCF recipe than the default ``INT8_SCHEME``
(options of :func:`medsamkit.segmenters._int8.quantize_openvino_model`, e.g.
``ptq1+ends``); ``--sets`` evaluates some of the sets only (``lung2`` is the volume).
Not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

import medsamkit as msk
from medsamkit._intensity import parse_window
from medsamkit.data import read_volume
from medsamkit.metrics import dice, volume_metrics
from medsamkit.volumes import segment_volume, volume_prompt

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LUNG = ("volumes/pyradiomics_lung_ct/images/lung2.nii.gz", "volumes/pyradiomics_lung_ct/masks/lung2.nii.gz")


def _images(folder: Path) -> list[str]:
    return sorted(p.stem for p in (folder / "images").glob("*.png"))


def evaluation_sets(data: Path) -> dict[str, list[str]]:
    busi = _images(data / "us-busi")
    return {
        "cxr-shenzhen": _images(data / "cxr-shenzhen")[-20:],
        "us-busi": [s for s in busi if s.startswith("benign_")][:20] + [s for s in busi if s.startswith("malignant_")][:20],
        "ct-chaos-liver": _images(data / "ct-chaos-liver"),
    }


def calibration_images(data: Path) -> list[np.ndarray]:
    """The benchmark's calibration set (see the module docstring), as the segmenter receives it."""
    busi = _images(data / "us-busi")
    stems = [("cxr-shenzhen", s) for s in _images(data / "cxr-shenzhen")[:8]]
    stems += [("us-busi", s) for s in [s for s in busi if s.startswith("benign_")][100:104]]
    stems += [("us-busi", s) for s in [s for s in busi if s.startswith("malignant_")][100:104]]
    images = [msk.read_image(data / name / "images" / f"{stem}.png") for name, stem in stems]
    volume = read_volume(data / LUNG[0])
    target = read_volume(data / LUNG[1]).array > 0
    z = np.flatnonzero(target.any(axis=(1, 2)))
    outside = [k for k in range(volume.shape[0]) if k < z.min() - 2 or k > z.max() + 2]
    window = parse_window("lung")
    images += [window(volume.array[k]) for k in outside[:: max(len(outside) // 8, 1)][:8]]
    return images


def _load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--float32", action="store_true", help="also the exact float32 reference")
    parser.add_argument("--scheme", default=None, help="NNCF recipe of the int8 encoder (default: INT8_SCHEME)")
    parser.add_argument("--sets", default=None, help="comma-separated subset of cxr-shenzhen,us-busi,ct-chaos-liver,lung2")
    args = parser.parse_args()
    if args.scheme:
        from medsamkit.segmenters import _int8

        _int8.INT8_SCHEME = args.scheme  # read when quantizing and in the calibration digest (so in the model id)
    chosen = None if args.sets is None else set(args.sets.split(","))
    print(_load(), f"({os.cpu_count()} cores)")

    start = time.perf_counter()
    calibration = calibration_images(args.data)
    segs: dict[str, Any] = {"bf16": msk.LiteMedSAM(), "int8": msk.LiteMedSAM(precision="int8", calibration=calibration)}
    if args.float32:
        segs["float32"] = msk.LiteMedSAM(precision="float32")
    warm = np.zeros((256, 256), np.uint8)
    for seg in segs.values():
        seg.encode(warm)  # build (convert, quantize on a cache miss, compile)
    print(f"built in {time.perf_counter() - start:.1f} s; calibration {len(calibration)} images")
    for name, seg in segs.items():
        print(f"  {name}: {seg.model_id} ({seg.encoder_backend})")

    times: dict[str, list[float]] = {n: [] for n in segs}
    for set_name, stems in evaluation_sets(args.data).items():
        if chosen is not None and set_name not in chosen:
            continue
        pipes = {n: msk.Pipeline(msk.OracleBoxPrompter(), s) for n, s in segs.items()}
        scores: dict[str, list[float]] = {n: [] for n in segs}
        for stem in stems:
            image = msk.read_image(args.data / set_name / "images" / f"{stem}.png")
            mask = msk.read_mask(args.data / set_name / "masks" / f"{stem}.png")
            for n, seg in segs.items():
                t0 = time.perf_counter()
                encoding = seg.encode(image)
                times[n].append(time.perf_counter() - t0)
                out = pipes[n](image, target=mask, encoding=encoding)
                scores[n].append(dice(out.mask, mask))
        base = np.array(scores["bf16"])
        line = f"{set_name:<15} n={len(stems):>3}  bf16 mean Dice {base.mean():.4f}"
        for n in segs:
            if n != "bf16":
                other = np.array(scores[n])
                line += (
                    f" | {n} {other.mean():.4f} (change {other.mean() - base.mean():+.4f}, "
                    f"largest per image {np.abs(other - base).max():.3f})"
                )
        print(line, flush=True)

    if chosen is not None and "lung2" not in chosen:
        _summary(times)
        return
    volume = read_volume(args.data / LUNG[0])
    target = read_volume(args.data / LUNG[1]).array > 0
    window = parse_window("lung")
    line = "lung2 box3d    "
    for n, seg in segs.items():
        pipe = msk.Pipeline(msk.OracleBoxPrompter(), seg, preprocess=[window])
        result = segment_volume(pipe, volume, volume_prompt("box3d", target=target))
        m = volume_metrics(result.mask.array, target, spacing=volume.spacing, nsd_tolerance=2.0)
        line += f" | {n}: Dice {m['dice']:.4f} NSD(2 mm) {m['nsd']:.4f}"
    print(line)
    _summary(times)


def _summary(times: dict[str, list[float]]) -> None:
    if not times["bf16"]:
        print(_load())
        return
    ratios = [b / i for b, i in zip(times["bf16"], times["int8"], strict=True)]
    print(
        f"encode time per image (incl. preprocessing), {len(ratios)} images: median bf16 "
        f"{statistics.median(times['bf16']) * 1000:.0f} ms, int8 {statistics.median(times['int8']) * 1000:.0f} ms; "
        f"median per-image ratio bf16/int8 {statistics.median(ratios):.2f}x "
        f"(quartiles {np.percentile(ratios, 25):.2f}-{np.percentile(ratios, 75):.2f})"
    )
    if "float32" in times:
        print(f"float32 median {statistics.median(times['float32']) * 1000:.0f} ms")
    print(_load())


if __name__ == "__main__":
    main()

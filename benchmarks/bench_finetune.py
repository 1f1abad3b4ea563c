"""Wall time of decoder-only fine-tuning of LiteMedSAM: about 40 images, 20 epochs.

Run from the repository root:

    .venv/bin/python benchmarks/bench_finetune.py [--images 40] [--epochs 20]

Not a test. Prints the time spent encoding the training images (once; an embedding
cache makes a second run skip it) and the time of the training epochs themselves
(mean-mask points, batch 4, no early stopping, no validation), on this machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import medsamkit as msk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cxr-shenzhen"
    )
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()

    folder = msk.MaskFolder(args.data).limit(args.images)
    points = msk.MeanMaskPointPrompter().fit(folder)
    seg = msk.LiteMedSAM()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(folder)} images, {args.epochs} epochs")
    with tempfile.TemporaryDirectory() as tmp:
        cached = msk.CachedSegmenter(seg, Path(tmp) / "cache")
        start = time.perf_counter()
        for sample in folder:
            cached.encode(sample.load_image())
        encode_s = time.perf_counter() - start
        start = time.perf_counter()
        result = msk.finetune(
            cached,
            folder,
            None,
            out_dir=Path(tmp) / "run",
            prompter=points,
            epochs=args.epochs,
            patience=0,
            progress=False,
        )
        train_s = time.perf_counter() - start
    per_epoch = [h["seconds"] for h in result.history]
    print(f"encoding {len(folder)} images once : {encode_s:7.1f} s")
    print(
        f"fine-tuning {args.epochs} epochs       : {train_s:7.1f} s  ({train_s / 60:.1f} min; "
        f"median epoch {sorted(per_epoch)[len(per_epoch) // 2]:.1f} s)"
    )
    print(f"final training loss            : {result.history[-1]['train_loss']:.4f}")


if __name__ == "__main__":
    main()

"""Issue 13, validation only: the embedding head at the full embedding resolution (``pool=1``, 64 x 64 for
LiteMedSAM) against the default (``pool=2``), both fitted on the 550 training images of ``automatic_hard.py``.
Run from the repository root::

    .venv/bin/python benchmarks/automatic_hard_pool1.py --out runs/auto-ft --cache /tmp/s2auto-cache
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import medsamkit as msk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from automatic_hard import benchmark_parser, busi_split, cached_litemedsam  # noqa: E402


def main() -> None:
    parser = benchmark_parser(__doc__.splitlines()[0], "runs/auto-ft")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    seg = cached_litemedsam(args.cache)
    folder = msk.MaskFolder(args.data / "us-busi")
    train, val, _, _, _ = busi_split(folder, 0)
    path = args.out / "heads" / "head-550-pool1.pt"
    if path.is_file():
        head = msk.EmbeddingHeadPrompter.load(path)
    else:
        start = time.perf_counter()
        head = msk.EmbeddingHeadPrompter(pool=1).fit(
            folder.subset(train), segmenter=seg, val=folder.subset(val), epochs=40, seed=0
        )
        print(f"pool=1 head fitted in {time.perf_counter() - start:.0f} s; presence {head.presence_calibration}")
        head.save(path)
    base = msk.EmbeddingHeadPrompter.load(args.out / "heads" / "head-550.pt")
    providers = {"head pool 2": base, "head pool 1": head}
    print(msk.compare_prompters(seg, folder.subset(val), providers, out_dir=args.out / "val-pool1", progress=False))


if __name__ == "__main__":
    main()

"""Issue 13: test-time flip averaging of the embedding head's coarse map (``EmbeddingHeadPrompter(test_flip=True)``).

The 550-image head of ``automatic_hard.py`` (``OUT/heads/head-550.pt``, presence calibrated on the
validation images); the mirrored images are encoded too (cached). Validation first, then ``--test``
(the 150 test images, with the original decoder and with the decoder of
``decoder_on_auto_prompts.py``'s ``ft-auto`` run). Run from the repository root::

    .venv/bin/python benchmarks/automatic_hard_flip_tta.py --out runs/auto-ft --cache /tmp/s2auto-cache
    .venv/bin/python benchmarks/automatic_hard_flip_tta.py --out runs/auto-ft --cache /tmp/s2auto-cache --test
"""

from __future__ import annotations

import sys
from pathlib import Path

import medsamkit as msk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from automatic_hard import benchmark_parser, busi_split, cached_litemedsam  # noqa: E402
from decoder_on_auto_prompts import tuned_copy  # noqa: E402


def main() -> None:
    parser = benchmark_parser(__doc__.splitlines()[0], "runs/auto-ft")
    parser.add_argument("--test", action="store_true")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    seg = cached_litemedsam(args.cache)
    folder = msk.MaskFolder(args.data / "us-busi")
    _, val, test, _, _ = busi_split(folder, 0)
    path = args.out / "heads" / "head-550.pt"
    head, tta = msk.EmbeddingHeadPrompter.load(path), msk.EmbeddingHeadPrompter.load(path, test_flip=True)
    if not args.test:
        providers = {"head": head, "head + test flip": tta}
        print(msk.compare_prompters(seg, folder.subset(val), providers, out_dir=args.out / "val-testflip", progress=False))
        return
    providers = {"head + test flip": tta, "head + test flip + refine 5%": msk.RefinedPrompter(tta, margin_fraction=0.05)}
    print(msk.compare_prompters(seg, folder.subset(test), providers, out_dir=args.out / "test-testflip", progress=False))
    tuned, what = tuned_copy(seg, args.out / "ft-auto")
    print(f"ft-auto decoder: {what}")
    refined = {"head + test flip + refine 5%, ft-auto decoder": msk.RefinedPrompter(tta, margin_fraction=0.05)}
    print(
        msk.compare_prompters(
            tuned, folder.subset(test), refined, out_dir=args.out / "test-testflip-ftauto", quality=True, progress=False
        )
    )


if __name__ == "__main__":
    main()

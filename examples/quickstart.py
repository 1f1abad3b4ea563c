"""Segment chest X-ray lungs with oracle boxes and the bundled LiteMedSAM, then score them.

Run from the repository root:  .venv/bin/python examples/quickstart.py
"""

from pathlib import Path

import medsamkit as msk

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cxr-montgomery"


def main() -> None:
    folder = msk.MaskFolder(DATA)
    seg = msk.LiteMedSAM()
    pipe = msk.Pipeline(msk.OracleBoxPrompter(), seg, postprocess=[msk.KeepLargestComponents(2)])

    image, mask = folder[0].load()
    encoding = seg.encode(image)  # the expensive step, done once
    for threshold in (0.4, 0.5, 0.6):
        result = pipe.replace(threshold=threshold)(image, target=mask, encoding=encoding)
        print(f"threshold {threshold}: Dice {msk.metrics.dice(result.mask, mask):.4f}")

    # Mean-mask points need no reference mask at inference: fit on training masks only.
    split = msk.train_val_test_split(folder, val_fraction=0.0, test_fraction=0.3, seed=0)
    points = msk.MeanMaskPointPrompter().fit(folder.subset(split.train))
    auto = msk.Pipeline(points, seg)
    report = msk.evaluate(auto, folder.subset(split.test), out_dir="out/quickstart-points", progress=False)
    print(report)


if __name__ == "__main__":
    main()

"""Fully automatic prompting vs oracle boxes on the shared sets (issue: automatic prompting).

For each data set: a seeded split, every learned prompt provider fitted on the
training images only (timed), then one ``compare_prompters`` study on the held-out
images with LiteMedSAM: oracle boxes, oracle boxes grown by 10 px, mean-mask points,
the embedding head, YOLO boxes and CAM boxes. Prints paper 000's table (mean /
median / std of Dice, precision, recall, F1) with the detection breakdown.

Run from the repository root (about an hour on 2 CPU cores, most of it YOLO):

    .venv/bin/python benchmarks/automatic_prompting.py --out runs/automatic [--skip yolo cam]

Study folders are resumable; fitted providers are saved in OUT/<set>/providers/ and
reused on a second run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import medsamkit as msk
from medsamkit.data import train_val_test_split


def _stratify(folder: msk.MaskFolder) -> dict[str, str]:
    """Empty vs non-empty reference mask (keeps BUSI's normal images in every split)."""
    return {s.stem: ("empty" if not s.load_mask().any() else "target") for s in folder}


def _fit(name: str, path: Path, fit, load):
    if path.is_file():
        print(f"  {name}: loaded {path}")
        return load(path)
    start = time.perf_counter()
    provider = fit()
    seconds = time.perf_counter() - start
    provider.save(path)
    print(f"  {name}: fitted in {seconds:.0f} s")
    (path.parent / f"{path.stem}.seconds").write_text(f"{seconds:.1f}\n")
    return provider


def run(data: Path, name: str, out: Path, *, n_train: int, n_test: int | None, seed: int, skip: set[str]) -> None:
    folder = msk.MaskFolder(data / name)
    labels = _stratify(folder) if name == "us-busi" else None
    test_fraction = 0.2 if n_test is None else min(0.9, n_test / len(folder))
    split = train_val_test_split(folder, val_fraction=0.0, test_fraction=test_fraction, seed=seed, stratify=labels)
    train_stems = split.train
    if n_train < len(train_stems):  # a seeded, stratified subset of the training part
        keep = 1 - n_train / len(train_stems)
        sub = {k: v for k, v in labels.items() if k in set(train_stems)} if labels else None
        train_stems = train_val_test_split(train_stems, val_fraction=0.0, test_fraction=keep, seed=seed, stratify=sub).train
    train = folder.subset(train_stems)
    test = folder.subset(split.test)
    print(f"{name}: fit on {len(train)} images, test on {len(test)} (seed {seed})")
    seg = msk.CachedSegmenter(msk.LiteMedSAM())
    providers_dir = out / name / "providers"
    providers_dir.mkdir(parents=True, exist_ok=True)
    providers = {"oracle boxes": msk.OracleBoxPrompter(), "oracle boxes +10 px": msk.PerturbedBoxPrompter(margin=10)}
    with_target = [s for s in train if labels is None or labels[s.stem] == "target"]
    providers["mean-mask points"] = _fit(
        "mean-mask points",
        providers_dir / "points.npz",
        lambda: msk.MeanMaskPointPrompter().fit(with_target),
        msk.MeanMaskPointPrompter.load,
    )
    providers["embedding head"] = _fit(
        "embedding head",
        providers_dir / "head.pt",
        lambda: msk.EmbeddingHeadPrompter().fit(train, segmenter=seg, progress=True),
        msk.EmbeddingHeadPrompter.load,
    )
    if "yolo" not in skip:
        from medsamkit.prompters import YOLOBoxPrompter

        providers["YOLO boxes"] = _fit(
            "YOLO boxes",
            providers_dir / "yolo.npz",
            lambda: YOLOBoxPrompter(imgsz=256).fit(train, epochs=60, imgsz=256, seed=seed, work_dir=providers_dir / "yolo-work"),
            YOLOBoxPrompter.load,
        )
    if "cam" not in skip:
        try:
            from medsamkit.prompters._cam import CAMBoxPrompter
        except ImportError as exc:  # pragma: no cover - optional provider
            print(f"  CAM boxes skipped: {exc}")
        else:
            providers["CAM boxes"] = _fit(
                "CAM boxes", providers_dir / "cam.pt", lambda: CAMBoxPrompter().fit(train), CAMBoxPrompter.load
            )
    report = msk.compare_prompters(seg, test, providers, out_dir=out / name / "study")
    print(report)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=Path("runs/automatic"))
    parser.add_argument("--sets", nargs="+", default=["cxr-shenzhen", "us-busi"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", nargs="*", default=[], choices=["yolo", "cam"])
    args = parser.parse_args()
    for name in args.sets:
        if name == "us-busi":
            run(args.data, name, args.out, n_train=100, n_test=150, seed=args.seed, skip=set(args.skip))
        else:
            run(args.data, name, args.out, n_train=10**6, n_test=None, seed=args.seed, skip=set(args.skip))


if __name__ == "__main__":
    main()

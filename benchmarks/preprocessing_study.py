"""Issue 13: LiteMedSAM's input preprocessing (resize filter, intensity scaling) and test-time input ensembles.

Oracle-box Dice (one box per 8-connected component of the reference mask, min area 16,
threshold 0.5, union of the prompts; LiteMedSAM, bundled weights, default fast encoder)
per preprocessing variant, paired per image against the default (``resize_filter="area"``,
min-max scaling):

* resize filters: ``linear``, ``pil-bilinear``, ``pil-bicubic`` (``LiteMedSAM(resize_filter=...)``);
* intensity: ``percentile`` = ``PercentileClip(0.5, 99.5)`` before the segmenter (then area);
* test-time ensembles, decoder logits averaged (full-resolution logits, threshold at 0):
  ``ens-area+pil`` over {area, pil-bilinear} (2 encodings), ``ens-flip`` over {image,
  horizontal flip} (2 encodings; the flipped logits are flipped back), ``ens-area+pil+flip``
  (3 encodings). ``flip`` alone is the flipped image's result, flipped back.

Sets (``--data``, default ``../shared/data``): cxr-shenzhen (a seeded sample of ``--samples``
= 40 of 59), cxr-montgomery (all 13), ct-chaos-liver (all 20), us-busi lesion images (benign +
malignant, a seeded sample of 40 of 647), lung2 tumour slices (``volumes/pyradiomics_lung_ct``,
every slice whose mask is not empty, lung window L-600/W1500).

Embeddings are cached per variant (the model id names the filter) under ``--cache`` (not
the repository); per-image rows are appended to ``OUT/per_image.csv``, so a re-run resumes.
``OUT/summary.json`` and ``OUT/summary.csv``: per set and variant the mean Dice, the mean
paired difference to the default with a bootstrap 95 % CI (10 000 resamples, seed 0), the
images better / worse / tied, and the encoder time. ``--variants`` computes some variants
first (the rest on a later run, same ``--out``). Run from the repository root::

    nice -n 5 .venv/bin/python benchmarks/preprocessing_study.py --out runs/preprocessing --cache /tmp/s4pre-prep-cache \
        --variants area pil-bilinear flip percentile ens-area+pil ens-flip ens-area+pil+flip
    nice -n 5 .venv/bin/python benchmarks/preprocessing_study.py --out runs/preprocessing --cache /tmp/s4pre-prep-cache
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

import medsamkit as msk

FILTERS = ("area", "linear", "pil-bilinear", "pil-bicubic")
SINGLE = (*FILTERS, "percentile", "flip")
ENSEMBLES = {
    "ens-area+pil": ("area", "pil-bilinear"),
    "ens-flip": ("area", "flip"),
    "ens-area+pil+flip": ("area", "pil-bilinear", "flip"),
}
VARIANTS = (*SINGLE, *ENSEMBLES)
COLUMNS = ["set", "image", "variant", "dice", "prompts", "preprocess_s", "encode_s", "cached"]


def load_sets(data: Path, samples: int, seed: int) -> dict[str, list[tuple[str, Any]]]:
    """``set -> [(name, loader)]``; a loader returns ``(image uint8, mask bool)``."""
    sets: dict[str, list[tuple[str, Any]]] = {}
    for name in ("cxr-shenzhen", "cxr-montgomery", "ct-chaos-liver", "us-busi"):
        folder = data / name
        stems = sorted(p.name for p in (folder / "images").glob("*.png") if not p.name.startswith("normal_"))
        if name in ("cxr-shenzhen", "us-busi") and len(stems) > samples:
            rng = np.random.default_rng(seed)
            stems = [stems[i] for i in sorted(rng.choice(len(stems), size=samples, replace=False))]
        sets[name] = [(s, _file_loader(folder, s)) for s in stems]
    vol_dir = data / "volumes" / "pyradiomics_lung_ct"
    image = msk.read_volume(vol_dir / "images" / "lung2.nii.gz").array
    mask = msk.read_volume(vol_dir / "masks" / "lung2.nii.gz").array > 0
    window = msk.Window.preset("lung")
    sets["lung2-tumour"] = [
        (f"lung2_z{z:02d}", (lambda z=z: (window(image[z]), mask[z]))) for z in range(mask.shape[0]) if mask[z].any()
    ]
    return sets


class Timed:
    """Records the wall time of the wrapped segmenter's last ``encode`` (called on cache misses only)."""

    def __init__(self, seg: Any) -> None:
        self.seg, self.model_id, self.device, self.last = seg, seg.model_id, seg.device, None

    def encode(self, image: np.ndarray) -> Any:
        t0 = time.perf_counter()
        encoding = self.seg.encode(image)
        self.last = time.perf_counter() - t0
        return encoding


def _file_loader(folder: Path, name: str) -> Any:
    return lambda: (msk.read_image(folder / "images" / name), msk.read_mask(folder / "masks" / name) > 0)


def flip_prompts(prompts: msk.Prompts, width: int) -> msk.Prompts:
    """Boxes (inclusive pixel coordinates) of the horizontally flipped image."""
    box = np.asarray(prompts.box_xyxy, dtype=np.float32).copy()
    box[:, [0, 2]] = (width - 1) - box[:, [2, 0]]
    return msk.Prompts(box_xyxy=box)


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    inter = float(np.logical_and(pred, target).sum())
    total = float(pred.sum() + target.sum())
    return 1.0 if total == 0 else 2.0 * inter / total


def full_logits(seg: Any, encoding: Any, prompts: msk.Prompts) -> np.ndarray:
    """``(N, H, W)`` float32 decoder logits at the image's size (crop, bilinear upsampling; no sigmoid)."""
    import torch

    logits, _ = seg.decode_low_res(encoding, prompts)
    with torch.inference_mode():
        return seg.postprocess_logits(logits, encoding)[:, 0].float().numpy()


def bootstrap_ci(diff: np.ndarray, n: int = 10_000, seed: int = 0) -> tuple[float, float]:
    if diff.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(n, diff.size))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def run(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    rows_path = args.out / "per_image.csv"
    done: set[tuple[str, str, str]] = set()
    if rows_path.exists():
        with rows_path.open() as f:
            done = {(r["set"], r["image"], r["variant"]) for r in csv.DictReader(f)}
    else:
        with rows_path.open("w", newline="") as f:
            csv.writer(f).writerow(COLUMNS)
    cache = msk.EmbeddingCache(args.cache, max_bytes=int(args.cache_gb * 1024**3))
    segs = {f: msk.LiteMedSAM(resize_filter=f) for f in FILTERS}
    timers = {f: Timed(s) for f, s in segs.items()}
    cached = {f: msk.CachedSegmenter(timers[f], cache) for f in FILTERS}
    print({f: s.model_id for f, s in segs.items()}, flush=True)
    prompter = msk.OracleBoxPrompter()
    clip = msk.PercentileClip(0.5, 99.5)
    sets = load_sets(args.data, args.samples, args.seed)
    wanted = args.sets or list(sets)
    variants = [v for v in VARIANTS if v in args.variants]
    for set_name in wanted:
        items = sets[set_name]
        print(f"{set_name}: {len(items)} images, variants {variants}", flush=True)
        for k, (name, load) in enumerate(items):
            todo = [v for v in variants if (set_name, name, v) not in done]
            if not todo:
                continue
            # Ensembles need their members' logits (re-decoded from cached encodings when done earlier).
            needed = [v for v in SINGLE if v in todo or any(v in ENSEMBLES[e] for e in todo if e in ENSEMBLES)]
            t_img = time.perf_counter()
            image, mask = load()
            prompts = msk.prompts_for(prompter, image, target=mask)
            h, w = mask.shape
            inputs = {f: (f, image) for f in FILTERS}
            inputs["percentile"] = ("area", clip(image))
            inputs["flip"] = ("area", np.ascontiguousarray(image[:, ::-1]))
            logits: dict[str, np.ndarray] = {}
            rows = []
            for variant in needed:
                f, img = inputs[variant]
                seg = segs[f]
                t0 = time.perf_counter()
                seg.preprocess(img)
                prep = time.perf_counter() - t0
                timers[f].last = None
                encoding = cached[f].encode(img)
                enc_s = timers[f].last
                hit = enc_s is None
                enc_s = float("nan") if enc_s is None else enc_s
                p = flip_prompts(prompts, w) if variant == "flip" else prompts
                lg = full_logits(seg, encoding, p)
                logits[variant] = lg[:, :, ::-1] if variant == "flip" else lg
                if variant in todo:
                    rows.append([set_name, name, variant, None, prompts.n, f"{prep:.5f}", f"{enc_s:.4f}", int(hit)])
            for ens, members in ENSEMBLES.items():
                if ens in todo:
                    logits[ens] = np.mean([logits[m] for m in members], axis=0)
                    rows.append([set_name, name, ens, None, prompts.n, "", "", ""])
            for row in rows:
                row[3] = f"{dice((logits[row[2]] > 0).any(axis=0), mask):.6f}"
            with rows_path.open("a", newline="") as f:
                csv.writer(f).writerows(rows)
            d = " ".join(f"{r[2]} {float(r[3]):.4f}" for r in rows)
            print(f"  [{k + 1}/{len(items)}] {name}: {d} ({time.perf_counter() - t_img:.1f} s)", flush=True)
    summarize(args.out, {name: {n for n, _ in items} for name, items in sets.items()})


def summarize(out: Path, keep: dict[str, set[str]] | None = None) -> dict[str, Any]:
    """Tables from ``OUT/per_image.csv``; ``keep``: ``set -> image names`` to use (the current sample)."""
    with (out / "per_image.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if keep is None or r["image"] in keep.get(r["set"], ())]
    sets = list(dict.fromkeys(r["set"] for r in rows))
    table: dict[str, Any] = {}
    enc_times = [float(r["encode_s"]) for r in rows if r["encode_s"] not in ("", "nan") and r["cached"] == "0"]
    enc_median = float(np.median(enc_times)) if enc_times else float("nan")
    enc_by_variant: dict[str, list[float]] = {}
    for r in rows:
        if r["encode_s"] not in ("", "nan") and r["cached"] == "0":
            enc_by_variant.setdefault(r["variant"], []).append(float(r["encode_s"]))
    for s in sets:
        by: dict[str, dict[str, float]] = {}
        prep: dict[str, list[float]] = {}
        for r in rows:
            if r["set"] == s:
                by.setdefault(r["variant"], {})[r["image"]] = float(r["dice"])
                if r["preprocess_s"]:
                    prep.setdefault(r["variant"], []).append(float(r["preprocess_s"]))
        base = by["area"]
        table[s] = {}
        for v in VARIANTS:
            if v not in by:
                continue
            names = sorted(set(base) & set(by[v]))
            a = np.array([base[n] for n in names])
            b = np.array([by[v][n] for n in names])
            diff = b - a
            lo, hi = bootstrap_ci(diff)
            encodings = len(ENSEMBLES[v]) if v in ENSEMBLES else 1
            table[s][v] = {
                "images": len(names),
                "dice_mean": float(b.mean()),
                "diff_mean": float(diff.mean()),
                "diff_median": float(np.median(diff)),
                "diff_ci95": [lo, hi],
                "better": int((diff > 0).sum()),
                "worse": int((diff < 0).sum()),
                "tied": int((diff == 0).sum()),
                "encodings": encodings,
                "preprocess_ms_median": float(np.median(prep[v]) * 1000) if v in prep else None,
            }
    verdict = {}
    for v in VARIANTS:
        if v == "area":
            continue
        # Only a variant measured on every image of every set can win.
        per_set = [table[s][v] for s in sets if v in table[s] and table[s][v]["images"] == table[s]["area"]["images"]]
        complete = len(per_set) == len(sets)
        no_worse = all(t["diff_ci95"][1] >= 0 and t["diff_mean"] >= 0 for t in per_set)
        some_sure = any(t["diff_ci95"][0] > 0 for t in per_set)
        verdict[v] = {
            "complete": complete,
            "wins_everywhere": bool(complete and no_worse and some_sure),
            "sets_ci_above_zero": [s for s in sets if v in table[s] and table[s][v]["diff_ci95"][0] > 0],
            "sets_ci_below_zero": [s for s in sets if v in table[s] and table[s][v]["diff_ci95"][1] < 0],
            "sets_mean_below_zero": [s for s in sets if v in table[s] and table[s][v]["diff_mean"] < 0],
        }
    summary = {
        "encode_s_median_uncached": enc_median,
        "encoded_uncached": len(enc_times),
        "encode_s_median_by_variant": {v: float(np.median(t)) for v, t in enc_by_variant.items()},
        "sets": table,
        "verdict": verdict,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    with (out / "summary.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["set", "variant", "images", "dice_mean", "diff_mean", "diff_median", "ci_low", "ci_high", "better", "worse", "tied"]
            + ["encodings"]
        )
        for s in sets:
            for v, t in table[s].items():
                w.writerow(
                    [s, v, t["images"], f"{t['dice_mean']:.4f}", f"{t['diff_mean']:+.4f}", f"{t['diff_median']:+.4f}"]
                    + [f"{t['diff_ci95'][0]:+.4f}"]
                    + [f"{t['diff_ci95'][1]:+.4f}", t["better"], t["worse"], t["tied"], t["encodings"]]
                )
    for s in sets:
        print(f"\n{s} ({table[s]['area']['images']} images)")
        for v, t in table[s].items():
            print(
                f"  {v:18s} Dice {t['dice_mean']:.4f}  diff {t['diff_mean']:+.4f} (median {t['diff_median']:+.4f}) "
                f"[{t['diff_ci95'][0]:+.4f}, {t['diff_ci95'][1]:+.4f}]  better/worse/tied {t['better']}/{t['worse']}/{t['tied']}"
            )
    print(f"\nmedian encode time (uncached, {len(enc_times)} encodings): {enc_median:.3f} s")
    print(json.dumps(verdict, indent=1))
    (out / "summary.md").write_text(markdown(summary))
    return summary


def markdown(summary: dict[str, Any]) -> str:
    """One table (sets as rows, variants as columns) of ``mean Δ [95 % CI], better/worse`` and one of Dice."""
    sets = list(summary["sets"])
    variants = [v for v in VARIANTS if all(v in summary["sets"][s] for s in sets)]
    lines = ["| set (images) | default Dice | " + " | ".join(v for v in variants if v != "area") + " |"]
    lines.append("|---" * (len(variants) + 1) + "|")
    for s in sets:
        t = summary["sets"][s]
        cells = [f"{s} ({t['area']['images']})", f"{t['area']['dice_mean']:.4f}"]
        for v in variants:
            if v == "area":
                continue
            x = t[v]
            lo, hi = x["diff_ci95"]
            cells.append(f"{x['diff_mean']:+.4f} [{lo:+.4f}, {hi:+.4f}] {x['better']}/{x['worse']}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"| variant | encoder passes per image | encode (s, median of the uncached, all sets) | preprocess (ms, median, {sets[0]}) "
        "| wins everywhere |"
    )
    lines.append("|---|---|---|---|---|")
    first = summary["sets"][sets[0]]
    enc = summary["encode_s_median_by_variant"]
    for v in variants:
        prep = first[v]["preprocess_ms_median"]
        won = "(default)" if v == "area" else str(summary["verdict"][v]["wins_everywhere"])
        prep_text = "-" if prep is None else f"{prep:.1f}"
        enc_text = f"{enc[v]:.2f}" if v in enc else "-"
        lines.append(f"| {v} | {first[v]['encodings']} | {enc_text} | {prep_text} | {won} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("runs/preprocessing"))
    parser.add_argument("--cache", type=Path, default=Path("/tmp/s4pre-prep-cache"))
    parser.add_argument("--cache-gb", type=float, default=8.0)
    parser.add_argument(
        "--samples", type=int, default=40, help="images sampled (seeded) from cxr-shenzhen and the us-busi lesion images"
    )
    parser.add_argument(
        "--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), help="variants to compute (the default always is)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sets", nargs="*", help="only these sets (default: all)")
    parser.add_argument("--summary-only", action="store_true", help="only recompute the summary from OUT/per_image.csv")
    args = parser.parse_args()
    if args.summary_only:
        sets = load_sets(args.data, args.samples, args.seed)
        summarize(args.out, {name: {n for n, _ in items} for name, items in sets.items()})
    else:
        run(args)


if __name__ == "__main__":
    main()

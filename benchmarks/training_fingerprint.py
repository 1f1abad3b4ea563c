"""A fingerprint of short training runs, to check that a refactor leaves results unchanged.

Run: .venv/bin/python benchmarks/training_fingerprint.py [--lora] > after.json

Trains, on synthetic presence images (``medsamkit.testing.make_presence_folder``:
8 training and 4 validation images, 64 x 80) with the real LiteMedSAM and one torch
thread: ``finetune`` (decoder, 3 epochs, the images with the target), ``fit_sammix``
(decoder, 3 epochs), ``fit_sam_pp`` (decoder, 2 epochs) and with ``--lora`` a
2-epoch LoRA ``finetune``. Prints, as JSON, each run's history (without the
seconds), best epoch, swept threshold and sweep, and a SHA-256 prefix of the saved
``model.pth`` weights. Run it on two versions of the code and compare the outputs
(``diff before.json after.json``): identical means the same numbers and weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path

import torch

import medsamkit as msk
from medsamkit.testing import make_presence_folder
from medsamkit.training import finetune, fit_sam_pp, fit_sammix

SMALL_CLASSIFIER = {"input_size": 64, "width": 8, "depth": 3, "classifier_lr": 1e-2, "batch_size": 4}


def _digest(run_dir: Path) -> str:
    state = torch.load(Path(run_dir) / "model.pth", map_location="cpu", weights_only=True)
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].float().numpy().tobytes())
    return h.hexdigest()[:16]


def _summary(result, sweep: bool = True) -> dict:
    out = {
        "history": [{k: v for k, v in row.items() if k != "seconds"} for row in result.history],
        "best_epoch": result.best_epoch,
        "threshold": result.threshold,
        "weights": _digest(result.run_dir),
    }
    if sweep:
        out["sweep"] = result.sweep
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lora", action="store_true", help="also a 2-epoch LoRA finetune (needs peft)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="medsamkit-fingerprint-"))
    train = make_presence_folder(root / "train", 8, size_hw=(64, 80), seed=0)
    val = make_presence_folder(root / "val", 4, size_hw=(64, 80), seed=1000)
    seg = msk.LiteMedSAM()
    positive = [s for s in train if s.load()[1].any()]
    out = {
        "finetune": _summary(finetune(seg, positive, val, out_dir=root / "ft", epochs=3, batch_size=2, progress=False)),
        "sammix": _summary(
            fit_sammix(
                seg,
                train,
                val,
                out_dir=root / "sm",
                epochs=3,
                warmup_epochs=1,
                mode="decoder",
                progress=False,
                **SMALL_CLASSIFIER,
            )
        ),
        "sam_pp": _summary(
            fit_sam_pp(seg, train, val, out_dir=root / "pp", epochs=2, mode="decoder", progress=False, **SMALL_CLASSIFIER)
        ),
    }
    if args.lora:
        lora = finetune(seg, positive[:3], val[:2], out_dir=root / "lora", epochs=2, batch_size=2, mode="lora", progress=False)
        out["lora"] = _summary(lora, sweep=False)
    print(json.dumps(out, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()

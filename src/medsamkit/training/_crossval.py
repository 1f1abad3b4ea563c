"""k-fold cross-validation of fine-tuning (paper 002: 5 folds, metrics as mean ± std over folds).

Every image is held out exactly once. For each fold the training part is split again
into training and validation images (early stopping, threshold sweep); the mean-mask
prompter is fitted on the training images only; the held-out images are evaluated
with the starting model (zero-shot) and with the fine-tuned one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._protocols import PromptProvider, Segmenter

if TYPE_CHECKING:  # pragma: no cover
    from .._pipeline import Pipeline

__all__ = ["CROSSVAL_PROMPTERS", "CROSSVAL_SETTINGS", "CrossvalResult", "crossval"]

CROSSVAL_PROMPTERS = ("mean-mask-points", "perturbed-box")
"""Prompt set-ups: ``mean-mask-points`` (fitted on each fold's training images, for training
and evaluation) or ``perturbed-box`` (jittered oracle boxes for training, exact oracle boxes
for evaluation)."""

CROSSVAL_SETTINGS = ("zero-shot", "finetuned")
"""The two evaluations of each fold's held-out images."""

FOLD_FILE = "fold.json"
RUN_FILE = "crossval_run.json"
_FOLD_COLUMNS = ("fold", "setting", "n_images", "dice", "iou", "precision", "recall", "f1", "hd95", "best_epoch", "threshold")


@dataclass
class CrossvalResult:
    """What :func:`crossval` produced.

    Attributes:
        out_dir: The cross-validation folder.
        folds: One record per fold (the ``fold_<i>/fold.json`` contents): stems of
            its parts, best epoch, threshold, and per setting the mean of each metric
            over the held-out images (``"settings"``) and the per-image Dice (``"dice"``).
        summary: The ``crossval.json`` contents: per setting and metric ``mean``,
            ``std`` (population, over folds) and ``per_fold`` values.
    """

    out_dir: Path
    folds: list[dict[str, Any]]
    summary: dict[str, Any]

    def mean(self, metric: str = "dice", setting: str = "finetuned") -> float | None:
        """Mean over folds of the fold means of ``metric``."""
        return self.summary["metrics"][setting][metric]["mean"]

    def std(self, metric: str = "dice", setting: str = "finetuned") -> float | None:
        """Standard deviation (population) over folds of the fold means of ``metric``."""
        return self.summary["metrics"][setting][metric]["std"]

    def __str__(self) -> str:
        metrics = ("dice", "iou", "hd95")
        lines = [f"{self.summary['k']}-fold cross-validation ({len(self.folds)} folds done), mean ± std over folds"]
        lines.append(f"{'setting':<12}" + "".join(f"{m:>20}" for m in metrics))
        for setting in CROSSVAL_SETTINGS:
            cells = []
            for metric in metrics:
                stats = self.summary["metrics"][setting][metric]
                cells.append("-" if stats["mean"] is None else f"{stats['mean']:.4f} ± {stats['std']:.4f}")
            lines.append(f"{setting:<12}" + "".join(f"{c:>20}" for c in cells))
        return "\n".join(lines)


def _metric_names() -> tuple[str, ...]:
    from ..evaluation import METRIC_COLUMNS

    return METRIC_COLUMNS


def _as_folder(folder: Any) -> Any:
    from ..data import MaskFolder

    if isinstance(folder, (str, Path)):
        return MaskFolder(folder)
    if not (hasattr(folder, "subset") and hasattr(folder, "stems")):
        raise TypeError(f"folder: expected a MaskFolder or a folder path, got {type(folder).__name__}")
    return folder


def _factory(segmenter_factory: Any) -> Callable[[], Any]:
    # A segmenter instance first: segmenters are callable too (one-shot ``seg(image, boxes=...)``).
    if not isinstance(segmenter_factory, type) and hasattr(segmenter_factory, "encode"):
        return lambda: segmenter_factory  # finetune leaves it unchanged, reuse it
    if callable(segmenter_factory):
        return segmenter_factory
    raise TypeError(
        "segmenter_factory: expected a callable returning a segmenter (e.g. medsamkit.LiteMedSAM) "
        f"or a segmenter, got {type(segmenter_factory).__name__}"
    )


def _prompters(kind: str, folder: Any, seed: int, progress: bool) -> tuple[PromptProvider, PromptProvider]:
    """(training prompter, evaluation prompter)."""
    from ..prompters import (
        MeanMaskPointPrompter,
        OracleBoxPrompter,
        PerturbedBoxPrompter,
    )

    if kind == "mean-mask-points":
        fitted = MeanMaskPointPrompter().fit(folder, progress=progress)
        return fitted, fitted
    return PerturbedBoxPrompter(jitter_fraction=0.1, seed=seed), OracleBoxPrompter()


def _same_cache(pipeline: Pipeline, segmenter: Segmenter) -> Pipeline:
    """The fine-tuned pipeline with the embedding cache of the starting segmenter, if it had one."""
    from .._cache import CachedSegmenter

    if isinstance(segmenter, CachedSegmenter):
        return pipeline.replace(segmenter=CachedSegmenter(pipeline.segmenter, segmenter.cache))
    return pipeline


def _setting_record(report: Any) -> dict[str, Any]:
    metrics = report.summary["metrics"]
    record = {name: metrics[name]["mean"] for name in _metric_names()}
    record["n_images"] = report.summary["counts"]["evaluated"]
    record["n_errors"] = report.n_errors
    return record


def _stats(values: list[float | None]) -> dict[str, Any]:
    defined = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not defined:
        return {"mean": None, "std": None, "per_fold": values}
    return {"mean": float(np.mean(defined)), "std": float(np.std(defined)), "per_fold": values}


def _summary(run: dict[str, Any], folds: list[dict[str, Any]]) -> dict[str, Any]:
    metrics = {
        setting: {name: _stats([f["settings"][setting][name] for f in folds]) for name in _metric_names()}
        for setting in CROSSVAL_SETTINGS
    }
    images = {setting: int(sum(f["settings"][setting]["n_images"] for f in folds)) for setting in CROSSVAL_SETTINGS}
    return {
        **run,
        "folds_done": [f["fold"] for f in folds],
        "std": "population standard deviation over folds of the per-fold means",
        "metrics": metrics,
        "n_images": images,
        "folds": [
            {
                "fold": f["fold"],
                "best_epoch": f["best_epoch"],
                "best_val_dice": f["best_val_dice"],
                "threshold": f["threshold"],
                **{setting: f["settings"][setting] for setting in CROSSVAL_SETTINGS},
            }
            for f in folds
        ],
    }


def _write_tables(out_dir: Path, run: dict[str, Any], folds: list[dict[str, Any]]) -> dict[str, Any]:
    from ..data import atomic_write_text, csv_text
    from ..evaluation import save_grouped_boxplot

    rows = [
        {
            "fold": f["fold"],
            "setting": setting,
            **f["settings"][setting],
            "best_epoch": f["best_epoch"] if setting == "finetuned" else None,
            "threshold": f["threshold"] if setting == "finetuned" else None,
        }
        for f in folds
        for setting in CROSSVAL_SETTINGS
    ]
    atomic_write_text(out_dir / "crossval.csv", csv_text(rows, _FOLD_COLUMNS))
    summary = _summary(run, folds)
    atomic_write_text(out_dir / "crossval.json", json.dumps(summary, indent=2) + "\n")
    if folds:
        groups = {setting: [d for f in folds for d in f["dice"][setting].values()] for setting in CROSSVAL_SETTINGS}
        shown = []
        for setting in CROSSVAL_SETTINGS:
            stats = summary["metrics"][setting]["dice"]
            if stats["mean"] is not None:
                shown.append(f"{setting} {stats['mean']:.3f} ± {stats['std']:.3f}")
        save_grouped_boxplot(
            out_dir / "crossval_boxplot.png",
            groups,
            ylabel="Dice (held-out images)",
            title=f"{run['k']}-fold CV, {len(folds)} folds: " + ", ".join(shown),
        )
    return summary


def _per_image_dice(report: Any) -> dict[str, float]:
    return {r["stem"]: r["dice"] for r in report.rows if not r.get("error") and r.get("dice") is not None}


def crossval(
    segmenter_factory: Any,
    folder: Any,
    *,
    k: int = 5,
    out_dir: str | Path,
    prompter: str = "mean-mask-points",
    seed: int = 0,
    val_fraction: float = 0.2,
    progress: bool = True,
    **finetune_overrides: Any,
) -> CrossvalResult:
    """k-fold cross-validation of :func:`finetune`: zero-shot and fine-tuned scores per fold.

    The images are dealt into ``k`` folds (:func:`~medsamkit.data.kfold_splits`). For
    fold ``i``, its training part is split again (seeded) into training and
    ``val_fraction`` validation images; the prompters are set up from the training
    images (``prompter``, see :data:`CROSSVAL_PROMPTERS`); the held-out images are
    evaluated zero-shot, the segmenter is fine-tuned, and the held-out images are
    evaluated again with the fine-tuned pipeline.

    Writes into ``out_dir``:

    * ``fold_<i>/split.json`` (train / val / test stems), ``fold_<i>/zero-shot/`` and
      ``fold_<i>/finetuned/`` (:func:`~medsamkit.evaluation.evaluate` folders),
      ``fold_<i>/finetune/`` (the fine-tuning run folder, :func:`finetune`) and
      ``fold_<i>/fold.json`` (the fold's results; it marks the fold as done).
    * ``crossval.csv``: one row per fold and setting with the mean of each metric
      over the fold's held-out images (and the fine-tuned best epoch and threshold).
    * ``crossval.json``: per setting and metric the mean and standard deviation
      (population) over folds and the per-fold values; the settings of the run.
    * ``crossval_boxplot.png``: per-image Dice of the held-out images, one box per
      setting (every image once, pooled over folds).
    * ``crossval_run.json``: the settings, to refuse resuming a different run.

    The tables are rewritten after every fold. Running again with the same
    ``out_dir`` and settings skips the folds that are done and resumes the others
    (their fine-tuning and evaluations resume on their own).

    Args:
        segmenter_factory: A callable returning the segmenter to start from, called
            once for each fold that still needs work (e.g. ``medsamkit.LiteMedSAM``,
            or a lambda wrapping it in a ``CachedSegmenter``); a segmenter is also
            accepted and reused for every fold (:func:`finetune` leaves it unchanged).
        folder: A :class:`~medsamkit.MaskFolder` or its path.
        k: Number of folds (paper 002: 5).
        out_dir: Output folder.
        prompter: ``"mean-mask-points"`` or ``"perturbed-box"``.
        seed: Seed of the folds, the inner validation split, the training shuffles
            and the box jitter.
        val_fraction: Share of each fold's training part used for validation, in ``[0, 1)``
            (0: no validation: no early stopping, threshold 0.5).
        progress: Show progress bars.
        **finetune_overrides: :class:`FinetuneConfig` settings (``epochs=5``,
            ``mode="lora"``, ``lr=1e-3``, ...).

    Returns:
        A :class:`CrossvalResult`.

    Raises:
        ValueError: On bad settings, or if ``out_dir`` holds a different cross-validation.
    """
    from .._pipeline import Pipeline
    from ..data import atomic_write_text, kfold_splits, train_val_test_split
    from ..evaluation import evaluate
    from ._engine import FinetuneConfig, finetune

    make_segmenter = _factory(segmenter_factory)
    folder = _as_folder(folder)
    if prompter not in CROSSVAL_PROMPTERS:
        raise ValueError(f"prompter: expected one of {list(CROSSVAL_PROMPTERS)}, got {prompter!r}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction: expected a number in [0, 1), got {val_fraction!r}")
    config = FinetuneConfig(seed=seed, **finetune_overrides)  # bad settings fail before any work
    folds = kfold_splits(folder, k=k, seed=seed)
    out_dir = Path(out_dir)
    run = {
        "k": int(k),
        "seed": int(seed),
        "prompter": prompter,
        "val_fraction": float(val_fraction),
        "finetune": config.record(),
        "stems": list(folder.stems),
    }
    from .._outdir import claim_out_dir, input_folders

    claim_out_dir(out_dir, inputs=input_folders(folder))
    run_path = out_dir / RUN_FILE
    if run_path.is_file() and json.loads(run_path.read_text()) != run:
        raise ValueError(
            f"out_dir: {out_dir} holds another cross-validation (different data, folds, prompter or "
            "fine-tuning settings); use a new folder"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_path, json.dumps(run, indent=2) + "\n")
    run_info = {key: value for key, value in run.items() if key != "stems"}

    done: list[dict[str, Any]] = []
    model_id: str | None = None
    for fold in folds:
        fold_dir = out_dir / f"fold_{fold.index}"
        fold_path = fold_dir / FOLD_FILE
        if fold_path.is_file():
            record = json.loads(fold_path.read_text())
            if record["test"] != list(fold.val):
                raise ValueError(f"out_dir: {fold_path} belongs to another split; use a new folder")
            done.append(record)
            model_id = model_id or record["segmenter"]
            continue
        inner = train_val_test_split(fold.train, val_fraction=val_fraction, test_fraction=0.0, seed=seed)
        split = {"train": list(inner.train), "val": list(inner.val), "test": list(fold.val)}
        atomic_write_text(fold_dir / "split.json", json.dumps(split, indent=2) + "\n")
        segmenter = make_segmenter()
        this_id = getattr(segmenter, "model_id", type(segmenter).__name__)
        if model_id is not None and this_id != model_id:
            raise ValueError(f"segmenter_factory: fold {fold.index} got model {this_id!r}, but other folds used {model_id!r}")
        model_id = this_id
        if progress:
            print(f"fold {fold.index + 1}/{len(folds)}: {len(inner.train)} train, {len(inner.val)} val, {len(fold.val)} held out")
        train = folder.subset(inner.train)
        val = folder.subset(inner.val) if inner.val else None
        test = folder.subset(fold.val)
        train_prompter, eval_prompter = _prompters(prompter, train, seed, progress)
        zero_shot = evaluate(Pipeline(eval_prompter, segmenter), test, out_dir=fold_dir / "zero-shot", progress=progress)
        result = finetune(
            segmenter,
            train,
            val,
            out_dir=fold_dir / "finetune",
            prompter=train_prompter,
            eval_prompter=eval_prompter,
            config=config,
            progress=progress,
        )
        tuned = evaluate(_same_cache(result.pipeline, segmenter), test, out_dir=fold_dir / "finetuned", progress=progress)
        record = {
            "fold": fold.index,
            **split,
            "segmenter": model_id,
            "best_epoch": result.best_epoch,
            "best_val_dice": result.best_val_dice,
            "threshold": result.threshold,
            "settings": {"zero-shot": _setting_record(zero_shot), "finetuned": _setting_record(tuned)},
            "dice": {"zero-shot": _per_image_dice(zero_shot), "finetuned": _per_image_dice(tuned)},
        }
        atomic_write_text(fold_path, json.dumps(record, indent=2) + "\n")
        done.append(record)
        _write_tables(out_dir, run_info, done)
    summary = _write_tables(out_dir, run_info, done)
    return CrossvalResult(out_dir=out_dir, folds=done, summary=summary)

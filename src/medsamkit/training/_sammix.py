"""SAM-Mix (paper 001): a presence classifier whose Grad-CAM boxes prompt a SAM, trained in one loop.

Two ways to train the same automatic pipeline (CAM box prompts -> SAM-family segmenter):

* :func:`fit_sammix` (**SAM-Mix**, end-to-end multitask training): in every batch
  the presence classifier takes a focal-loss step and, for the images that carry a
  mask, the *current* classifier's CAM boxes prompt the segmenter (LoRA adapters on
  the image encoder, or its mask decoder), which takes a Dice-loss step. One loop,
  one schedule, one validation of the whole pipeline per epoch.
* :func:`fit_sam_pp` (**SAM-PP**, the paper's two-stage baseline): the classifier is
  fitted first (:meth:`CAMBoxPrompter.fit`), then the segmenter is fine-tuned
  separately on (jittered) oracle boxes with :func:`medsamkit.finetune`, and the two
  are combined at inference.

What "end-to-end" means here, honestly: the boxes are discrete (a threshold and a
bounding box of the CAM), so **no gradient flows from the Dice loss into the
classifier**; the two branches share no parameters, so ``L_cls + λ L_seg`` is
minimised by stepping each branch on its own term. The coupling is through the
data: the segmenter learns on the classifier's current, imperfect boxes (as it
will see them at inference), not on oracle boxes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._protocols import TrainableSegmenter
from ._engine import claim_run_dir, finish_run, item_prompts, loss_by_name, validation_dice
from ._inputs import checked_inputs, pick_labelled, run_record
from ._loop import ModulePart, run_epochs
from ._settings import SAMMixConfig
from ._trainable import Trainable, TrainingItem, caller_model_restored, union_loss

if TYPE_CHECKING:  # pragma: no cover
    from ..prompters import CAMBoxPrompter

__all__ = ["HISTORY_COLUMNS", "SAMMixConfig", "SAMMixResult", "fit_sam_pp", "fit_sammix", "pick_labelled"]

HISTORY_COLUMNS = (
    "epoch",
    "cls_loss",
    "cls_accuracy",
    "seg_loss",
    "n_seg",
    "n_no_box",
    "val_dice",
    "val_accuracy",
    "seconds",
)
"""Columns of :func:`fit_sammix`'s ``history`` and ``history.csv``."""

SAMMIX_RECORD = "sammix.json"
SAM_PP_RECORD = "sam_pp.json"
CLASSIFIER_FILE = "classifier.pt"


@dataclass
class SAMMixResult:
    """What :func:`fit_sammix` and :func:`fit_sam_pp` produced.

    Attributes:
        method: ``"sam-mix"`` or ``"sam-pp"``.
        run_dir: The run folder (``pipeline.json``, ``prompter.pt``, ``model.pth``, ...).
        pipeline: ``Pipeline(fitted CAMBoxPrompter, trained segmenter, threshold)``;
            also ``Pipeline.load(run_dir)``.
        prompter: The fitted :class:`CAMBoxPrompter` (``pipeline.prompter``).
        history: Per epoch. SAM-Mix: the columns :data:`HISTORY_COLUMNS`. SAM-PP: the
            segmenter stage's rows (``epoch``, ``train_loss``, ``val_dice``,
            ``seconds``; the classifier's are in ``prompter.history``).
        best_epoch: Epoch whose weights were kept (0: the segmenter did not train).
        best_val_dice: Its validation Dice (None without validation images).
        threshold: The probability threshold chosen by the sweep (0.5 without
            validation images).
        sweep: ``[{"threshold", "dice"}]`` on the validation images.
        labelled: Stems of the training images whose masks were used.
        adapters: LoRA mode: the ``adapters.safetensors`` file.
    """

    method: str
    run_dir: Path
    pipeline: Any
    prompter: CAMBoxPrompter
    history: list[dict[str, Any]]
    best_epoch: int
    best_val_dice: float | None
    threshold: float
    sweep: list[dict[str, float]]
    labelled: tuple[str, ...]
    adapters: Path | None = None


# ---------------------------------------------------------------------------------------
# SAM-Mix
# ---------------------------------------------------------------------------------------


def fit_sammix(
    segmenter: TrainableSegmenter,
    train: Sequence[Any],
    val: Sequence[Any] | None = None,
    *,
    out_dir: str | Path,
    labelled: Sequence[Any] | None = None,
    config: SAMMixConfig | None = None,
    progress: bool = True,
    **overrides: Any,
) -> SAMMixResult:
    """Train SAM-Mix: presence classifier and CAM-prompted segmenter in one loop (paper 001).

    Every training image has a presence label (its mask is non-empty); only the
    ``labelled`` ones lend their mask to the segmentation loss (the paper's
    SAM-Mix-5/50/100). Per epoch, for each batch of ``config.batch_size`` shuffled
    training images:

    1. For the batch's labelled images (after ``config.warmup_epochs``), the
       *current* classifier, in eval mode, gives CAM boxes (presence gate, Grad-CAM
       thresholded at ``ω·max``, one box per region: exactly the fitted
       :class:`CAMBoxPrompter`'s prompts). No box on an image with a non-empty mask:
       ``config.box_fallback`` (skip, or its oracle boxes). A box on an image with
       an empty mask: trained towards an empty mask only if ``config.negatives``.
    2. The classifier takes an Adam step on the focal loss (eq. 3) of the whole
       batch (augmented; a single leftover image is skipped: batch norm).
    3. The segmenter (LoRA adapters or mask decoder, ``config.mode``) takes an Adam
       step on ``λ`` (``config.seg_weight``) times the mean segmentation loss
       (``config.loss``, default Dice, eq. 9) of the step-1 images: the low-resolution
       logits of an image's boxes are combined by a pixel-wise maximum and compared
       with its whole mask resized into the logits' frame.

    The boxes are discrete, so **no gradient reaches the classifier from the
    segmentation loss**: the branches are coupled through the boxes the segmenter
    trains on, which are the classifier's current ones rather than oracle boxes.

    After each epoch the whole automatic pipeline (CAM prompts + current segmenter,
    threshold 0.5) is scored on ``val`` (mean Dice; an empty prediction on an
    empty mask counts 1) together with the classifier's presence accuracy; the
    classifier and segmenter weights of the best epoch are kept (without ``val``:
    the last epoch's), training stops after ``config.patience`` epochs without
    improvement, and ``config.thresholds`` are swept on ``val``.

    The run folder gets what :func:`medsamkit.finetune` writes (``model.pth``,
    ``pipeline.json`` + ``prompter.pt`` so that ``Pipeline.load(out_dir)`` and
    ``medsamkit evaluate DATA --pipeline out_dir`` work, ``history.csv``,
    ``loss_curve.png``, ``threshold_sweep.csv``, LoRA: ``adapters.safetensors``),
    ``sammix.json`` (settings, stems) and ``last.pt``, written atomically after every
    epoch. Calling again with the same folder, data and settings resumes after the
    last finished epoch; a larger ``epochs`` continues a finished run.

    Args:
        segmenter: A trainable SAM-family segmenter (``LiteMedSAM``, ``SAM``,
            ``HQSAM``, possibly in a ``CachedSegmenter``); left unchanged, the result
            holds a trained copy.
        train: Training samples (``stem`` and ``load() -> (image, mask)``), with
            and without the target.
        val: Validation samples (best epoch, early stopping, threshold sweep).
        out_dir: Run folder.
        labelled: Stems (or samples) of ``train`` whose masks train the segmenter;
            None: all. An empty collection trains the classifier only
            (SAM-Mix-0). See :func:`pick_labelled`.
        config: A :class:`SAMMixConfig`; keyword ``overrides`` (``epochs=3``) update it.
        progress: Show progress bars and a line per epoch.

    Returns:
        A :class:`SAMMixResult`.

    Raises:
        ValueError: Empty ``train``, ``train`` without images of both classes,
            ``labelled`` stems not in ``train`` or without a non-empty mask, bad
            settings, or ``out_dir`` holding another run.
        TypeError: A segmenter that cannot train, or samples without stem/load.
        ImportError: Without grad-cam, or without peft in LoRA mode.
    """
    import torch

    config, train, val, labelled, prompter, x, y = checked_inputs(segmenter, train, val, labelled, config, overrides)
    if config.warmup_epochs >= config.epochs:
        raise ValueError(
            f"warmup_epochs: expected fewer than epochs ({config.epochs}) so that the segmenter trains, "
            f"got {config.warmup_epochs}"
        )
    run_dir = Path(out_dir)
    claim_run_dir(
        run_dir, run_record("sam-mix", segmenter, config, train, val, labelled), SAMMIX_RECORD, "SAM-Mix", inputs=[*train, *val]
    )
    torch.manual_seed(config.seed)
    with caller_model_restored(segmenter):
        return _joint(segmenter, train, val, labelled, prompter, x, y, run_dir, config, progress)


def _joint(
    segmenter: TrainableSegmenter,
    train: list[Any],
    val: list[Any],
    labelled: tuple[str, ...],
    prompter: CAMBoxPrompter,
    x_np: np.ndarray,
    y_np: np.ndarray,
    run_dir: Path,
    config: SAMMixConfig,
    progress: bool,
) -> SAMMixResult:
    """The joint loop of :func:`fit_sammix` (inputs checked; ``x_np``: the classifier's inputs of
    ``classifier_arrays``, ``(N, 1, S, S)`` images in ``[0, 1]`` or ``(N, C, h, w)`` embeddings for
    ``backbone="embedding"``; ``y_np``: ``(N,)`` presence labels of ``train``)."""
    import torch
    from tqdm.auto import tqdm

    from ..prompters import OracleBoxPrompter
    from ..prompters import classifier_arrays as _classifier_arrays
    from ..prompters import classifier_scores as _classifier_scores
    from ..prompters import classifier_step as _classifier_step
    from ..prompters import focal_loss as _focal_loss
    from ..prompters import index_batches as _batches
    from ..prompters import seeded_classifier as _seeded_classifier

    ft_config = config.finetune_config()
    trainable = Trainable(segmenter, ft_config)
    seg_optimizer = torch.optim.Adam(trainable.params, lr=ft_config.lr, weight_decay=config.weight_decay)
    seg_loss_fn = loss_by_name(config.loss)
    embedding = config.backbone == "embedding"
    classifier = _seeded_classifier(
        config.width, config.depth, config.seed, backbone=config.backbone, channels=int(x_np.shape[1]) if embedding else None
    )
    cls_optimizer = torch.optim.Adam(classifier.parameters(), lr=config.classifier_lr or config.lr)
    cls_loss_fn = _focal_loss(config.focal_alpha, config.focal_gamma)
    prompter.set_classifier(classifier, segmenter=segmenter if embedding else None)
    oracle = OracleBoxPrompter()
    augment: dict[str, Any] = {"shift": config.shift, "intensity": config.intensity, "flip": config.flip}
    if embedding:  # image-only augmentations
        augment.update(intensity=0.0, flip=False)

    what = "prepare" if trainable.lora else "encode"
    position = {s.stem: i for i, s in enumerate(train)}
    chosen = set(labelled)
    labelled_items = trainable.prepare([s for s in train if s.stem in chosen], f"{what} labelled", progress)
    item_at = {position[it.stem]: it for it in labelled_items}
    val_items = trainable.prepare(val, f"{what} val", progress)
    x_train, y_train = torch.from_numpy(x_np), torch.from_numpy(y_np)
    if val_items:
        xv, yv = _classifier_arrays(
            [(it.image, it.mask) for it in val_items],
            backbone=config.backbone,
            input_size=config.input_size,
            pool=config.pool,
            segmenter=segmenter,
            name="val",
        )
        x_val, y_val = torch.from_numpy(xv), torch.from_numpy(yv)

    def segmentation_jobs(index: np.ndarray) -> tuple[list[tuple[TrainingItem, Any]], int]:
        """(item, prompts) of the batch's labelled images that train the segmenter; images without a box."""
        jobs, no_box = [], 0
        classifier.eval()
        for i in index:
            item = item_at.get(int(i))
            if item is None:
                continue
            positive = bool(item.mask.any())
            # presence gate + Grad-CAM boxes (the embedding backbone reads the item's encoding); discrete, no gradient
            prompts = item_prompts(prompter, item, segmenter.model_id)
            if prompts.n == 0 and positive:
                no_box += 1
                if config.box_fallback == "skip":
                    continue
                prompts = oracle(item.image, target=item.mask)
            if prompts.n == 0 or (not positive and not config.negatives):
                continue
            jobs.append((item, prompts))
        return jobs, no_box

    n = len(y_train)

    def one_epoch(epoch: int) -> dict[str, Any]:
        rng = np.random.default_rng([config.seed, epoch])
        cls_losses, correct, seg_losses, n_no_box = [], 0, [], 0
        segment = epoch > config.warmup_epochs and bool(labelled_items)
        batches = _batches(rng.permutation(n), config.batch_size)
        bar = tqdm(batches, desc=f"epoch {epoch}/{config.epochs}", unit="batch", disable=not progress, leave=False)
        for index in bar:
            jobs, no_box = segmentation_jobs(index) if segment else ([], 0)
            n_no_box += no_box
            step = _classifier_step(classifier, cls_optimizer, x_train, y_train, index, rng, loss_fn=cls_loss_fn, **augment)
            if step is not None:
                cls_losses.append(step[0] * len(index))
                correct += step[1]
            if not jobs:
                continue
            trainable.train()
            seg_optimizer.zero_grad(set_to_none=True)
            for item, prompts in jobs:
                loss = union_loss(segmenter, trainable, item, prompts, seg_loss_fn)
                (config.seg_weight * loss / len(jobs)).backward()
                seg_losses.append(float(loss.detach()))
            seg_optimizer.step()
            seg_optimizer.zero_grad(set_to_none=True)
            trainable.eval()

        classifier.eval()
        trainable.eval()
        val_dice = val_accuracy = None
        if val_items:
            val_dice = validation_dice(segmenter, trainable, val_items, prompter)
            val_accuracy = _classifier_scores(classifier, x_val, y_val, cls_loss_fn, threshold=config.presence_threshold)[1]
        return {
            "cls_loss": float(np.sum(cls_losses) / n),
            "cls_accuracy": correct / n,
            "seg_loss": float(np.mean(seg_losses)) if seg_losses else None,
            "n_seg": len(seg_losses),
            "n_no_box": n_no_box,
            "val_dice": val_dice,
            "val_accuracy": val_accuracy,
        }

    def describe(row: dict[str, Any]) -> str:
        seg = "-" if row["seg_loss"] is None else f"{row['seg_loss']:.4f}"
        shown = "" if row["val_dice"] is None else f", val Dice {row['val_dice']:.4f}, val accuracy {row['val_accuracy']:.3f}"
        return (
            f"epoch {row['epoch']}: cls loss {row['cls_loss']:.4f}, seg loss {seg} ({row['n_seg']} images, "
            f"{row['n_no_box']} without a box){shown}"
        )

    loop = run_epochs(
        run_dir,
        epochs=config.epochs,
        patience=config.patience,
        validating=bool(val_items),
        parts={"classifier": ModulePart(classifier), "segmenter": trainable},
        optimizers={"classifier": cls_optimizer, "segmenter": seg_optimizer},
        epoch_fn=one_epoch,
        score_fn=lambda row: row["val_dice"] if row["val_dice"] is not None else float(row["epoch"]),  # else: the last
        columns=HISTORY_COLUMNS,
        curve={
            "losses": (("cls_loss", "classification loss (focal)"), ("seg_loss", f"segmentation loss ({config.loss})")),
            "title": "SAM-Mix learning curve",
        },
        describe=describe,
        progress=progress,
    )
    history = loop.history
    classifier.eval()
    prompter.set_classifier(classifier, segmenter=segmenter if embedding else None)
    prompter.history = [
        {"epoch": h["epoch"], "loss": h["cls_loss"], "accuracy": h["cls_accuracy"]}
        | ({} if h["val_accuracy"] is None else {"val_accuracy": h["val_accuracy"]})
        for h in history
    ]
    prompter.train_info = {
        "trained_by": "sam-mix",
        "n_train": int(n),
        "n_positive": int(y_np.sum()),
        "n_labelled": len(labelled),
        "n_val": len(val),
        "epochs": len(history),
        "best_epoch": loop.best_epoch,
        "batch_size": config.batch_size,
        "lr": config.classifier_lr or config.lr,
        "alpha": config.focal_alpha,
        "gamma": config.focal_gamma,
        "shift": config.shift,
        "intensity": config.intensity,
        "flip": config.flip,
        "seed": config.seed,
    }
    pipeline, threshold, sweep, adapters = finish_run(
        segmenter, trainable, run_dir, prompter, val, val_items, ft_config, progress
    )
    return SAMMixResult(
        method="sam-mix",
        run_dir=run_dir,
        pipeline=pipeline,
        prompter=prompter,
        history=history,
        best_epoch=loop.best_epoch,
        best_val_dice=loop.best_score if val_items else None,
        threshold=threshold,
        sweep=sweep,
        labelled=tuple(labelled),
        adapters=adapters,
    )


# ---------------------------------------------------------------------------------------
# SAM-PP
# ---------------------------------------------------------------------------------------


def fit_sam_pp(
    segmenter: TrainableSegmenter,
    train: Sequence[Any],
    val: Sequence[Any] | None = None,
    *,
    out_dir: str | Path,
    labelled: Sequence[Any] | None = None,
    config: SAMMixConfig | None = None,
    progress: bool = True,
    **overrides: Any,
) -> SAMMixResult:
    """Train SAM-PP, the paper's two-stage baseline: classifier first, segmenter separately.

    1. A :class:`CAMBoxPrompter` is fitted on all of ``train`` (presence labels;
       ``config.epochs``, ``classifier_lr``, focal loss, augmentation as in
       SAM-Mix; with ``val``, the epoch with the lowest validation loss is kept) and
       saved as ``classifier.pt`` (reused when the run is resumed).
    2. The segmenter is fine-tuned with :func:`medsamkit.finetune` on the
       ``labelled`` images only, with the same mode and LoRA settings, on oracle
       boxes jittered by up to 10% of each side (``finetune``'s default training
       prompts; images with an empty mask get no box and are skipped), with the CAM
       prompter as ``eval_prompter``: validation Dice, best epoch and threshold sweep
       are those of the automatic pipeline.
    3. The pipeline is ``Pipeline(CAM prompter, fine-tuned segmenter, threshold)``.

    With an empty ``labelled`` the segmenter is not trained (the paper's SAM-PP-0):
    the pipeline holds the segmenter as given, at threshold 0.5.

    The run folder is ``finetune``'s (``model.pth``, ``pipeline.json``,
    ``prompter.pt``, ``finetune.json``, ``history.csv``, ...) plus ``classifier.pt``
    and ``sam_pp.json``; ``Pipeline.load(out_dir)`` rebuilds the pipeline.

    Args and Raises: as :func:`fit_sammix` (``warmup_epochs``, ``box_fallback``,
    ``negatives`` and ``seg_weight`` play no part here).

    Returns:
        A :class:`SAMMixResult` with ``method="sam-pp"``; ``history`` holds the
        segmenter stage's rows, ``prompter.history`` the classifier's.
    """
    from .._pipeline import Pipeline
    from ..prompters import CAMBoxPrompter
    from . import _engine

    config, train, val, labelled, prompter, _, _ = checked_inputs(segmenter, train, val, labelled, config, overrides)
    run_dir = Path(out_dir)
    claim_run_dir(
        run_dir, run_record("sam-pp", segmenter, config, train, val, labelled), SAM_PP_RECORD, "SAM-PP", inputs=[*train, *val]
    )
    classifier_path = run_dir / CLASSIFIER_FILE
    if classifier_path.is_file():
        prompter = CAMBoxPrompter.load(classifier_path)
    else:
        prompter.fit(
            train,
            segmenter=segmenter if config.backbone == "embedding" else None,
            val=val or None,
            epochs=config.epochs,
            batch_size=config.batch_size,
            lr=config.classifier_lr or config.lr,
            alpha=config.focal_alpha,
            gamma=config.focal_gamma,
            shift=config.shift,
            intensity=config.intensity,
            flip=config.flip,
            seed=config.seed,
            progress=progress,
        )
        prompter.save(classifier_path)
    chosen = set(labelled)
    if not chosen:
        pipeline = Pipeline(prompter, segmenter)
        pipeline.save(run_dir)
        return SAMMixResult(
            method="sam-pp",
            run_dir=run_dir,
            pipeline=pipeline,
            prompter=prompter,
            history=[],
            best_epoch=0,
            best_val_dice=None,
            threshold=0.5,
            sweep=[],
            labelled=tuple(labelled),
        )
    result = _engine.finetune(
        segmenter,
        [s for s in train if s.stem in chosen],
        val or None,
        out_dir=run_dir,
        eval_prompter=prompter,
        config=config.finetune_config(),
        progress=progress,
    )
    return SAMMixResult(
        method="sam-pp",
        run_dir=run_dir,
        pipeline=result.pipeline,
        prompter=prompter,
        history=result.history,
        best_epoch=result.best_epoch,
        best_val_dice=result.best_val_dice,
        threshold=result.threshold,
        sweep=result.sweep,
        labelled=tuple(labelled),
        adapters=result.adapters,
    )

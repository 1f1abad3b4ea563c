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

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from .._protocols import Segmenter, TrainableSegmenter, prompts_for
from ._engine import (
    _LORA_FIELDS,
    STATE_FILE,
    FinetuneConfig,
    LossName,
    SegmenterTrainingSettings,
    _caller_model_restored,
    _check_mode,
    _check_trainable,
    _claim_run_dir,
    _finish,
    _Item,
    _logits,
    _loss_fn,
    _save_curve,
    _save_state,
    _target_at_logits,
    _Trainable,
    _validation_dice,
    _write_history,
)

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
_CLASSIFIER_FIELDS = (
    "cam",
    "omega",
    "presence_threshold",
    "max_boxes",
    "min_area_fraction",
    "input_size",
    "width",
    "depth",
)


class SAMMixConfig(SegmenterTrainingSettings):
    """Settings of a SAM-Mix or SAM-PP run (saved as ``sammix.json`` / ``sam_pp.json`` in the run folder).

    The segmenter fields have the names and meaning of :class:`FinetuneConfig`; the
    classifier fields those of :class:`~medsamkit.prompters.CAMBoxPrompter` and its
    ``fit``. Defaults follow paper 001 where it says: 10 epochs, learning rate 1e-3
    for both branches, Dice loss (eq. 9), LoRA rank 8 on the encoder's attention,
    ``ω = 0.5``.

    Attributes:
        mode: What of the segmenter trains: ``"lora"`` (paper: LoRA adapters on the
            image encoder's ``qkv`` layers, needs peft) or ``"decoder"`` (the mask
            decoder only; each image is encoded once: much faster on a CPU).
        epochs: Passes over the training images (paper: 10).
        lr: Adam learning rate of both branches (paper: 1e-3), unless set apart below.
        classifier_lr: Adam learning rate of the classifier (None: ``lr``).
        segmenter_lr: Adam learning rate of the segmenter (None: ``lr``).
        weight_decay: Adam weight decay of the segmenter.
        seg_weight: ``λ`` in ``L = L_cls + λ L_seg``. The branches share no
            parameters, so λ only scales the segmenter's gradients, which Adam
            largely normalises away; it is there for completeness and for SGD-like
            behaviour at tiny gradients (0 switches segmentation training off).
        loss: Segmentation loss: ``"dice"`` (paper eq. 9, MONAI ``DiceLoss``),
            ``"dicece"`` or ``"dicefocal"``.
        batch_size: Images per step of the classifier (the paper used 30). The
            segmenter steps once per batch, on the gradients of the batch's labelled
            images that got a box.
        patience: Stop when validation Dice has not improved for this many epochs
            (0: off).
        seed: Seed of the classifier's initialisation, the batch order, the
            augmentation and torch.
        thresholds: Probability thresholds swept on the validation images at the end.
        warmup_epochs: Epochs at the start in which only the classifier trains (its
            first CAMs are noise; boxes from them would teach the segmenter noise).
            Default 1; 0 is the paper's literal reading (both from the start).
            SAM-Mix needs it smaller than ``epochs``; SAM-PP ignores it.
        box_fallback: What happens to a labelled image with a non-empty mask when
            the current classifier gives no box (it says "absent", or the CAM is
            empty): ``"skip"`` (default; the segmenter only ever sees CAM boxes, as at
            inference) or ``"oracle"`` (the mask's own boxes, so the segmenter also
            learns while the classifier is still poor; closer to SAM-PP's training).
            The number of such images per epoch is ``n_no_box`` in the history.
        negatives: Labelled images with an **empty** mask that the classifier wrongly
            gives a box also train the segmenter, towards an empty mask. Off by
            default: with the Dice loss (eq. 9) an empty target gives a loss of ~1
            whatever the prediction and almost no gradient (MONAI's smoothing is
            1e-5); switch it on with ``loss="dicece"`` or ``"dicefocal"``.
        lora_rank, lora_alpha, lora_dropout, lora_targets, train_decoder: LoRA
            settings, as in :class:`FinetuneConfig` (paper: rank 8).
        cam, omega, presence_threshold, max_boxes, min_area_fraction, input_size, width, depth: The
            classifier and its boxes, as in ``CAMBoxPrompter``.
        focal_alpha: Focal-loss weight of the positive class (None: no weighting).
        focal_gamma: Focal-loss focusing parameter (eq. 3).
        shift, intensity, flip: Classifier augmentation, as in ``CAMBoxPrompter.fit``.
    """

    # Paper 001's defaults where they differ from FinetuneConfig's (the other shared fields keep theirs).
    mode: Literal["decoder", "lora"] = "lora"
    epochs: int = Field(10, ge=1)
    lr: float = Field(1e-3, gt=0)
    loss: LossName = "dice"
    batch_size: int = Field(16, ge=1)
    # SAM-Mix's own settings.
    classifier_lr: float | None = Field(None, gt=0)
    segmenter_lr: float | None = Field(None, gt=0)
    seg_weight: float = Field(1.0, ge=0)
    warmup_epochs: int = Field(1, ge=0)
    box_fallback: Literal["skip", "oracle"] = "skip"
    negatives: bool = False
    cam: str = "gradcam"
    omega: float = Field(0.5, ge=0, le=1)
    presence_threshold: float = Field(0.5, ge=0, le=1)
    max_boxes: int = Field(4, ge=1)
    min_area_fraction: float = Field(0.002, ge=0, le=1)
    input_size: int = Field(128, ge=4)
    width: int = Field(16, ge=1)
    depth: int = Field(4, ge=2, le=6)
    focal_alpha: float | None = Field(None, ge=0, le=1)
    focal_gamma: float = Field(2.0, ge=0)
    shift: float = Field(0.1, ge=0, lt=0.5)
    intensity: float = Field(0.2, ge=0, le=1)
    flip: bool = False

    def prompter_params(self) -> dict[str, Any]:
        """Constructor arguments of the :class:`CAMBoxPrompter`."""
        return {name: getattr(self, name) for name in _CLASSIFIER_FIELDS}

    def finetune_config(self) -> FinetuneConfig:
        """The segmenter's settings as a :class:`FinetuneConfig` (what SAM-PP's second stage runs)."""
        return FinetuneConfig(
            mode=self.mode,
            epochs=self.epochs,
            lr=self.segmenter_lr or self.lr,
            weight_decay=self.weight_decay,
            loss=self.loss,
            batch_size=self.batch_size,
            patience=self.patience,
            seed=self.seed,
            thresholds=list(self.thresholds),
            **{name: getattr(self, name) for name in _LORA_FIELDS},
        )

    def record(self, *, extendable: bool = False) -> dict[str, Any]:
        """The settings that matter (LoRA ones left out in decoder mode); ``extendable``: without
        ``epochs`` and ``patience``, so that a finished run can be continued with more epochs."""
        exclude = set(_LORA_FIELDS) if self.mode == "decoder" else set()
        if extendable:
            exclude |= {"epochs", "patience"}
        return self.model_dump(exclude=exclude)


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
# input checks
# ---------------------------------------------------------------------------------------


def _config(config: Any, overrides: dict[str, Any]) -> SAMMixConfig:
    if config is not None and not isinstance(config, SAMMixConfig):
        raise TypeError(f"config: expected a SAMMixConfig or None, got {type(config).__name__}")
    # Validated as a whole: an unknown override is an error (model_copy(update=...) would drop it).
    return SAMMixConfig.model_validate({**(config or SAMMixConfig()).model_dump(), **overrides})


def _check_samples(samples: Any, name: str, *, required: bool) -> list[Any]:
    """A list of samples with ``stem`` and ``load()``, unique stems."""
    if samples is None:
        samples = []
    if isinstance(samples, (str, bytes, Path)) or not hasattr(samples, "__len__"):
        raise TypeError(f"{name}: expected a sequence of samples (e.g. a MaskFolder), got {type(samples).__name__}")
    samples = list(samples)
    if required and not samples:
        raise ValueError(f"{name}: expected at least one training sample, got none")
    for i, sample in enumerate(samples):
        if not isinstance(getattr(sample, "stem", None), str) or not callable(getattr(sample, "load", None)):
            raise TypeError(
                f"{name}[{i}]: expected a sample with a stem and load() -> (image, mask) (MaskFolder items), "
                f"got {type(sample).__name__}"
            )
    stems = [s.stem for s in samples]
    if len(set(stems)) != len(stems):
        repeated = sorted({s for s in stems if stems.count(s) > 1})
        raise ValueError(f"{name}: expected unique stems, got repeated {repeated[:5]}")
    return samples


def _labelled_stems(train: list[Any], labelled: Any) -> tuple[str, ...]:
    """The labelled stems, in the order of ``train``."""
    stems = [s.stem for s in train]
    if labelled is None:
        return tuple(stems)
    if isinstance(labelled, (str, bytes, int)) or not hasattr(labelled, "__iter__"):
        raise TypeError(
            "labelled: expected a collection of stems or samples (pick_labelled(train, n) picks n), "
            f"got {type(labelled).__name__}"
        )
    chosen = set()
    for i, item in enumerate(labelled):
        stem = item if isinstance(item, str) else getattr(item, "stem", None)
        if not isinstance(stem, str):
            raise TypeError(f"labelled[{i}]: expected a stem (str) or a sample with .stem, got {type(item).__name__}")
        chosen.add(stem)
    unknown = sorted(chosen - set(stems))
    if unknown:
        raise ValueError(
            f"labelled: expected stems of train samples, got {len(unknown)} not in train: {unknown[:5]}"
            + (" ..." if len(unknown) > 5 else "")
        )
    return tuple(s for s in stems if s in chosen)


def _check_labels(y: np.ndarray, train: list[Any], labelled: tuple[str, ...]) -> None:
    if y.min() == y.max():
        kind = "non-empty" if y[0] else "empty"
        raise ValueError(
            f"train: expected images with and without the target (the classifier's two classes), got "
            f"{len(y)} images, all with {kind} masks"
        )
    positive = {s.stem for s, label in zip(train, y) if label}
    if labelled and not positive.intersection(labelled):
        raise ValueError(
            f"labelled: expected at least one image with a non-empty mask (or none at all: no segmentation "
            f"training), got {len(labelled)} images, all with empty masks"
        )


def _inputs(
    segmenter: TrainableSegmenter, train: Any, val: Any, labelled: Any, config: Any, overrides: dict[str, Any]
) -> tuple[Any, ...]:
    """Everything checked before a file is written: ``(config, train, val, labelled, prompter, x, y)``."""
    from ..prompters import CAMBoxPrompter
    from ..prompters import presence_arrays as _samples_to_arrays

    _check_trainable(segmenter)
    config = _config(config, overrides)
    train = _check_samples(train, "train", required=True)
    val = _check_samples(val, "val", required=False)
    labelled = _labelled_stems(train, labelled)
    prompter = CAMBoxPrompter(**config.prompter_params())  # checks cam, input_size vs depth; needs grad-cam
    _check_mode(segmenter, config.finetune_config())
    x, y = _samples_to_arrays(train, config.input_size, name="train")
    _check_labels(y, train, labelled)
    return config, train, val, labelled, prompter, x, y


def _record(
    method: str, segmenter: Segmenter, config: SAMMixConfig, train: Sequence[Any], val: Sequence[Any], labelled: Sequence[str]
) -> dict[str, Any]:
    return {
        "method": method,
        "config": config.record(extendable=method == "sam-mix"),
        "segmenter": getattr(segmenter, "model_id", type(segmenter).__name__),
        "train": [s.stem for s in train],
        "labelled": list(labelled),
        "val": [s.stem for s in val],
    }


def pick_labelled(samples: Sequence[Any], n: int, *, seed: int = 0) -> tuple[str, ...]:
    """``n`` stems drawn at random among the samples whose mask is non-empty (SAM-Mix-``n``).

    The images that get a mask drawn are the ones that show the target: the empty
    masks of the others are known anyway (their presence label is 0). The draw
    depends only on the set of stems and ``seed``.

    Args:
        samples: Items with ``stem`` and ``load_mask()`` or ``load() -> (image, mask)``.
        n: How many, ``0 <= n <=`` the number of samples with a non-empty mask.
        seed: Seed of the draw.

    Returns:
        The chosen stems, sorted.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n: expected a non-negative int, got {n!r}")
    samples = _check_samples(samples, "samples", required=False)
    positive = []
    for sample in samples:
        mask = sample.load_mask() if callable(getattr(sample, "load_mask", None)) else sample.load()[1]
        if np.asarray(mask).any():
            positive.append(sample.stem)
    if n > len(positive):
        raise ValueError(f"n: expected at most {len(positive)} (the samples with a non-empty mask), got {n}")
    positive.sort()
    order = np.random.default_rng(seed).permutation(len(positive))[:n]
    return tuple(sorted(positive[i] for i in order))


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

    config, train, val, labelled, prompter, x, y = _inputs(segmenter, train, val, labelled, config, overrides)
    if config.warmup_epochs >= config.epochs:
        raise ValueError(
            f"warmup_epochs: expected fewer than epochs ({config.epochs}) so that the segmenter trains, "
            f"got {config.warmup_epochs}"
        )
    run_dir = Path(out_dir)
    _claim_run_dir(run_dir, _record("sam-mix", segmenter, config, train, val, labelled), SAMMIX_RECORD, "SAM-Mix")
    torch.manual_seed(config.seed)
    with _caller_model_restored(segmenter):
        return _joint(segmenter, train, val, labelled, prompter, x, y, run_dir, config, progress)


def _joint(
    segmenter: TrainableSegmenter,
    train: Sequence[Any],
    val: Sequence[Any],
    labelled: Sequence[str],
    prompter: CAMBoxPrompter,
    x_np: np.ndarray,
    y_np: np.ndarray,
    run_dir: Path,
    config: SAMMixConfig,
    progress: bool,
) -> SAMMixResult:
    """The joint loop of :func:`fit_sammix` (inputs checked; ``x_np``: ``(N, S, S)`` classifier
    inputs in ``[0, 1]``, ``y_np``: ``(N,)`` presence labels of ``train``)."""
    import torch
    from tqdm.auto import tqdm

    from ..prompters import OracleBoxPrompter
    from ..prompters import classifier_scores as _classifier_scores
    from ..prompters import classifier_step as _classifier_step
    from ..prompters import focal_loss as _focal_loss
    from ..prompters import index_batches as _batches
    from ..prompters import presence_arrays as _samples_to_arrays
    from ..prompters import seeded_classifier as _seeded_classifier

    ft_config = config.finetune_config()
    trainable = _Trainable(segmenter, ft_config)
    seg_optimizer = torch.optim.Adam(trainable.params, lr=ft_config.lr, weight_decay=config.weight_decay)
    seg_loss_fn = _loss_fn(config.loss)
    classifier = _seeded_classifier(config.width, config.depth, config.seed)
    cls_optimizer = torch.optim.Adam(classifier.parameters(), lr=config.classifier_lr or config.lr)
    cls_loss_fn = _focal_loss(config.focal_alpha, config.focal_gamma)
    prompter.model = classifier
    oracle = OracleBoxPrompter()
    augment: dict[str, Any] = {"shift": config.shift, "intensity": config.intensity, "flip": config.flip}

    what = "prepare" if trainable.lora else "encode"
    position = {s.stem: i for i, s in enumerate(train)}
    chosen = set(labelled)
    labelled_items = trainable.prepare([s for s in train if s.stem in chosen], f"{what} labelled", progress)
    item_at = {position[it.stem]: it for it in labelled_items}
    val_items = trainable.prepare(val, f"{what} val", progress)
    x_train, y_train = torch.from_numpy(x_np)[:, None], torch.from_numpy(y_np)
    if val_items:
        xv, yv = _samples_to_arrays([(it.image, it.mask) for it in val_items], config.input_size, name="val")
        x_val, y_val = torch.from_numpy(xv)[:, None], torch.from_numpy(yv)

    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": 0, "dice": -math.inf, "classifier": _state(classifier), "segmenter": trainable.snapshot()}
    start_epoch = 1
    state_path = run_dir / STATE_FILE
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        classifier.load_state_dict(state["classifier"])
        cls_optimizer.load_state_dict(state["classifier_optimizer"])
        trainable.restore(state[trainable.state_key])
        seg_optimizer.load_state_dict(state["optimizer"])
        history, best, start_epoch = state["history"], state["best"], state["epoch"] + 1

    def segmentation_jobs(index: np.ndarray) -> tuple[list[tuple[_Item, Any]], int]:
        """(item, prompts) of the batch's labelled images that train the segmenter; images without a box."""
        jobs, no_box = [], 0
        classifier.eval()
        for i in index:
            item = item_at.get(int(i))
            if item is None:
                continue
            positive = bool(item.mask.any())
            prompts = prompts_for(prompter, item.image)  # presence gate + Grad-CAM boxes; discrete, no gradient
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
    stale = history[-1]["epoch"] - best["epoch"] if history else 0
    for epoch in range(start_epoch, config.epochs + 1):
        if config.patience and val_items and stale >= config.patience:
            break
        started = time.perf_counter()
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
                logits, _ = _logits(segmenter, item, prompts, trainable.features(item))
                if item.target is None:
                    item.target = _target_at_logits(item.mask, item.input_size_hw, segmenter.image_size, logits.shape[-1])
                combined = logits.amax(dim=0, keepdim=True)  # (1, 1, L, L): union of the prompts
                loss = seg_loss_fn(combined, item.target[None].to(combined.device))
                (config.seg_weight * loss / len(jobs)).backward()
                seg_losses.append(float(loss.detach()))
            seg_optimizer.step()
            seg_optimizer.zero_grad(set_to_none=True)
            trainable.eval()

        classifier.eval()
        trainable.eval()
        val_dice = val_accuracy = None
        if val_items:
            val_dice = _validation_dice(segmenter, trainable, val_items, prompter)
            val_accuracy = _classifier_scores(classifier, x_val, y_val, cls_loss_fn, threshold=config.presence_threshold)[1]
        row = {
            "epoch": epoch,
            "cls_loss": float(np.sum(cls_losses) / n),
            "cls_accuracy": correct / n,
            "seg_loss": float(np.mean(seg_losses)) if seg_losses else None,
            "n_seg": len(seg_losses),
            "n_no_box": n_no_box,
            "val_dice": val_dice,
            "val_accuracy": val_accuracy,
            "seconds": round(time.perf_counter() - started, 3),
        }
        history.append(row)
        score = val_dice if val_dice is not None else float(epoch)  # without validation: the last epoch
        if score > best["dice"]:
            best = {"epoch": epoch, "dice": score, "classifier": _state(classifier), "segmenter": trainable.snapshot()}
            stale = 0
        else:
            stale += 1
        _save_state(
            state_path,
            {
                "epoch": epoch,
                "classifier": _state(classifier),
                "classifier_optimizer": cls_optimizer.state_dict(),
                trainable.state_key: trainable.snapshot(),
                "optimizer": seg_optimizer.state_dict(),
                "history": history,
                "best": best,
            },
        )
        _write_history(run_dir, history, HISTORY_COLUMNS)
        _save_curve(
            run_dir,
            history,
            losses=(("cls_loss", "classification loss (focal)"), ("seg_loss", f"segmentation loss ({config.loss})")),
            title="SAM-Mix learning curve",
        )
        if progress:
            seg = "-" if row["seg_loss"] is None else f"{row['seg_loss']:.4f}"
            shown = "" if val_dice is None else f", val Dice {val_dice:.4f}, val accuracy {val_accuracy:.3f}"
            tqdm.write(
                f"epoch {epoch}: cls loss {row['cls_loss']:.4f}, seg loss {seg} ({row['n_seg']} images, "
                f"{row['n_no_box']} without a box){shown}"
            )

    classifier.load_state_dict(best["classifier"])
    classifier.eval()
    prompter.model = classifier
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
        "best_epoch": best["epoch"],
        "batch_size": config.batch_size,
        "lr": config.classifier_lr or config.lr,
        "alpha": config.focal_alpha,
        "gamma": config.focal_gamma,
        "shift": config.shift,
        "intensity": config.intensity,
        "flip": config.flip,
        "seed": config.seed,
    }
    trainable.restore(best["segmenter"])
    pipeline, threshold, sweep, adapters = _finish(segmenter, trainable, run_dir, prompter, val, val_items, ft_config, progress)
    return SAMMixResult(
        method="sam-mix",
        run_dir=run_dir,
        pipeline=pipeline,
        prompter=prompter,
        history=history,
        best_epoch=best["epoch"],
        best_val_dice=best["dice"] if val_items else None,
        threshold=threshold,
        sweep=sweep,
        labelled=tuple(labelled),
        adapters=adapters,
    )


def _state(module: Any) -> dict[str, Any]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


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

    config, train, val, labelled, prompter, _, _ = _inputs(segmenter, train, val, labelled, config, overrides)
    run_dir = Path(out_dir)
    _claim_run_dir(run_dir, _record("sam-pp", segmenter, config, train, val, labelled), SAM_PP_RECORD, "SAM-PP")
    classifier_path = run_dir / CLASSIFIER_FILE
    if classifier_path.is_file():
        prompter = CAMBoxPrompter.load(classifier_path)
    else:
        prompter.fit(
            train,
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
            method="sam-pp", run_dir=run_dir, pipeline=pipeline, prompter=prompter, history=[], best_epoch=0,
            best_val_dice=None, threshold=0.5, sweep=[], labelled=tuple(labelled),
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

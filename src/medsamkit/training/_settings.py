"""Settings of the ways medsamkit trains a segmenter: :class:`FinetuneConfig` and :class:`SAMMixConfig`.

Both share :class:`SegmenterTrainingSettings` (mode, epochs, learning rate, loss,
patience, LoRA, ...) and are validated as a whole by pydantic; each is written to its
run folder (``finetune.json``, ``sammix.json``, ``sam_pp.json``), and a run folder
holding other settings is refused.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DEFAULT_THRESHOLDS", "FinetuneConfig", "LossName", "SAMMixConfig", "SegmenterTrainingSettings"]

LossName = Literal["dicefocal", "dice", "dicece"]
DEFAULT_THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7)
_LORA_FIELDS = ("lora_rank", "lora_alpha", "lora_dropout", "lora_targets", "train_decoder")
_CLASSIFIER_FIELDS = (
    "cam",
    "omega",
    "presence_threshold",
    "max_boxes",
    "min_area_fraction",
    "input_size",
    "width",
    "depth",
    "backbone",
    "pool",
)
_EMBEDDING_FIELDS = ("backbone", "pool")  # left out of the record of a "cnn" run: older run folders still resume


class SegmenterTrainingSettings(BaseModel):
    """Settings shared by every way of training a segmenter (:class:`FinetuneConfig`,
    ``SAMMixConfig``); each subclass documents them and sets its own defaults."""

    model_config = ConfigDict(extra="forbid")
    mode: Literal["decoder", "lora"] = "decoder"
    epochs: int = Field(20, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    loss: LossName = "dicefocal"
    batch_size: int = Field(4, ge=1)
    patience: int = Field(5, ge=0)
    seed: int = Field(0, ge=0)
    thresholds: list[float] = Field(default_factory=lambda: list(DEFAULT_THRESHOLDS))
    lora_rank: int = Field(8, ge=1)
    lora_alpha: float = Field(16.0, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_targets: list[str] = Field(default_factory=lambda: ["qkv"], min_length=1)
    train_decoder: bool = False


class FinetuneConfig(SegmenterTrainingSettings):
    """Settings of a fine-tuning run (saved as ``finetune.json`` in the run folder).

    Attributes:
        mode: ``"decoder"``: only the mask decoder trains (paper 002). ``"lora"``:
            LoRA adapters on the image encoder train (paper 001), and the mask
            decoder too if ``train_decoder``; needs peft (``pip install medsamkit[lora]``).
        epochs: Maximum number of passes over the training images.
        lr: Adam learning rate. Paper 002 reports 1e-5 for SAM ViT-B on thousands of
            images; the default 1e-4 suits tens of images and few epochs.
        weight_decay: Adam weight decay (paper 002: 0).
        loss: ``dicefocal`` (MONAI ``DiceFocalLoss``, default), ``dice`` or ``dicece``.
        batch_size: Images per optimiser step (gradients are accumulated).
        patience: Stop when validation Dice has not improved for this many epochs
            (0 disables early stopping).
        seed: Seed of the shuffling, the prompt jitter and torch.
        thresholds: Thresholds swept on the validation images after training.
        lora_rank: LoRA rank (paper 001: 8). LoRA mode only, like the next four.
        lora_alpha: LoRA scale numerator (the update is ``alpha / rank * B @ A``).
        lora_dropout: Dropout on the adapters' input.
        lora_targets: Suffixes of the encoder's linear layers that get adapters.
        train_decoder: Also train the mask decoder.
        recorded_share: With ``finetune(..., train_prompts=...)``: the share of the
            training images that, in each epoch (a fresh seeded draw), get their
            recorded prompts (e.g. a fitted prompter's, out of fold) instead of the
            training prompter's. Unused without ``train_prompts``.
    """

    recorded_share: float = Field(0.5, ge=0, le=1)

    def record(self, *, recorded: bool = False) -> dict[str, Any]:
        """The settings that matter for this mode (the LoRA ones are left out in decoder mode,
        ``recorded_share`` unless the run trains on ``recorded`` prompts)."""
        exclude = set(_LORA_FIELDS) if self.mode == "decoder" else set()
        if not recorded:
            exclude.add("recorded_share")
        return self.model_dump(exclude=exclude)


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
        backbone, pool: What the classifier reads, as in ``CAMBoxPrompter``: ``"cnn"``
            (the image, a CNN from scratch) or ``"embedding"`` (the segmenter's frozen
            image embedding, pooled by ``pool``; decoder mode only, since LoRA changes
            the encoder the classifier reads; the image-only augmentations
            ``intensity`` and ``flip`` are not applied to it).
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
    backbone: Literal["cnn", "embedding"] = "cnn"
    pool: Literal[1, 2, 4] = 2
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
        if self.backbone == "cnn":
            exclude |= set(_EMBEDDING_FIELDS)
        if extendable:
            exclude |= {"epochs", "patience"}
        return self.model_dump(exclude=exclude)

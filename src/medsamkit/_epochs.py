"""The one epoch loop of every medsamkit training run: history, best epoch, patience, ``last.pt``, resume.

:func:`finetune` (and so SAM-PP's second stage), :func:`fit_sammix` and learned prompt
providers (:class:`~medsamkit.DecoderLocaliserPrompter`) differ only in what one epoch
does; :func:`run_epochs` does the rest the same way for all (it lives here, below the
``training`` and ``prompters`` packages, so both can use it; ``medsamkit.training``
exports it):

* times each epoch and appends its row (``{"epoch", ..., "seconds"}``) to the history;
* keeps the snapshots of the best epoch (highest score) and stops after ``patience``
  epochs without improvement (only when validating);
* after every epoch writes ``last.pt`` atomically (the weights of every trained part,
  the optimisers, the history, the best epoch and torch's RNG state), ``history.csv``
  and ``loss_curve.png``;
* resumes after the last finished epoch when ``last.pt`` is there.

``last.pt`` holds tensors and plain values only and is read with
``torch.load(weights_only=True)``: a planted file cannot run code, it is refused.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

__all__ = [
    "STATE_FILE",
    "LoopResult",
    "ModulePart",
    "TrainablePart",
    "load_state",
    "run_epochs",
    "save_curve",
    "save_state",
    "write_history",
]

STATE_FILE = "last.pt"
STATE_FORMAT = "medsamkit.training-state"
STATE_VERSION = 1


class TrainablePart(Protocol):
    """Something that trains: a snapshot of its weights (tensors by name) and a way to put one back."""

    def snapshot(self) -> dict[str, Any]: ...

    def restore(self, state: dict[str, Any]) -> None: ...


class ModulePart:
    """A whole ``torch.nn.Module`` as a :class:`TrainablePart` (its state dict, detached copies)."""

    def __init__(self, module: Any) -> None:
        self.module = module

    def snapshot(self) -> dict[str, Any]:
        return {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    def restore(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state)


@dataclass
class LoopResult:
    """What :func:`run_epochs` leaves: the history and the best epoch (its parts already restored)."""

    history: list[dict[str, Any]]
    best_epoch: int
    best_score: float
    best_states: dict[str, dict[str, Any]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------


def save_state(path: Path, state: Any) -> None:
    """``torch.save`` to ``path`` atomically (a crash leaves the previous file)."""
    import torch

    from .data import atomic_write_bytes

    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_state(path: Path, *, map_location: Any = "cpu") -> Any:
    """Read a file written by :func:`save_state` with ``torch.load(weights_only=True)``.

    Only tensors and plain values (dicts, lists, numbers, strings) are rebuilt; a
    file that holds anything else (a pickled object whose loading would run code) is
    refused, with nothing run.

    Raises:
        ValueError: The file cannot be read that way (names the file).
    """
    import pickle

    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"{path}: not a training state medsamkit can load safely (only tensors and plain values are read; "
            f"medsamkit never unpickles objects from a file): {first}. Delete it or use a new out_dir to start afresh."
        ) from None


def _check_state(path: Path, state: Any, parts: Mapping[str, Any], optimizers: Mapping[str, Any]) -> dict[str, Any]:
    """The loaded ``last.pt`` if it has this run's layout, else a ValueError naming the file."""
    ok = (
        isinstance(state, dict)
        and state.get("format") == STATE_FORMAT
        and isinstance(state.get("epoch"), int)
        and isinstance(state.get("history"), list)
        and isinstance(state.get("parts"), dict)
        and set(state["parts"]) == set(parts)
        and isinstance(state.get("optimizers"), dict)
        and set(state["optimizers"]) == set(optimizers)
        and isinstance(state.get("best"), dict)
        and set(state["best"].get("parts", {})) == set(parts)
    )
    if not ok:
        raise ValueError(
            f"{path}: not the training state of this kind of run (expected a {STATE_FORMAT!r} with "
            f"parts {sorted(parts)}); delete it or use a new out_dir"
        )
    return state


def write_history(run_dir: Path, history: list[dict[str, Any]], columns: Sequence[str]) -> None:
    """``history.csv``: one row per epoch, the given columns."""
    from .data import atomic_write_text, csv_text

    atomic_write_text(run_dir / "history.csv", csv_text(history, tuple(columns)))


def save_curve(
    run_dir: Path,
    history: list[dict[str, Any]],
    *,
    losses: Sequence[tuple[str, str]] = (("train_loss", "training loss"),),
    title: str = "fine-tuning learning curve",
) -> None:
    """``loss_curve.png``: the ``losses`` columns (key, label) per epoch and the validation Dice."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .data import atomic_write_bytes

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


# ---------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------


def run_epochs(
    run_dir: Path,
    *,
    epochs: int,
    patience: int,
    validating: bool,
    parts: Mapping[str, TrainablePart],
    optimizers: Mapping[str, Any],
    epoch_fn: Callable[[int], dict[str, Any]],
    score_fn: Callable[[dict[str, Any]], float],
    columns: Sequence[str],
    curve: Mapping[str, Any] | None = None,
    describe: Callable[[dict[str, Any]], str] | None = None,
    progress: bool = True,
    map_location: Any = "cpu",
    plot: bool = True,
) -> LoopResult:
    """Run epochs ``1..epochs`` (or resume after the last finished one) and keep the best.

    Args:
        run_dir: The run folder (``last.pt``, ``history.csv``, ``loss_curve.png``).
        epochs: Last epoch to run.
        patience: Stop when the score has not improved for this many epochs (0: off;
            only when ``validating``).
        validating: Whether the score comes from validation images (patience applies).
        parts: What trains, by name (snapshots go into ``last.pt`` and the best epoch).
        optimizers: Their optimisers, by name (state saved and restored on resume).
        epoch_fn: Runs one epoch (training and validation) and returns its history
            row without ``epoch`` and ``seconds``.
        score_fn: The score of a row (higher is better; the first best is kept).
        columns: Columns of ``history.csv``.
        curve: Keyword arguments of :func:`save_curve` (``losses``, ``title``).
        describe: The progress line of a row (printed with ``progress``).
        progress: Print a line per epoch.
        map_location: Where ``last.pt``'s tensors go on resume.
        plot: Redraw ``loss_curve.png`` after every epoch (about a second each; off
            for short fits whose run folder nobody looks at).

    Returns:
        A :class:`LoopResult`; every part holds the best epoch's weights.
    """
    import torch
    from tqdm.auto import tqdm

    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": 0, "score": -math.inf, "parts": {n: p.snapshot() for n, p in parts.items()}}
    start_epoch = 1
    state_path = run_dir / STATE_FILE
    if state_path.is_file():
        state = _check_state(state_path, load_state(state_path, map_location=map_location), parts, optimizers)
        try:
            for name, part in parts.items():
                part.restore(state["parts"][name])
            for name, optimizer in optimizers.items():
                optimizer.load_state_dict(state["optimizers"][name])
        except (ValueError, RuntimeError, KeyError, TypeError) as exc:
            raise ValueError(
                f"{state_path}: its weights do not fit this run's model ({exc}); delete it or use a new out_dir"
            ) from None
        if isinstance(state.get("torch_rng"), torch.Tensor):
            torch.set_rng_state(state["torch_rng"].cpu())
        history, best, start_epoch = state["history"], state["best"], state["epoch"] + 1

    stale = history[-1]["epoch"] - best["epoch"] if history else 0
    for epoch in range(start_epoch, epochs + 1):
        if patience and validating and stale >= patience:
            break
        started = time.perf_counter()
        fields = epoch_fn(epoch)
        row = {"epoch": epoch, **fields, "seconds": round(time.perf_counter() - started, 3)}
        history.append(row)
        score = score_fn(row)
        if score > best["score"]:
            best = {"epoch": epoch, "score": score, "parts": {n: p.snapshot() for n, p in parts.items()}}
            stale = 0
        else:
            stale += 1
        save_state(
            state_path,
            {
                "format": STATE_FORMAT,
                "version": STATE_VERSION,
                "epoch": epoch,
                "parts": {n: p.snapshot() for n, p in parts.items()},
                "optimizers": {n: o.state_dict() for n, o in optimizers.items()},
                "history": history,
                "best": best,
                "torch_rng": torch.get_rng_state(),
            },
        )
        write_history(run_dir, history, columns)
        if plot:
            save_curve(run_dir, history, **dict(curve or {}))
        if progress and describe is not None:
            tqdm.write(describe(row))

    for name, part in parts.items():
        part.restore(best["parts"][name])
    return LoopResult(history=history, best_epoch=best["epoch"], best_score=best["score"], best_states=best["parts"])

"""The shared epoch loop, under its training-package name (it lives in :mod:`medsamkit._epochs`, below every
package that trains something: fine-tuning, SAM-Mix, and learned prompt providers such as the decoder localiser)."""

from __future__ import annotations

from .._epochs import (
    STATE_FILE,
    LoopResult,
    ModulePart,
    TrainablePart,
    load_state,
    run_epochs,
    save_curve,
    save_state,
    write_history,
)

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

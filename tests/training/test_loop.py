"""The shared training loop: resume state (``last.pt``) loaded without unpickling code.

A ``last.pt`` planted in a run folder (a file a user can be handed) whose unpickling
would run code must not run it: the load refuses with an error naming the file.
"""

from __future__ import annotations

import pytest
import torch

from medsamkit.testing import make_presence_folder
from medsamkit.training import finetune, fit_sammix


class _Planted:
    """Unpickling this object runs code: it creates the marker file."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def _plant(run_dir, marker) -> None:
    run_dir.mkdir(parents=True)
    torch.save({"epoch": 1, "history": [], "best": {"payload": _Planted(marker)}}, run_dir / "last.pt")


@pytest.fixture(scope="module")
def presence(tmp_path_factory):
    root = tmp_path_factory.mktemp("presence")
    return make_presence_folder(root / "train", 4), make_presence_folder(root / "val", 2, seed=100)


@pytest.mark.real_model
def test_finetune_refuses_a_planted_last_pt_without_running_it(litemedsam, presence, tmp_path):
    train, val = presence
    marker = tmp_path / "code-ran"
    _plant(tmp_path / "run", marker)
    with pytest.raises(ValueError, match=r"last\.pt") as info:
        finetune(litemedsam, train[::2], val[:1], out_dir=tmp_path / "run", epochs=1, progress=False)
    assert not marker.exists()
    assert str(tmp_path / "run" / "last.pt") in str(info.value)


@pytest.mark.real_model
def test_sammix_refuses_a_planted_last_pt_without_running_it(litemedsam, presence, tmp_path):
    train, val = presence
    marker = tmp_path / "code-ran"
    _plant(tmp_path / "run", marker)
    small = {"input_size": 64, "width": 8, "depth": 3, "batch_size": 4, "mode": "decoder"}
    with pytest.raises(ValueError, match=r"last\.pt") as info:
        fit_sammix(litemedsam, train, val, out_dir=tmp_path / "run", epochs=2, progress=False, **small)
    assert not marker.exists()
    assert str(tmp_path / "run" / "last.pt") in str(info.value)

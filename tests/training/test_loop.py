"""The shared training loop: resume state (``last.pt``) loaded without unpickling code.

A ``last.pt`` planted in a run folder (a file a user can be handed) whose unpickling
would run code must not run it: the load refuses with an error naming the file.
"""

from __future__ import annotations

import pytest
import torch

from medsamkit.testing import make_presence_folder
from medsamkit.training import finetune, fit_sammix

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is faster (conftest)


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


# ---------------------------------------------------------------------------------------
# The loop itself, on a tiny module (no segmenter)
# ---------------------------------------------------------------------------------------


def _tiny_run(run_dir, epochs, scores, patience=0, plot=True):
    """A linear layer 'trained' by run_epochs; ``scores[epoch - 1]`` is each epoch's validation Dice."""
    from medsamkit.training._loop import ModulePart, run_epochs

    torch.manual_seed(0)
    layer = torch.nn.Linear(2, 1)
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.1)
    calls = []

    def one_epoch(epoch):
        calls.append(epoch)
        loss = layer(torch.ones(1, 2)).sum() ** 2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return {"train_loss": float(loss.detach()), "val_dice": scores[epoch - 1]}

    loop = run_epochs(
        run_dir,
        epochs=epochs,
        patience=patience,
        validating=True,
        parts={"layer": ModulePart(layer)},
        optimizers={"optimizer": optimizer},
        epoch_fn=one_epoch,
        score_fn=lambda row: row["val_dice"],
        columns=("epoch", "train_loss", "val_dice", "seconds"),
        progress=False,
        plot=plot,
    )
    return loop, layer, calls


def test_best_epoch_is_kept_and_patience_stops(tmp_path):
    loop, layer, calls = _tiny_run(tmp_path / "run", 6, [0.5, 0.8, 0.7, 0.6, 0.9, 0.1], patience=2)
    assert calls == [1, 2, 3, 4]  # epochs 3 and 4 did not improve on epoch 2
    assert loop.best_epoch == 2 and loop.best_score == 0.8
    assert [h["epoch"] for h in loop.history] == [1, 2, 3, 4]
    for key, value in layer.state_dict().items():  # the layer holds epoch 2's weights
        torch.testing.assert_close(value, loop.best_states["layer"][key])
    assert (tmp_path / "run" / "history.csv").read_text().count("\n") == 5
    assert (tmp_path / "run" / "loss_curve.png").is_file()


@pytest.mark.real_plots
def test_loss_curve_is_drawn(tmp_path):
    """The loss curve for real (other tests get a blank PNG of its size, see conftest)."""
    import cv2

    from medsamkit.training._loop import save_curve

    history = [
        {"epoch": 1, "train_loss": 0.9, "val_dice": None},
        {"epoch": 2, "train_loss": 0.5, "val_dice": 0.6},
        {"epoch": 3, "train_loss": None, "val_dice": 0.7},
    ]
    save_curve(tmp_path, history)
    picture = cv2.imread(str(tmp_path / "loss_curve.png"))
    assert picture.shape == (440, 770, 3) and (picture < 128).any()  # lines and text, not a blank page


def test_plot_off_keeps_history_and_state_but_draws_no_curve(tmp_path):
    _tiny_run(tmp_path / "run", 2, [0.5, 0.6], plot=False)
    assert (tmp_path / "run" / "history.csv").is_file() and (tmp_path / "run" / "last.pt").is_file()
    assert not (tmp_path / "run" / "loss_curve.png").exists()


def test_resume_continues_after_the_last_epoch_and_matches_a_straight_run(tmp_path):
    scores = [0.5, 0.6, 0.9, 0.7]
    straight, straight_layer, _ = _tiny_run(tmp_path / "straight", 4, scores)
    _tiny_run(tmp_path / "resumed", 2, scores)
    state = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)  # plain data only
    assert state["epoch"] == 2 and isinstance(state["torch_rng"], torch.Tensor)
    resumed, resumed_layer, calls = _tiny_run(tmp_path / "resumed", 4, scores)
    assert calls == [3, 4]
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in resumed.history] == [
        {k: v for k, v in h.items() if k != "seconds"} for h in straight.history
    ]
    assert resumed.best_epoch == straight.best_epoch == 3
    for key, value in straight_layer.state_dict().items():
        torch.testing.assert_close(resumed_layer.state_dict()[key], value)


def test_a_last_pt_of_another_run_is_refused(tmp_path):
    from medsamkit.training._loop import save_state

    run = tmp_path / "run"
    run.mkdir()
    save_state(run / "last.pt", {"epoch": 1, "decoder": {}, "optimizer": {}, "history": [], "best": {}})  # old layout
    with pytest.raises(ValueError, match="not the training state of this kind of run"):
        _tiny_run(run, 2, [0.1, 0.2])
    (run / "last.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="last.pt"):
        _tiny_run(run, 2, [0.1, 0.2])

"""YOLOSegmenter: YOLOv8-seg's own masks as a segmenter (paper 000's baseline), trained offline.

Training runs once, in a subprocess with ``HOME`` set to a temporary folder and every
socket blocked before ``ultralytics`` is imported (tiny images, 1 epoch).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import medsamkit as msk
from medsamkit import Pipeline, Prompts
from medsamkit.data import read_image, write_image, write_mask
from medsamkit.prompters import YOLOBoxPrompter
from medsamkit.segmenters import YOLOSegmenter
from medsamkit.testing import make_blob_image

TRAIN_SCRIPT = textwrap.dedent(
    """
    import json, socket, sys
    from pathlib import Path
    ATTEMPTS = []
    def _blocked(*args, **kwargs):
        ATTEMPTS.append(repr(args)[:200])
        raise OSError("network access blocked by the test")
    socket.socket.connect = _blocked
    socket.socket.connect_ex = _blocked
    socket.getaddrinfo = _blocked
    socket.create_connection = _blocked
    out = Path(sys.argv[1])
    from medsamkit.data import MaskFolder
    from medsamkit.segmenters import YOLOSegmenter
    folder = MaskFolder(out / "data")
    seg = YOLOSegmenter(imgsz=64, conf=0.0, max_boxes=2).fit(folder[:6], epochs=1, batch=4, progress=False)
    seg.save(out / "seg.npz")
    (out / "result.json").write_text(json.dumps({"attempts": ATTEMPTS, "model_id": seg.model_id}))
    """
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("yolo-seg")
    for i in range(8):
        image, mask = make_blob_image((64, 80), n_blobs=1 + i % 2, seed=i)
        write_image(out / "data" / "images" / f"case_{i:02d}.png", image)
        write_mask(out / "data" / "masks" / f"case_{i:02d}.png", mask)
    home = out / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "YOLO_", "MEDSAMKIT_", "ULTRALYTICS_"))}
    env["HOME"] = str(home)
    proc = subprocess.run(
        [sys.executable, "-c", TRAIN_SCRIPT, str(out)], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "result.json").read_text())
    report["out"] = out
    return report


@pytest.fixture(scope="module", autouse=True)
def ultralytics_home(tmp_path_factory):
    """Point medsamkit's Ultralytics folder at a temporary folder before this process imports ultralytics."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDSAMKIT_HOME", str(tmp_path_factory.mktemp("medsamkit_home")))
    for name in ("YOLO_CONFIG_DIR", "YOLO_OFFLINE", "YOLO_AUTOINSTALL"):
        mp.delenv(name, raising=False)
    yield
    mp.undo()


def test_public_names():
    assert msk.YOLOSegmenter is YOLOSegmenter
    assert YOLOSegmenter.requires_target is False
    assert YOLOSegmenter().model_id.startswith("yolo-seg:unfitted:")


def test_trained_offline_and_the_baseline_segments(trained):
    assert trained["attempts"] == []
    seg = YOLOSegmenter.load(trained["out"] / "seg.npz")
    assert seg.model_id == trained["model_id"]  # the weights' digest survives save and load
    with pytest.raises(ValueError, match="YOLOSegmenter"):
        YOLOBoxPrompter.load(trained["out"] / "seg.npz")
    image = read_image(trained["out"] / "data/images/case_02.png")
    boxes, scores, masks = seg.segment(image)
    assert masks.shape == (len(boxes), 64, 80) and masks.dtype == bool
    assert (np.diff(scores) <= 0).all()
    result = Pipeline(seg, seg)(image)
    assert result.mask.shape == (64, 80)
    assert result.prompt_masks.shape[0] == len(boxes)
    if len(boxes):  # the best detection's box gets its own instance's mask back (IoU 1, first of any ties)
        decoded = seg.decode(seg.encode(image), Prompts(box_xyxy=boxes[:1]))
        np.testing.assert_array_equal(decoded.probabilities[0] > 0.5, masks[0])
        assert decoded.scores[0] == pytest.approx(scores[0])


def test_decode_checks_its_input(trained):
    seg = YOLOSegmenter.load(trained["out"] / "seg.npz")
    image = read_image(trained["out"] / "data/images/case_01.png")
    encoding = seg.encode(image)
    with pytest.raises(ValueError, match="points"):
        seg.decode(encoding, Prompts(points_xy=[[[5, 5]]], point_labels=[[1]]))
    other = YOLOSegmenter.load(trained["out"] / "seg.npz", conf=0.9)
    with pytest.raises(ValueError, match="encoding"):
        other.decode(encoding, Prompts(box_xyxy=[[0, 0, 10, 10]]))
    far = seg.decode(encoding, Prompts(box_xyxy=[[0, 0, 0, 0]]))  # overlaps no detection: empty mask, score 0
    if not (encoding.features["boxes"][:, :2] == 0).all(axis=1).any():
        assert far.probabilities.sum() == 0 and far.scores[0] == 0


def test_load_refuses_a_detector_state(tmp_path, trained):
    det_state = tmp_path / "det.npz"
    data = dict(np.load(trained["out"] / "seg.npz", allow_pickle=False))
    meta = json.loads(data["meta"].tobytes())
    meta["format"] = "medsamkit.YOLOBoxPrompter"
    data["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(det_state, **data)
    with pytest.raises(ValueError, match="expected a YOLO 'detect' model"):
        YOLOBoxPrompter.load(det_state)

"""YOLOSegmenter: YOLOv8-seg's own masks as a segmenter (paper 000's baseline), trained offline.

Training runs once per session, in a subprocess with ``HOME`` set to a temporary folder
and every socket blocked before ``ultralytics`` is imported (tiny images, 1 epoch): the
``yolo_trained`` fixture in ``tests/conftest.py``, shared with the YOLOBoxPrompter tests.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import medsamkit as msk
from medsamkit import Pipeline, Prompts
from medsamkit.data import read_image
from medsamkit.prompters import YOLOBoxPrompter
from medsamkit.segmenters import YOLOSegmenter

pytestmark = pytest.mark.usefixtures("ultralytics_home", "one_torch_thread")  # conftest: a temporary Ultralytics folder


@pytest.fixture(scope="module")
def trained(yolo_trained) -> dict:
    """The segmenter of the session's offline YOLO run (``yolo_trained`` in conftest), with its folders and report."""
    return {**yolo_trained, **yolo_trained["segmenter"]}


def test_public_names():
    assert msk.YOLOSegmenter is YOLOSegmenter
    assert YOLOSegmenter.requires_target is False
    assert YOLOSegmenter().model_id.startswith("yolo-seg:unfitted:")


def test_trained_offline_and_the_baseline_segments(trained):
    assert trained["events"] == []
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

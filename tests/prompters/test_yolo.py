"""Tests for YOLOBoxPrompter and the shared YOLO machinery: dataset conversion, box conversion, offline training,
safe loading (the YOLOSegmenter is tested in tests/segmenters/test_yolo_seg.py).

Training runs once per session (the ``yolo_trained`` fixture in ``tests/conftest.py``,
shared with the YOLOSegmenter tests), in a subprocess with ``HOME`` set to a temporary
folder and every socket blocked before ``ultralytics`` is imported (tiny images, 1-2
epochs). The other tests load what it saved. Nothing here may touch the network: an
autouse fixture blocks sockets in the test process too.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from medsamkit import Pipeline, Prompts
from medsamkit._ultralytics import masks_to_yolo_dataset, result_boxes, to_uint8_image
from medsamkit.data import MaskFolder, read_image, write_image, write_mask
from medsamkit.prompters._yolo import YOLOBoxPrompter, build_yolo_box_prompter
from medsamkit.testing import FakeSegmenter, make_blob_image


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any network attempt in the test process fails the test."""
    attempts: list[str] = []

    def blocked(*args, **kwargs):
        attempts.append(repr(args)[:200])
        raise OSError("network access blocked by the test")

    for name in ("getaddrinfo", "create_connection"):
        monkeypatch.setattr(socket, name, blocked)
    monkeypatch.setattr(socket.socket, "connect", blocked)
    monkeypatch.setattr(socket.socket, "connect_ex", blocked)
    yield
    assert attempts == [], f"network attempts: {attempts}"


def write_folder(root: Path, n: int) -> MaskFolder:
    for i in range(n):
        image, mask = make_blob_image((64, 80), n_blobs=1 + i % 2, seed=i)
        write_image(root / "images" / f"case_{i:02d}.png", image)
        write_mask(root / "masks" / f"case_{i:02d}.png", mask)
    return MaskFolder(root)


# ---------------------------------------------------------------------------------------
# Conversion (no Ultralytics needed)
# ---------------------------------------------------------------------------------------


def two_blob_mask() -> np.ndarray:
    mask = np.zeros((40, 60), bool)
    mask[5:15, 3:13] = True  # rows 5-14, cols 3-12
    mask[20:30, 30:50] = True  # rows 20-29, cols 30-49 (larger: listed first)
    mask[36, 58] = True  # a 1-pixel speck, dropped by min_area
    return mask


class TestDataset:
    def test_exact_labels_one_box_per_component(self, tmp_path):
        image = np.zeros((40, 60), np.uint8)
        data_yaml = masks_to_yolo_dataset([(image, two_blob_mask())], tmp_path / "ds", min_area=4)
        lines = (tmp_path / "ds/labels/train/000000.txt").read_text().splitlines()
        got = np.array([[float(v) for v in line.split()] for line in lines])
        expected = np.array(
            [
                [0, (30 + 50) / 2 / 60, (20 + 30) / 2 / 40, 20 / 60, 10 / 40],
                [0, (3 + 13) / 2 / 60, (5 + 15) / 2 / 40, 10 / 60, 10 / 40],
            ]
        )
        np.testing.assert_allclose(got, expected, atol=1e-6)
        data = json.loads(data_yaml.read_text())
        assert data == {"path": str(tmp_path / "ds"), "train": "images/train", "val": "images/train", "names": ["foreground"]}

    def test_empty_mask_gives_empty_label_file_and_8bit_images(self, tmp_path):
        gray16, mask = make_blob_image((32, 48), dtype=np.uint16, seed=1)
        rgb_float = np.stack([make_blob_image((32, 48), dtype=np.float32, seed=2)[0]] * 3, axis=2)
        rgba = np.dstack([np.full((32, 48, 3), 7, np.uint8), np.full((32, 48), 255, np.uint8)])
        pairs = [(gray16, mask), (rgb_float, np.zeros((32, 48), bool)), (rgba, mask)]
        masks_to_yolo_dataset(pairs, tmp_path / "ds", val_samples=pairs[:1])
        assert (tmp_path / "ds/labels/train/000001.txt").read_text() == ""
        gray = read_image(tmp_path / "ds/images/train/000000.png")
        assert gray.dtype == np.uint8 and gray.shape == (32, 48)
        assert gray.min() == 0 and gray.max() == 255  # min-max scaled
        assert read_image(tmp_path / "ds/images/train/000001.png").shape == (32, 48, 3)
        np.testing.assert_array_equal(read_image(tmp_path / "ds/images/train/000002.png"), rgba[..., :3])
        assert (tmp_path / "ds/images/val/000000.png").is_file()
        assert json.loads((tmp_path / "ds/data.yaml").read_text())["val"] == "images/val"

    def test_mask_folder_samples_keep_their_stems_and_rewrite_is_clean(self, tmp_path):
        folder = write_folder(tmp_path / "src", 3)
        masks_to_yolo_dataset(folder, tmp_path / "ds")
        masks_to_yolo_dataset(folder[:1], tmp_path / "ds")  # our own output: replaced
        assert sorted(p.name for p in (tmp_path / "ds/labels/train").glob("*.txt")) == ["case_00.txt"]
        with pytest.raises(ValueError, match="not empty"):
            masks_to_yolo_dataset(folder, tmp_path / "src")  # never writes into (or deletes) a foreign folder
        assert len(MaskFolder(tmp_path / "src")) == 3

    def test_polygons(self, tmp_path):
        masks_to_yolo_dataset([(np.zeros((40, 60), np.uint8), two_blob_mask())], tmp_path / "ds", polygons=True)
        lines = (tmp_path / "ds/labels/train/000000.txt").read_text().splitlines()
        assert len(lines) == 2
        xy = np.array(lines[0].split()[1:], float).reshape(-1, 2) * [60, 40]
        assert xy[:, 0].min() >= 30 and xy[:, 0].max() <= 50 and xy[:, 1].min() >= 20 and xy[:, 1].max() <= 30

    def test_bad_input(self, tmp_path):
        with pytest.raises(ValueError, match="at least one"):
            masks_to_yolo_dataset([], tmp_path / "a")
        with pytest.raises(ValueError, match="shape"):
            masks_to_yolo_dataset([(np.zeros((4, 4)), np.zeros((5, 4)))], tmp_path / "b")
        with pytest.raises(TypeError, match="Sample"):
            masks_to_yolo_dataset([np.zeros((4, 4))], tmp_path / "c")


def test_to_uint8_image():
    assert to_uint8_image(np.array([[0, 1000], [500, 1000]], np.uint16)).tolist() == [[0, 255], [128, 255]]
    assert to_uint8_image(np.full((3, 3), 0.5)).max() == 0  # constant image
    assert to_uint8_image(np.eye(3, dtype=bool)).max() == 255
    assert to_uint8_image(np.zeros((3, 3, 1), np.uint8)).shape == (3, 3)


# ---------------------------------------------------------------------------------------
# Box conversion with a stubbed Ultralytics result
# ---------------------------------------------------------------------------------------


def stub_result(xyxy, conf):
    import torch

    return SimpleNamespace(boxes=SimpleNamespace(xyxy=torch.tensor(xyxy, dtype=torch.float32), conf=torch.tensor(conf)))


class TestBoxConversion:
    def test_sorted_filtered_clipped_inclusive(self):
        result = stub_result([[10, 5, 30, 25], [-3, -2, 90, 70], [40, 40, 41, 41], [1, 1, 2, 2]], [0.3, 0.9, 0.5, 0.1])
        boxes, scores, order = result_boxes(result, (64, 80), conf=0.25, max_boxes=4)
        np.testing.assert_array_equal(order, [1, 2, 0])
        np.testing.assert_allclose(scores, [0.9, 0.5, 0.3])
        # continuous [x0, x1) -> inclusive pixels x0 .. x1 - 1, clipped to the 80x64 image
        np.testing.assert_array_equal(boxes, [[0, 0, 79, 63], [40, 40, 40, 40], [10, 5, 29, 24]])
        boxes, _, _ = result_boxes(result, (64, 80), conf=0.0, max_boxes=2)
        assert len(boxes) == 2

    def test_round_trip_with_dataset_labels(self, tmp_path):
        mask = two_blob_mask()
        masks_to_yolo_dataset([(np.zeros((40, 60), np.uint8), mask)], tmp_path / "ds", min_area=4)
        rows = np.loadtxt(tmp_path / "ds/labels/train/000000.txt", ndmin=2)
        cx, cy, w, h = rows[:, 1] * 60, rows[:, 2] * 40, rows[:, 3] * 60, rows[:, 4] * 40
        xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        boxes, _, _ = result_boxes(stub_result(xyxy.tolist(), [0.9, 0.8]), (40, 60), conf=0.5, max_boxes=4)
        np.testing.assert_allclose(boxes, [[30, 20, 49, 29], [3, 5, 12, 14]], atol=1e-3)

    def test_call_returns_prompts_or_empty(self, monkeypatch):
        prompter = YOLOBoxPrompter(max_boxes=1)
        image = np.zeros((64, 80), np.uint16)
        monkeypatch.setattr(prompter, "_predict", lambda im: (stub_result([[1, 2, 11, 12]], [0.8]), im.shape[:2]))
        prompts = prompter(image)
        assert isinstance(prompts, Prompts)
        np.testing.assert_array_equal(prompts.box_xyxy, [[1, 2, 10, 11]])
        monkeypatch.setattr(prompter, "_predict", lambda im: (stub_result(np.zeros((0, 4)).tolist(), []), (64, 80)))
        empty = prompter(image)
        assert empty.n == 0 and empty.box_xyxy.shape == (0, 4)


class TestValidation:
    def test_arguments(self, tmp_path):
        assert YOLOBoxPrompter.requires_target is False
        with pytest.raises(ValueError, match="YAML"):
            YOLOBoxPrompter(model="yolov8n.pt")
        with pytest.raises(FileNotFoundError, match="never downloads"):
            YOLOBoxPrompter(weights=tmp_path / "yolov8n.pt")
        with pytest.raises(ValueError, match="conf"):
            YOLOBoxPrompter(conf=1.5)
        with pytest.raises(ValueError, match="max_boxes"):
            YOLOBoxPrompter(max_boxes=0)
        with pytest.raises(RuntimeError, match="no weights"):
            YOLOBoxPrompter()(np.zeros((8, 8)))
        with pytest.raises(ValueError, match="set by fit"):
            YOLOBoxPrompter().fit([], amp=True)
        with pytest.raises(ValueError, match="needs trained weights"):
            build_yolo_box_prompter()
        with pytest.raises(ValueError, match="not a saved"):
            (tmp_path / "x.npz").write_bytes(b"junk")
            YOLOBoxPrompter.load(tmp_path / "x.npz")


# ---------------------------------------------------------------------------------------
# Offline training in a fresh process (HOME = tmp, sockets blocked)
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(yolo_trained) -> dict:
    """The detector of the session's offline YOLO run (``yolo_trained`` in conftest), with its folders and report."""
    return {**yolo_trained, **yolo_trained["detector"]}


class TestOfflineTraining:
    def test_no_network_and_nothing_in_the_default_ultralytics_dir(self, trained):
        assert trained["events"] == []
        home = trained["home"]
        assert not (home / ".config" / "Ultralytics").exists()
        ours = home / ".cache" / "medsamkit" / "ultralytics" / "Ultralytics"
        assert Path(trained["user_config_dir"]) == ours
        assert trained["online"] is False
        settings = json.loads((ours / "settings.json").read_text())
        assert settings["sync"] is False and settings["mlflow"] is False
        assert (ours / "Arial.ttf").is_file()

    def test_nothing_written_in_home_outside_medsamkits_folder(self, trained):
        """Issue 10: no telemetry files (``~/intel``, ``~/.config/Ultralytics``) from training or prediction."""
        files = trained["home_files"]  # listed 1 s after training and prediction ended (telemetry threads)
        assert files and all(f.startswith(".cache/medsamkit/") for f in files), files

    def test_training_writes_weights_and_records_what_it_did(self, trained):
        assert Path(trained["weights"]).is_file()
        assert Path(trained["weights"]).name == "best.pt"
        assert trained["params"]["imgsz"] == 64
        info = trained["train_info"]
        assert (info["epochs"], info["n_train"], info["n_val"]) == (2, 6, 2)
        assert info["init_weights"] is None
        # fine-tuning from a .pt checkpoint; without work_dir the run folder is gone, the weights are in memory
        assert trained["tuned_info"]["init_weights"] == str(trained["out"] / "best.pt")
        assert trained["tuned_info"]["epochs"] == 1
        assert trained["tuned_weights"] is None

    def test_boxes_are_valid(self, trained):
        boxes, scores = np.array(trained["boxes"]), np.array(trained["scores"])
        assert boxes.shape[1:] == (4,) and 0 < len(boxes) <= 3
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 79).all() and (boxes[:, 3] <= 63).all()
        assert (boxes[:, 2:] >= boxes[:, :2]).all()
        assert (np.diff(scores) <= 0).all()


@pytest.mark.usefixtures("ultralytics_home", "one_torch_thread")
class TestSavedModels:
    def test_load_predicts_like_the_trained_model(self, trained, tmp_path):
        prompter = YOLOBoxPrompter.load(trained["out"] / "det.npz")
        image = read_image(trained["out"] / "data/images/case_00.png")
        boxes, scores = prompter.detect(image)
        np.testing.assert_allclose(boxes, trained["boxes"], atol=1e-3)  # trained in the other process
        np.testing.assert_allclose(scores, trained["scores"], atol=1e-5)
        again = YOLOBoxPrompter.load(prompter.save(tmp_path / "again.npz"))
        np.testing.assert_array_equal(again(image).box_xyxy, prompter(image).box_xyxy)
        assert again.params() == {**prompter.params(), "weights": None}

    def test_any_image_type_and_pipeline(self, trained):
        prompter = YOLOBoxPrompter.load(trained["out"] / "det.npz", max_boxes=2)
        image16, mask = make_blob_image((50, 70), dtype=np.uint16, seed=3)
        for image in (image16, image16.astype(np.float32) / 7, np.dstack([image16] * 3), np.dstack([image16] * 4)):
            prompts = prompter(image)
            assert isinstance(prompts, Prompts) and prompts.n <= 2
            if prompts.n:
                assert (prompts.box_xyxy[:, 2] <= 69).all() and (prompts.box_xyxy[:, 3] <= 49).all()
        result = Pipeline(prompter, FakeSegmenter())(image16)
        assert result.mask.shape == (50, 70)
        assert YOLOBoxPrompter.load(trained["out"] / "det.npz", conf=1.0)(image16).n == 0

    def test_registry_builder(self, trained, tmp_path):
        saved = YOLOBoxPrompter.load(trained["out"] / "det.npz")
        assert build_yolo_box_prompter(state=str(trained["out"] / "det.npz"), max_boxes=1).max_boxes == 1
        weights = saved.export_weights(tmp_path / "best.pt")
        from_weights = build_yolo_box_prompter(weights=str(weights), imgsz=64, conf=0.0, max_boxes=3)
        image = read_image(trained["out"] / "data/images/case_01.png")
        np.testing.assert_array_equal(from_weights(image).box_xyxy, saved(image).box_xyxy)
        assert from_weights.params()["weights"] == str(weights)


# ---------------------------------------------------------------------------------------
# Nothing a user hands over is unpickled (issue 10): planted files are refused, no code runs
# ---------------------------------------------------------------------------------------


class _Planted:
    """Unpickling this object runs code: it creates the marker file."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def _planted_checkpoint(marker) -> bytes:
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({"model": _Planted(marker), "train_args": {}}, buffer)
    return buffer.getvalue()


PLANTED_PARAMS = {
    "model": "yolov8n.yaml",
    "weights": None,
    "conf": 0.25,
    "iou": 0.7,
    "max_boxes": 4,
    "imgsz": 64,
    "device": "cpu",
}


@pytest.mark.usefixtures("ultralytics_home")
class TestPlantedFiles:
    def test_a_planted_saved_state_does_not_run_code(self, tmp_path):
        marker = tmp_path / "code-ran"
        path = tmp_path / "prompter.npz"
        meta = {"format": "medsamkit.YOLOBoxPrompter", "params": PLANTED_PARAMS, "train_info": {}}
        np.savez(
            path,
            checkpoint=np.frombuffer(_planted_checkpoint(marker), np.uint8),
            meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
        )
        with pytest.raises(ValueError, match="prompter.npz"):
            YOLOBoxPrompter.load(path)(np.zeros((32, 32), np.uint8))
        assert not marker.exists()

    def test_planted_weights_do_not_run_code(self, tmp_path):
        marker = tmp_path / "code-ran"
        path = tmp_path / "best.pt"
        path.write_bytes(_planted_checkpoint(marker))
        with pytest.raises(ValueError, match="best.pt"):
            YOLOBoxPrompter(weights=path)(np.zeros((32, 32), np.uint8))
        assert not marker.exists()
        with pytest.raises(ValueError, match="best.pt"):
            build_yolo_box_prompter(weights=str(path))(np.zeros((32, 32), np.uint8))
        assert not marker.exists()

    def _v2_state(self, path, yaml) -> None:
        """A state in the current layout (YAML + arrays) with the given model YAML."""
        meta = {
            "format": "medsamkit.YOLOBoxPrompter",
            "version": 2,
            "params": PLANTED_PARAMS,
            "train_info": {},
            "task": "detect",
            "yaml": yaml,
            "names": {"0": "foreground"},
            "keys": [],
        }
        np.savez(path, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))

    def test_a_planted_model_yaml_does_not_run_code(self, tmp_path):
        # Ultralytics evaluates a YAML's 'act' as Python, and calls any name of its model module as a layer.
        marker = tmp_path / "code-ran"
        layers = [[-1, 1, "Conv", [16, 3, 2]]]
        head = [[-1, 1, "Detect", ["nc"]]]
        planted = {
            "act": {"nc": 1, "act": f"open({str(marker)!r}, 'w').close()", "backbone": layers, "head": head},
            "a function": {"nc": 1, "backbone": [[-1, 1, "torch_safe_load", [str(tmp_path / "evil.pt")]]], "head": head},
            "a whole model": {"nc": 1, "backbone": [[-1, 1, "DetectionModel", [str(tmp_path / "evil.yaml")]]], "head": head},
        }
        for what, yaml in planted.items():
            path = tmp_path / f"{what}.npz"
            self._v2_state(path, yaml)
            with pytest.raises(ValueError, match=str(path.name)):
                YOLOBoxPrompter.load(path)(np.zeros((32, 32), np.uint8))
            assert not marker.exists(), what

    def test_planted_weights_that_call_a_layer_class_do_not_run_code(self, tmp_path):
        # A checkpoint made only of allowed layer classes can still try to *call* one (REDUCE): refused.
        import io

        import torch
        from ultralytics.nn.tasks import DetectionModel

        class Calls:
            def __reduce__(self):
                return (DetectionModel, (str(tmp_path / "missing.yaml"),))

        buffer = io.BytesIO()
        torch.save({"model": Calls(), "train_args": {}}, buffer)
        path = tmp_path / "calls.pt"
        path.write_bytes(buffer.getvalue())
        with pytest.raises(ValueError, match="calls.pt"):
            YOLOBoxPrompter(weights=path)

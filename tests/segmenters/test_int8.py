"""The opt-in int8 encoder: NNCF post-training quantization of the OpenVINO encoder.

Correctness only, no timings (``benchmarks/bench_precision.py`` measures speed and
Dice). Fast tier: a tiny convolutional encoder really quantized and run by OpenVINO,
the calibration digest in the numerics tag and the cache key, and the clear errors
for what cannot run int8. ``real_model``: LiteMedSAM's encoder quantized with a few
real chest X-rays segments another one like the bf16 default.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medsamkit import LiteMedSAM
from medsamkit.segmenters import _fast, _int8
from medsamkit.segmenters._fast import GRAPH_REVISION, accelerate_encoder, int8_rest_precision
from medsamkit.segmenters._int8 import calibration_digest, check_calibration_inputs

pytest.importorskip("openvino")
pytest.importorskip("nncf")


def _tiny_encoder() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 8, 1), torch.nn.ReLU()
    ).eval()


def _calibration(n: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, 16, 16), dtype=np.float32)


@pytest.fixture()
def ov_cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "openvino"
    monkeypatch.setenv("MEDSAMKIT_OPENVINO_CACHE", str(folder))
    return folder


def test_int8_encoder_is_quantized_close_to_float32_and_named_by_its_calibration(ov_cache) -> None:
    module = _tiny_encoder()
    calibration = _calibration()
    fast = accelerate_encoder(module, precision="int8", image_size=16, calibration=calibration)
    assert (fast.backend, fast.precision) == ("openvino", "int8")
    assert fast.tag == f"openvino-int8-{int8_rest_precision()}-g{GRAPH_REVISION}-{calibration_digest(calibration)}"
    x = torch.from_numpy(_calibration(2, seed=1))
    with torch.no_grad():
        reference = module(x)
    out = torch.cat([fast(x[i : i + 1]) for i in range(2)])
    error = float(torch.linalg.norm(out - reference) / torch.linalg.norm(reference))
    assert 0 < error < 0.1, error  # int8 arithmetic: close, but not the float32 result
    stored = sorted(p.read_text() for p in ov_cache.glob("*.xml"))
    assert len(stored) == 2  # the float32 conversion and its quantization, both kept on disk
    assert sum("FakeQuantize" in text for text in stored) == 1

    # Another calibration set: another tag and another quantized model; the same set: read back.
    other = accelerate_encoder(module, precision="int8", image_size=16, calibration=_calibration(seed=2))
    assert other.tag != fast.tag
    assert len(list(ov_cache.glob("*.xml"))) == 3
    again = accelerate_encoder(module, precision="int8", image_size=16, calibration=calibration)
    assert len(list(ov_cache.glob("*.xml"))) == 3
    assert torch.equal(again(x[:1]), fast(x[:1]))


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_parallel_streams_give_the_same_bits_from_several_threads(ov_cache, precision) -> None:
    from concurrent.futures import ThreadPoolExecutor

    module = _tiny_encoder()
    calibration = _calibration() if precision == "int8" else None
    fast = accelerate_encoder(module, precision=precision, backend="openvino", image_size=16, calibration=calibration)
    x = torch.from_numpy(_calibration(8, seed=3))
    single = [fast(x[i : i + 1]) for i in range(8)]
    with fast.parallel(2) as n, ThreadPoolExecutor(max_workers=2) as pool:
        assert n == 2 and fast._parallel_users == 1
        parallel = list(pool.map(lambda i: fast(x[i : i + 1]), range(8)))
    assert fast._parallel_users == 0
    assert all(torch.equal(a, b) for a, b in zip(single, parallel, strict=True))
    with fast.parallel(1) as n:
        assert n == 1


def test_calibration_inputs_are_checked() -> None:
    good = _calibration(3)
    assert check_calibration_inputs(list(good), 16).shape == (3, 3, 16, 16)
    with pytest.raises(
        ValueError, match=r"calibration: expected preprocessed inputs of shape \(N, 3, 16, 16\), got \(3, 3, 8, 8\)"
    ):
        check_calibration_inputs(good[:, :, :8, :8], 16)
    with pytest.raises(ValueError, match="calibration: expected a non-empty sequence"):
        check_calibration_inputs([], 16)
    bad = good.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        check_calibration_inputs(bad, 16)
    with pytest.raises(ValueError, match="calibration: precision='int8' needs calibration inputs"):
        accelerate_encoder(_tiny_encoder(), precision="int8", image_size=16)
    with pytest.raises(ValueError, match="precision='int8': runs through OpenVINO only"):
        accelerate_encoder(_tiny_encoder(), precision="int8", backend="torch", image_size=16, calibration=good)
    assert calibration_digest(good) == calibration_digest(good.copy()) != calibration_digest(good[:2])


def test_nncf_is_imported_with_its_telemetry_stub_and_sends_nothing(run_offline) -> None:
    """NNCF binds a real usage-telemetry sender when ``openvino_telemetry`` imports at ``import nncf``
    (outside pytest). medsamkit imports it with the sender hidden: NNCF's own no-op stub is bound,
    nothing tries to connect, and nothing but medsamkit's cache lands under HOME."""
    code = """
import sys
from unittest.mock import MagicMock
from medsamkit.segmenters._int8 import import_nncf
nncf = import_nncf()
import openvino_telemetry  # still importable for others afterwards
RESULT = {"nncf": nncf.__name__, "stub": isinstance(sys.modules["nncf.telemetry.wrapper"].telemetry, MagicMock)}
"""
    report = run_offline(code, env={"MEDSAMKIT_OPENVINO_CACHE": ""})
    assert report["result"] == {"nncf": "nncf", "stub": True}  # a plain "import nncf" binds NNCFTelemetry here
    assert report["events"] == []
    assert all(f.startswith(".cache/medsamkit/") for f in report["home_files"]), report["home_files"]


def test_int8_without_nncf_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setattr(_int8, "nncf_available", lambda: False)
    monkeypatch.delitem(sys.modules, "nncf", raising=False)
    with pytest.raises(ImportError, match=r"pip install \"medsamkit\[int8\]\""):
        _int8.import_nncf()
    with pytest.raises(ImportError, match=r"pip install \"medsamkit\[int8\]\""):
        accelerate_encoder(_tiny_encoder(), precision="int8", image_size=16, calibration=_calibration())


# ---------------------------------------------------------------------------------------
# LiteMedSAM(precision="int8"): real weights
# ---------------------------------------------------------------------------------------


@pytest.mark.real_model
def test_litemedsam_int8_bad_input(litemedsam, monkeypatch) -> None:
    model = litemedsam.model
    with pytest.raises(ValueError, match="calibration: precision='int8' needs a list of calibration images"):
        LiteMedSAM(model=model, precision="int8")
    with pytest.raises(ValueError, match="calibration: expected at least one"):
        LiteMedSAM(model=model, precision="int8", calibration=[])
    with pytest.raises(ValueError, match=r"calibration\[1\]: expected shape \(H, W\) or \(H, W, C\)"):
        LiteMedSAM(model=model, precision="int8", calibration=[np.zeros((32, 32)), np.zeros((2, 32, 32, 3))])
    with pytest.raises(ValueError, match="calibration: only used with precision='int8'"):
        LiteMedSAM(model=model, calibration=[np.zeros((32, 32))])
    with pytest.raises(ValueError, match="precision: expected 'fast', 'float32' or 'int8', got 'int4'"):
        LiteMedSAM(model=model, precision="int4")
    monkeypatch.setattr(_int8, "nncf_available", lambda: False)
    with pytest.raises(ImportError, match=r"precision='int8' needs NNCF and OpenVINO: pip install \"medsamkit\[int8\]\""):
        LiteMedSAM(model=model, precision="int8", calibration=[np.zeros((32, 32))])


@pytest.mark.real_model
@pytest.mark.shared_data
def test_litemedsam_int8_segments_a_real_cxr_like_the_default(litemedsam, shared_data, tmp_path, monkeypatch) -> None:
    from medsamkit import OracleBoxPrompter, Pipeline, read_image, read_mask
    from medsamkit.metrics import dice

    monkeypatch.setenv("MEDSAMKIT_OPENVINO_CACHE", str(tmp_path / "openvino"))
    folder = shared_data / "cxr-shenzhen"
    stems = sorted(p.stem for p in (folder / "images").glob("*.png"))
    calibration = [folder / "images" / f"{s}.png" for s in stems[:4]]
    seg = LiteMedSAM(model=litemedsam.model, precision="int8", calibration=calibration)
    digest = calibration_digest(np.stack([seg.preprocess(read_image(p))[0] for p in calibration]))
    assert seg.model_id.endswith(f":openvino-int8-{int8_rest_precision()}-g{GRAPH_REVISION}-{digest}")
    assert seg.model_id != litemedsam.model_id
    image, mask = read_image(folder / "images" / f"{stems[-1]}.png"), read_mask(folder / "masks" / f"{stems[-1]}.png")
    int8 = Pipeline(OracleBoxPrompter(), seg)(image, target=mask).mask
    default = Pipeline(OracleBoxPrompter(), litemedsam)(image, target=mask).mask
    assert seg.encoder_backend == "openvino"
    assert seg._encoder().precision == "int8"
    assert dice(int8, mask) > 0.9 and abs(dice(int8, mask) - dice(default, mask)) < 0.02
    assert not np.array_equal(seg.encode(image).features, litemedsam.encode(image).features)
    assert seg.params() == {"module": seg.model_id, "precision": "int8"}


@pytest.mark.real_model
def test_litemedsam_int8_config_keeps_calibration_paths(shared_data) -> None:
    images = sorted((shared_data / "cxr-shenzhen" / "images").glob("*.png"))[:2]
    seg = LiteMedSAM(precision="int8", calibration=images)  # nothing is quantized before the first encode
    assert seg.params()["calibration"] == [str(p) for p in images]
    rebuilt = LiteMedSAM(**seg.params())
    assert rebuilt.model_id == seg.model_id
    in_memory = LiteMedSAM(precision="int8", calibration=[np.zeros((32, 32), np.uint8), np.eye(32)])
    params = in_memory.params()  # saving a configuration works; rebuilding from it says what is missing
    assert params["calibration"] == "in-memory:" + in_memory.model_id.rsplit("-", 1)[1]
    with pytest.raises(ValueError, match="calibrated with in-memory images .* pass the calibration images again"):
        LiteMedSAM(**params)


def test_fast_module_names_int8_in_its_precision_choices() -> None:
    with pytest.raises(ValueError, match="precision: expected 'bf16', 'fp32' or 'int8', got 'int4'"):
        _fast.planned_backends(_tiny_encoder(), precision="int4")  # type: ignore[arg-type]


def test_cli_int8_options(tmp_path) -> None:
    """``--precision int8 --calibration PATH``: the images a folder or a volume gives, after ``--window``."""
    import argparse

    from medsamkit.cli._build import segmenter_params
    from medsamkit.cli._errors import UsageError
    from medsamkit.data import Volume, write_volume

    def args(**kw):
        base = {"segmenter": "litemedsam", "checkpoint": None, "precision": "int8", "calibration": None, "window": None}
        return argparse.Namespace(**{**base, **kw})

    with pytest.raises(UsageError, match="--precision int8: needs --calibration"):
        segmenter_params(args())
    with pytest.raises(UsageError, match="--calibration: only used with --precision int8"):
        segmenter_params(args(precision="fast", calibration=tmp_path))
    with pytest.raises(UsageError, match="--precision int8: LiteMedSAM only"):
        segmenter_params(args(segmenter="sam", calibration=tmp_path))
    with pytest.raises(UsageError, match="found none in"):
        segmenter_params(args(calibration=tmp_path))
    import cv2

    for i in range(3):
        cv2.imwrite(str(tmp_path / f"img{i}.png"), np.full((20, 24), 40 * i, np.uint8))
    assert segmenter_params(args(calibration=tmp_path))["calibration"] == sorted(tmp_path.glob("*.png"))
    hu = np.arange(70 * 8 * 10, dtype=np.int16).reshape(70, 8, 10) - 1000
    write_volume(tmp_path / "ct.nii.gz", Volume(hu, spacing=(2.0, 1.0, 1.0)))
    images = segmenter_params(args(calibration=tmp_path / "ct.nii.gz", window="40,400"))["calibration"]
    assert len(images) == 24  # 70 slices, every third: at most 32
    from medsamkit import Window

    assert np.array_equal(images[1], Window(40, 400)(hu[3]))


def test_recipe_options_reach_nncf() -> None:
    nncf = _int8.import_nncf()
    plain = _int8._recipe(nncf, "ptq1")
    assert plain == {"model_type": nncf.ModelType.TRANSFORMER}
    default = _int8._recipe(nncf, _int8.INT8_SCHEME)
    assert default["model_type"] == nncf.ModelType.TRANSFORMER
    if "ends" in _int8.INT8_SCHEME:
        assert default["ignored_scope"].patterns == _int8._ENDS and not default["ignored_scope"].validate
    options = _int8._recipe(nncf, "ptq1+sdpa+bc+sq0.5+performance")
    assert options["ignored_scope"].types == ["ScaledDotProductAttention"] and options["fast_bias_correction"] is False
    assert options["advanced_parameters"].smooth_quant_alphas.matmul == 0.5
    assert options["preset"] == nncf.QuantizationPreset.PERFORMANCE
    for bad in ("ptq2", "ptq1+everything"):
        with pytest.raises(ValueError, match=r"^scheme: "):
            _int8._recipe(nncf, bad)


def test_the_scheme_is_part_of_the_calibration_digest(monkeypatch) -> None:
    inputs = _calibration()
    digest = calibration_digest(inputs)
    monkeypatch.setattr(_int8, "INT8_SCHEME", "ptq1")
    assert calibration_digest(inputs) != digest

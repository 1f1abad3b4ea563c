"""Tests for medsamkit.volumes._evaluate and data._volume_folder: folder runs, bad files, resume."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from medsamkit import OracleBoxPrompter, Pipeline, Window
from medsamkit.data import (
    Volume,
    VolumeFolder,
    read_dicom_seg,
    read_volume,
    write_volume,
)
from medsamkit.metrics import volume_metrics
from medsamkit.testing import FakeSegmenter
from medsamkit.volumes import evaluate_volumes, segment_volume, segment_volumes

VOLUMES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "volumes"


def _case(seed: int, shape=(8, 40, 48)) -> tuple[Volume, np.ndarray]:
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    mask = ((zz - 4) / 2.5) ** 2 + ((yy - 20) / (8 + seed)) ** 2 + ((xx - 24) / 10) ** 2 <= 1
    hu = np.where(mask, 50, -600) + rng.normal(0, 10, shape)
    return Volume(hu.astype(np.int16), spacing=(3.0, 0.8, 0.8), origin=(1.0, 2.0, 3.0 + seed)), mask


def _folder(root: Path, n: int = 3, suffixes=(".nii.gz", ".nrrd", ".mha")) -> Path:
    for i in range(n):
        vol, mask = _case(i)
        suffix = suffixes[i % len(suffixes)]
        write_volume(root / "images" / f"case{i}{suffix}", vol)
        write_volume(root / "masks" / f"case{i}{suffix}", vol, mask)
    return root


def _pipe(seg=None):
    return Pipeline(OracleBoxPrompter(), seg or FakeSegmenter(), preprocess=[Window(-200, 800)])


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.shared_data
def test_volume_folder_pairs_files_and_dicom_folders(tmp_path):
    root = _folder(tmp_path / "data")
    (root / "images" / "series1").mkdir()
    shutil.copy(VOLUMES / "dcmqi_ct3slice_liver" / "dicom" / "ct3slice" / "01.dcm", root / "images" / "series1" / "a.dcm")
    (root / "images" / "notes.txt").write_text("x")
    folder = VolumeFolder(root)
    assert folder.stems == ("case0", "case1", "case2")
    assert folder.unmatched_images == ("series1",)
    assert VolumeFolder(root, require_masks=False).stems == ("case0", "case1", "case2", "series1")
    with pytest.raises(FileNotFoundError, match="masks folder"):
        VolumeFolder(tmp_path / "data" / "images" / "..", masks="nope")
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    with pytest.raises(ValueError, match="no volumes found"):
        VolumeFolder(tmp_path / "empty")


def test_evaluate_writes_rows_masks_in_input_format_and_pictures(tmp_path):
    root = _folder(tmp_path / "data")
    report = evaluate_volumes(_pipe(), root, out_dir=tmp_path / "out", prompt="box3d", progress=False)
    assert report.n_errors == 0 and report.n_processed == 3
    rows = _csv(tmp_path / "out" / "metrics.csv")
    assert [r["stem"] for r in rows] == ["case0", "case1", "case2"]
    for row, suffix in zip(rows, (".nii.gz", ".nrrd", ".mha")):
        vol, mask = _case(int(row["stem"][-1]))
        pred = read_volume(tmp_path / "out" / "masks" / f"{row['stem']}{suffix}")
        assert pred.describe_geometry_mismatch(vol) is None  # written with the image's geometry
        expected = volume_metrics(pred.array > 0, mask, spacing=vol.spacing)
        assert float(row["dice"]) == pytest.approx(expected["dice"], rel=1e-5)
        assert float(row["nsd"]) == pytest.approx(expected["nsd"], rel=1e-5)
        assert float(row["hd95"]) == pytest.approx(expected["hd95"], rel=1e-5)
        assert int(row["encoded_slices"]) == int(mask.any(axis=(1, 2)).sum())
        assert (tmp_path / "out" / "pictures" / f"{row['stem']}.png").is_file()
    assert report.mean("dice") > 0.8


BAD = ["mask_shape", "mask_geometry", "four_d", "nan"]


def _add_bad(root: Path, kind: str) -> None:
    import SimpleITK as sitk

    vol, mask = _case(7)
    if kind == "mask_shape":
        write_volume(root / "images" / "bad.nii.gz", vol)
        small = Volume(mask[:, :, :40].astype(np.uint8), spacing=vol.spacing, origin=vol.origin)
        write_volume(root / "masks" / "bad.nii.gz", small)
    elif kind == "mask_geometry":
        write_volume(root / "images" / "bad.nii.gz", vol)
        moved = Volume(mask.astype(np.uint8), spacing=vol.spacing, origin=(50.0, 2.0, 3.0))
        write_volume(root / "masks" / "bad.nii.gz", moved)
    elif kind == "four_d":
        sitk.WriteImage(
            sitk.GetImageFromArray(np.zeros((2, 8, 40, 48), np.int16), isVector=False), str(root / "images" / "bad.nii.gz")
        )
        write_volume(root / "masks" / "bad.nii.gz", vol, mask)
    elif kind == "nan":
        values = vol.array.astype(np.float32)
        values[3, 5, 5] = np.nan
        write_volume(root / "images" / "bad.nii.gz", vol, values)
        write_volume(root / "masks" / "bad.nii.gz", vol, mask)


EXPECTED = {
    "mask_shape": r"bad.nii.gz.*does not lie on the image's voxel grid: got shape \(D, H, W\) \(8, 40, 40\), expected \(8, 40, 48\)",
    "mask_geometry": r"bad.nii.gz.*voxel grid: got origin \(50.0, 2.0, 3.0\), expected \(1.0, 2.0, 10.0\)",
    "four_d": r"bad.nii.gz.*expected a 3D volume, got a 4D image",
    "nan": r"bad.nii.gz.*expected finite voxel values",
}


@pytest.mark.parametrize("kind", BAD)
def test_bad_volume_is_named_and_the_run_continues(tmp_path, kind, capsys):
    import re

    root = _folder(tmp_path / "data", n=2)
    _add_bad(root, kind)
    report = evaluate_volumes(_pipe(), root, out_dir=tmp_path / "out", prompt="oracle", progress=False, pictures=False)
    assert set(report.errors) == {"bad"}
    assert re.search(EXPECTED[kind], report.errors["bad"]), report.errors["bad"]
    rows = {r["stem"]: r for r in _csv(tmp_path / "out" / "metrics.csv")}
    assert rows["bad"]["error"] and rows["case0"]["dice"] and rows["case1"]["dice"]
    assert "bad" in capsys.readouterr().err


def test_resume_skips_done_volumes_and_retries_failed(tmp_path):
    root = _folder(tmp_path / "data", n=2)
    _add_bad(root, "nan")
    seg = FakeSegmenter()
    first = evaluate_volumes(_pipe(seg), root, out_dir=tmp_path / "out", progress=False, pictures=False)
    assert first.n_processed == 3 and first.n_errors == 1
    calls = seg.encode_calls
    vol, mask = _case(7)
    write_volume(root / "images" / "bad.nii.gz", vol)  # fixed
    second = evaluate_volumes(_pipe(seg), root, out_dir=tmp_path / "out", progress=False, pictures=False)
    assert second.n_processed == 1 and second.n_errors == 0
    assert seg.encode_calls - calls == int(mask.any(axis=(1, 2)).sum())  # only the fixed volume ran
    with pytest.raises(ValueError, match="out_dir: .* different run \\(prompt differs"):
        evaluate_volumes(_pipe(), root, out_dir=tmp_path / "out", prompt="oracle", progress=False)


def test_out_dir_inside_the_input_is_refused(tmp_path):
    root = _folder(tmp_path / "data", n=2)
    with pytest.raises(ValueError, match="out_dir: .* lies inside the input folder .*masks"):
        evaluate_volumes(_pipe(), root, out_dir=root / "masks" / "pred", progress=False)
    samples = list(VolumeFolder(root))[:1]  # a list of samples: their own folders count
    with pytest.raises(ValueError, match="out_dir: .* is the input folder .*images"):
        evaluate_volumes(_pipe(), samples, out_dir=root / "images", progress=False)
    assert not (root / "images" / "metrics.csv").exists()
    report = evaluate_volumes(_pipe(), root, out_dir=tmp_path / "out", limit=1, progress=False, pictures=False)
    assert [r["stem"] for r in report.rows] == ["case0"]


def test_segment_volumes_box3d_without_masks(tmp_path):
    root = _folder(tmp_path / "data", n=2)
    shutil.rmtree(root / "masks")
    boxes = {"case0": [10, 8, 1, 38, 32, 7]}
    report = segment_volumes(_pipe(), root, out_dir=tmp_path / "out", prompt="box3d", box3d=boxes, progress=False)
    assert set(report.errors) == {"case1"}  # no box given for it: named, the run goes on
    assert (tmp_path / "out" / "masks" / "case0.nii.gz").is_file()
    with pytest.raises(ValueError, match="prompt: without reference masks"):
        segment_volumes(_pipe(), root, out_dir=tmp_path / "o2", prompt="oracle")


def _dicom_bad(root: Path, kind: str) -> None:
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import HTJ2KLossless, generate_uid

    folder = root / "images" / "bad"
    src_dir = VOLUMES / "dcmqi_ct3slice_liver" / "dicom" / "ct3slice"
    if kind == "mixed_series":
        shutil.copytree(src_dir, folder)
        shutil.copy(VOLUMES / "cxr_dicom" / "RG1_UNCI.dcm", folder / "other.dcm")
        return
    folder.mkdir(parents=True)
    src = pydicom.dcmread(src_dir / "01.dcm")
    uid = generate_uid()
    for k in range(5):
        if kind == "missing_slices" and k == 2:
            continue
        ds = src.copy()
        ds.SeriesInstanceUID, ds.SOPInstanceUID = uid, generate_uid()
        ds.ImagePositionPatient = [*list(src.ImagePositionPatient)[:2], 10.0 * k]
        if kind == "compressed":
            ds.PixelData = encapsulate([ds.PixelData])
            ds.file_meta.TransferSyntaxUID = HTJ2KLossless
        ds.save_as(folder / f"s{k}.dcm", enforce_file_format=True)


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("mixed_series", "expected one DICOM series, found 2"),
        ("missing_slices", "missing slices: expected positions 10 mm apart, got gaps of 20 mm"),
        ("compressed", "no decoder for it is installed"),
    ],
)
def test_bad_dicom_series_in_a_folder_run_is_named_and_the_run_continues(tmp_path, kind, message):
    root = _folder(tmp_path / "data", n=1)
    _dicom_bad(root, kind)
    vol, mask = _case(0)
    write_volume(root / "masks" / "bad.nii.gz", vol, mask)  # never reached: the image fails first
    report = evaluate_volumes(_pipe(), root, out_dir=tmp_path / "out", prompt="oracle", progress=False, pictures=False)
    assert set(report.errors) == {"bad"}
    assert "images/bad" in report.errors["bad"] and message in report.errors["bad"], report.errors["bad"]
    assert report.rows[0]["stem"] == "bad" and report.rows[1]["dice"] is not None


@pytest.mark.shared_data
def test_dicom_series_folder_gets_a_dicom_seg(tmp_path):
    root = tmp_path / "data"
    shutil.copytree(VOLUMES / "dcmqi_ct3slice_liver" / "dicom" / "ct3slice", root / "images" / "ct3slice")
    (root / "masks").mkdir()
    shutil.copy(VOLUMES / "dcmqi_ct3slice_liver" / "dicom" / "liver_seg_SEG.dcm", root / "masks" / "ct3slice.dcm")
    pipe = Pipeline(OracleBoxPrompter(), FakeSegmenter(), preprocess=[Window.preset("liver")])
    report = evaluate_volumes(pipe, root, out_dir=tmp_path / "out", prompt="oracle", progress=False)
    assert report.n_errors == 0
    source = read_volume(root / "images" / "ct3slice")
    written = read_dicom_seg(tmp_path / "out" / "masks" / "ct3slice.dcm", source)
    direct = segment_volume(pipe, source, "oracle", target=read_dicom_seg(root / "masks" / "ct3slice.dcm", source))
    assert np.array_equal(written.array, direct.mask.array)
    assert float(_csv(tmp_path / "out" / "metrics.csv")[0]["dice"]) > 0.5


@pytest.mark.shared_data
def test_multilabel_mask_with_label(tmp_path):
    src = VOLUMES / "totalseg_example_modelmask"
    root = tmp_path / "data"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
        shutil.copy(src / sub / "example_ct_sm.nii.gz", root / sub / "example_ct_sm.nii.gz")
    pipe = Pipeline(OracleBoxPrompter(), FakeSegmenter(), preprocess=[Window.preset("abdomen")])
    report = evaluate_volumes(pipe, root, out_dir=tmp_path / "out", prompt="oracle", label=5, progress=False, pictures=False)
    assert report.n_errors == 0
    liver = read_volume(src / "masks" / "example_ct_sm.nii.gz").array == 5
    assert int(report.rows[0]["encoded_slices"]) == int(liver.any(axis=(1, 2)).sum())

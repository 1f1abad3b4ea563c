"""Tests for medsamkit.data._medical: reading volumes and DICOM with their geometry."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from medsamkit.data import ImageReadError, Volume, read_image, read_volume

VOLUMES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "volumes"
CT3 = VOLUMES / "dcmqi_ct3slice_liver"
LUNG1 = VOLUMES / "pyradiomics_lung_ct"


def _sitk():
    import SimpleITK as sitk

    return sitk


def test_volume_geometry_crop_keeps_physical_positions():
    vol = Volume(np.zeros((4, 5, 6), np.int16), spacing=(2.0, 0.5, 0.25), origin=(10.0, 20.0, 30.0))
    sub = vol.crop(z=slice(1, 3), y=slice(2, 5), x=slice(3, 6))
    # voxel (x=3, y=2, z=1) of vol is voxel 0 of sub
    expected = vol.affine_lps @ np.array([3, 2, 1, 1.0])
    assert np.allclose(sub.affine_lps @ np.array([0, 0, 0, 1.0]), expected)
    assert sub.shape == (2, 3, 3)


def test_volume_rejects_2d_array_and_bad_spacing():
    with pytest.raises(ValueError, match=r"array: expected a \(D, H, W\)"):
        Volume(np.zeros((5, 6)))
    with pytest.raises(ValueError, match="spacing"):
        Volume(np.zeros((1, 5, 6)), spacing=(1.0, 0.0, 1.0))


def test_affine_matches_nibabel_convention(tmp_path):
    nib = pytest.importorskip("nibabel")
    vol = Volume(np.zeros((3, 4, 5), np.int16), spacing=(3.0, 2.0, 1.0), origin=(-5.0, 7.0, 11.0))
    path = tmp_path / "v.nii.gz"
    _sitk().WriteImage(vol.to_sitk(), str(path))
    assert np.allclose(nib.load(path).affine, vol.affine, atol=1e-5)
    back = read_volume(path)
    assert back.describe_geometry_mismatch(vol) is None


def test_read_volume_missing_and_unknown(tmp_path):
    with pytest.raises(ImageReadError, match="file not found"):
        read_volume(tmp_path / "nope.nii.gz")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ImageReadError, match="not a volume"):
        read_volume(tmp_path / "a.txt")


def test_read_volume_4d_file_is_refused(tmp_path):
    sitk = _sitk()
    path = tmp_path / "four.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 4, 5), np.int16), isVector=False), str(path))
    with pytest.raises(ImageReadError, match=r"four.nii.gz.*expected a 3D volume, got a 4D image"):
        read_volume(path)


def test_read_volume_non_finite_voxel_is_refused(tmp_path):
    sitk = _sitk()
    array = np.zeros((2, 3, 4), np.float32)
    array[1, 2, 3] = np.nan
    path = tmp_path / "nan.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    with pytest.raises(ImageReadError, match=r"nan.nrrd.*expected finite voxel values.*\(1, 2, 3\)"):
        read_volume(path)


def test_nifti_nan_voxel_is_refused_although_itk_reads_it_as_zero(tmp_path):
    sitk = _sitk()
    array = np.zeros((2, 3, 4), np.float32)
    array[1, 2, 3] = np.nan
    path = tmp_path / "nan.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    assert not np.isnan(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).any()  # what made this check necessary
    with pytest.raises(ImageReadError, match=r"nan.nii.gz.*expected finite voxel values.*\(1, 2, 3\)"):
        read_volume(path)


def test_read_image_on_a_volume_points_to_read_volume(tmp_path):
    path = tmp_path / "v.nii.gz"
    _sitk().WriteImage(_sitk().GetImageFromArray(np.zeros((2, 3, 4), np.int16)), str(path))
    with pytest.raises(ImageReadError, match="read_volume"):
        read_image(path)


# -- real files --------------------------------------------------------------------------


@pytest.mark.shared_data
def test_dicom_series_equals_nifti_with_same_geometry():
    series = read_volume(CT3 / "dicom" / "ct3slice")
    nifti = read_volume(CT3 / "images" / "ct3slice.nii.gz")
    assert series.modality == "CT"
    assert series.shape == (3, 512, 512)
    assert series.describe_geometry_mismatch(nifti) is None
    assert np.array_equal(series.array, nifti.array)
    assert series.array.min() == -3024  # HU after RescaleIntercept -1024, not raw stored values


@pytest.mark.shared_data
def test_dicom_series_sorted_by_position_not_file_name(tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    # Reverse the names: 01 -> c.dcm, 03 -> a.dcm; reading must still go by z.
    for src, name in zip(sorted((CT3 / "dicom" / "ct3slice").glob("*.dcm")), ("c.dcm", "b.dcm", "a.dcm")):
        shutil.copy(src, folder / name)
    vol = read_volume(folder)
    ref = read_volume(CT3 / "images" / "ct3slice.nii.gz")
    assert np.array_equal(vol.array, ref.array)


def _synthetic_series(folder: Path, n: int, *, step: float = 2.5) -> list[Path]:
    import pydicom
    from pydicom.uid import generate_uid

    src = pydicom.dcmread(CT3 / "dicom" / "ct3slice" / "01.dcm")
    series_uid = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        ds = src.copy()
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        x, y, _ = (float(v) for v in src.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, -100.0 + step * k]
        path = folder / f"s{k:02d}.dcm"
        ds.save_as(path)
        paths.append(path)
    return paths


@pytest.mark.shared_data
def test_dicom_series_missing_slice_is_refused(tmp_path):
    paths = _synthetic_series(tmp_path / "gap", 5)
    vol = read_volume(tmp_path / "gap")
    assert vol.shape[0] == 5 and vol.spacing[0] == pytest.approx(2.5)
    paths[2].unlink()
    with pytest.raises(ImageReadError, match=r"gap.*missing slices: expected positions 2.5 mm apart, got gaps of 5"):
        read_volume(tmp_path / "gap")


@pytest.mark.shared_data
def test_dicom_folder_with_mixed_series_is_refused(tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(CT3 / "dicom" / "ct3slice", folder)
    shutil.copy(VOLUMES / "cxr_dicom" / "RG1_UNCI.dcm", folder / "cxr.dcm")
    with pytest.raises(ImageReadError, match=r"mixed.*expected one DICOM series, found 2"):
        read_volume(folder)


@pytest.mark.shared_data
def test_compressed_dicom_without_decoder_is_refused(tmp_path):
    import pydicom
    from pydicom.pixels import get_decoder
    from pydicom.uid import HTJ2KLossless

    if get_decoder(HTJ2KLossless).is_available:  # pragma: no cover - depends on installed plugins
        pytest.fail("this test needs a transfer syntax without an installed decoder; HTJ2K now has one")
    ds = pydicom.dcmread(CT3 / "dicom" / "ct3slice" / "01.dcm")
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([ds.PixelData])  # bytes are not real HTJ2K; the decoder check comes first
    ds.file_meta.TransferSyntaxUID = HTJ2KLossless
    path = tmp_path / "htj2k.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageReadError, match=r"htj2k.dcm.*compressed transfer syntax .*HTJ2K|htj2k.dcm.*High-Throughput"):
        read_image(path)
    folder = tmp_path / "series"
    folder.mkdir()
    shutil.move(path, folder / "htj2k.dcm")
    with pytest.raises(ImageReadError, match="no decoder"):
        read_volume(folder)


@pytest.mark.shared_data
def test_read_image_dicom_radiograph_monochrome1_and_voi():
    import pydicom
    from pydicom.pixels import apply_voi_lut

    path = VOLUMES / "cxr_dicom" / "RG1_UNCI.dcm"
    image = read_image(path)
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    assert image.shape == (int(ds.Rows), int(ds.Columns))
    windowed = np.asarray(apply_voi_lut(ds.pixel_array, ds), dtype=np.float64)
    # Inverted: where the stored value is high (dark in MONOCHROME1), we are low.
    expected = windowed.max() + windowed.min() - windowed
    assert np.allclose(image, expected, rtol=1e-5, atol=1e-2)
    hi, lo = np.unravel_index(np.argmax(ds.pixel_array), image.shape), np.unravel_index(np.argmin(ds.pixel_array), image.shape)
    assert image[hi] < image[lo]
    vol = read_volume(path)
    assert vol.modality == "CR" and vol.shape == (1, *image.shape)
    assert vol.meta["voi_lut_applied"] is True
    assert vol.meta["spacing_known"] is False  # the file's PixelSpacing is 0\0


@pytest.mark.shared_data
def test_read_image_ct_dicom_slice_keeps_hu_and_spacing():
    vol = read_volume(CT3 / "dicom" / "ct3slice" / "01.dcm")
    assert vol.pixel_spacing == pytest.approx((0.810547, 0.810547), abs=1e-5)
    assert vol.meta["voi_lut_applied"] is False  # CT stays in HU
    series = read_volume(CT3 / "images" / "ct3slice.nii.gz")
    # 01.dcm is at z = -126.69 mm, the highest of the three: index 2 of the z-sorted volume.
    assert vol.origin[2] == pytest.approx(series.origin[2] + 2 * series.spacing[0], abs=1e-3)
    assert np.array_equal(read_image(CT3 / "dicom" / "ct3slice" / "01.dcm"), series.array[2])


@pytest.mark.shared_data
def test_read_nifti_lung_geometry_from_source_md():
    vol = read_volume(LUNG1 / "images" / "lung1_crop.nii.gz")
    assert vol.shape == (48, 160, 160)
    assert vol.spacing == pytest.approx((5.0, 0.570312, 0.570312), abs=1e-5)
    mask = read_volume(LUNG1 / "masks" / "lung1_crop.nii.gz")
    assert int((mask.array > 0).sum()) == 837  # SOURCE.md: 837 vox on z32-34
    assert sorted(set(np.flatnonzero((mask.array > 0).any(axis=(1, 2))).tolist())) == [32, 33, 34]


def test_missing_extra_names_pip_install(monkeypatch):
    import sys

    from medsamkit.data import _medical

    monkeypatch.setitem(sys.modules, "SimpleITK", None)  # makes "import SimpleITK" fail
    with pytest.raises(ImportError, match=r"pip install medsamkit\[medical\]"):
        _medical.require_medical("SimpleITK")

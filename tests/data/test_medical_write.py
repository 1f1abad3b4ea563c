"""Tests for medsamkit.data._medical_write: NIfTI/NRRD/MHA with geometry, DICOM-SEG round trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medsamkit.data import (
    ImageReadError,
    Volume,
    read_dicom_seg,
    read_volume,
    write_dicom_seg,
    write_volume,
)

VOLUMES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "volumes"
CT3 = VOLUMES / "dcmqi_ct3slice_liver"


def _oblique_volume() -> Volume:
    angle = np.deg2rad(20)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1.0]])
    rng = np.random.default_rng(0)
    return Volume(
        rng.integers(-1000, 1000, (4, 6, 5)).astype(np.int16),
        spacing=(2.5, 0.7, 0.9),
        origin=(-12.0, 30.5, 7.25),
        direction=direction,
        modality="CT",
    )


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_write_volume_round_trip_keeps_geometry(tmp_path, suffix):
    vol = _oblique_volume()
    path = write_volume(tmp_path / f"v{suffix}", vol)
    back = read_volume(path)
    assert back.describe_geometry_mismatch(vol, atol=1e-5) is None
    assert np.allclose(back.affine, vol.affine, atol=1e-5)
    assert np.array_equal(back.array, vol.array)
    mask = vol.array > 0
    back_mask = read_volume(write_volume(tmp_path / f"m{suffix}", vol, mask))
    assert back_mask.array.dtype == np.uint8 and np.array_equal(back_mask.array > 0, mask)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left


def test_write_volume_bad_input(tmp_path):
    vol = _oblique_volume()
    with pytest.raises(ValueError, match=r"path: expected a file name ending in one of \.nii\.gz"):
        write_volume(tmp_path / "m.png", vol)
    with pytest.raises(ValueError, match=r"array: expected shape \(4, 6, 5\)"):
        write_volume(tmp_path / "m.nii.gz", vol, np.zeros((4, 6, 6)))
    with pytest.raises(TypeError, match="volume: expected a medsamkit.data.Volume"):
        write_volume(tmp_path / "m.nii.gz", np.zeros((4, 6, 5)))


@pytest.mark.shared_data
def test_nifti_written_from_real_ct_has_the_source_affine(tmp_path):
    nib = pytest.importorskip("nibabel")
    src = VOLUMES / "pyradiomics_mr" / "images" / "brain1.nii.gz"  # direction (1,0,0; 0,-1,0; 0,0,1)
    vol = read_volume(src)
    mask = vol.array > np.percentile(vol.array, 99)
    out = write_volume(tmp_path / "brain1_mask.nii.gz", vol, mask)
    assert np.allclose(nib.load(out).affine, nib.load(src).affine, atol=1e-4)
    assert np.array_equal(read_volume(out).array > 0, mask)


@pytest.mark.shared_data
def test_shipped_dicom_seg_equals_the_nifti_mask():
    source = read_volume(CT3 / "dicom" / "ct3slice")
    ref = read_volume(CT3 / "masks" / "ct3slice.nii.gz")
    seg = read_dicom_seg(CT3 / "dicom" / "liver_seg_SEG.dcm", source)
    assert int(seg.array.sum()) == 107098  # SOURCE.md
    assert np.array_equal(seg.array, ref.array > 0)


@pytest.mark.shared_data
def test_dicom_seg_written_then_read_equals_the_mask(tmp_path):
    import pydicom

    source = read_volume(CT3 / "dicom" / "ct3slice")
    mask = read_volume(CT3 / "masks" / "ct3slice.nii.gz").array > 0
    mask[1] = False  # an empty slice is omitted from the file and comes back empty
    out = write_dicom_seg(tmp_path / "liver.dcm", mask, source, label="liver")
    ds = pydicom.dcmread(out)
    assert ds.Modality == "SEG" and ds.SegmentSequence[0].SegmentLabel == "liver"
    refs = {item.ReferencedSOPInstanceUID for s in ds.ReferencedSeriesSequence for item in s.ReferencedInstanceSequence}
    assert refs == set(source.meta["sop_instance_uids"])
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == source.meta["series_uid"]
    assert np.array_equal(read_dicom_seg(out, source).array, mask)


@pytest.mark.shared_data
def test_dicom_seg_for_a_radiograph(tmp_path):
    cxr = read_volume(VOLUMES / "cxr_dicom" / "RG1_UNCI.dcm")
    mask = np.zeros(cxr.shape[1:], bool)
    mask[500:900, 400:800] = True
    out = write_dicom_seg(tmp_path / "cxr_seg.dcm", mask, cxr)
    assert np.array_equal(read_dicom_seg(out, cxr).array[0], mask)


@pytest.mark.shared_data
def test_dicom_seg_bad_input(tmp_path):
    source = read_volume(CT3 / "dicom" / "ct3slice")
    with pytest.raises(ValueError, match=r"mask: expected shape \(3, 512, 512\)"):
        write_dicom_seg(tmp_path / "x.dcm", np.zeros((2, 512, 512)), source)
    with pytest.raises(ValueError, match="source: expected a Volume read from DICOM"):
        write_dicom_seg(tmp_path / "x.dcm", np.zeros((4, 6, 5)), _oblique_volume())
    cxr = read_volume(VOLUMES / "cxr_dicom" / "RG1_UNCI.dcm")
    with pytest.raises(ImageReadError, match="refers to none of its 3 images"):
        read_dicom_seg(
            CT3 / "dicom" / "liver_seg_SEG.dcm",
            source.with_array(source.array, meta={**source.meta, "sop_instance_uids": ["1.2.3"] * 3}),
        )
    with pytest.raises(ImageReadError, match="not a readable DICOM Segmentation"):
        read_dicom_seg(VOLUMES / "cxr_dicom" / "RG1_UNCI.dcm", cxr)

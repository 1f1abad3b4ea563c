"""Tests for medsamkit.data.MaskFolder and Sample."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from medsamkit.data import MaskFolder, Sample, write_image, write_mask

COUNTS = {"cxr-shenzhen": 59, "cxr-montgomery": 13, "us-busi": 780, "ct-chaos-liver": 20}


def _png(path: Path, value: int = 0, shape: tuple[int, ...] = (4, 5)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".png" if path.suffix == ".PNG" else path.suffix
    ok, buffer = cv2.imencode(suffix, np.full(shape, value, np.uint8))
    assert ok
    path.write_bytes(buffer.tobytes())


def _make(root: Path, images: list[str], masks: list[str]) -> Path:
    for name in images:
        _png(root / "images" / name, 50)
    for name in masks:
        mask = np.zeros((4, 5), bool)
        mask[1:3, 1:4] = True
        write_mask(root / "masks" / name, mask)
    return root


# ---------------------------------------------------------------------------------------
# Shared data
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_shared_sets(name: str, shared_dataset: Callable[[str], Path]) -> None:
    root = shared_dataset(name)
    folder = MaskFolder(root)
    assert len(folder) == COUNTS[name]
    assert folder.unmatched_images == () and folder.unmatched_masks == ()
    assert list(folder.stems) == sorted(folder.stems)
    assert all(s.mask_path is not None and s.mask_path.is_file() for s in folder)
    assert all(s.image_path.name == s.mask_path.name for s in folder)  # type: ignore[union-attr]
    image, mask = folder[0].load()
    assert image.dtype == np.uint8 and image.ndim == 2
    assert mask.dtype == np.bool_ and mask.shape == image.shape and mask.any()
    assert f"samples={COUNTS[name]}" in repr(folder) and name in repr(folder)


def test_busi_normals_have_empty_masks(shared_dataset: Callable[[str], Path]) -> None:
    folder = MaskFolder(shared_dataset("us-busi"))
    normals = [s for s in folder.stems if s.startswith("normal_")]
    assert len(normals) == 133
    benign = [s for s in folder.stems if s.startswith("benign_")]
    malignant = [s for s in folder.stems if s.startswith("malignant_")]
    assert (len(benign), len(malignant)) == (437, 210)
    for stem in normals[:5]:  # reading all 780 masks would be slow; a few suffice
        assert not folder.sample(stem).load_mask().any()
    assert folder.sample(benign[0]).load_mask().any()


def test_shared_root_is_normalised(shared_dataset: Callable[[str], Path]) -> None:
    folder = MaskFolder(shared_dataset("ct-chaos-liver"))
    assert folder.root.is_absolute() and ".." not in folder.root.parts
    assert folder[0].image_path.parent == folder.images_dir


# ---------------------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------------------


def test_mask_suffix_layout(tmp_path: Path) -> None:
    root = _make(
        tmp_path / "cxlseg",
        ["p1.png", "p2.jpg", "p10.PNG"],
        ["p1-mask.png", "p2-mask.png", "p10-mask.png"],
    )
    folder = MaskFolder(root, mask_suffix="-mask")
    assert folder.stems == ("p1", "p10", "p2")  # plain sorted, not natural sort
    assert folder.sample("p2").image_path.name == "p2.jpg"
    assert folder.sample("p2").mask_path.name == "p2-mask.png"  # type: ignore[union-attr]
    assert folder.sample("p10").load_mask().sum() == 6
    # without the suffix nothing pairs: a clear error
    with pytest.raises(ValueError, match="no image/mask pairs") as info:
        MaskFolder(root)
    assert "mask_suffix=''" in str(info.value) and "p1-mask.png" in str(info.value)


def test_custom_subfolder_names(tmp_path: Path) -> None:
    _png(tmp_path / "img" / "a.tif")
    write_mask(tmp_path / "gt" / "a.png", np.eye(4, 5, dtype=bool))
    folder = MaskFolder(tmp_path, images="img", masks="gt")
    assert folder.stems == ("a",)
    assert folder[0].load_image().shape == (4, 5)


def test_same_folder_with_suffix(tmp_path: Path) -> None:
    # Kaggle BUSI style: "x.png" and "x_mask.png" side by side
    for stem in ["benign (1)", "benign (2)"]:
        _png(tmp_path / "data" / f"{stem}.png", 10)
        write_mask(tmp_path / "data" / f"{stem}_mask.png", np.eye(4, 5, dtype=bool))
    write_mask(tmp_path / "data" / "benign (1)_mask_1.png", np.eye(4, 5, dtype=bool))
    folder = MaskFolder(tmp_path, images="data", masks="data", mask_suffix="_mask")
    assert folder.stems == ("benign (1)", "benign (2)")
    # an extra mask file whose stem does not end with the suffix counts as an image
    # without a mask: it is reported, not silently paired
    assert folder.unmatched_images == ("benign (1)_mask_1",)
    assert folder.unmatched_masks == ()
    mask_path = folder.sample("benign (2)").mask_path
    assert mask_path is not None and mask_path.name == "benign (2)_mask.png"
    with pytest.raises(ValueError, match="mask_suffix"):
        MaskFolder(tmp_path, images="data", masks="data")


def test_unmatched_files_reported(tmp_path: Path) -> None:
    root = _make(tmp_path, ["a.png", "b.png", "c.png"], ["a.png", "c.png", "zz.png"])
    folder = MaskFolder(root)
    assert folder.stems == ("a", "c")
    assert folder.unmatched_images == ("b",)
    assert folder.unmatched_masks == ("zz.png",)


def test_ignores_hidden_other_files_and_subfolders(tmp_path: Path) -> None:
    root = _make(tmp_path, ["a.png", "B.JPEG"], ["a.png", "B.png"])
    (root / "images" / ".hidden.png").write_bytes(b"junk")
    (root / "images" / "._a.png").write_bytes(b"junk")
    (root / "images" / "notes.txt").write_text("x")
    (root / "images" / "metadata.csv").write_text("x")
    (root / "images" / "nested.png").mkdir()
    (root / "masks" / ".a.png.1234.tmp").write_bytes(b"x")
    folder = MaskFolder(root)
    assert folder.stems == ("B", "a")
    assert folder.unmatched_images == () and folder.unmatched_masks == ()


def test_duplicate_stems(tmp_path: Path) -> None:
    root = _make(tmp_path, ["a.png", "a.jpg", "b.png"], ["a.png", "b.png"])
    with pytest.raises(ValueError, match="duplicate stem 'a'") as info:
        MaskFolder(root)
    assert "a.jpg" in str(info.value) and "a.png" in str(info.value)


def test_duplicate_mask_stems(tmp_path: Path) -> None:
    root = _make(tmp_path, ["a.png"], ["a.png"])
    _png(root / "masks" / "a.bmp")
    with pytest.raises(ValueError, match="duplicate stem 'a'.*a.bmp.*a.png"):
        MaskFolder(root)


def test_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist.*expected layout") as info:
        MaskFolder(tmp_path / "nowhere")
    assert "nowhere" in str(info.value)
    (tmp_path / "ds").mkdir()
    with pytest.raises(FileNotFoundError, match=r"images folder .*ds.images"):
        MaskFolder(tmp_path / "ds")
    _png(tmp_path / "ds" / "images" / "a.png")
    with pytest.raises(FileNotFoundError, match=r"masks folder .*require_masks=False"):
        MaskFolder(tmp_path / "ds")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        MaskFolder(tmp_path / "file.txt")


def test_empty_images_folder(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "images" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="no image files found"):
        MaskFolder(tmp_path)


def test_require_masks_false(tmp_path: Path) -> None:
    for name in ["x.png", "y.png"]:
        _png(tmp_path / "images" / name)
    folder = MaskFolder(tmp_path, require_masks=False)  # no masks dir at all
    assert folder.masks_dir is None
    assert folder.stems == ("x", "y")
    assert all(s.mask_path is None for s in folder)
    with pytest.raises(ValueError, match="sample 'x' has no mask"):
        folder[0].load_mask()
    assert folder[0].load_image().shape == (4, 5)

    write_mask(tmp_path / "masks" / "y.png", np.ones((4, 5), bool))
    folder = MaskFolder(tmp_path, require_masks=False)
    assert folder.stems == ("x", "y")
    assert folder.sample("x").mask_path is None
    assert folder.sample("y").mask_path is not None
    assert folder.unmatched_images == ("x",)
    assert MaskFolder(tmp_path).stems == ("y",)


def test_argument_validation(tmp_path: Path) -> None:
    root = _make(tmp_path, ["a.png"], ["a.png"])
    with pytest.raises(TypeError, match="root"):
        MaskFolder(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="mask_suffix"):
        MaskFolder(root, mask_suffix=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mask_suffix"):
        MaskFolder(root, mask_suffix="/x")
    with pytest.raises(TypeError, match="require_masks"):
        MaskFolder(root, require_masks="yes")  # type: ignore[arg-type]


def test_size_mismatch_detected_by_load(tmp_path: Path) -> None:
    _png(tmp_path / "images" / "a.png", shape=(6, 6))
    write_mask(tmp_path / "masks" / "a.png", np.ones((4, 5), bool))
    sample = MaskFolder(tmp_path)[0]
    assert sample.load_mask().shape == (4, 5)
    with pytest.raises(ValueError, match=r"a.png.*\(6, 6\)"):
        sample.load()


# ---------------------------------------------------------------------------------------
# Sequence protocol and views
# ---------------------------------------------------------------------------------------


@pytest.fixture()
def folder(tmp_path: Path) -> MaskFolder:
    names = [f"s{i:02d}.png" for i in range(10)]
    return MaskFolder(_make(tmp_path, names, names))


def test_sequence_protocol(folder: MaskFolder) -> None:
    assert len(folder) == 10
    assert isinstance(folder[0], Sample) and folder[0].stem == "s00"
    assert folder[-1].stem == "s09"
    assert folder[np.int64(3)].stem == "s03"
    assert [s.stem for s in folder] == list(folder.stems)
    assert folder.stems == tuple(f"s{i:02d}" for i in range(10))
    assert folder.samples == tuple(folder)
    assert "s05" in folder and "nope" not in folder and folder[5] in folder
    assert folder.sample("s07") == folder[7]
    with pytest.raises(IndexError, match="10"):
        folder[10]
    with pytest.raises(TypeError, match="sample\\(stem\\)"):
        folder["s01"]  # type: ignore[call-overload]
    with pytest.raises(TypeError):
        folder[True]  # type: ignore[call-overload]
    with pytest.raises(KeyError, match="'s99'"):
        folder.sample("s99")
    view = folder[2:4]
    assert isinstance(view, MaskFolder) and view.stems == ("s02", "s03")


def test_sample_is_frozen(folder: MaskFolder) -> None:
    with pytest.raises(AttributeError):
        folder[0].stem = "x"  # type: ignore[misc]


def test_subset(folder: MaskFolder) -> None:
    sub = folder.subset(["s07", "s01", "s07"])
    assert isinstance(sub, MaskFolder)
    assert sub.stems == ("s01", "s07")  # folder order, duplicates merged
    assert sub.sample("s07") == folder.sample("s07")
    assert "2 of 10" in repr(sub)
    assert sub.root == folder.root
    assert sub.subset(("s01",)).stems == ("s01",)
    assert folder.subset(set()).stems == ()
    with pytest.raises(KeyError, match="'missing'"):
        folder.subset(["s01", "missing"])
    with pytest.raises(KeyError, match="s07"):
        folder.subset(["s02"]).subset(["s07"])  # a view only knows its own stems
    with pytest.raises(TypeError, match="collection"):
        folder.subset("s01")


def test_limit(folder: MaskFolder) -> None:
    assert folder.limit(3).stems == ("s00", "s01", "s02")
    assert len(folder.limit(100)) == 10
    assert folder.subset(["s05", "s09", "s03"]).limit(2).stems == ("s03", "s05")
    for bad in (0, -1):
        with pytest.raises(ValueError, match="n: expected a positive int"):
            folder.limit(bad)
    for bad in (2.0, "3", True, None):
        with pytest.raises(TypeError, match="n: expected a positive int"):
            folder.limit(bad)  # type: ignore[arg-type]


# -- issue 10: flat folders and reference masks are paired by exact names ---------------------


def test_image_samples_refuses_two_files_with_one_stem(tmp_path):
    from medsamkit.data import image_samples

    image = np.zeros((8, 8), np.uint8)
    write_image(tmp_path / "case.png", image)
    (tmp_path / "case.jpg").write_bytes((tmp_path / "case.png").read_bytes())
    write_image(tmp_path / "other.png", image)
    with pytest.raises(ValueError, match="duplicate stem 'case'"):
        image_samples(tmp_path)
    (tmp_path / "case.jpg").unlink()
    assert [s.stem for s in image_samples(tmp_path)] == ["case", "other"]


def test_match_masks_compares_names_exactly(tmp_path):
    from medsamkit.data import image_samples, match_masks

    image = np.zeros((8, 8), np.uint8)
    for stem in ("case[1]", "case1", "a*b"):
        write_image(tmp_path / "images" / f"{stem}.png", image)
    write_mask(tmp_path / "masks" / "case1_m.png", np.ones((8, 8), bool))
    write_mask(tmp_path / "masks" / "axxb_m.png", np.ones((8, 8), bool))
    matched = {s.stem: s.mask_path for s in match_masks(image_samples(tmp_path / "images"), tmp_path / "masks", mask_suffix="_m")}
    assert matched == {"a*b": None, "case1": tmp_path / "masks" / "case1_m.png", "case[1]": None}


# -- issue 11: folders of 2D DICOM images (radiographs) ------------------------------------------


def _write_radiograph(path: Path, image: np.ndarray, *, photometric: str = "MONOCHROME1", frames: int = 1) -> None:
    """A synthetic uncompressed CR DICOM: 12-bit, with a VOI window; MONOCHROME1 stores bright as low values."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID = "CR", "synthetic"
    stored = np.round(image.astype(np.float64) / 255.0 * 4095).astype(np.uint16)
    if photometric == "MONOCHROME1":
        stored = np.uint16(4095) - stored
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.ImagerPixelSpacing = [0.2, 0.2]
    if frames > 1:
        ds.NumberOfFrames = frames
        stored = np.stack([stored] * frames)
    ds.PixelData = stored.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _radiograph_folder(root: Path) -> dict[str, np.ndarray]:
    from medsamkit.testing import make_blob_image

    refs = {}
    for i, (stem, photometric) in enumerate((("a", "MONOCHROME1"), ("b", "MONOCHROME2"))):
        image, mask = make_blob_image((48, 64), seed=40 + i)  # a bright blob: dark in MONOCHROME1's stored values
        _write_radiograph(root / "images" / f"{stem}.dcm", image, photometric=photometric)
        write_mask(root / "masks" / f"{stem}.png", mask)
        refs[stem] = mask
    return refs


def test_folder_of_dicom_radiographs_is_listed_evaluated_and_segmented(tmp_path: Path) -> None:
    import medsamkit as msk
    from medsamkit.cli import main
    from medsamkit.data import read_image, read_mask
    from medsamkit.testing import FakeSegmenter

    refs = _radiograph_folder(tmp_path / "data")
    folder = MaskFolder(tmp_path / "data")
    assert folder.stems == ("a", "b") and folder[0].image_path.suffix == ".dcm"
    image, mask = folder[0].load()
    assert image.shape == mask.shape == (48, 64)
    # MONOCHROME1 is inverted on reading: the blob (low stored values) comes out bright.
    assert image[refs["a"]].mean() > image[~refs["a"]].mean()

    pipe = msk.Pipeline(msk.OracleBoxPrompter(), FakeSegmenter())  # bright pixels inside the box
    report = msk.evaluate(pipe, folder, out_dir=tmp_path / "out", progress=False)
    assert report.n_errors == 0
    for row in report.rows:
        direct = pipe(read_image(folder.sample(row["stem"]).image_path), target=refs[row["stem"]]).mask
        assert np.array_equal(read_mask(tmp_path / "out" / "masks" / f"{row['stem']}.png"), direct)
        assert row["dice"] > 0.8  # an un-inverted MONOCHROME1 image would give the background instead

    assert main(["evaluate", str(tmp_path / "data"), "--segmenter", "fake", "--no-progress", "--out", str(tmp_path / "cli")]) == 0
    rows = (tmp_path / "cli" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["a", "b"]
    for images in (tmp_path / "data", tmp_path / "data" / "images"):  # a folder with images/, and a flat folder of .dcm
        out = tmp_path / f"seg-{images.name}"
        argv = ["segment", str(images), "--segmenter", "fake", "--no-progress", "--prompter", "fixed"]
        assert main([*argv, "--box", "8", "8", "56", "40", "--out", str(out)]) == 0
        assert sorted(p.name for p in (out / "masks").iterdir()) == ["a.png", "b.png"]
        assert read_mask(out / "masks" / "a.png").shape == (48, 64)


def test_multi_frame_dicom_in_a_2d_folder_is_named_and_the_run_goes_on(tmp_path: Path) -> None:
    import medsamkit as msk
    from medsamkit.testing import FakeSegmenter

    _radiograph_folder(tmp_path / "data")
    image = np.zeros((48, 64), np.uint8)
    _write_radiograph(tmp_path / "data" / "images" / "c.dcm", image, frames=3)
    write_mask(tmp_path / "data" / "masks" / "c.png", image > 0)
    pipe = msk.Pipeline(msk.OracleBoxPrompter(), FakeSegmenter())
    report = msk.evaluate(pipe, tmp_path / "data", out_dir=tmp_path / "out", progress=False)
    assert set(report.errors) == {"c"}
    assert "c.dcm" in report.errors["c"] and "multi-frame file of 3 frames" in report.errors["c"]
    assert all(r["dice"] > 0.8 for r in report.rows if r["stem"] != "c")


def test_dicom_slices_of_one_series_in_a_2d_folder_are_pointed_out(tmp_path: Path, caplog) -> None:
    import pydicom

    from medsamkit.data import is_volume_path

    _radiograph_folder(tmp_path / "data")
    with caplog.at_level("WARNING", logger="medsamkit"):
        MaskFolder(tmp_path / "data")
    assert "slices of one series" not in caplog.text  # separate radiographs: nothing to say
    assert not is_volume_path(tmp_path / "data" / "images")  # no slice positions: 2D images, not a series
    first = pydicom.dcmread(tmp_path / "data" / "images" / "a.dcm")
    for k, stem in enumerate(("s1", "s2")):  # two CT-like slices of one series at different positions
        ds = first.copy()
        ds.Modality, ds.SeriesInstanceUID = "CT", "1.2.3.4"
        ds.ImagePositionPatient = [0.0, 0.0, 2.5 * k]
        ds.save_as(tmp_path / "data" / "images" / f"{stem}.dcm", enforce_file_format=True)
        write_mask(tmp_path / "data" / "masks" / f"{stem}.png", np.ones((48, 64), bool))
    caplog.clear()
    with caplog.at_level("WARNING", logger="medsamkit"):
        folder = MaskFolder(tmp_path / "data")
    assert folder.stems == ("a", "b", "s1", "s2")  # still listed: each is a valid 2D image
    assert "2 DICOM files" in caplog.text and "slices of one series (SeriesInstanceUID 1.2.3.4)" in caplog.text
    assert "'s1.dcm', 's2.dcm'" in caplog.text
    assert is_volume_path(tmp_path / "data" / "images")  # positioned slices: `medsamkit segment DIR` reads a series


def test_dicom_masks_in_a_2d_folder_are_not_read_as_masks(tmp_path: Path) -> None:
    image = np.zeros((48, 64), np.uint8)
    _write_radiograph(tmp_path / "images" / "a.dcm", image)
    _write_radiograph(tmp_path / "masks" / "a.dcm", image)
    with pytest.raises(ValueError, match=r"no image/mask pairs.*DICOM files in .*masks.*'a.dcm'.*not read as 2D masks"):
        MaskFolder(tmp_path)


@pytest.mark.shared_data
def test_real_dicom_radiograph_folder_evaluates_from_the_cli(tmp_path: Path, shared_data: Path) -> None:
    import shutil

    import pydicom

    import medsamkit as msk
    from medsamkit.cli import main
    from medsamkit.data import read_image, read_mask
    from medsamkit.metrics import dice
    from medsamkit.testing import FakeSegmenter

    source = shared_data / "volumes" / "cxr_dicom" / "RG1_UNCI.dcm"  # CR, MONOCHROME1, VOI window, 1955 x 1841
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    shutil.copy(source, root / "images" / "rg1.dcm")
    header = pydicom.dcmread(source, stop_before_pixels=True)
    shape = (int(header.Rows), int(header.Columns))
    mask = np.zeros(shape, bool)
    mask[shape[0] // 4 : shape[0] * 3 // 4, shape[1] // 5 : shape[1] // 2] = True  # a region over the right lung field
    write_mask(root / "masks" / "rg1.png", mask)

    assert main(["evaluate", str(root), "--segmenter", "fake", "--no-progress", "--out", str(tmp_path / "out")]) == 0
    written = read_mask(tmp_path / "out" / "masks" / "rg1.png")
    direct = msk.Pipeline(msk.OracleBoxPrompter(), FakeSegmenter())(read_image(root / "images" / "rg1.dcm"), target=mask).mask
    assert written.shape == shape and np.array_equal(written, direct)
    (row,) = [line.split(",") for line in (tmp_path / "out" / "metrics.csv").read_text().splitlines()[1:]]
    assert row[0] == "rg1" and float(row[1]) == pytest.approx(dice(direct, mask), abs=1e-5)
    assert (tmp_path / "out" / "overlays" / "rg1.png").is_file()

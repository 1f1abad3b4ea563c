"""Tests for ``medsamkit._outdir``: output folders never in the data, overwrite only medsamkit's files, one writer."""

from __future__ import annotations

import json
import os

import pytest

from medsamkit._outdir import (
    LOCK_FILE,
    MARKER_FILE,
    OutDirLockedError,
    check_out_dir,
    check_out_file,
    claim_out_dir,
    input_folders,
    out_dir_lock,
)
from medsamkit.data import Sample


def test_overlap_in_every_direction_and_through_a_symlink(tmp_path):
    data = tmp_path / "data" / "masks"
    data.mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "data")
    for out, relation in (
        (data, "is"),
        (data / "x", "lies inside"),
        (tmp_path / "data", "contains"),
        (tmp_path / "link" / "masks", "is"),
    ):
        with pytest.raises(ValueError, match=f"'{out}' {relation} the input folder"):
            check_out_dir(out, inputs=[data])
    assert check_out_dir(tmp_path / "elsewhere", inputs=[data]) is None
    assert not (tmp_path / "elsewhere").exists()  # a check creates nothing


def test_input_folders_of_samples_and_paths(tmp_path):
    samples = [Sample("a", tmp_path / "i" / "a.png", tmp_path / "m" / "a.png"), Sample("b", tmp_path / "i" / "b.png")]
    assert sorted(input_folders(samples)) == [tmp_path / "i", tmp_path / "m"]
    assert input_folders(tmp_path / "x") == [tmp_path / "x"]
    assert input_folders(None) == []


def test_marker_records_foreign_entries_and_overwrite_keeps_them(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    claim_out_dir(out, owned=("records", "*.csv"))
    marker = json.loads((out / MARKER_FILE).read_text())
    assert marker["written_by"] == "medsamkit" and marker["foreign"] == ["notes.txt"]
    (out / "records").mkdir()
    (out / "records" / "a.json").write_text("{}")
    (out / "metrics.csv").write_text("x")
    claim_out_dir(out, owned=("records", "*.csv", "notes.txt"), overwrite=True)
    assert sorted(os.listdir(out)) == sorted([MARKER_FILE, "notes.txt"])


def test_unmarked_folder_with_a_clashing_name_is_refused_but_an_old_medsamkit_run_is_adopted(tmp_path):
    foreign = tmp_path / "foreign"
    (foreign / "masks").mkdir(parents=True)
    with pytest.raises(ValueError, match="'masks', which medsamkit did not write"):
        claim_out_dir(foreign, owned=("masks",), overwrite=True)
    assert (foreign / "masks").is_dir() and not (foreign / MARKER_FILE).exists()
    legacy = tmp_path / "legacy"
    (legacy / "masks").mkdir(parents=True)
    (legacy / "run.json").write_text("{}")
    claim_out_dir(legacy, owned=("masks", "run.json"), overwrite=True)
    assert not (legacy / "masks").exists()  # an earlier medsamkit version's results


def test_out_file_inside_the_data_is_refused(tmp_path):
    with pytest.raises(ValueError, match="lies inside the input folder"):
        check_out_file(tmp_path / "masks" / "state.npz", inputs=[tmp_path / "masks"])
    assert check_out_file(tmp_path / "state.npz", inputs=[tmp_path / "masks"]) == tmp_path / "state.npz"


def test_lock_is_exclusive_across_opens_reentrant_and_released(tmp_path):
    import fcntl

    out = tmp_path / "out"
    with out_dir_lock(out):
        with out_dir_lock(out):  # the same process nesting (a run calling another writer)
            assert (out / LOCK_FILE).read_text().strip() == str(os.getpid())
        fd = os.open(out / LOCK_FILE, os.O_RDWR)  # what another process would try
        try:
            with pytest.raises(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    assert not (out / LOCK_FILE).exists()
    assert issubclass(OutDirLockedError, OSError)  # the CLI reports it as a user error (exit 2)


_KILLED_MID_WRITE = """
import os, signal, sys
from pathlib import Path
import medsamkit as msk
from medsamkit.testing import FakeSegmenter

data, out, victim = sys.argv[1:]
rename = os.replace


def replace(src, dst, *args, **kwargs):  # killed (SIGKILL) between writing the temporary file and renaming it
    if Path(dst).parent.name == "masks" and Path(dst).name == victim:
        os.kill(os.getpid(), signal.SIGKILL)
    return rename(src, dst, *args, **kwargs)


os.replace = replace
msk.evaluate(msk.Pipeline(msk.OracleBoxPrompter(), FakeSegmenter()), msk.MaskFolder(data), out_dir=out, progress=False)
"""


def test_a_local_run_killed_mid_write_leaves_a_temporary_file_the_next_run_removes(tmp_path):
    """A run killed in the middle of an atomic write leaves its hidden temporary file
    (``masks/.case_01.png.<random>.tmp``); the next run into the folder, which takes the lock,
    removes it (and finishes the run)."""
    import signal
    import subprocess
    import sys

    import medsamkit as msk
    from medsamkit.testing import FakeSegmenter, make_blob_image

    data, out = tmp_path / "data", tmp_path / "out"
    for i in range(3):
        image, mask = make_blob_image((32, 40), seed=i)
        msk.data.write_image(data / "images" / f"case_{i:02d}.png", image)
        msk.write_mask(data / "masks" / f"case_{i:02d}.png", mask)
    killed = subprocess.run([sys.executable, "-c", _KILLED_MID_WRITE, str(data), str(out), "case_01.png"], capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    (left,) = [p.name for p in (out / "masks").iterdir() if p.name != "case_00.png"]
    assert left.startswith(".case_01.png.") and left.endswith(".tmp")

    report = msk.evaluate(
        msk.Pipeline(msk.OracleBoxPrompter(), FakeSegmenter()), msk.MaskFolder(data), out_dir=out, progress=False
    )
    assert report.n_evaluated == 2  # case_00 was finished before the kill
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["case_00.png", "case_01.png", "case_02.png"]


def test_remove_orphans_removes_only_the_temporary_files_of_atomic_writes(tmp_path):
    """What a writer killed in the middle of writing a mask, record or picture leaves (seen in
    the Ray killed-worker test: ``masks/.00005.png.a86922d89255.tmp``)."""
    from medsamkit._outdir import remove_orphans
    from medsamkit.data import atomic_write_text

    orphans = [
        tmp_path / "masks" / ".case_1.png.a86922d89255.tmp",  # atomic_write_bytes
        tmp_path / "masks" / ".0123456789ab.tmp.nii.gz",  # write_volume
        tmp_path / "records" / ".case_1.json.0123456789ab.tmp",
        tmp_path / "pictures" / ".0123456789ab.tmp.dcm",  # write_dicom_seg
        tmp_path / "overlays" / ".case_1.png.0123456789ab.tmp",
    ]
    kept = [tmp_path / "masks" / "case_1.png", tmp_path / "masks" / ".notes", tmp_path / "other" / ".x.png.1.tmp"]
    for path in [*orphans, *kept]:
        atomic_write_text(path, "x")
    assert sorted(remove_orphans(tmp_path)) == sorted(orphans)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in orphans)

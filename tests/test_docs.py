"""The code in the documentation runs (fakes only, no weights, no shared data).

The guide registers components, so it runs in a fresh interpreter: the registry of
this test process stays as the other tests expect it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
GUIDE = REPO_ROOT / "docs" / "extending.md"


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL)


def _run(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "src"), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False
    )


def test_extending_guide_runs(tmp_path):
    blocks = _python_blocks(GUIDE)
    assert len(blocks) == 5
    proc = _run("\n".join(blocks[1:]), tmp_path)  # the first block only shows the protocols
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"Dice 0\.\d{3} with 1 prompt\(s\)", proc.stdout), proc.stdout


def test_extending_guide_prompter_rejects_bad_quantile(tmp_path):
    code = _python_blocks(GUIDE)[1] + "\ntry:\n    BrightestRegionPrompter(1.5)\nexcept ValueError as exc:\n    print(exc)\n"
    proc = _run(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("quantile: expected a number in (0, 1), got 1.5")

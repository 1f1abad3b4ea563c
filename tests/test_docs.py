"""The code in the documentation runs (fakes only, no weights, no shared data)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL)


def test_extending_guide_runs(capsys):
    blocks = _python_blocks(REPO_ROOT / "docs" / "extending.md")
    assert len(blocks) == 4
    namespace: dict = {"__name__": "extending_guide"}
    for block in blocks[1:]:  # the first block only shows the protocols
        exec(compile(block, "docs/extending.md", "exec"), namespace)
    assert re.search(r"Dice 0\.\d{3} with 1 prompt\(s\)", capsys.readouterr().out)


def test_extending_guide_prompter_rejects_bad_quantile():
    blocks = _python_blocks(REPO_ROOT / "docs" / "extending.md")
    namespace: dict = {"__name__": "extending_guide"}
    exec(compile(blocks[1], "docs/extending.md", "exec"), namespace)
    with pytest.raises(ValueError, match="quantile"):
        namespace["BrightestRegionPrompter"](1.5)

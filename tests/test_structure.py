"""The package's structure, checked from its source with ``ast`` (no external tool).

* No import circle between the modules of ``src/medsamkit``: every import counts,
  also those inside functions (a lazy import still ties two modules together); only
  imports under ``if TYPE_CHECKING:`` are left out (they never run).
* No ``_private`` name imported across packages: a module may import the private
  modules of its own package and of the packages above it (``from .._types import
  Prompts`` is fine), never those of a sibling package (``from ..training._engine
  import ...``).
* A name private to a module stays in it: no module imports another module's
  ``_name``, not even a sibling's in the same package (``from ._engine import
  _finish`` is refused; a helper two modules share gets a public name in its module,
  which the package's ``__init__`` need not re-export).
* Every module imports on its own: a fresh interpreter loads only the third-party
  libraries medsamkit's modules import at their top (numpy, cv2, pydantic; no medsamkit
  module), then forks one child per module, which imports that module alone. Each import
  thus starts from an interpreter without any medsamkit module, as in a fresh process,
  without paying the interpreter's start ~80 times.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import medsamkit
from _background import BackgroundRun, start_background

PACKAGE_DIR = Path(medsamkit.__file__).resolve().parent
ROOT = "medsamkit"


@dataclass(frozen=True)
class Module:
    name: str  # dotted, e.g. medsamkit.prompters._oracle ("medsamkit.prompters" for its __init__)
    path: Path
    is_package: bool

    @property
    def package(self) -> str:
        """The package the module belongs to (a package's __init__ belongs to the package itself)."""
        return self.name if self.is_package else self.name.rpartition(".")[0]


def _modules(root: Path = PACKAGE_DIR) -> dict[str, Module]:
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        name = ".".join(parts)
        found[name] = Module(name, path, is_package)
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except those under ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


@functools.cache
def _parsed_imports(source: str, filename: str) -> tuple[ast.Import | ast.ImportFrom, ...]:
    """The import statements of a source text (parsed once: both checks below read every module)."""
    return tuple(_import_nodes(ast.parse(source, filename=filename)))


@dataclass(frozen=True)
class Imported:
    """One imported thing: ``path`` is the dotted path of what is bound (a module or a name in one)."""

    path: str
    line: int


def _imports(module: Module, modules: dict[str, Module]) -> list[Imported]:
    """What ``module`` imports from inside the package, as dotted paths."""
    result = []
    for node in _parsed_imports(module.path.read_text(encoding="utf-8"), str(module.path)):
        if isinstance(node, ast.Import):
            result += [Imported(alias.name, node.lineno) for alias in node.names if alias.name.split(".")[0] == ROOT]
            continue
        if node.level:
            base = module.package.split(".")
            if node.level > 1:
                base = base[: -(node.level - 1)]
            source = ".".join([*base, *([node.module] if node.module else [])])
        else:
            source = node.module or ""
        if source.split(".")[0] != ROOT:
            continue
        for alias in node.names:
            result.append(Imported(f"{source}.{alias.name}" if alias.name != "*" else source, node.lineno))
    return result


def _module_of(path: str, modules: dict[str, Module]) -> str:
    """The module a dotted path lives in (the path itself if it is a module, else its longest module prefix)."""
    parts = path.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    raise AssertionError(f"{path} is not inside {ROOT}")


def _graph(modules: dict[str, Module]) -> dict[str, set[str]]:
    """Module -> modules it makes Python import (with their packages' __init__ outside its own ancestry)."""
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, module in modules.items():
        ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
        for imported in _imports(module, modules):
            target = _module_of(imported.path, modules)
            parts = target.split(".")
            # Importing a.b.c runs a/__init__ and a/b/__init__ first (unless already being imported: our ancestors).
            for i in range(1, len(parts) + 1):
                step = ".".join(parts[:i])
                if step not in ancestors and step != name:
                    graph[name].add(step)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def connect(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def _private_violations(modules: dict[str, Module]) -> list[str]:
    """``file:line: what`` for every private module imported across packages and every private name of another module."""
    root = next(m.path.parent for m in modules.values() if m.name == ROOT).parent
    problems = []
    for name, module in modules.items():
        own = module.package
        for imported in _imports(module, modules):
            parts = imported.path.split(".")
            for i, part in enumerate(parts):
                if not part.startswith("_") or part.startswith("__"):
                    continue
                owner = ".".join(parts[:i])  # the package or module the private name belongs to
                if owner in modules and modules[owner].is_package:
                    allowed = own == owner or own.startswith(owner + ".")  # our package or one above it
                else:
                    allowed = False  # a name private to another module, even one of our own package
                if not allowed:
                    where = module.path.relative_to(root)
                    problems.append(f"{where}:{imported.line}: {name} imports {imported.path} (private to {owner})")
                    break
    return problems


# ---------------------------------------------------------------------------------------
# the checks
# ---------------------------------------------------------------------------------------


def test_no_import_circles():
    modules = _modules()
    cycles = _cycles(_graph(modules))
    assert cycles == [], "import circles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_private_names_imported_across_packages_or_modules():
    problems = _private_violations(_modules())
    assert problems == [], "private imports across packages or modules:\n" + "\n".join(problems)


_ALL_MODULES = sorted(name for name in _modules() if not name.endswith(".__main__"))  # __main__ runs the program

#: Third-party libraries the parent loads before it forks (what medsamkit's modules import at their top).
PRELOADED = ("numpy", "cv2", "pydantic")

_ZYGOTE = r"""
import importlib, json, os, sys, traceback
root, names = sys.argv[1], sys.argv[2:]
for library in PRELOADED:
    importlib.import_module(library)
loaded = sorted(m for m in sys.modules if m == root or m.startswith(root + "."))
if loaded:
    raise SystemExit(f"the preloaded libraries imported {loaded}: the children would not start clean")


def start(name):
    read, write = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: import one module, report, leave without running the parent's exit handlers
        os.close(read)
        try:
            importlib.import_module(name)
            report = ""
        except BaseException:
            report = traceback.format_exc() or "failed"
        with os.fdopen(write, "w") as pipe:
            pipe.write(report)
        os._exit(0)
    os.close(write)
    return pid, read


def finish(name, pid, read):
    with os.fdopen(read) as pipe:
        report = pipe.read()
    _, status = os.waitpid(pid, 0)
    if status and not report:
        report = f"the child importing {name} died (wait status {status})"
    results[name] = report or None


results = {}
running = []  # two children at a time (one per core of a small machine); each only reads its own pipe
for name in names:
    running.append((name, *start(name)))
    if len(running) == 2:
        finish(*running.pop(0))
for child in running:
    finish(*child)
print("IMPORT-REPORT " + json.dumps(results))
""".replace("PRELOADED", repr(PRELOADED))


def _start_imports_alone(names: list[str], root: str, path: Path, workdir: Path) -> BackgroundRun:
    """Start the parent that imports each of ``names`` in its own child (output in ``workdir``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(path), env.get("PYTHONPATH", "")])
    return start_background([sys.executable, "-c", _ZYGOTE, root, *names], workdir, env=env, timeout=300)


def _imports_report(run: BackgroundRun) -> dict[str, str | None]:
    """``{module: None, or the traceback of its import}`` from a run of :func:`_start_imports_alone`."""
    out = run.wait()
    lines = [line for line in out.stdout.splitlines() if line.startswith("IMPORT-REPORT ")]
    assert out.returncode == 0 and lines, out.stdout[-2000:] + out.stderr[-2000:]
    return json.loads(lines[-1][len("IMPORT-REPORT ") :])


def _start_package_imports(tmp_path_factory: pytest.TempPathFactory) -> BackgroundRun:
    return _start_imports_alone(_ALL_MODULES, ROOT, PACKAGE_DIR.parent, tmp_path_factory.mktemp("imports-alone"))


#: The isolated imports start with the session's first test and run meanwhile (conftest's background_runs).
BACKGROUND_STARTERS = {"imported_alone": _start_package_imports}


@pytest.fixture(scope="module")
def imported_alone(background_runs, tmp_path_factory) -> dict[str, str | None]:
    return _imports_report(background_runs.pop("imported_alone", None) or _start_package_imports(tmp_path_factory))


@pytest.mark.parametrize("name", _ALL_MODULES)
def test_module_imports_in_isolation(name, imported_alone):
    assert imported_alone[name] is None, imported_alone[name][-2000:]


# ---------------------------------------------------------------------------------------
# the checks can fail: they find what they are meant to find in a small fake package
# ---------------------------------------------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> dict[str, Module]:
    for relative, text in files.items():
        path = root / ROOT / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return _modules(root / ROOT)


def test_a_lazy_circle_through_a_package_init_is_found(tmp_path):
    modules = _write(
        tmp_path,
        {
            "__init__.py": "",
            "_core.py": "def f():\n    from .seg import helper\n",
            "seg/__init__.py": "from ._a import helper\n",
            "seg/_a.py": "from .._core import f\nhelper = f\n",
            "_other.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .seg import helper\n",
        },
    )
    assert _cycles(_graph(modules)) == [["medsamkit._core", "medsamkit.seg", "medsamkit.seg._a"]]


def test_type_checking_imports_make_no_circle(tmp_path):
    modules = _write(
        tmp_path,
        {
            "__init__.py": "",
            "_a.py": "from ._b import x\ny = 1\n",
            "_b.py": "import typing\nx = 1\nif typing.TYPE_CHECKING:\n    from ._a import y\n",
        },
    )
    assert _cycles(_graph(modules)) == []


def test_private_imports_across_packages_and_modules_are_found(tmp_path):
    modules = _write(
        tmp_path,
        {
            "__init__.py": "",
            "_types.py": "Prompts = 1\n_hidden = 2\n",
            "training/__init__.py": "from ._engine import train\n",
            "training/_engine.py": "train = 1\n_target = 2\n",
            "prompters/__init__.py": "",
            "prompters/_ok.py": "from .._types import Prompts\nfrom ..training import train\n",
            "prompters/_bad.py": (
                "def f():\n"
                "    from ..training._engine import _target\n"
                "    from ..training._engine import train\n"
                "    from .._types import _hidden\n"
                "    from ..training import _engine\n"
            ),
            "training/_same.py": "from ._engine import _target, train\nfrom . import _engine\n",
        },
    )
    problems = _private_violations(modules)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "medsamkit.prompters._bad imports medsamkit.training._engine._target (private to medsamkit.training)",
        "medsamkit.prompters._bad imports medsamkit.training._engine.train (private to medsamkit.training)",
        "medsamkit.prompters._bad imports medsamkit._types._hidden (private to medsamkit._types)",
        "medsamkit.prompters._bad imports medsamkit.training._engine (private to medsamkit.training)",
        "medsamkit.training._same imports medsamkit.training._engine._target (private to medsamkit.training._engine)",
    ]


def test_each_module_is_imported_without_the_others(tmp_path):
    """A module that works only after another one was imported fails; a broken import is reported."""
    for relative, text in {
        "fakepkg/__init__.py": "",
        "fakepkg/_a_helper.py": "X = 1\n",
        "fakepkg/_b_uses_a_unimported.py": "import fakepkg\nY = fakepkg._a_helper.X\n",
        "fakepkg/_c_broken.py": "raise RuntimeError('broken on import')\n",
        "fakepkg/_d_fine.py": "from ._a_helper import X\n",
    }.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    names = ["fakepkg._a_helper", "fakepkg._b_uses_a_unimported", "fakepkg._c_broken", "fakepkg._d_fine"]
    results = _imports_report(_start_imports_alone(names, "fakepkg", tmp_path, tmp_path / "run"))
    assert results["fakepkg._a_helper"] is None and results["fakepkg._d_fine"] is None
    assert "AttributeError" in results["fakepkg._b_uses_a_unimported"]  # in one interpreter it would pass after _a_helper
    assert "broken on import" in results["fakepkg._c_broken"]

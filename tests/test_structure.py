"""The package's shape: no import cycle in tame_core, every module imports alone, and no long functions.

Run alone with ``pytest tests/test_structure.py``; it reads the source with :mod:`ast` (nothing heavy is
imported in this process) and imports the modules in one child process.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from functools import lru_cache
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "tame_core"

#: The longest a function may be, in lines (``end_lineno - lineno + 1`` of its ``def``, decorators left out).
MAX_FUNCTION_LINES = 60



# --- the import graph ----------------------------------------------------------------------------------
def module_files(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every module of ``package`` under ``root``."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: at module level and inside functions and classes alike;
    ``if TYPE_CHECKING:`` blocks never run, so only their ``else`` counts."""
    found, stack = [], [tree]
    while stack:
        node = stack.pop()
        if _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return found


@lru_cache(maxsize=None)
def _lazy_exports(path: Path) -> dict[str, str]:
    """A package's PEP 562 ``_EXPORTS`` (public name -> relative module), which ``__getattr__`` imports."""
    for node in ast.parse(path.read_text()).body:
        targets = [node.target] if isinstance(node, ast.AnnAssign) else getattr(node, "targets", [])
        if any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in targets) and node.value is not None:
            return ast.literal_eval(node.value)
    return {}


def _targets(node: ast.Import | ast.ImportFrom, here: str, modules: dict[str, Path]) -> list[str]:
    """The modules one import statement loads, ``from . import x`` resolved to the submodule ``x`` and
    ``from pkg import Name`` through the package's lazy ``_EXPORTS``."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        parts = here.split(".")[: len(here.split(".")) - node.level + 1]
        base = ".".join(parts + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    targets = []
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        if submodule in modules:
            targets.append(submodule)
            continue
        exported = _lazy_exports(modules[base]).get(alias.name) if base in modules else None
        targets.append(base + exported if exported else base)
    return targets


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports. An import of ``a.b.c`` also runs the ``a.b`` package's
    ``__init__`` (not the importer's own packages, already loading), so that is an edge too."""
    modules = module_files(root, package)
    packages = {name for name, path in modules.items() if path.name == "__init__.py"}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        here = name if name in packages else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in _import_nodes(ast.parse(path.read_text(), str(path))):
            for target in _targets(node, here, modules):
                while target and target not in modules:  # `from x import name` of a non-module name
                    target = target.rpartition(".")[0]
                if not target.startswith(package) or target == name:
                    continue
                edges.add(target)
                parent = target.rpartition(".")[0]
                while parent.count(".") >= 1 and not (name == parent or name.startswith(parent + ".")):
                    edges.add(parent)
                    parent = parent.rpartition(".")[0]
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None (depth-first search, colouring modules in progress)."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[module] = "done"
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_the_cycle_finder_sees_a_cycle_through_an_import_inside_a_function(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "card.py").write_text("X = 1\n")
    (package / "store.py").write_text("from .card import X\nfrom .sub import finder\n")
    (package / "sub" / "finder.py").write_text("def find():\n    from ..store import X\n    return X\n")
    (package / "alone.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .store import X\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.store"] == {"pkg.card", "pkg.sub", "pkg.sub.finder"}
    assert graph["pkg.alone"] == set()  # a TYPE_CHECKING import never runs
    assert find_cycle(graph) == ["pkg.store", "pkg.sub.finder", "pkg.store"]
    (package / "sub" / "finder.py").write_text("from ..card import X\n")
    assert find_cycle(import_graph(tmp_path, "pkg")) is None


def test_tame_core_has_no_import_cycle():
    graph = import_graph(ROOT, PACKAGE)
    assert "tame_core.heads" in graph["tame_core.explainer"]  # the walk sees real imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


# --- every module imports alone ------------------------------------------------------------------------
_IMPORT_EACH = """
import importlib, json, sys, traceback
failures = {}
for name in json.loads(sys.argv[1]):
    for loaded in [m for m in sys.modules if m == "tame_core" or m.startswith("tame_core.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except BaseException as error:
        failures[name] = traceback.format_exception_only(type(error), error)[-1].strip()
print(json.dumps(failures))
"""


def test_every_tame_core_module_imports_alone():
    """One child process imports each module with no tame_core module loaded before it (a fresh process per
    module would take minutes: each loads PyTorch). ``__main__`` runs the command, so it is left out."""
    names = [name for name in module_files(ROOT, PACKAGE) if not name.endswith("__main__")]
    result = subprocess.run([sys.executable, "-c", _IMPORT_EACH, json.dumps(names)], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    failures = json.loads(result.stdout.strip().splitlines()[-1])
    assert failures == {}, "\n".join(f"{name}: {error}" for name, error in failures.items())


# --- no long functions ---------------------------------------------------------------------------------
def long_functions(files: list[Path], root: Path, limit: int = MAX_FUNCTION_LINES) -> dict[str, int]:
    """``path:Class.function`` -> length in lines, for every function or method longer than ``limit``."""
    found = {}

    def walk(node: ast.AST, prefix: str, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                qualname = prefix + child.name
                if not isinstance(child, ast.ClassDef) and child.end_lineno - child.lineno + 1 > limit:
                    found[f"{where}:{qualname}"] = child.end_lineno - child.lineno + 1
                walk(child, qualname + ".", where)
            else:
                walk(child, prefix, where)

    for path in files:
        walk(ast.parse(path.read_text(), str(path)), "", path.relative_to(root).as_posix())
    return found


def _source_files() -> list[Path]:
    files = [ROOT / "app.py"]
    for folder in ("tame_core", "pages", "scripts", "benchmarks"):
        files += sorted((ROOT / folder).rglob("*.py"))
    return files


def test_long_functions_finds_a_long_method(tmp_path):
    body = "\n".join(f"        x{i} = {i}" for i in range(59))
    (tmp_path / "m.py").write_text(f"class A:\n    def short(self):\n{body}\n\n    def long(self):\n{body}\n        x = 1\n")
    assert long_functions([tmp_path / "m.py"], tmp_path) == {"m.py:A.long": 61}


def test_no_function_over_60_lines():
    found = long_functions(_source_files(), ROOT)
    assert found == {}


"""The pages are layout only: every name they take from the package comes from ``tame_core.studio`` itself
(not its submodules, not another tame_core module), and every function in them is short."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tame_core.studio as studio

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "app.py", *(ROOT / "pages").glob("*.py")])
MAX_FUNCTION_LINES = 60


def tame_imports(tree: ast.AST) -> list[tuple[str, list[str]]]:
    """(module, names) of every import of tame_core in the tree, functions' bodies included."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name.split(".")[0] == "tame_core"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tame_core":
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def test_every_page_is_checked():
    assert {"app.py", "_shared.py", "explain.py", "compare.py", "curves.py", "train.py"} <= {p.name for p in PAGES}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_pages_import_only_from_the_studio_package(page):
    imports = tame_imports(ast.parse(page.read_text(), str(page)))
    assert imports, f"{page.name} takes nothing from tame_core.studio"
    wrong = [module for module, _ in imports if module != "tame_core.studio"]
    assert not wrong, f"{page.name} imports {wrong}: re-export what it needs from tame_core.studio"
    names = [name for _, names in imports for name in names]
    assert "*" not in names and not [n for n in names if n not in studio.__all__], f"{page.name}: not in studio.__all__"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_functions_are_short(page):
    tree = ast.parse(page.read_text(), str(page))
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{page.name}: {long}"


def test_the_check_catches_a_submodule_and_another_module():
    tree = ast.parse("from tame_core.studio.methods import missing\nimport tame_core.metrics\nfrom tame_core.studio import render\n")
    assert [module for module, _ in tame_imports(tree)] == ["tame_core.studio.methods", "tame_core.metrics", "tame_core.studio"]

"""The consensus core does no I/O: no clocks, sockets, threads, files or global randomness.

Imports are checked in the source with ast, so an import hidden in a function body
counts too. Imports under `if TYPE_CHECKING:` are allowed: they never run.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import kvpaxos.core

CORE_DIR = Path(kvpaxos.core.__file__).parent
FORBIDDEN = {"asyncio", "time", "random", "sqlite3", "sqlitedict", "aiohttp", "socket", "threading",
             "os", "subprocess", "multiprocessing", "selectors", "signal", "datetime", "secrets",
             "uuid", "logging", "storage"}
MODULES = sorted(CORE_DIR.glob("*.py"))


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def runtime_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, top-level module) for every import that can run."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name.split(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "__import__":
            found.append((node.lineno, "__import__"))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def test_the_core_has_modules_to_check() -> None:
    names = {p.name for p in MODULES}
    assert {"acceptor.py", "learner.py", "leader.py", "replica.py", "kvstate.py", "codec.py"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_core_module_imports_nothing_that_does_io(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    bad = [(line, mod) for line, mod in runtime_imports(tree) if mod in FORBIDDEN or mod == "__import__"]
    assert not bad, f"{path.name} imports {', '.join(f'{mod} (line {line})' for line, mod in bad)}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_core_module_imports_only_the_standard_library_and_the_core(path: Path) -> None:
    allowed = {"__future__", "abc", "base64", "bisect", "collections", "copy", "dataclasses", "enum",
               "functools", "hashlib", "heapq", "itertools", "json", "math", "numbers", "operator",
               "re", "reprlib", "string", "struct", "types", "typing", "zlib", "kvpaxos"}
    tree = ast.parse(path.read_text(), filename=str(path))
    for line, mod in runtime_imports(tree):
        assert mod in allowed, f"{path.name} line {line} imports {mod}"
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kvpaxos."):
            assert node.module.startswith("kvpaxos.core"), f"{path.name} imports {node.module}"


def test_the_checker_sees_hidden_and_guarded_imports() -> None:
    source = (
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import random\nelse:\n    import socket\n"
        "def f():\n    import time\n    from os import path\n    return __import__('x')\n"
    )
    mods = {mod for _, mod in runtime_imports(ast.parse(source))}
    assert mods == {"__future__", "typing", "socket", "time", "os", "__import__"}

"""The shared fixtures of tests/conftest.py mean one thing everywhere: no test module
defines a fixture of the same name, which would hide the shared one in that module only
(an ``engine`` that is in memory here and on both backends there)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def fixture_names(source: str) -> set[str]:
    """The fixtures a module defines at its top level (by ``name=`` when given)."""
    names = set()
    for node in ast.parse(source).body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for decorator in node.decorator_list:
            target = decorator.func if isinstance(decorator, ast.Call) else decorator
            if not ast.unparse(target).endswith("fixture"):
                continue
            name = node.name
            if isinstance(decorator, ast.Call):
                for keyword in decorator.keywords:
                    if keyword.arg == "name" and isinstance(keyword.value, ast.Constant):
                        name = str(keyword.value.value)
            names.add(name)
    return names


def test_no_module_redefines_a_shared_fixture() -> None:
    shared = fixture_names((TESTS / "conftest.py").read_text())
    assert {"engine", "memory_engine", "clock", "url"} <= shared
    hidden = {}
    for path in sorted(TESTS.rglob("*.py")):
        if path.name == "conftest.py":
            continue
        again = fixture_names(path.read_text()) & shared
        if again:
            hidden[str(path.relative_to(TESTS))] = sorted(again)
    assert hidden == {}


def test_the_check_sees_a_redefinition() -> None:
    assert fixture_names("@pytest.fixture\ndef engine() -> None: ...\n") == {"engine"}
    assert fixture_names("@pytest.fixture(name='clock')\ndef other() -> None: ...\n") == {
        "clock"}
    assert fixture_names("def engine() -> None: ...\n") == set()

"""The read models are reached through their public query interface: nothing outside the
servers view's own modules uses a private member of the view or of its store (``_query``,
``_transaction``, ``_sql``...), so the store can change without its callers noticing."""

from __future__ import annotations

import ast
from pathlib import Path

from vmledger.projections import folding, server_backends, server_queries, servers, store

ROOT = Path(__file__).resolve().parent.parent
#: the modules that define the view and its store: their own private members are theirs
OWNERS = {Path(m.__file__ or "").resolve() for m in (servers, folding, server_backends,
                                                     server_queries, store)}
SCANNED = ("vmledger", "tests", "benchmarks")


def _view_private_names() -> set[str]:
    """Private (one underscore) members of the view's classes that come from our code."""
    names: set[str] = set()
    for view in (server_backends.SQLiteServersView, server_backends.PostgresServersView):
        for cls in view.__mro__:
            if cls.__module__.startswith("vmledger."):
                names.update(n for n in vars(cls) if n.startswith("_")
                             and not n.startswith("__"))
    return names


def _last_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _violations(source: str, private: set[str]) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_") \
                or node.attr.startswith("__"):
            continue
        owner = _last_name(node.value)
        if owner in ("self", "cls"):
            continue
        viewish = owner is not None and ("view" in owner.lower() or owner == "store")
        if viewish or node.attr in private:
            found.append((node.lineno, ast.unparse(node)))
    return found


def test_no_private_member_of_the_view_is_used_outside_it() -> None:
    private = _view_private_names()
    assert {"_sql", "_locked_position"} <= private  # the check knows what it guards
    offences = []
    for part in SCANNED:
        for path in sorted((ROOT / part).rglob("*.py")):
            if path.resolve() in OWNERS:
                continue
            offences += [f"{path.relative_to(ROOT)}:{line}: {text}"
                         for line, text in _violations(path.read_text(), private)]
    assert offences == []


def test_the_check_finds_a_private_query() -> None:
    private = _view_private_names()
    assert _violations("rows = engine.view._query('SELECT 1')\n", private) == [
        (1, "engine.view._query")]
    assert _violations("with store._transaction(commit=True) as c: pass\n", private)
    assert _violations("x = anything._sql('?')\n", private)
    assert _violations("rows = engine.view.query('SELECT 1')\n", private) == []

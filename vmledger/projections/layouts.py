"""Versions of the read models' layout, side by side: which one serves, which one is
being folded, and the atomic switch between them.

Each layout (:class:`~vmledger.projections.store.Layout`, named by
:data:`~vmledger.projections.store.TRACKING_NAME`) has its own tables (their names carry
its suffix) and its own position in the tracking table. The registry table records every
version present and its state:

- ``serving``: the one the API reads and commands fold into (exactly one);
- ``building``: a newer layout being folded beside it from the log (by a running
  process's background thread or ``vmledger projections upgrade``); never read;
- ``retired``: the previous one after a switch, its tables dropped once no request
  still reads them.

A process whose release defines a layout that is not the serving one keeps serving the
old version and folds its own beside it; once the new one has caught up with the log, one
transaction (holding the log's write lock) folds the last events into it and marks it
serving. Processes notice the switch within a poll or a second, fold the few events they
missed into the new version, and read from it from their next request on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from vmledger.projections.servers import ServersView
from vmledger.projections.store import LEGACY_LAYOUT, Layout, time_text

log = logging.getLogger(__name__)

#: the registry of layouts (not versioned itself)
REGISTRY = "vmledger_views_layouts"

SERVING, BUILDING, RETIRED = "serving", "building", "retired"
#: rows deleted per transaction before an old layout's table is dropped (SQLite)
DROP_CHUNK = 5_000


@dataclass(frozen=True)
class LayoutState:
    """One version of the layout as the registry records it, with its position."""

    layout: Layout
    state: str
    position: int
    started_at: str | None
    switched_at: str | None

    @property
    def name(self) -> str:
        return self.layout.name


def _raw(view: ServersView, text: str) -> str:
    """``text`` with the backend's placeholders and no layout renaming (the registry and
    the statements naming one layout's tables explicitly)."""
    return text.replace("?", view.placeholder)


def _now() -> str:
    return time_text(datetime.now(UTC)) or ""


def create_registry(view: ServersView) -> None:
    with view.transaction() as curs:
        curs.execute(_raw(view, f"CREATE TABLE IF NOT EXISTS {REGISTRY} (name TEXT PRIMARY KEY,"
                                " state TEXT NOT NULL, started_at TEXT, switched_at TEXT)"))


def states(view: ServersView) -> list[LayoutState]:
    """Every layout in the registry, the serving one first."""
    with view.transaction(commit=False) as curs:
        curs.execute(_raw(view, f"SELECT name, state, started_at, switched_at FROM {REGISTRY}"))
        rows = list(curs.fetchall())
    found = [LayoutState(Layout(r["name"]), r["state"], view.at(Layout(r["name"])).position(),
                         r["started_at"], r["switched_at"]) for r in rows]
    order = {SERVING: 0, BUILDING: 1, RETIRED: 2}
    return sorted(found, key=lambda s: (order.get(s.state, 3), s.name))


def serving_name(view: ServersView) -> str | None:
    """The name of the serving layout (one small read)."""
    rows = view.query(f"SELECT name FROM {REGISTRY} WHERE state = '{SERVING}'")
    return str(rows[0]["name"]) if rows else None


def _register(curs: Any, view: ServersView, name: str, state: str) -> None:
    curs.execute(_raw(view, f"INSERT INTO {REGISTRY} (name, state, started_at, switched_at) "
                            "VALUES (?, ?, ?, ?) ON CONFLICT (name) DO NOTHING"),
                 [name, state, _now(), _now() if state == SERVING else None])


def open_layouts(view: ServersView) -> None:
    """Decide which layout ``view`` serves, registering this release's own (its tables
    are created already): the serving one when there is one; else the unsuffixed tables
    of :data:`LEGACY_LAYOUT` when they hold a position and this release's layout is a
    later one (they serve while it is folded beside); else this release's (a database
    without read models: folded at start-up, as always)."""
    create_registry(view)
    target = view.target
    with view.transaction() as curs:
        curs.execute(_raw(view, f"SELECT name FROM {REGISTRY} WHERE state = '{SERVING}'"))
        row = curs.fetchone()
        serving = None if row is None else str(row["name"] if isinstance(row, dict)
                                                 else row[0])
        if serving is None:
            legacy = Layout(LEGACY_LAYOUT)
            if (target.suffix and legacy.suffix == ""
                    and view.at(legacy).position() and _tables_of(view, legacy)):
                serving = legacy.name
                _register(curs, view, serving, SERVING)
            else:
                serving = target.name
                _register(curs, view, serving, SERVING)
        if serving != target.name:
            _register(curs, view, target.name, BUILDING)
            # a release that rolled back to a layout that was retired folds it again
            curs.execute(_raw(view, f"UPDATE {REGISTRY} SET state = '{BUILDING}' "
                                    f"WHERE name = ? AND state = '{RETIRED}'"), [target.name])
    view.serving = Layout(serving)
    if serving != target.name:
        expand(view, view.serving)


def expand(view: ServersView, serving: Layout) -> None:
    """Give the serving layout's tables what this release's layout adds, so that this
    release can write and read them until its own layout has caught up: the tables
    they lack (created empty: the new read model fills from now on), the columns they
    lack (nullable: filled in the rows written from now on) and the indexes. A change
    that is not an addition (a column's type, a key) is not made: the new layout has it
    from the switch on."""
    old = view.at(serving)
    target = view.target
    statements = old.create_statements()
    for statement in statements:
        if statement.startswith("CREATE TABLE"):
            _try(view, [statement])
    existing = _existing_tables(view)
    for name in view.defined_tables():
        new_table, old_table = name + target.suffix, name + serving.suffix
        if new_table == old_table or not {new_table, old_table} <= existing:
            continue
        have = _columns(view, old_table)
        _try(view, [f"ALTER TABLE {old_table} ADD COLUMN {column} {kind}"
                    for column, kind in _columns(view, new_table).items()
                    if column not in have])
    for statement in statements:
        if statement.startswith(("CREATE INDEX", "CREATE UNIQUE INDEX")):
            _try(view, [statement])


def conflicts(view: ServersView, serving: Layout) -> list[str]:
    """What keeps this release from writing the serving layout's tables (after
    :func:`expand`): a table it could not add, a column whose type changed, a column it
    no longer writes that may not be null, a different set of unique keys (an upsert's
    conflict target). Empty when the serving layout can serve this release meanwhile."""
    target = view.target
    existing = _existing_tables(view)
    found = []
    for name in view.defined_tables():
        new_table, old_table = name + target.suffix, name + serving.suffix
        if new_table == old_table or new_table not in existing:
            continue
        if old_table not in existing:
            found.append(f"{old_table} is missing")
            continue
        new, old = _columns_detail(view, new_table), _columns_detail(view, old_table)
        for column, (kind, required) in old.items():
            if column not in new:
                if required:
                    found.append(f"{old_table}.{column} may not be null")
            elif new[column][0].lower() != kind.lower():
                found.append(f"{old_table}.{column} is {kind}, not {new[column][0]}")
        if _unique_keys(view, new_table) != _unique_keys(view, old_table):
            found.append(f"{old_table} has other unique keys")
    return found


def _columns_detail(view: ServersView, table: str) -> dict[str, tuple[str, bool]]:
    """A table's columns: their declared type, and whether a row must give them (not
    null without a default)."""
    with view.transaction(commit=False) as curs:
        if view.dialect == "sqlite":
            curs.execute(f"PRAGMA table_info({table})")
            return {str(r["name"]): (str(r["type"]), bool(r["notnull"]) and
                                     r["dflt_value"] is None and not r["pk"])
                    for r in curs.fetchall()}
        curs.execute("SELECT column_name AS name, data_type AS type, is_nullable, "
                     "column_default FROM information_schema.columns WHERE table_name = %s "
                     "AND table_schema = ANY (current_schemas(false))", [table])
        return {str(r["name"]): (str(r["type"]), r["is_nullable"] == "NO"
                                 and r["column_default"] is None)
                for r in curs.fetchall()}


def _unique_keys(view: ServersView, table: str) -> set[frozenset[str]]:
    """The column sets a table's primary key and unique indexes make unique."""
    keys: set[frozenset[str]] = set()
    with view.transaction(commit=False) as curs:
        if view.dialect == "sqlite":
            curs.execute(f"PRAGMA table_info({table})")
            primary = frozenset(str(r["name"]) for r in curs.fetchall() if r["pk"])
            if primary:
                keys.add(primary)
            curs.execute(f"PRAGMA index_list({table})")
            for index in [str(r["name"]) for r in curs.fetchall() if r["unique"]]:
                curs.execute(f"PRAGMA index_info({index})")
                keys.add(frozenset(str(r["name"]) for r in curs.fetchall()))
            return keys
        curs.execute(
            "SELECT array_agg(a.attname::text) AS columns FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY (i.indkey) "
            "WHERE c.relname = %s AND n.nspname = ANY (current_schemas(false)) "
            "AND i.indisunique GROUP BY i.indexrelid", [table])
        return {frozenset(r["columns"]) for r in curs.fetchall()}


def _try(view: ServersView, statements: list[str]) -> None:
    for statement in statements:
        try:
            with view.transaction() as curs:
                curs.execute(statement)
        except Exception as e:  # the new layout has it from the switch on
            log.warning("the serving read-model layout could not take %r: %s", statement, e)


def _columns(view: ServersView, table: str) -> dict[str, str]:
    """A table's columns and their declared types."""
    with view.transaction(commit=False) as curs:
        if view.dialect == "sqlite":
            curs.execute(f"PRAGMA table_info({table})")
            return {str(r["name"]): str(r["type"]) for r in curs.fetchall()}
        curs.execute("SELECT column_name AS name, data_type AS type FROM "
                     "information_schema.columns WHERE table_name = %s "
                     "AND table_schema = ANY (current_schemas(false))", [table])
        return {str(r["name"]): str(r["type"]) for r in curs.fetchall()}


def upgrade_pending(view: ServersView) -> bool:
    """Whether this release's layout is registered as building (not serving yet)."""
    rows = view.query(f"SELECT state FROM {REGISTRY} WHERE name = ?", [view.target.name])
    return bool(rows) and rows[0]["state"] == BUILDING


def switch(curs: Any, view: ServersView, new: Layout) -> bool:
    """In the transaction of ``curs`` (which has folded ``new`` up to the log's head,
    holding its write lock): ``new`` serves, the serving one is retired. False when
    ``new`` is not building (another process switched first)."""
    curs.execute(_raw(view, f"SELECT state FROM {REGISTRY} WHERE name = ?"), [new.name])
    row = curs.fetchone()
    if row is None or (row["state"] if isinstance(row, dict) else row[0]) != BUILDING:
        return False
    curs.execute(_raw(view, f"UPDATE {REGISTRY} SET state = '{RETIRED}', switched_at = ? "
                            f"WHERE state = '{SERVING}'"), [_now()])
    curs.execute(_raw(view, f"UPDATE {REGISTRY} SET state = '{SERVING}', switched_at = ? "
                            "WHERE name = ?"), [_now(), new.name])
    return True


def retired(view: ServersView) -> list[Layout]:
    rows = view.query(f"SELECT name FROM {REGISTRY} WHERE state = '{RETIRED}'")
    return [Layout(r["name"]) for r in rows]


def _existing_tables(view: ServersView) -> set[str]:
    if view.dialect == "sqlite":
        rows = view.query("SELECT name FROM sqlite_master WHERE type = 'table'")
    else:
        rows = view.query("SELECT table_name AS name FROM information_schema.tables "
                          "WHERE table_schema = ANY (current_schemas(false))")
    return {str(r["name"]) for r in rows}


def _tables_of(view: ServersView, layout: Layout) -> list[str]:
    """The tables of ``layout`` present in the database (by this release's list of
    read-model tables, with the layout's suffix)."""
    existing = _existing_tables(view)
    return [name + layout.suffix for name in view.defined_tables()
            if name + layout.suffix in existing]


def _row_key(view: ServersView, table: str) -> str:
    """What picks a row of a SQLite ``table``: its rowid, or the primary key's columns
    of a table WITHOUT ROWID."""
    with view.transaction() as curs:
        curs.execute("SELECT name, pk FROM pragma_table_info(?) WHERE pk > 0 ORDER BY pk",
                     [table])
        columns = [str(r["name"] if hasattr(r, "keys") else r[0]) for r in curs.fetchall()]
        curs.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?",
                     [table])
        found = curs.fetchone()
    created = str((found["sql"] if hasattr(found, "keys") else found[0]) if found else "")
    if columns and "WITHOUT ROWID" in created.upper():
        return ", ".join(columns)
    return "rowid"


def drop(view: ServersView, layout: Layout) -> None:
    """Drop the tables (and indexes) of ``layout``, its position and its registry entry.
    Never the serving layout's."""
    if layout.name == view.serving.name or layout.name == serving_name(view):
        raise ValueError(f"{layout.name} serves: it cannot be dropped")
    tables = _tables_of(view, layout)
    if view.dialect == "sqlite":
        # a large table's drop frees every page in one transaction, holding the
        # database's write lock (seconds at 100,000 servers): emptied in chunks first
        for table in tables:
            key = _row_key(view, table)
            while True:
                with view.transaction() as curs:
                    curs.execute(f"DELETE FROM {table} WHERE ({key}) IN "
                                 f"(SELECT {key} FROM {table} LIMIT {DROP_CHUNK})")
                    curs.execute(f"SELECT 1 FROM {table} LIMIT 1")
                    if curs.fetchone() is None:
                        break
    with view.transaction() as curs:
        for table in tables:
            curs.execute(f"DROP TABLE IF EXISTS {table}")
        view.at(layout).delete_tracking(curs)
        curs.execute(_raw(view, f"DELETE FROM {REGISTRY} WHERE name = ?"), [layout.name])


__all__ = ["BUILDING", "REGISTRY", "RETIRED", "SERVING", "LayoutState", "conflicts",
           "create_registry", "drop", "expand", "open_layouts", "retired", "serving_name",
           "states", "switch", "upgrade_pending"]

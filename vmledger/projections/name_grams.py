"""Every three-character piece of every server's name, in the list's order: the index
that narrows a ``name`` regular expression without a literal prefix (both backends).

``vmledger_name_grams`` holds a row (gram, the server's ``created_at``, its id) for
each trigram of each name a server had, written by triggers on the servers view (an
insert, or an update that changes the name), so a command that does not rename
writes nothing here. A gram's rows are in the list's order (newest first, read
backwards), so a scan driven by a rare gram reads the page's candidates only and stops
when the page is full (:meth:`~vmledger.projections.server_queries.ServerQueries.rows`).
A name's older grams stay after a rename: a candidate is only a candidate (the
expression decides), so they cost a row read, never a wrong answer; a rebuild clears
them. A database folded before the table existed is indexed once, when it is first
opened, and a rebuild indexes every name once at its end (``vmledger_name_grams_ready``
says the grams are complete; without it the lists scan the page index).

PostgreSQL gets the same table, written by a trigger function (names of any length);
no extension is needed (``pg_trgm``'s GIN index answers a bitmap of every candidate,
to be sorted, where this table's rows come in the page's order).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

TABLE = "vmledger_name_grams"
#: a row once every server of the view has its grams (the index is usable)
READY = "vmledger_name_grams_ready"
#: the character offsets 1..MAX_OFFSET, which the triggers cut names at
OFFSETS = "vmledger_name_gram_offsets"
#: names are at most 255 characters (Nova's limit, which every command enforces); a
#: longer one (which only a log written otherwise could hold) has grams up to this
#: offset only, so the index is then marked unusable (the lists scan as before)
MAX_OFFSET = 1024
_LONG = f"length({{n}}.name) > {MAX_OFFSET + 2}"

# (a trigger's OR IGNORE would yield to the outer statement's conflict policy: the
# view's upsert aborts on a conflict, so the rows already there are left out instead)
_GRAMS = (f"INSERT INTO {TABLE} (gram, at, sid) SELECT DISTINCT substr({{n}}.name, o.n, 3),"
          " coalesce({n}.created_at, ''), {n}.id"
          f" FROM {OFFSETS} o WHERE o.n <= length({{n}}.name) - 2 AND NOT EXISTS (SELECT 1"
          f" FROM {TABLE} x WHERE x.gram = substr({{n}}.name, o.n, 3)"
          " AND x.at = coalesce({n}.created_at, '') AND x.sid = {n}.id)")


class NameGrams:
    """Creates the name grams' table and triggers beside the servers view; they need
    no fold of their own. A rebuild drops the triggers with the rows (:meth:`clear`)
    and cuts every name at once when it restores the indexes (:meth:`restore`): one
    sorted insert costs less than a trigger per row."""

    #: no event is folded here (the triggers follow the view's rows)
    event_types: tuple[type, ...] = ()

    def create_statements(self, sql: Callable[[str], str]) -> list[str]:
        # through ``sql``: a layout's suffix goes on every name they define (tables,
        # triggers, the trigger function) and on the servers table they follow
        if _postgres(sql):
            return [sql(s) for s in (*_postgres_tables(), *_postgres_upkeep())]
        return [sql(s) for s in (
            f"CREATE TABLE IF NOT EXISTS {TABLE} (gram TEXT NOT NULL, at TEXT NOT NULL,"
            " sid TEXT NOT NULL, PRIMARY KEY (gram, at, sid)) WITHOUT ROWID",
            f"CREATE TABLE IF NOT EXISTS {OFFSETS} (n INTEGER PRIMARY KEY)",
            f"INSERT OR IGNORE INTO {OFFSETS} (n) WITH RECURSIVE k(n) AS (SELECT 1 UNION ALL"
            f" SELECT n + 1 FROM k WHERE n < {MAX_OFFSET}) SELECT n FROM k",
            f"CREATE TABLE IF NOT EXISTS {READY} (ready INTEGER PRIMARY KEY)",
            *_sqlite_upkeep(),
        )]

    def batch(self, writer: Any, *, empty: bool) -> _NoBatch:
        return _NoBatch()

    def clear(self, curs: Any, sql: Callable[[str], str]) -> None:
        """Forget every gram and stop the triggers (a rebuild follows, then
        :meth:`restore`); the lists scan the page index meanwhile."""
        on = " ON vmledger_servers" if _postgres(sql) else ""
        for trigger in (f"{TABLE}_insert", f"{TABLE}_rename"):
            curs.execute(sql(f"DROP TRIGGER IF EXISTS {trigger}{on}"))
        curs.execute(sql(f"DELETE FROM {READY}"))
        curs.execute(sql(f"DELETE FROM {TABLE}"))

    def restore(self, curs: Any, sql: Callable[[str], str]) -> None:
        """The triggers again, and every name's grams (after a rebuild)."""
        for statement in _postgres_upkeep() if _postgres(sql) else _sqlite_upkeep():
            curs.execute(sql(statement))


def _postgres(sql: Callable[[str], str]) -> bool:
    return sql("?") != "?"


def _sqlite_upkeep() -> list[str]:
    """The triggers, the grams of every name when they are not all there (a database
    folded before they were kept, or rebuilt), and the mark that they are."""
    return [
        f"CREATE TRIGGER IF NOT EXISTS {TABLE}_insert AFTER INSERT ON vmledger_servers"
        f" WHEN new.name IS NOT NULL BEGIN {_GRAMS.format(n='new')};"
        f" DELETE FROM {READY} WHERE {_LONG.format(n='new')}; END",
        f"CREATE TRIGGER IF NOT EXISTS {TABLE}_rename AFTER UPDATE OF name ON"
        " vmledger_servers WHEN new.name IS NOT NULL AND new.name IS NOT old.name"
        f" BEGIN {_GRAMS.format(n='new')};"
        f" DELETE FROM {READY} WHERE {_LONG.format(n='new')}; END",
        f"INSERT OR IGNORE INTO {TABLE} (gram, at, sid)"
        " SELECT substr(s.name, o.n, 3), coalesce(s.created_at, ''), s.id"
        f" FROM vmledger_servers s JOIN {OFFSETS} o ON o.n <= length(s.name) - 2"
        f" WHERE NOT EXISTS (SELECT 1 FROM {READY}) ORDER BY 1, 2, 3",
        f"INSERT OR IGNORE INTO {READY} (ready) SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM"
        f" {READY}) AND NOT EXISTS (SELECT 1 FROM vmledger_servers s"
        f" WHERE {_LONG.format(n='s')})",
    ]


class _NoBatch:
    def fold(self, events: Sequence[Any]) -> None:
        """Nothing: the triggers write the grams with the servers' rows."""

    def write(self) -> None:
        """Nothing to write."""



def _postgres_tables() -> list[str]:
    return [
        f"CREATE TABLE IF NOT EXISTS {TABLE} (gram TEXT NOT NULL, at TEXT NOT NULL,"
        " sid TEXT NOT NULL, PRIMARY KEY (gram, at, sid))",
        f"CREATE TABLE IF NOT EXISTS {READY} (ready INTEGER PRIMARY KEY)",
    ]


def _postgres_upkeep() -> list[str]:
    """The same on PostgreSQL: a trigger function cutting the name with
    ``generate_series`` (any length), run on an insert and on a rename only."""
    cut = ("SELECT DISTINCT substr({n}.name, k, 3), coalesce({n}.created_at, ''), {n}.id"
           " FROM generate_series(1, length({n}.name) - 2) k")
    return [
        f"CREATE OR REPLACE FUNCTION {TABLE}_write() RETURNS trigger LANGUAGE plpgsql AS $$"
        f" BEGIN INSERT INTO {TABLE} (gram, at, sid) {cut.format(n='NEW')}"
        " ON CONFLICT DO NOTHING; RETURN NULL; END $$",
        _pg_trigger(f"{TABLE}_insert", "AFTER INSERT ON vmledger_servers FOR EACH ROW"
                    f" WHEN (NEW.name IS NOT NULL) EXECUTE FUNCTION {TABLE}_write()"),
        _pg_trigger(f"{TABLE}_rename", "AFTER UPDATE OF name ON vmledger_servers FOR EACH"
                    " ROW WHEN (NEW.name IS NOT NULL AND NEW.name IS DISTINCT FROM OLD.name)"
                    f" EXECUTE FUNCTION {TABLE}_write()"),
        f"INSERT INTO {TABLE} (gram, at, sid) SELECT DISTINCT substr(s.name, k, 3),"
        " coalesce(s.created_at, ''), s.id FROM vmledger_servers s,"
        " generate_series(1, length(s.name) - 2) k"
        f" WHERE NOT EXISTS (SELECT 1 FROM {READY}) ON CONFLICT DO NOTHING",
        f"INSERT INTO {READY} (ready) VALUES (1) ON CONFLICT DO NOTHING",
    ]


def _pg_trigger(name: str, definition: str) -> str:
    """``CREATE TRIGGER`` unless it exists (``CREATE OR REPLACE TRIGGER`` is
    PostgreSQL 14's; dropping and creating it on every start would lock the table)."""
    return (f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = '{name}'"
            " AND tgrelid = 'vmledger_servers'::regclass) THEN"
            f" CREATE TRIGGER {name} {definition}; END IF; END $$")

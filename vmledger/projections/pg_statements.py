"""How the read models' and the audit's statements run on PostgreSQL inside a command's
pipelined transaction: outside psycopg's prepared-statement cache where a ``ROLLBACK``
would spoil it (:func:`execute_uncached`), numbered once where psycopg would parse them
at every write (:func:`execute_many_parameters`), and a fold's row writes merged into
one statement (:class:`MergedWrites`). Re-exported by :mod:`vmledger.projections.store`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from typing import Any


def execute_uncached(curs: Any, statement: str | bytes) -> None:
    """Run ``statement`` on ``curs`` outside psycopg's prepared-statement cache (on
    SQLite: as usual). For a statement answering ``ROLLBACK`` (``ROLLBACK``, ``ROLLBACK
    TO SAVEPOINT``, a ``COMMIT`` that rolled back): psycopg then forgets every statement
    it prepared and queues a ``DEALLOCATE ALL``, which in a pipeline reaches the server
    after the next statement it prepares, so that one is missing the next time it
    runs (psycopg 3.3). A statement psycopg does not cache is not looked at."""
    conn = getattr(curs, "connection", None)
    threshold = getattr(conn, "prepare_threshold", None)
    if conn is None or threshold is None:
        curs.execute(statement)
        return
    conn.prepare_threshold = None
    try:
        curs.execute(statement)
    finally:
        conn.prepare_threshold = threshold


#: psycopg (3.3) caches its parse of a statement's ``%s`` placeholders only for
#: statements of at most this many parameters and bytes; a longer one is parsed again on
#: every execution (:func:`execute_many_parameters`)
PARSED_ONCE_PARAMETERS = 50
PARSED_ONCE_BYTES = 4096
_PLACEHOLDERS = re.compile(rb"%[s%]")


@functools.lru_cache(maxsize=256)
def numbered(statement: bytes) -> bytes:
    """``statement`` with psycopg's ``%s`` placeholders as PostgreSQL's own ``$1``,
    ``$2``… (and ``%%`` as ``%``), for a raw cursor."""
    count = 0

    def number(mark: re.Match[bytes]) -> bytes:
        nonlocal count
        if mark[0] == b"%%":
            return b"%"
        count += 1
        return b"$%d" % count

    return _PLACEHOLDERS.sub(number, statement)


def execute_many_parameters(curs: Any, raw: Callable[[], Any], statement: str | bytes,
                            params: Sequence[Any]) -> Any:
    """Run ``statement`` (``%s`` placeholders only), prepared, on ``curs``; or, when it
    has more parameters or bytes than psycopg parses once, on the raw cursor ``raw()``
    gives (on the same connection), its placeholders numbered here once per statement.
    A group's insert and a fold's merged writes have hundreds of parameters: psycopg's
    parse of them took 15 % of the interpreter's time with 32 writers. Returns the
    cursor that ran it (whose rows a fetch reads)."""
    if len(params) <= PARSED_ONCE_PARAMETERS and len(statement) <= PARSED_ONCE_BYTES:
        curs.execute(statement, params, prepare=True)
        return curs
    target = raw()
    target.execute(numbered(statement if isinstance(statement, bytes)
                            else statement.encode()), params, prepare=True)
    return target


#: at most this many parameters in a statement :class:`MergedWrites` sends (PostgreSQL
#: takes up to 65,535)
MERGED_PARAMETERS = 30_000


class MergedWrites:
    """A cursor for a command's fold on PostgreSQL that sends the fold's row writes
    (:meth:`RowWriter.upsert`'s, and the tracking record's) as one statement: each as a
    multi-row ``INSERT`` in a ``WITH`` of the next, instead of an ``executemany`` per
    table. In the command's pipeline every statement costs the client a send and a
    poll, and the server a bind and an execution of its own.

    The writes keep their order with the fold's other statements: any other statement
    sends the writes queued so far first; so does a write to a table already queued
    (the parts of one statement see the same snapshot, and two of them must not touch
    the same row). :meth:`flush` sends what is left (the fold's end)."""

    def __init__(self, curs: Any) -> None:
        self.curs = curs
        #: per queued write: its table, statement and parameters
        self._queued: list[tuple[str, str, list[Any]]] = []
        self._size = 0
        self._raw_cursor: Any = None

    def queue_rows(self, statement: str, width: int, rows: Sequence[Sequence[Any]]) -> None:
        """Queue ``statement`` (``INSERT INTO t (...) VALUES (%s, ...) ...``, ``width``
        placeholders) for each of ``rows``."""
        if not rows:
            return
        marks = "(" + ", ".join(["%s"] * width) + ")"
        head, found, tail = statement.partition(" VALUES " + marks)
        if not found or width * len(rows) > MERGED_PARAMETERS:
            self.flush()
            self.curs.executemany(statement, rows)
            return
        table = head.split(None, 3)[2]  # INSERT INTO <table> (...)
        if (any(queued[0] == table for queued in self._queued)
                or self._size + width * len(rows) > MERGED_PARAMETERS):
            self.flush()
        params = [value for row in rows for value in row]
        self._queued.append((table, f"{head} VALUES {', '.join([marks] * len(rows))}{tail}",
                             params))
        self._size += len(params)

    def flush(self) -> None:
        """Send the queued writes (one statement)."""
        queued = self._queued
        if not queued:
            return
        self._queued, self._size = [], 0
        if len(queued) == 1:
            _, statement, params = queued[0]
        else:
            statement = "WITH " + ", ".join(
                f"w{i} AS ({part})" for i, (_, part, _) in enumerate(queued[:-1])
            ) + " " + queued[-1][1]
            params = [value for _, _, part in queued for value in part]
        # prepared at once, as an executemany's statement in a pipeline is: a fold's
        # shapes (tables and row counts) are few and come again
        execute_many_parameters(self.curs, self._raw, statement, params)

    def _raw(self) -> Any:
        if self._raw_cursor is None:
            import psycopg

            self._raw_cursor = psycopg.RawCursor(self.curs.connection)
        return self._raw_cursor

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        self.flush()
        return self.curs.execute(*args, **kwargs)

    def executemany(self, *args: Any, **kwargs: Any) -> Any:
        self.flush()
        return self.curs.executemany(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.curs, name)

"""The cursors a command's fold runs on inside the command's own transaction: the
command's cursor on SQLite, cursors of their own on the same connection inside the
recorder's pipeline on PostgreSQL (:func:`own_cursor`), and the savepoint the fold runs
in, so that a failing fold leaves the command recorded (:class:`savepoint`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from vmledger.projections.pg_statements import execute_uncached


@contextmanager
def own_cursor(curs: Any) -> Iterator[Any]:
    """What the fold in a command's transaction writes and reads through: ``curs`` on
    SQLite; on PostgreSQL cursors of their own on its connection, in the same
    transaction (:class:`PipelineCursor`)."""
    connection = getattr(curs, "connection", None)
    if connection is None or not hasattr(connection, "pipeline"):
        yield curs
        return
    mine = PipelineCursor(connection)
    try:
        yield mine
    finally:
        mine.close()


class PipelineCursor:
    """A cursor for statements run inside the recorder's pipeline (PostgreSQL): after an
    ``executemany`` the next statement goes through a new cursor. In pipeline mode a
    cursor that ran an ``executemany`` keeps that result, and a fetch after its next
    ``execute`` reads it instead of the new one (``the last operation didn't produce
    records``: psycopg 3.3); a fresh cursor costs no round trip."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection
        self._cursors = [connection.cursor()]
        self._stale = False

    @property
    def _current(self) -> Any:
        if self._stale:
            self._cursors.append(self._connection.cursor())
            self._stale = False
        return self._cursors[-1]

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        return self._current.execute(*args, **kwargs)

    def executemany(self, *args: Any, **kwargs: Any) -> Any:
        result = self._current.executemany(*args, **kwargs)
        self._stale = True
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursors[-1], name)

    def close(self) -> None:
        for cursor in self._cursors:
            cursor.close()


#: the statement opening the fold's savepoint
SAVEPOINT = "SAVEPOINT vmledger_fold"


class savepoint:
    """A savepoint on ``curs`` (plain SQL: on PostgreSQL it is queued in the insert's
    pipeline, no round trip of its own; psycopg's nested transaction would sync).
    ``begun``: it was queued already (in the write's first round trip)."""

    def __init__(self, curs: Any, *, begun: bool = False) -> None:
        self.curs = curs
        self.begun = begun

    def __enter__(self) -> None:
        if not self.begun:
            self.curs.execute(SAVEPOINT)

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        connection: Any = getattr(self.curs, "connection", None)
        pipelined = hasattr(connection, "pipeline")
        if kind is None:
            if not pipelined:  # (PostgreSQL: the COMMIT right after it releases it)
                self.curs.execute("RELEASE SAVEPOINT vmledger_fold")
            return
        if pipelined:
            # psycopg: a failed statement leaves the pipeline aborted until a sync (as
            # psycopg's own nested transaction does before rolling back)
            with contextlib.suppress(Exception), connection.pipeline() as pipeline:
                pipeline.sync()
        # (not through psycopg's statement cache: see execute_uncached)
        execute_uncached(self.curs, "ROLLBACK TO SAVEPOINT vmledger_fold")
        self.curs.execute("RELEASE SAVEPOINT vmledger_fold")

"""Reads of a guest on another host: the console output or diagnostics of a server whose
guest runs on a host this process has no hypervisor connection to.

Nova asks the server's compute host over RPC and waits for the answer. Here the hosts
share only the database, so the question is a row: the API process writes it (the
host, the server, what to read), the agent of that host answers in its next pass (it
runs every fraction of a second) by writing the answer into the row, and the asker
takes the answer and deletes the row. Nothing is recorded in the log: reading a guest
changes nothing (Nova records no instance action for it either).

Like the host reports, this table lives beside the read models and is not derived from
the log; a rebuild leaves it alone. Questions nobody took (the asker gave up) are
deleted by the host's agent once they are old.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta
from typing import Any

from vmledger.projections.store import ReadStore, dumps, loads

TABLE = "vmledger_guest_reads"
#: what may be read: console output and diagnostics
KINDS = ("console_output", "diagnostics")
#: questions older than this are dropped by the host's agent (their asker gave up)
STALE_AFTER = timedelta(minutes=5)


def create_table(store: ReadStore) -> None:
    with store.transaction() as curs:
        curs.execute(store.sql(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (id TEXT PRIMARY KEY, host TEXT NOT NULL,"
            " server_id TEXT NOT NULL, kind TEXT NOT NULL, asked_at TEXT NOT NULL,"
            " answered INTEGER NOT NULL, answer TEXT)"))
        curs.execute(store.sql(
            f"CREATE INDEX IF NOT EXISTS {TABLE}_host ON {TABLE} (host, answered)"))


def ask(store: ReadStore, host: str, server_id: str, kind: str, at: datetime) -> str:
    """Write a question for ``host``'s agent; return its id."""
    if kind not in KINDS:
        raise ValueError(f"cannot read {kind!r} of a guest")
    question = str(uuid.uuid4())
    with store.transaction() as curs:
        curs.execute(store.sql(
            f"INSERT INTO {TABLE} (id, host, server_id, kind, asked_at, answered, answer)"
            " VALUES (?, ?, ?, ?, ?, 0, NULL)"), [question, host, server_id, kind,
                                                  at.isoformat()])
    return question


def wait(store: ReadStore, question: str, timeout: float, poll: float = 0.01
         ) -> dict[str, Any] | None:
    """The answer to ``question`` (``code``, and ``body`` or ``message``), taken off the
    table; None when none came within ``timeout`` seconds (the question is withdrawn)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = store.query(f"SELECT answer FROM {TABLE} WHERE id = ? AND answered = 1",
                           [question])
        if rows or time.monotonic() >= deadline:
            with store.transaction() as curs:
                curs.execute(store.sql(f"DELETE FROM {TABLE} WHERE id = ?"), [question])
            return loads(rows[0]["answer"]) if rows else None
        time.sleep(poll)


def questions(store: ReadStore, host: str) -> list[tuple[str, str, str, str]]:
    """The questions to ``host`` not answered yet: (id, server id, kind, asked at)."""
    return [(r["id"], r["server_id"], r["kind"], r["asked_at"]) for r in store.query(
        f"SELECT id, server_id, kind, asked_at FROM {TABLE} WHERE host = ? AND answered = 0"
        " ORDER BY asked_at", [host])]


def answer(store: ReadStore, question: str, result: dict[str, Any]) -> None:
    """Give ``question`` its answer (``code`` and ``body`` or ``message``)."""
    with store.transaction() as curs:
        curs.execute(store.sql(f"UPDATE {TABLE} SET answered = 1, answer = ? WHERE id = ?"),
                     [dumps(result), question])


def drop(store: ReadStore, question: str) -> None:
    """Delete a question nobody waits for any more."""
    with store.transaction() as curs:
        curs.execute(store.sql(f"DELETE FROM {TABLE} WHERE id = ?"), [question])


__all__ = ["KINDS", "STALE_AFTER", "TABLE", "answer", "ask", "create_table", "drop",
           "questions", "wait"]

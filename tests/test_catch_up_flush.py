"""A catch-up's commit does not wait for the disk; a command's still does.

A catch-up transaction writes nothing but read-model rows and their tracking position,
which the log can give again, so on SQLite in WAL mode it commits with
``synchronous=NORMAL`` (no fsync: the host agent's outcome reaches the read models one
flush sooner). The level is the connection's own and the pool hands the same connection
to the next command: every transaction that records events must still commit with
``synchronous=FULL``, even after a catch-up that failed. What a catch-up committed so is
the same as a rebuild from the log.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.persistence import IntegrityError

from tests.engines import create_elsewhere, make_engine
from tests.test_projection_rebuild import snapshot
from vmledger import Engine
from vmledger.domain.catalog import image_id_for
from vmledger.projections.log_reading import EventDecoder

IMAGE = image_id_for("cirros-0.6.2-x86_64")
FULL, NORMAL = 2, 1
_LEVELS = {"OFF": 0, "NORMAL": NORMAL, "FULL": FULL, "EXTRA": 3}


@dataclass
class Commits:
    """Each COMMIT seen on the traced connections: (its synchronous level, whether its
    transaction inserted events)."""

    seen: list[tuple[int, bool]] = field(default_factory=list)

    def of_events(self) -> list[int]:
        return [level for level, events in self.seen if events]

    def of_read_models(self) -> list[int]:
        return [level for level, events in self.seen if not events]


@pytest.fixture
def commits(monkeypatch: pytest.MonkeyPatch) -> Iterator[Commits]:
    """Every sqlite3 connection made meanwhile reports its commits."""
    found = Commits()
    real = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real(*args, **kwargs)
        state = {"level": FULL, "events": False}  # SQLite's default level is FULL

        def trace(statement: str) -> None:
            words = statement.strip().rstrip(";").split()
            head = " ".join(words[:2]).upper()
            if head.startswith("PRAGMA SYNCHRONOUS") and "=" in statement:
                value = statement.split("=", 1)[1].strip().rstrip(";").upper()
                state["level"] = int(value) if value.isdigit() else _LEVELS[value]
            elif head.startswith("BEGIN"):
                state["events"] = False
            elif head == "INSERT INTO" and "stored_events" in statement:
                state["events"] = True
            elif head.startswith("COMMIT"):
                found.seen.append((int(state["level"]), bool(state["events"])))

        conn.set_trace_callback(trace)
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)
    yield found


@pytest.fixture
def file_engine(tmp_path: Path, commits: Commits) -> Iterator[Engine]:
    with make_engine(f"sqlite:///{tmp_path / 'vmledger.db'}") as engine:
        yield engine


def test_a_catch_up_commits_without_a_flush_and_every_command_with_one(
        file_engine: Engine, commits: Commits, tmp_path: Path) -> None:
    engine = file_engine
    server = engine.create_server("web", "m1.small", IMAGE)
    engine.run_until_idle()  # the agent's commands, then one catch-up for the pass
    create_elsewhere(f"sqlite:///{tmp_path / 'vmledger.db'}", "other")
    engine.updater.catch_up()  # another process's command
    engine.reboot(server.id, hard=True)
    engine.run_until_idle()

    assert commits.of_events() and set(commits.of_events()) == {FULL}
    assert NORMAL in commits.of_read_models()
    assert engine.get_server(server.id).status == "ACTIVE"
    assert len(engine.list_servers()) == 2
    before = snapshot(engine)
    engine.updater.rebuild()
    assert snapshot(engine) == before


def test_a_catch_up_that_fails_leaves_the_connection_flushing(
        file_engine: Engine, commits: Commits) -> None:
    engine = file_engine
    view = engine.updater.view
    with pytest.raises(IntegrityError):  # the position is not where the fold starts
        view.apply_pages([], EventDecoder(engine.service.mapper, view.wants),
                         after=view.position() + 1)
    engine.create_server("web", "m1.small", IMAGE)
    engine.run_until_idle()

    assert commits.of_events() and set(commits.of_events()) == {FULL}
    assert engine.list_servers()[0].status == "ACTIVE"


def _flushing(engine: Engine, curs: Any) -> bool:
    if engine.view.dialect == "postgres":
        curs.execute("SHOW synchronous_commit")
        return bool(curs.fetchone()["synchronous_commit"] != "off")
    curs.execute("PRAGMA synchronous")
    return bool(curs.fetchone()["synchronous"] >= FULL)


def test_only_the_transaction_asked_for_goes_without_a_flush(engine: Engine) -> None:
    """The store's contract, on both backends: ``flushed=False`` holds for that one
    transaction (SQLite: the connection's level is restored after it; PostgreSQL: SET
    LOCAL ends with the transaction)."""
    view = engine.view
    with view.transaction() as curs:
        assert _flushing(engine, curs)
    for _ in range(2):  # the pool hands the same connection out again
        with view.transaction(commit=True, flushed=False) as curs:
            assert not _flushing(engine, curs)
        with view.transaction() as curs:
            assert _flushing(engine, curs)

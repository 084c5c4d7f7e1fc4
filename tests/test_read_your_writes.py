"""Read-your-writes without a catch-up: a command's events are folded into the read
models in the transaction that records them.

A reader sees a command the moment it commits, even when the process dies between the
commit and the response; events written by another process are folded, in log order and
exactly once, by the next command (or by catch-up); and whatever the path, the read
models equal a rebuild from the log.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.engines import counter_ids, counter_request_ids, make_engine
from tests.test_projection_rebuild import snapshot
from vmledger import Engine
from vmledger.domain.catalog import image_id_for
from vmledger.projections import log_reading
from vmledger.projections.log_reading import read_page

IMAGE = image_id_for("cirros-0.6.2-x86_64")


class Crash(Exception):
    """Stands for the process dying right after the command's commit."""


def log_end(engine: Engine) -> int:
    rows = read_page(engine.service.recorder, 0, 1_000_000)
    return rows[-1][0] if rows else 0


def rebuilt(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    engine.updater.rebuild()
    return snapshot(engine)


def no_catch_up(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: Any, **__: Any) -> int:
        raise AssertionError("the read models needed a catch-up")

    monkeypatch.setattr(engine.updater, "catch_up", refuse)


def test_a_crash_between_the_commit_and_the_response_leaves_the_command_readable(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    server = engine.create_server("web", "m1.small", IMAGE)
    engine.run_until_idle()
    save = engine.service.save

    def save_then_crash(*aggregates: Any, **kwargs: Any) -> Any:
        save(*aggregates, **kwargs)
        raise Crash

    monkeypatch.setattr(engine.service, "save", save_then_crash)
    with pytest.raises(Crash):
        engine.reboot(server.id, hard=True)
    monkeypatch.undo()

    # no catch-up ran (the response never happened): the read models have the reboot
    shown = engine.get_server(server.id)
    assert (shown.status, shown.task_state) == ("HARD_REBOOT", "rebooting_hard")
    assert engine.view.position() == log_end(engine)
    assert snapshot(engine) == rebuilt(engine)
    engine.run_until_idle()
    assert engine.get_server(server.id).status == "ACTIVE"


def test_a_command_is_readable_without_a_catch_up(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    server = engine.create_server("web", "m1.small", IMAGE)
    no_catch_up(engine, monkeypatch)
    engine.lock(server.id, reason="maintenance")
    assert engine.get_server(server.id).locked
    engine.update_server(server.id, name="renamed")
    assert engine.get_server(server.id).name == "renamed"
    assert engine.view.position() == log_end(engine)


@pytest.fixture
def two_engines(url: str) -> Iterator[tuple[Engine, Engine]]:
    """Two engines on one database, as two processes would have (ids kept apart)."""
    first = make_engine(url, ids=counter_ids(1), request_ids=counter_request_ids("a"))
    second = make_engine(url, ids=counter_ids(2), request_ids=counter_request_ids("b"))
    try:
        yield first, second
    finally:
        second.close()
        first.close()


def test_two_engines_on_one_database_read_their_writes(
        two_engines: tuple[Engine, Engine], monkeypatch: pytest.MonkeyPatch) -> None:
    """The read models live in the database: each engine's commands fold into the same
    tables, in turn, each at the position the other left."""
    a, b = two_engines
    one = a.create_server("one", "m1.small", IMAGE)
    two = b.create_server("two", "m1.small", IMAGE)
    no_catch_up(a, monkeypatch)
    no_catch_up(b, monkeypatch)

    a.lock(one.id)
    assert a.get_server(one.id).locked
    b.lock(two.id)
    assert b.get_server(two.id).locked and b.get_server(one.id).locked
    a.update_server(one.id, name="one-renamed")
    a.unlock(one.id)
    b.update_server(two.id, name="two-renamed")
    for engine in (a, b):
        assert engine.get_server(one.id).name == "one-renamed"
        assert not engine.get_server(one.id).locked
        assert engine.get_server(two.id).name == "two-renamed"
        assert engine.view.position() == log_end(engine)
    monkeypatch.undo()

    # every event folded once: the same as a rebuild (the instance actions would show
    # an event twice otherwise)
    assert snapshot(a) == rebuilt(b)
    actions = [a.instance_actions(server) for server in (one.id, two.id)]
    assert [sorted(x["action"] for x in found) for found in actions] == [
        ["create", "lock", "unlock"], ["create", "lock"]]


def _unfolded_writer(engine: Engine) -> None:
    """Make ``engine`` a process that records without folding (an older version, or
    one whose fold failed): its events reach the read models only through the log."""
    engine.service.recorder.in_transaction.clear()  # type: ignore[attr-defined]


def test_events_left_unfolded_are_folded_in_order_by_the_next_command(
        two_engines: tuple[Engine, Engine], monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = two_engines
    one = a.create_server("one", "m1.small", IMAGE)
    two = b.create_server("two", "m1.small", IMAGE)
    _unfolded_writer(a)
    a.commands.actions.act(a.context(), one.id, "lock")
    a.commands.servers.update(a.context(), one.id, name="one-renamed")
    assert not b.get_server(one.id).locked
    assert b.view.position() < log_end(b)

    no_catch_up(b, monkeypatch)
    b.lock(two.id)  # folds a's two events, then its own, in its transaction
    shown = b.get_server(one.id)
    assert shown.locked and shown.name == "one-renamed" and b.get_server(two.id).locked
    assert b.view.position() == log_end(b)
    monkeypatch.undo()
    assert snapshot(b) == rebuilt(b)


def test_a_long_gap_is_left_to_catch_up(two_engines: tuple[Engine, Engine]) -> None:
    a, b = two_engines
    one = a.create_server("one", "m1.small", IMAGE)
    two = b.create_server("two", "m1.small", IMAGE)
    _unfolded_writer(a)
    for n in range(log_reading.MISSED_LIMIT + 1):
        a.commands.servers.update(a.context(), one.id, name=f"one-{n}")
    b.lock(two.id)  # too many to carry: its read-your-writes catches up, as before
    assert b.get_server(one.id).name == f"one-{log_reading.MISSED_LIMIT}"
    assert b.get_server(two.id).locked
    assert b.view.position() == log_end(b)
    assert snapshot(b) == rebuilt(b)


def test_a_failing_fold_does_not_lose_the_command(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    server = engine.create_server("web", "m1.small", IMAGE)

    def broken(curs: Any, *_: Any) -> bool:
        # a statement the database refuses, in the command's transaction (on
        # PostgreSQL it leaves the insert's pipeline aborted until it is synced)
        curs.execute("SELECT no_such_column FROM vmledger_servers")
        curs.fetchone()
        raise AssertionError("the statement was refused")

    monkeypatch.setattr(engine.view, "fold_written", broken)
    engine.lock(server.id)  # recorded; the read models catch up as before
    assert engine.get_server(server.id).locked
    assert [e.__class__.__name__ for e in engine.service.history(server.id)][-1] \
        == "LockChanged"

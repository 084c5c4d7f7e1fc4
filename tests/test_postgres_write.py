"""What a durable command costs on PostgreSQL in round trips, and what a write that
fails midway leaves behind: nothing in the log, and pooled connections idle and usable.

Budgets, not targets (as ``tests/test_command_cost.py`` for SQLite's statements): a
change that makes a command wait for the server more often fails here.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import psycopg
import pytest
from eventsourcing.persistence import IntegrityError, PersistenceError, StoredEvent
from psycopg.pq import TransactionStatus

from tests.engines import make_engine
from tests.support.wire import WireCounter
from tests.test_read_your_writes import log_end, rebuilt, snapshot
from vmledger.api.app import create_app
from vmledger.api.testing import ApiClient
from vmledger.audit import verify
from vmledger.domain.commands import Commands
from vmledger.domain.service import ServerService
from vmledger.persistence import environment
from vmledger.projections import log_reading, runner

pytestmark = pytest.mark.postgres

IMAGE = "cirros-0.6.2-x86_64"
IMAGE_LIKE_ID = "4c8f9a1e-2b1d-4d6e-9c3a-7f0e5d2b8a11"  # no server has this id
#: a command through the command service: the load (one autocommit SELECT) and the
#: write (BEGIN ... INSERT synced once, the audit links and COMMIT synced once)
COMMAND_ROUND_TRIPS = 3
#: a lock through the engine: the command's write alone (the load takes the cached
#: server unread: this process saved it last, and no fold has met a newer version), the
#: read models' fold in its transaction waiting for nothing of its own (its savepoint
#: and reads, the position locked and the rows it folds into, go with the insert in the
#: write's first trip)
LOCK_ROUND_TRIPS = 2
#: a read of the read models (a server's document): one autocommit SELECT, no
#: transaction block around it
READ_ROUND_TRIPS = 1
#: the statements of each: the load; BEGIN, the lock timeout with NOTIFY, the table
#: lock, the insert with the chain's previous links, the links with the request index,
#: COMMIT (each statement costs the client a send and a poll in the pipeline)
COMMAND_STATEMENTS = 7
#: and the fold's: its savepoint, the position, the rows it folds into, its writes;
#: without the load
LOCK_STATEMENTS = 10


@pytest.fixture
def wire(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[WireCounter]:
    # the check for a read-model layout switched by another process runs at most once a
    # second, whatever the commands do: not a command's cost, so kept out of the
    # counted windows (a loaded machine can stretch one past a second)
    monkeypatch.setattr(runner, "REFRESH_EVERY", 3600.0)
    with WireCounter(postgres_url) as counter:
        yield counter


def _pool_size(store: Any) -> int:
    return int(store.recorder.datastore.pool.max_size)


def _filled(*owners: Any) -> None:
    """Wait until each pool has opened its connections: the pool opens them in the
    background, and one set up inside a counted window (its session settings) would be
    counted as the command's."""
    for owner in owners:
        datastore = getattr(owner, "datastore", None) or owner.recorder.datastore
        datastore.pool.wait(30.0)


def test_a_command_waits_for_the_server_three_times(wire: WireCounter) -> None:
    store = ServerService(environment(wire.url))
    try:
        commands = Commands.build(store)
        server_id = commands.servers.create(store.context(), name="web", flavor="1",
                                            image=IMAGE).server_id
        _filled(store)
        actions = ["lock", "unlock"] * (_pool_size(store) + 1)
        for action in actions:  # every pooled connection prepares its statements
            commands.actions.act(store.context(), server_id, action)
        wire.reset()
        for action in actions:
            commands.actions.act(store.context(), server_id, action)
        per_command = wire.round_trips() / len(actions)
        assert per_command <= COMMAND_ROUND_TRIPS, (per_command, dict(wire.sent))
        statements = wire.statements() / len(actions)
        assert statements <= COMMAND_STATEMENTS, (statements, dict(wire.sent))
        assert verify(store).ok
    finally:
        store.close()


def test_a_lock_through_the_engine_stays_within_its_round_trips(wire: WireCounter) -> None:
    with make_engine(wire.url) as engine:
        server = engine.create_server("web", "m1.small", IMAGE)
        engine.run_until_idle()
        _filled(engine.service, engine.view)
        rounds = _pool_size(engine.service) + 1
        for _ in range(rounds):
            engine.lock(server.id)
            engine.act(server.id, "unlock")
        wire.reset()
        for _ in range(rounds):
            engine.lock(server.id)
            engine.act(server.id, "unlock")
        per_command = wire.round_trips() / (2 * rounds)
        assert per_command <= LOCK_ROUND_TRIPS, (per_command, dict(wire.sent))
        statements = wire.statements() / (2 * rounds)
        assert statements <= LOCK_STATEMENTS, (statements, dict(wire.sent))
        assert not engine.get_server(server.id).locked


def test_a_view_read_waits_for_the_server_once(wire: WireCounter) -> None:
    with make_engine(wire.url) as engine:
        server = engine.create_server("web", "m1.small", IMAGE)
        engine.run_until_idle()
        _filled(engine.service, engine.view)
        reads = _pool_size(engine.service) + 1
        for _ in range(reads):  # every pooled connection prepares its statements
            engine.get_server(server.id)
        wire.reset()
        for _ in range(reads):
            assert engine.get_server(server.id).name == "web"
        per_read = wire.round_trips() / reads
        assert per_read <= READ_ROUND_TRIPS, (per_read, dict(wire.sent))


def test_an_action_over_the_api_waits_as_long_as_the_command(wire: WireCounter) -> None:
    """``POST /servers/{id}/action`` costs the command's round trips, no more: the
    command's own load finds the server (or answers 404), no read of the view first."""
    with make_engine(wire.url) as engine:
        client = ApiClient(create_app(engine))
        server = engine.create_server("web", "m1.small", IMAGE)
        engine.run_until_idle()
        _filled(engine.service, engine.view)
        path = f"/v2.1/servers/{server.id}/action"
        rounds = _pool_size(engine.service) + 1
        for _ in range(rounds):
            assert client.post(path, json={"lock": None}).status_code == 202
            assert client.post(path, json={"unlock": None}).status_code == 202
        wire.reset()
        for _ in range(rounds):
            assert client.post(path, json={"lock": None}).status_code == 202
            assert client.post(path, json={"unlock": None}).status_code == 202
        per_action = wire.round_trips() / (2 * rounds)
        assert per_action <= LOCK_ROUND_TRIPS, (per_action, dict(wire.sent))
        for missing in (
                client.post(f"/v2.1/servers/{IMAGE_LIKE_ID}/action", json={"lock": None}),
                client.put(f"/v2.1/servers/{IMAGE_LIKE_ID}", json={"server": {"name": "x"}}),
                client.delete(f"/v2.1/servers/{IMAGE_LIKE_ID}")):
            assert missing.status_code == 404
            assert missing.json()["itemNotFound"]["code"] == 404
        wire.reset()
        assert client.delete(f"/v2.1/servers/{server.id}").status_code == 204
        assert wire.round_trips() <= LOCK_ROUND_TRIPS, dict(wire.sent)


def _idle_pool(store: Any) -> list[TransactionStatus]:
    """The transaction status of every connection the pool can hand out (all at once,
    so each is a different one)."""
    datastore = store.recorder.datastore
    with ExitStack() as stack:
        connections = [stack.enter_context(datastore.get_connection())
                       for _ in range(_pool_size(store))]
        return [conn.info.transaction_status for conn in connections]


def _stale(store: Any, server_id: str) -> list[StoredEvent]:
    """The newest event of ``server_id`` again: its version is taken."""
    (last,) = store.recorder.select_events(server_id, desc=True, limit=1)
    return [last]


def test_a_lost_race_is_an_integrity_error_and_leaves_the_connections_idle(
        postgres_url: str, caplog: pytest.LogCaptureFixture) -> None:
    store = ServerService(environment(postgres_url))
    try:
        commands = Commands.build(store)
        server_id = str(commands.servers.create(store.context(), name="web", flavor="1",
                                                image=IMAGE).server_id)
        before = store.recorder.max_notification_id()
        with caplog.at_level(logging.WARNING, logger="psycopg"):
            for _ in range(_pool_size(store) + 1):
                with pytest.raises(IntegrityError):
                    store.recorder.insert_events(_stale(store, server_id))
        # the pool had nothing to roll back: each write ended its own transaction
        assert not [r for r in caplog.records if "rolling back" in r.getMessage()]
        assert _idle_pool(store) == [TransactionStatus.IDLE] * _pool_size(store)
        assert store.recorder.max_notification_id() == before
        for action in ["lock", "unlock"] * (_pool_size(store) + 1):
            commands.actions.act(store.context(), server_id, action)
        assert verify(store).ok
    finally:
        store.close()


@pytest.mark.parametrize("failure", ["python", "sql", "swallowed"])
def test_a_write_failing_after_its_insert_records_nothing(
        postgres_url: str, failure: str) -> None:
    """A failure between the insert and COMMIT (here in a callback the recorder runs in
    the write's transaction): the events are not in the log, the audit chain has no
    link for them, and the connection is back in the pool, idle."""
    store = ServerService(environment(postgres_url))
    try:
        commands = Commands.build(store)
        server_id = str(commands.servers.create(store.context(), name="web", flavor="1",
                                                image=IMAGE).server_id)
        before = store.recorder.max_notification_id()
        recorder: Any = store.recorder

        def fail(curs: Any, rows: Any) -> None:
            if failure == "python":
                raise RuntimeError("the fold broke")
            curs.execute("SELECT no_such_column FROM vmledger_events")
            if failure == "swallowed":  # the transaction left failed, no error raised:
                # its COMMIT answers ROLLBACK
                with contextlib.suppress(psycopg.Error), curs.connection.pipeline() as p:
                    p.sync()

        recorder.in_transaction.append(fail)
        with pytest.raises(RuntimeError if failure == "python" else PersistenceError):
            commands.actions.act(store.context(), server_id, "lock")
        recorder.in_transaction.remove(fail)
        assert store.recorder.max_notification_id() == before
        assert recorder.max_chain_id() == before
        assert _idle_pool(store) == [TransactionStatus.IDLE] * _pool_size(store)
        commands.actions.act(store.context(), server_id, "lock")
        assert verify(store).ok
    finally:
        store.close()


def test_commands_after_a_failed_fold_use_every_connection_again(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fold refused by the database is rolled back to its savepoint and the command
    still recorded; the connection's prepared statements survive that rollback, so
    the commands after it, on every pooled connection, are recorded too."""
    with make_engine(postgres_url) as engine:
        server = engine.create_server("web", "m1.small", IMAGE)
        engine.run_until_idle()
        _filled(engine.service, engine.view)
        rounds = _pool_size(engine.service) + 1
        for _ in range(rounds):  # every pooled connection prepares its statements
            engine.lock(server.id)
            engine.act(server.id, "unlock")
        fold = engine.view.fold_written

        def broken(curs: Any, *_: Any) -> bool:
            curs.execute("SELECT no_such_column FROM vmledger_servers")
            curs.fetchone()
            raise AssertionError("the statement was refused")

        for _ in range(rounds):
            monkeypatch.setattr(engine.view, "fold_written", broken)
            engine.lock(server.id)
            monkeypatch.setattr(engine.view, "fold_written", fold)
            engine.act(server.id, "unlock")
            engine.lock(server.id)
            engine.act(server.id, "unlock")
        assert not engine.get_server(server.id).locked
        assert verify(engine.service).ok


def test_a_fold_write_refused_at_commit_still_records_the_command(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The fold's row writes are queued, not waited for: a write the database refuses
    comes back with the COMMIT, past the fold's savepoint. The command is then written
    again without the fold, once: recorded, shown (catch-up folds it), chained; not a
    409 for a race that never was."""
    with make_engine(postgres_url) as engine:
        server = engine.create_server("web", "m1.small", IMAGE)
        engine.run_until_idle()
        fold = engine.view.fold_written
        before = engine.service.recorder.max_notification_id()

        def refused(curs: Any, *args: Any) -> bool:
            folded = fold(curs, *args)
            curs.execute("INSERT INTO vmledger_servers (id) VALUES (NULL)")  # queued
            return folded

        monkeypatch.setattr(engine.view, "fold_written", refused)
        with caplog.at_level(logging.ERROR):
            engine.lock(server.id)
        monkeypatch.setattr(engine.view, "fold_written", fold)
        assert "written again without them" in caplog.text
        assert engine.get_server(server.id).locked
        assert engine.service.recorder.max_notification_id() > before
        locks = [e for e in engine.service.history(server.id)
                 if type(e).__name__ == "LockChanged"]
        assert len(locks) == 1
        assert _idle_pool(engine.service) == [TransactionStatus.IDLE] * _pool_size(
            engine.service)
        engine.act(server.id, "unlock")
        assert not engine.get_server(server.id).locked
        assert verify(engine.service).ok


def test_a_write_of_many_events_is_chained_in_order(postgres_url: str) -> None:
    """More events in one write than go as parameters of their own (an array per
    column then): every one recorded, in order, and the audit chain verifies."""
    from vmledger.audit.postgres_recorder import EVENTS_AS_SCALARS

    store = ServerService(environment(postgres_url))
    try:
        commands = Commands.build(store)
        server_id = str(commands.servers.create(store.context(), name="web", flavor="1",
                                                image=IMAGE).server_id)
        (last,) = store.recorder.select_events(server_id, desc=True, limit=1)
        events = [StoredEvent(last.originator_id, last.originator_version + i, last.topic,
                              last.state) for i in range(1, EVENTS_AS_SCALARS + 2)]
        before = store.recorder.max_notification_id() or 0
        ids = store.recorder.insert_events(events)
        assert list(ids or ()) == list(range(before + 1, before + len(events) + 1))
        stored = store.recorder.select_events(server_id, gt=last.originator_version)
        assert [e.originator_version for e in stored] == [
            e.originator_version for e in events]
        assert verify(store).ok
    finally:
        store.close()


def test_a_lost_race_through_the_engine_is_an_integrity_error(postgres_url: str) -> None:
    """With the read models' reads queued behind the insert in the write's first round
    trip, a refused insert is still the write's error: nothing recorded, no link, and
    the pooled connections idle; and however often it happens on a connection (the
    statements queued after a refused insert are never prepared), every connection
    goes on writing."""
    with make_engine(postgres_url) as engine:
        server = engine.create_server("web", "m1.small", IMAGE)
        engine.run_until_idle()
        recorder: Any = engine.service.recorder
        assert recorder.first_trip  # the fold's reads go in the first trip
        before = recorder.max_notification_id()
        # more than psycopg's prepare threshold (5) on every pooled connection
        for _ in range(8 * (_pool_size(engine.service) + 1)):
            with pytest.raises(IntegrityError):
                recorder.insert_events(_stale(engine.service, str(server.id)))
        assert recorder.max_notification_id() == before
        assert recorder.max_chain_id() == before
        assert _idle_pool(engine.service) == [TransactionStatus.IDLE] * _pool_size(
            engine.service)
        for _ in range(_pool_size(engine.service) + 1):
            engine.lock(server.id)
            assert engine.get_server(server.id).locked
            engine.act(server.id, "unlock")
        assert verify(engine.service).ok


@pytest.mark.parametrize("failure", ["position", "rows", "python"])
def test_a_fold_whose_queued_reads_fail_still_records_the_command(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch, failure: str) -> None:
    """The fold's reads, queued in the write's first round trip, refused by the
    database (or their queueing failing in Python): the fold is rolled back to its
    savepoint, the command recorded with its audit links, and the read models
    catch up afterwards; every pooled connection goes on writing."""
    with make_engine(postgres_url) as engine:
        server = engine.create_server("web", "m1.small", IMAGE)
        engine.run_until_idle()
        view: Any = engine.view
        rounds = _pool_size(engine.service) + 1
        for _ in range(rounds):
            if failure in ("position", "rows"):
                queue = type(view).queue_position_and_rows

                def refused(curs: Any, ids: Any, queue: Any = queue) -> Any:
                    # refused right after the savepoint, or after the reads
                    bad = "SELECT no_such_column FROM vmledger_servers"
                    if failure == "position":
                        curs.execute(bad)
                    taken = queue(view, curs, ids)
                    if failure == "rows":
                        curs.connection.cursor().execute(bad)
                    return taken

                monkeypatch.setattr(view, "queue_position_and_rows", refused)
            else:
                def broken(curs: Any, ids: Any) -> Any:
                    raise RuntimeError("queueing broke")

                monkeypatch.setattr(view, "queue_position_and_rows", broken)
            engine.lock(server.id)
            monkeypatch.undo()
            assert engine.get_server(server.id).locked
            engine.act(server.id, "unlock")
            assert not engine.get_server(server.id).locked
        assert _idle_pool(engine.service) == [TransactionStatus.IDLE] * _pool_size(
            engine.service)
        history = [e.__class__.__name__ for e in engine.service.history(server.id)]
        assert history.count("LockChanged") == 2 * rounds
        assert verify(engine.service).ok


@pytest.mark.parametrize("deferred", [3, log_reading.MISSED_LIMIT + 1])
def test_a_fold_after_deferred_commands_reads_them_with_the_insert(
        wire: WireCounter, deferred: int) -> None:
    """Commands whose fold was deferred (a batch worker's pass) are folded first by the
    next command's fold, their rows read with its insert in its first round trip: it
    waits as long as any lock. More than a command carries are left to catch-up; the
    read models end up as a rebuild makes them either way."""
    with make_engine(wire.url) as engine:
        one = engine.create_server("one", "m1.small", IMAGE)
        two = engine.create_server("two", "m1.small", IMAGE)
        engine.run_until_idle()
        _filled(engine.service, engine.view)
        for _ in range(_pool_size(engine.service) + 1):
            engine.lock(two.id)
            engine.act(two.id, "unlock")
        with engine.updater.deferred():
            for i in range(deferred):
                engine.commands.servers.update(engine.context(), one.id, name=f"one-{i}")
        wire.reset()
        engine.lock(two.id)
        if deferred <= log_reading.MISSED_LIMIT:
            assert wire.round_trips() <= LOCK_ROUND_TRIPS, dict(wire.sent)
        assert engine.get_server(one.id).name == f"one-{deferred - 1}"
        assert engine.get_server(two.id).locked
        assert engine.view.position() == log_end(engine)
        assert snapshot(engine) == rebuilt(engine)
        assert verify(engine.service).ok

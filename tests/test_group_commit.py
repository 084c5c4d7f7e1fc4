"""The group commit of PostgreSQL's recorder, over a stand-in for the database write:
commands saved at once are written in groups, one group at a time, each command once,
and a command waiting behind groups is written without a later command arriving to
start its group; and the long statements of a group are numbered for PostgreSQL once
rather than parsed by psycopg at every write. No database: the write is a function of
the test's.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from eventsourcing.persistence import IntegrityError, StoredEvent
from psycopg.pq import TransactionStatus

from vmledger.audit import group_commit
from vmledger.audit.group_commit import GroupCommitRecorder
from vmledger.projections import pg_statements

Write = Callable[[Sequence[StoredEvent]], None]


class _Datastore:
    """Hands out a connection that is never in a transaction (nothing to roll back)."""

    @contextlib.contextmanager
    def get_connection(self) -> Iterator[Any]:
        yield SimpleNamespace(info=SimpleNamespace(transaction_status=TransactionStatus.IDLE))


class Recorder(GroupCommitRecorder):
    """The group commit with the database write replaced by ``write`` (which may sleep,
    or raise) and a log of integers."""

    def __init__(self, write: Write) -> None:  # no datastore, no library set-up
        self.droppable = set()
        self._group = group_commit._Group()
        self.after_commit = []
        self.datastore = _Datastore()  # type: ignore[assignment]
        self.write = write
        self.groups: list[list[tuple[str, int]]] = []
        self.log: dict[tuple[str, int], int] = {}
        self.writing = 0
        self.overlapped = False

    def _write(self, conn: Any, stored_events: Sequence[StoredEvent],
               agent_hosts: frozenset[str] | None, *, drop: bool = False) -> list[int]:
        self.writing += 1
        self.overlapped |= self.writing > 1
        try:
            self.write(stored_events)
            keys = [(str(e.originator_id), e.originator_version) for e in stored_events]
            if any(key in self.log for key in keys) or len(set(keys)) < len(keys):
                raise IntegrityError("duplicate key")
            self.groups.append(keys)
            ids = []
            for key in keys:
                self.log[key] = len(self.log) + 1
                ids.append(self.log[key])
            return ids
        finally:
            self.writing -= 1

    def _taken(self, events: Sequence[StoredEvent]) -> set[tuple[str, int]]:
        return {(str(e.originator_id), e.originator_version) for e in events
                if (str(e.originator_id), e.originator_version) in self.log}


def event(oid: uuid.UUID, version: int = 1) -> StoredEvent:
    return StoredEvent(originator_id=oid, originator_version=version, topic="t", state=b"{}")


def run_all(calls: Sequence[Callable[[], Any]], timeout: float = 30.0) -> list[Any]:
    """Run the calls in threads at once; each one's result, or the exception it raised."""
    results: list[Any] = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def run(k: int) -> None:
        start.wait()
        try:
            results[k] = calls[k]()
        except Exception as error:  # the outcome under test
            results[k] = error

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), "a command never got its outcome"
    return results


def test_every_command_is_written_once_in_groups_one_at_a_time() -> None:
    recorder = Recorder(lambda events: time.sleep(0.002))
    oids = [uuid.uuid4() for _ in range(150)]
    results = run_all([functools.partial(recorder.insert_events, [event(o), event(o, 2)])
                       for o in oids])
    assert not recorder.overlapped
    for oid, ids in zip(oids, results, strict=True):  # each got its own two ids
        assert list(ids) == [recorder.log[(str(oid), 1)], recorder.log[(str(oid), 2)]]
    assert len(recorder.log) == 300
    assert len(recorder.groups) < len(oids)  # commands shared writes
    assert max(len(g) for g in recorder.groups) <= 2 * group_commit.GROUP_LIMIT


def test_commands_queued_behind_a_group_are_written_when_it_ends() -> None:
    """The commands that arrive while a group is written wait for it; its end starts
    theirs, without a later command arriving (more than a group's limit of them: two
    groups follow)."""
    release = threading.Event()
    first = [True]

    def write(events: Sequence[StoredEvent]) -> None:
        if first[0]:
            first[0] = False
            release.wait(10)

    recorder = Recorder(write)
    leader = threading.Thread(target=recorder.insert_events, args=([event(uuid.uuid4())],))
    leader.start()
    while recorder.writing == 0:
        time.sleep(0.001)
    waiting = group_commit.GROUP_LIMIT + 5

    def release_soon() -> None:
        while len(recorder._group.queue) < waiting:
            time.sleep(0.001)
        release.set()

    releaser = threading.Thread(target=release_soon)
    releaser.start()
    results = run_all([lambda: recorder.insert_events([event(uuid.uuid4())])
                       for _ in range(waiting)])
    leader.join(10)
    releaser.join(10)
    assert all(len(r) == 1 for r in results)
    assert [len(g) for g in recorder.groups] == [1, group_commit.GROUP_LIMIT, 5]
    assert not recorder._group.busy and not recorder._group.queue


def test_a_lost_race_fails_only_its_command_and_the_next_group_goes_on() -> None:
    recorder = Recorder(lambda events: time.sleep(0.005))
    taken = uuid.uuid4()
    recorder.insert_events([event(taken)])
    fresh = [uuid.uuid4() for _ in range(20)]
    calls: list[Callable[[], Any]] = [
        functools.partial(recorder.insert_events, [event(taken)])]
    calls += [functools.partial(recorder.insert_events, [event(o)]) for o in fresh]
    results = run_all(calls)
    assert isinstance(results[0], IntegrityError)
    assert all(len(r) == 1 for r in results[1:])
    assert all((str(o), 1) in recorder.log for o in fresh)


def start_in_order(calls: Sequence[Callable[[], Any]], recorder: Recorder
                   ) -> tuple[list[threading.Thread], list[Any]]:
    """Start each call in a thread of its own once the one before is queued: the
    queue's order is the calls' order (the first one writes a group at once)."""
    results: list[Any] = [None] * len(calls)

    def run(k: int) -> None:
        try:
            results[k] = calls[k]()
        except Exception as error:  # the outcome under test
            results[k] = error

    threads = []
    for k in range(len(calls)):
        queued = len(recorder._group.queue)
        threads.append(threading.Thread(target=run, args=(k,), daemon=True))
        threads[-1].start()
        deadline = time.monotonic() + 10
        while len(recorder._group.queue) == queued and recorder.writing == 0 \
                and time.monotonic() < deadline:
            time.sleep(0.0005)
    return threads, results


def test_a_group_that_fails_midway_leaves_no_command_without_an_outcome() -> None:
    """A group that lost a race is written again without the loser; when that fails on
    a key too, its commands are written one by one, and when one of those writes fails
    with another error, that command alone gets it: the commands after it are written
    by the next group. (On the previous main they had left the queue with the failed
    group, and their threads wrote empty groups over and over: never answered.)"""
    taken, broken = uuid.uuid4(), uuid.uuid4()
    hold = threading.Event()
    behind = [uuid.uuid4() for _ in range(4)]

    def write(events: Sequence[StoredEvent]) -> None:
        oids = [e.originator_id for e in events]
        if oids == [first]:
            hold.wait(10)  # the others queue up behind the first group
        elif broken in oids and len(oids) > 1:
            raise IntegrityError("a race the group's check did not see")
        elif oids == [broken]:
            raise RuntimeError("the database went away")

    first = uuid.uuid4()
    recorder = Recorder(write)
    recorder.log[(str(taken), 1)] = 0
    order = [first, behind[0], taken, broken, *behind[1:]]
    threads, results = start_in_order(
        [functools.partial(recorder.insert_events, [event(o)]) for o in order], recorder)
    assert [p.events[0].originator_id for p in recorder._group.queue] == order[1:]
    hold.set()
    for t in threads:
        t.join(10)
        assert not t.is_alive(), "a command never got its outcome"
    outcomes = dict(zip(order, results, strict=True))
    assert isinstance(outcomes[taken], IntegrityError)
    assert isinstance(outcomes[broken], RuntimeError)
    for oid in [first, *behind]:
        assert list(outcomes[oid]) == [recorder.log[(str(oid), 1)]]
    assert (str(broken), 1) not in recorder.log
    assert not recorder._group.busy and not recorder._group.queue


@pytest.mark.parametrize("writers", [1, 8])
def test_a_failed_write_is_every_waiting_commands_error(writers: int) -> None:
    def write(events: Sequence[StoredEvent]) -> None:
        time.sleep(0.01)
        raise RuntimeError("refused")

    recorder = Recorder(write)
    results = run_all([lambda: recorder.insert_events([event(uuid.uuid4())])
                       for _ in range(writers)])
    assert all(isinstance(r, RuntimeError) for r in results)
    assert not recorder._group.busy and not recorder._group.queue


def test_a_failing_callback_after_the_commit_leaves_the_commands_recorded(
        caplog: pytest.LogCaptureFixture) -> None:
    """What runs after a group's commit cannot undo it: its error is logged, and every
    command of the group gets its ids (it is in the log)."""
    recorder = Recorder(lambda events: time.sleep(0.005))

    def broken() -> None:
        raise RuntimeError("a callback's bug")

    recorder.after_commit.append(broken)
    oids = [uuid.uuid4() for _ in range(10)]
    results = run_all([functools.partial(recorder.insert_events, [event(o)]) for o in oids])
    for oid, ids in zip(oids, results, strict=True):
        assert list(ids) == [recorder.log[(str(oid), 1)]]
    assert "a callback after a group's commit failed" in caplog.text


def test_a_groups_long_statements_are_numbered_for_postgresql_once() -> None:
    """A group's statements have more parameters than psycopg parses once; they are
    numbered here ($1, $2…, ``%%`` as ``%``), and the numbering is made once per
    statement."""
    statement = b"INSERT INTO t (a, b) VALUES (%s, %s), (%s, %s) RETURNING '100%%'"
    assert pg_statements.numbered(statement) == (
        b"INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4) RETURNING '100%'")
    assert pg_statements.numbered(statement) is pg_statements.numbered(statement)
    assert pg_statements.numbered(b"SELECT 1") == b"SELECT 1"


def test_a_short_statement_goes_through_psycopgs_own_cache() -> None:
    ran: list[tuple[object, object]] = []
    curs = SimpleNamespace(execute=lambda s, p, prepare: ran.append(("curs", s)))
    raw = SimpleNamespace(execute=lambda s, p, prepare: ran.append(("raw", s)))
    assert pg_statements.execute_many_parameters(curs, lambda: raw, "SELECT %s", [1]) is curs
    many = b"SELECT " + b", ".join([b"%s"] * 51)
    assert pg_statements.execute_many_parameters(curs, lambda: raw, many, list(range(51))) is raw
    assert ran == [("curs", "SELECT %s"),
                   ("raw", b"SELECT " + b", ".join(b"$%d" % k for k in range(1, 52)))]

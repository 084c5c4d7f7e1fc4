"""Group commit for the PostgreSQL application recorder: the commands of a process that
save at the same moment share one transaction (one table lock, one WAL flush), and a
refused write is written again — a group that lost a race on a unique key without the
commands that lost it, a write whose read models' statements the database refused at
its end without them. What one write sends (the SQL, the chain's links, the read
models' fold) is the recorder's, :mod:`vmledger.audit.postgres_recorder`."""

from __future__ import annotations

import contextlib
import logging
import threading
from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from eventsourcing.persistence import (
    IntegrityError,
    InterfaceError,
    OperationalError,
    StoredEvent,
)
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.utils import retry
from psycopg import Connection
from psycopg.pq import TransactionStatus
from psycopg.rows import DictRow

from vmledger.audit.chain import InTransaction, oid_text

# the recorder's logger: a refused write is logged under the name it always had
log = logging.getLogger("vmledger.audit.postgres_recorder")

#: at most this many commands are written in one group (one transaction)
GROUP_LIMIT = 64


def _roll_back(conn: Connection[DictRow]) -> None:
    """End a failed write's transaction if it is still open, so that the connection
    goes back to the pool idle (a broken connection is discarded by the pool)."""
    if conn.info.transaction_status in (TransactionStatus.INTRANS,
                                        TransactionStatus.INERROR):
        with contextlib.suppress(psycopg.Error):
            conn.rollback()


class _Pending:
    """One command's events waiting to be written with a group, and the outcome.

    Its thread sleeps on :attr:`wake` (a lock taken at creation) until it is released
    once: when a group wrote the command (:attr:`finished`), or when the command is at
    the head of the queue as the group before it ends, to write the next group itself.
    So a waiting thread wakes once, not at every group's end."""

    __slots__ = ("agent_hosts", "error", "events", "finished", "ids", "wake")

    def __init__(self, events: Sequence[StoredEvent],
                 agent_hosts: frozenset[str] | None = None) -> None:
        self.events = events
        self.agent_hosts = agent_hosts
        self.ids: Sequence[int] = ()
        self.error: BaseException | None = None
        self.finished = False
        self.wake = threading.Lock()
        self.wake.acquire()

    def done(self, ids: Sequence[int]) -> None:
        self.ids, self.finished = ids, True

    def fail(self, error: BaseException) -> None:
        self.error, self.finished = error, True

    def result(self) -> Sequence[int]:
        if self.error is not None:
            raise self.error
        return self.ids


class Dropped(Exception):
    """A write was refused at its end after :attr:`~GroupCommitRecorder.droppable`
    callbacks had queued their statements (the cause: the database's error): it is
    written again without them."""


class _Group:
    """The commands of this process waiting to be written, and whether a group is being
    written now (by one of the waiting threads, the leader)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queue: list[_Pending] = []
        self.busy = False


class GroupCommitRecorder(PostgresApplicationRecorder):
    """The library's PostgreSQL application recorder, the commands of a process written
    in groups. A subclass writes one transaction (:meth:`_write`) and says which event
    keys the log already has (:meth:`_taken`)."""

    def __init__(self, datastore: PostgresDatastore, *,
                 events_table_name: str = "stored_events") -> None:
        #: ``in_transaction`` callbacks whose writes a command can do without (the read
        #: models' fold: catch-up folds its events later). Their statements are queued,
        #: not waited for, so a savepoint of theirs cannot catch the database refusing
        #: one; the refusal comes with the write's last round trip, and the whole write
        #: fails. It is then written again, once, without them: the command is
        #: recorded, as when such a callback fails while it runs.
        self.droppable: set[InTransaction] = set()
        self._group = _Group()
        #: called after a group's transaction committed, in the thread that wrote it
        #: (the one that ran the ``in_transaction`` callbacks)
        self.after_commit: list[Callable[[], None]] = []
        super().__init__(datastore, events_table_name=events_table_name)

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_events(self, stored_events: Sequence[StoredEvent], *,
                      agent_hosts: frozenset[str] | None = None, **kwargs: Any
                      ) -> Sequence[int] | None:
        """The library's insert, shared by the commands of this process that save at the
        same moment: one transaction, one table lock and one WAL flush for all of them
        (group commit). A command arriving while a group is being written waits for it
        and goes in the next; alone, a command is written at once, as before.

        Every command of a group gets its own notification ids and the events keep the
        library's guarantee (commit order = notification id order, under the table
        lock), the chain is linked over the group in id order, and the read models'
        fold (``in_transaction``) runs once over the group's rows. A group that fails
        on a unique key (a command that lost a race) is written again command by
        command, so only the loser gets the ``IntegrityError``.

        ``agent_hosts``: the hosts whose agent the events give work (None: not known),
        told to the log's listeners with the commit (:func:`vmledger.domain.wakeups.payload`)."""
        if not stored_events:
            return None
        if any(v is not None for v in kwargs.values()):
            # a tracking record: an application recorder does not write it (as the
            # library's); the events are written alone
            return self._insert_once(stored_events, agent_hosts)
        request = _Pending(stored_events, agent_hosts)
        group = self._group
        with group.lock:
            group.queue.append(request)
            leads = not group.busy
            group.busy = True
        if not leads:
            request.wake.acquire()  # written by a group, or this thread leads the next
            if request.finished:
                return request.result()
        while True:  # this command is at the head of the queue: its thread writes a group
            with group.lock:
                batch = group.queue[:GROUP_LIMIT]
                del group.queue[:GROUP_LIMIT]
            try:
                self._write_group(batch)
            except BaseException as error:
                # each command the error concerns was told; should none have been, the
                # error is every command's, so that a group always ends someone's wait
                if not any(pending.finished for pending in batch):
                    for pending in batch:
                        pending.fail(error)
            # commands a failed group left unwritten go first in the next one: this
            # thread's own among them (it is the batch's first), it leads that one too
            unwritten = [pending for pending in batch if not pending.finished]
            with group.lock:
                group.queue[:0] = unwritten
                following = group.queue[0] if group.queue else None
                group.busy = following is not None
            if following is not None and following is not request:
                following.wake.release()  # not finished: it leads the next group
            for pending in batch:
                if pending.finished and pending is not request:
                    pending.wake.release()
            if request.finished:
                return request.result()

    def _write_group(self, batch: list[_Pending], *, retried: bool = False) -> None:
        """Write ``batch`` in one transaction. When it fails on a unique key, the
        commands that lost their race (a version already in the log, or taken by an
        earlier command of the group) are refused and the others written again as a
        group; should that fail too, each alone. A write that raises tells the commands
        it concerns its error (all of the group's, or the one written alone); those of
        the group left unwritten behind it are written by the next group."""
        events = [e for pending in batch for e in pending.events]
        hosts: frozenset[str] | None = frozenset()
        for pending in batch:
            hosts = (None if hosts is None or pending.agent_hosts is None
                     else hosts | pending.agent_hosts)
        try:
            ids = list(self._insert_once(events, hosts) or ())
        except IntegrityError as error:
            if len(batch) == 1:
                batch[0].fail(error)
                return
            if retried:
                for pending in batch:
                    self._write_group([pending], retried=True)
                return
            taken = self._taken(events)
            rest: list[_Pending] = []
            for pending in batch:
                keys = [(oid_text(e.originator_id), e.originator_version)
                        for e in pending.events]
                if any(key in taken for key in keys):
                    pending.fail(IntegrityError(f"{error} (lost a race in a group)"))
                else:
                    taken.update(keys)
                    rest.append(pending)
            if rest:
                self._write_group(rest, retried=True)
            return
        except BaseException as error:
            for pending in batch:
                pending.fail(error)
            raise
        start = 0
        for pending in batch:
            pending.done(ids[start:start + len(pending.events)])
            start += len(pending.events)
        for callback in self.after_commit:  # before the waiting commands go on
            try:
                callback()
            except Exception:  # the commands are committed: their outcome stands
                log.exception("a callback after a group's commit failed")

    def _insert_once(self, stored_events: Sequence[StoredEvent],
                     agent_hosts: frozenset[str] | None = None) -> list[int]:
        """Write ``stored_events`` in one transaction (:meth:`_write`; no retry here:
        the group's caller retries on connection errors). Written again without the
        :attr:`droppable` callbacks when the write was refused at its end after theirs
        (:class:`Dropped`). On any error the transaction is rolled back and the
        connection goes back to the pool idle."""
        with self.datastore.get_connection() as conn:
            try:
                return self._write(conn, stored_events, agent_hosts)
            except Dropped as dropped:
                _roll_back(conn)
                log.error("the database refused the read models' writes at the end of a "
                          "command's transaction (%s): the command is written again "
                          "without them, and catch-up folds it", dropped.__cause__)
            except BaseException:
                _roll_back(conn)
                raise
        with self.datastore.get_connection() as conn:
            try:
                return self._write(conn, stored_events, agent_hosts, drop=True)
            except BaseException:
                _roll_back(conn)
                raise

    @abstractmethod
    def _write(self, conn: Connection[DictRow], stored_events: Sequence[StoredEvent],
               agent_hosts: frozenset[str] | None, *, drop: bool = False) -> list[int]:
        """Write ``stored_events`` in one transaction on ``conn`` and return their
        notification ids once it committed; ``drop``: without the :attr:`droppable`
        callbacks. Raises :class:`Dropped` when it was refused at its end after
        droppable callbacks ran, ``IntegrityError`` when an event's key is taken."""

    @abstractmethod
    def _taken(self, events: Sequence[StoredEvent]) -> set[tuple[str, int]]:
        """Which of the events' (originator id, version) keys the log already has."""

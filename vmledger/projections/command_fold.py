"""Folds the events this process writes in the transaction that writes them
(read-your-writes).

:meth:`CommandFold.attach` hooks :meth:`CommandFold.fold_written` into the audited
recorder, which calls it inside the insert's transaction: the read models show a command
the moment it commits, and :meth:`~vmledger.projections.runner.ViewUpdater.ensure` then
only checks the position (:meth:`CommandFold.folded`). The events other processes wrote
since the position are folded first, in order (up to
:data:`~vmledger.projections.log_reading.MISSED_LIMIT`; beyond, catch-up folds them). On
PostgreSQL the fold's savepoint and reads are queued behind the insert, in the write's
first round trip (:meth:`CommandFold.queue_fold`). A fold that fails is rolled back to its
savepoint and the command is still recorded (its events are the truth): catch-up folds
them later. A batch worker's commands can be left to the next catch-up
(:meth:`CommandFold.deferred`).

The :class:`~vmledger.projections.runner.ViewUpdater` owns one and reads what it kept:
where this thread's last command's fold ended, what committed groups reached, and how far
this process's commands folded into each layout (a request after a layout switch waits
for that).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

from eventsourcing.application import Application

from vmledger.projections.fold_cursors import SAVEPOINT, PipelineCursor, own_cursor, savepoint
from vmledger.projections.log_reading import MISSED_LIMIT, EventDecoder, Row, read_missed
from vmledger.projections.pg_statements import execute_uncached
from vmledger.projections.servers import LogAfterPosition, PositionAndRows, ServersView

log = logging.getLogger(__name__)

#: a command's fold queues its reads in the write's first round trip for up to this
#: many servers (beyond: the view reads them itself, in chunks)
_QUEUED_SERVERS = 500


class _QueuedFold:
    """A command's fold as queued in its write's first round trip
    (:meth:`CommandFold.queue_fold`): the cursor its savepoint went through, the layout
    and what takes the reads' answers, and the error of those reads, if any."""

    __slots__ = ("cursor", "error", "layout", "log", "take")

    def __init__(self, cursor: PipelineCursor) -> None:
        self.cursor = cursor
        self.error: BaseException | None = None
        self.layout: str | None = None
        self.take: PositionAndRows | None = None
        #: the log's rows after the position, when queued too
        self.log: LogAfterPosition | None = None

    def absorb(self, error: BaseException) -> bool:
        """Whether the first trip's ``error`` is that of the fold's reads (or of their
        queueing): their savepoint answered, so the insert before it succeeded (an
        insert refused, as a lost race, leaves the statements after it unanswered, and
        psycopg takes answers in order). The fold then raises it in its savepoint,
        rolled back, and the command is recorded."""
        if self.cursor.pgresult is None:
            return False
        if self.error is None:
            self.error = error
        return True

    @contextmanager
    def opened(self) -> Iterator[PipelineCursor]:
        try:
            yield self.cursor
        finally:
            self.cursor.close()


def _missed_from(log: LogAfterPosition, read: Callable[[Any, int, int], list[Row] | None],
                 curs: Any, after: int, before: int) -> list[Row] | None:
    """:func:`read_missed`'s answer from the log's rows read with the position in the
    write's first round trip (``log``): those before the command's own."""
    position, rows, _ = log()
    if position != after:  # (both read under the position's lock: not expected)
        return read(curs, after, before)
    found = [row for row in rows if row[0] < before]
    return None if len(found) > MISSED_LIMIT else found


def _with_their_documents(take: PositionAndRows, log: LogAfterPosition, curs: Any
                          ) -> tuple[int, dict[str, dict[str, Any] | None] | None]:
    """The position and the command's servers' documents (``take``), with those of the
    servers of the log's rows after the position (``log``: the fold loads them too)."""
    position, read = take(curs)
    if read is not None:
        after, rows, docs = log()
        if after == position:
            for row in rows:
                key = str(row[1])
                if key not in read:
                    read[key] = docs.get(key)
    return position, read


class CommandFold:
    """Folds the commands this process records into ``view`` in their own transaction
    (see the module)."""

    def __init__(self, app: Application[Any], view: ServersView) -> None:
        self.app = app
        self.view = view
        self._decoder: EventDecoder | None = None
        #: per thread: where the last fold in a command's transaction ended (None when
        #: that transaction's fold was skipped or failed)
        self._folded = threading.local()
        #: per layout: the position the view reached in a committed transaction (a
        #: group's fold, PostgreSQL's group commit)
        self._known: dict[str, int] = {}
        self._known_lock = threading.Lock()
        #: how many threads are in a deferring pass now (:meth:`deferring`)
        self._deferring = 0
        self._deferring_lock = threading.Lock()
        #: per layout: the furthest position a command of this process folded into it
        #: (read, not changed, outside: see :meth:`written_beside`)
        self.written: dict[str, int] = {}
        self._written_lock = threading.Lock()
        #: this process recorded commands whose fold was deferred, and none was folded
        #: since (a hint: the next command's fold queues the read of the log's rows
        #: after the position with its other reads, as it will fold them first)
        self._skipped = False

    def attach(self, recorder: Any) -> bool:
        """Fold the events ``recorder`` writes in the transaction that writes them (when
        the recorder offers ``in_transaction``, as vmledger's audited recorders do).
        Returns whether it does."""
        hooks = getattr(recorder, "in_transaction", None)
        if not isinstance(hooks, list):
            return False
        if self.fold_written not in hooks:
            hooks.append(self.fold_written)
        first = getattr(recorder, "first_trip", None)  # PostgreSQL's
        if isinstance(first, dict):
            first[self.fold_written] = self.queue_fold
        droppable = getattr(recorder, "droppable", None)  # PostgreSQL's
        if isinstance(droppable, set):
            droppable.add(self.fold_written)
        committed = getattr(recorder, "after_commit", None)
        if isinstance(committed, list) and self._committed not in committed:
            committed.append(self._committed)
        return True

    def _committed(self) -> None:
        """The recorder committed a group of commands (PostgreSQL's group commit) whose
        fold this thread ran: every command of the group is in the view now, also
        those of the threads that waited for the group (:meth:`folded` is true for
        them)."""
        folded = getattr(self._folded, "to", None)
        if folded is not None:
            layout, position = folded
            with self._known_lock:
                self._known[layout] = max(self._known.get(layout, 0), position)

    @contextmanager
    def deferred(self, defer: bool = True) -> Iterator[None]:
        """Within: the commands this thread records are not folded in their transaction
        but by the next catch-up (for a batch worker — the host agent's and the timer's
        pass — that does not read its own writes from the read models: one catch-up
        transaction folds a whole pass more cheaply than a fold in every command).
        ``defer=False`` inside it: folded in their transaction again (the pass's last
        outcome, which someone may be waiting for)."""
        previous = getattr(self._folded, "deferred", False)
        self._folded.deferred = defer
        counted = defer and not previous
        if counted:
            with self._deferring_lock:
                self._deferring += 1
        try:
            yield
        finally:
            self._folded.deferred = previous
            if counted:
                with self._deferring_lock:
                    self._deferring -= 1

    def deferring(self) -> bool:
        """Whether a thread of this process is in a deferring pass now: the commands it
        records before it ends are folded by it (its last outcome's fold, or its
        catch-up), so nobody else need catch up for them."""
        return self._deferring > 0

    def queue_fold(self, curs: Any, events: Sequence[Any],
                   absorbers: list[Callable[[BaseException], bool]]) -> None:
        """The first phase of :meth:`fold_written`, called by the recorder once the
        insert is queued in the write's first round trip (PostgreSQL): the fold's
        savepoint, its position (locked) and the documents of the events' servers are
        queued behind the insert, so that the fold waits for no read of its own. They
        need the servers' ids, not the notification ids the insert assigns. What tells
        whether the first trip's error is theirs goes to ``absorbers`` first (see
        :class:`_QueuedFold`); an error raised here is left to the recorder, which
        asks it."""
        self._folded.queued = None
        if getattr(self._folded, "deferred", False):
            return
        ids = list(dict.fromkeys(str(event.originator_id) for event in events))
        if len(ids) > _QUEUED_SERVERS:
            return
        queued = _QueuedFold(PipelineCursor(curs.connection))
        self._folded.queued = queued
        absorbers.append(queued.absorb)
        try:
            # outside psycopg's statement cache: a statement it counted and prepares
            # now is taken as prepared without checking the answer, and an insert
            # refused before it (a lost race) leaves its preparing undone
            execute_uncached(queued.cursor, SAVEPOINT)
            with self.view.pinned() as layout:
                queued.take = self.view.queue_position_and_rows(queued.cursor, ids)
                queued.layout = layout.name
                table = getattr(self.app.recorder, "events_table_name", None)
                if self._skipped and queued.take is not None and table is not None:
                    queued.log = self.view.queue_log_after_position(
                        queued.cursor, table, MISSED_LIMIT + 1 + len(events))
        except Exception as error:  # the fold raises it in its savepoint, if absorbed
            queued.error = error
            raise

    def fold_written(self, curs: Any, rows: list[Row]) -> str | None:
        """Called by the recorder inside an insert's transaction, after the events are
        written. The fold runs in a savepoint: if it fails, the command is still
        recorded (its events are the truth) and catch-up folds them later (raising the
        same error, loudly, there). Returns the layout it folded them into (None: not
        folded, deferred or failed). On PostgreSQL its savepoint and reads were queued
        in the write's first round trip (:meth:`queue_fold`)."""
        decoder = self._decoder
        if decoder is None:
            decoder = self._decoder = EventDecoder(self.app.mapper, self.view.wants)
        recorder = self.app.recorder
        self._folded.to = None
        queued: _QueuedFold | None = getattr(self._folded, "queued", None)
        self._folded.queued = None
        if getattr(self._folded, "deferred", False):
            self._skipped = True
            return None
        try:
            with self.view.pinned() as layout, \
                    (own_cursor(curs) if queued is None else queued.opened()) as mine, \
                    savepoint(mine, begun=queued is not None):
                take = None
                missed = partial(read_missed, recorder)
                if queued is not None:
                    if queued.error is not None:
                        raise queued.error
                    if queued.layout == layout.name:  # (else: switched meanwhile)
                        take = queued.take
                        if take is not None and queued.log is not None:
                            missed = partial(_missed_from, queued.log, missed)
                            take = partial(_with_their_documents, take, queued.log)
                if self.view.fold_written(mine, rows, decoder, missed, take):
                    self._skipped = False
                    self._folded.to = (layout.name, rows[-1][0])
                    with self._written_lock:
                        if self.written.get(layout.name, 0) < rows[-1][0]:
                            self.written[layout.name] = rows[-1][0]
                    return layout.name
        except Exception:
            log.exception("folding the command's events in its transaction failed; "
                          "catch-up will fold them")
        return None

    # --- what the updater reads -------------------------------------------------------
    def folded(self, layout: str, position: int) -> bool:
        """Whether ``layout`` has the log up to ``position`` without reading it: the
        last command this thread recorded was folded up to there in its transaction
        (committed, as its save returned), or a committed group's fold reached it."""
        return (getattr(self._folded, "to", None) == (layout, position)
                or position <= self._known.get(layout, 0))

    def forget_committed(self) -> None:
        """The view was emptied (a rebuild): what committed folds reached is gone."""
        with self._known_lock:
            self._known.clear()

    def written_beside(self, layout: str) -> int:
        """The furthest position this process's commands folded into a layout other
        than ``layout``."""
        with self._written_lock:
            return max((p for n, p in self.written.items() if n != layout), default=0)

    def written_into(self, layout: str) -> int:
        """The furthest position this process's commands folded into ``layout``."""
        with self._written_lock:
            return self.written.get(layout, 0)

    def forget_written(self, layout: str) -> None:
        """``layout``'s tables were dropped: no request reads it any more."""
        with self._written_lock:
            self.written.pop(layout, None)

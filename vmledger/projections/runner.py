"""Keeps read models up to date with the event log.

:class:`ViewUpdater` reads the notification log in large pages and folds each page into
the view in one transaction with its tracking position. The same loop serves catch-up
at start-up, live following (called after every local command, and by a poller for
events written by other processes) and a full rebuild.

Read-your-writes: the events this process writes are folded in their own transaction
(:class:`~vmledger.projections.command_fold.CommandFold`, which the updater owns and
:meth:`ViewUpdater.attach` hooks into the recorder), so the read models show a command
the moment it commits; :meth:`ViewUpdater.ensure` then only checks the position. Events
written by other processes arrive through the log: the next command folds the few it
finds before its own (in order, in its transaction), and catch-up or
:meth:`ViewUpdater.follow` folds the rest. The tracking position is the guard
everywhere: it is read locked in the transaction that folds, and a fold that does not
start where the position is writes nothing.

A rebuild (:meth:`ViewUpdater.rebuild`) is a catch-up from an emptied view in larger
transactions; what it does besides is in :mod:`vmledger.projections.rebuilding`.

Layout upgrades (:mod:`vmledger.projections.layouts`): :meth:`ViewUpdater.upgrade` folds
this release's layout beside the serving one and switches to it once caught up;
:meth:`ViewUpdater.request` pins one layout for a request, and
:meth:`ViewUpdater.refresh` follows a switch another process made.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

from eventsourcing.application import Application
from eventsourcing.persistence import (
    IntegrityError,
)

from vmledger.projections import layouts, rebuilding
from vmledger.projections.command_fold import CommandFold
from vmledger.projections.following import LogFollower
from vmledger.projections.log_reading import (
    EventDecoder,
    Pages,
    Row,
    lock_log,
    read_missed,
)
from vmledger.projections.servers import (
    RawPage,
    ServersView,
)
from vmledger.projections.store import Layout

log = logging.getLogger(__name__)

PAGE_SIZE = 1000
#: when the log is further ahead than a page, up to this many events (whole pages) are
#: folded in one transaction: one commit and one load and write of each touched row
#: instead of one per page
BATCH_EVENTS = 10_000
#: the same for a rebuild, where nobody waits for the view meanwhile
REBUILD_BATCH_EVENTS = 50_000

#: an upgrade folds the new layout in transactions of up to this many events: on SQLite
#: each holds the database's one write lock, which the commands of the serving processes
#: wait for meanwhile, so they are a live catch-up's (a few tenths of a second; smaller
#: ones load and write each row many more times: five times slower at 1,000); on
#: PostgreSQL the new layout's tables and position are nobody else's, so they are as
#: large as a rebuild's
UPGRADE_BATCH_EVENTS = {"sqlite": BATCH_EVENTS, "postgres": REBUILD_BATCH_EVENTS}
#: an upgrade switches to the new layout once it is this close to the log's head: the
#: switch folds the rest in a transaction that holds the log's write lock
SWITCH_LIMIT = 100
#: after a switch, the old layout's tables are dropped once no request of this process
#: reads them and this many seconds have passed (other processes notice the switch
#: within a second: :meth:`ViewUpdater.refresh`)
DROP_GRACE = 5.0
#: in the background of a serving process, an upgrade rests this many times as long as
#: each of its transactions took (the API's requests share the interpreter with it)
BACKGROUND_PACE = 1.0
#: how often a process checks which layout serves (on a request, and while following)
REFRESH_EVERY = 1.0


#: a rebuild on PostgreSQL reads up to this many pages ahead of the fold, in a thread
_PREFETCH_PAGES = 4


class _Stopped(Exception):
    """An upgrade asked to stop (the process is closing)."""


@dataclass(frozen=True)
class UpgradeReport:
    """What :meth:`ViewUpdater.upgrade` did."""

    layout: str
    #: events folded into the new layout
    folded: int
    #: seconds from the start to the switch (None: no switch made by this call)
    to_switch: float | None
    #: the layouts whose tables were dropped
    dropped: tuple[str, ...]


class ViewUpdater:
    """Keeps one view up to date with the log (see the module)."""

    def __init__(self, app: Application[Any], view: ServersView, *, page_size: int = PAGE_SIZE,
                 batch_events: int = BATCH_EVENTS) -> None:
        self.app = app
        self.view = view
        self.page_size = page_size
        self.batch_events = max(batch_events, page_size)
        self._lock = threading.Lock()
        #: this process's commands, folded in their transaction (once attached)
        self.command_fold = CommandFold(app, view)
        self._checked = time.monotonic()
        self._refreshing = threading.Lock()
        #: per layout: the furthest of the positions this process's commands folded
        #: into other layouts that it is known to have reached (a request after a
        #: switch reads the new layout only once it has what this process's commands
        #: folded into the old one meanwhile)
        self._settled: dict[str, int] = {}
        #: per layout: the furthest position a catch-up of this process folded to
        #: (with :attr:`CommandFold.written`: where this process itself left the view)
        self._reached: dict[str, int] = {}

    # --- this process's own events, in their transaction ------------------------------
    def attach(self, recorder: Any) -> bool:
        """Fold the events ``recorder`` writes in the transaction that writes them (see
        :meth:`CommandFold.attach`). Returns whether it does."""
        return self.command_fold.attach(recorder)

    def deferred(self, defer: bool = True) -> AbstractContextManager[None]:
        """Within: the commands this thread records are folded by the next catch-up,
        not in their transaction (see :meth:`CommandFold.deferred`)."""
        return self.command_fold.deferred(defer)

    def catch_up(self, progress: Callable[[int, int], None] | None = None,
                 batch_events: int | None = None, *, prefetch: bool = False,
                 cleared: Callable[[], None] | None = None) -> int:
        """Apply every event not yet in the view; return how many were read.

        The log is read in pages of ``page_size``; the pages read while catching up a
        backlog are folded together, up to ``batch_events`` events per transaction,
        each page still applied exactly once with its own tracking record. Each page is
        folded as soon as it is read. With ``prefetch`` (a rebuild), on PostgreSQL the
        next pages are read in a thread meanwhile
        (:class:`~vmledger.projections.log_reading.Pages`).

        ``cleared`` (a rebuild): the view's tables are being emptied in another thread;
        ``cleared()`` returns once that is committed (raising its error). The view is
        taken to start at 0, and the first transaction folds its pages before it opens
        (see :meth:`~vmledger.projections.servers.ServersView.apply_pages`).
        """
        read = 0
        limit = max(batch_events or self.batch_events, self.page_size)
        with self._lock, self.view.pinned():
            # (the position read before the clear commits would be the old one)
            start = 0 if cleared is not None else self.view.position()
            # originator ids converted once per catch-up, not once per event
            pages = Pages(self.app.recorder, self.page_size, start,
                           ahead=_PREFETCH_PAGES if prefetch else 0)
            decoder = EventDecoder(self.app.mapper, self.view.wants)
            try:
                while True:
                    first = pages.next()
                    if not first:
                        return read
                    folded: list[tuple[int, int]] = []  # (events, position) per page
                    at_end = [False]

                    def batch(first: list[Row] = first, folded: list[tuple[int, int]]
                              = folded, at_end: list[bool] = at_end) -> Iterator[RawPage]:
                        page, size = first, 0
                        while True:
                            size += len(page)
                            folded.append((len(page), page[-1][0]))
                            yield page, page[-1][0]
                            if len(page) < self.page_size:
                                at_end[0] = True  # the end of the log when it was read
                                return
                            if size >= limit:
                                return
                            page = pages.next()
                            if not page:
                                at_end[0] = True
                                return

                    try:
                        # read ahead: each page folded as it arrives; else read first
                        # (the pages as a list, as they always were)
                        ready, cleared = cleared, None  # the first transaction's
                        self.view.apply_pages(batch() if pages.ahead else list(batch()),
                                              decoder, after=start, cleared=ready)
                    except IntegrityError:
                        # another process applied a page first: continue from its position
                        start = self.view.position()
                        pages.seek(start)
                        continue
                    for events, position in folded:
                        read += events
                        if progress is not None:
                            progress(read, position)
                    layout = self.view.layout.name
                    if folded and self._reached.get(layout, 0) < folded[-1][1]:
                        self._reached[layout] = folded[-1][1]
                    if at_end[0]:
                        return read  # events written since are folded by the next call
                    start = folded[-1][1]
            finally:
                pages.close()

    def ensure(self, position: int | None, timeout: float = 10.0) -> None:
        """Return once the view reflects the log up to ``position`` (read-your-writes).

        Nothing to read when the caller's own command, the last this thread recorded,
        ended at ``position`` and was folded in its transaction (its save returned: that
        transaction committed)."""
        if time.monotonic() - self._checked >= REFRESH_EVERY:
            try:
                self.refresh()  # a switch made by another process
            except Exception:
                log.exception("checking which read-model layout serves failed")
        if position is None:
            return
        if self.command_fold.folded(self.view.layout.name, position):
            return
        deadline = time.monotonic() + timeout
        while self.view.position() < position:
            self.catch_up()
            if self.view.position() >= position:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the servers view did not reach position {position}")
            time.sleep(0.002)

    def follow(self, stop: threading.Event, on_change: Callable[[], None] | None = None,
               poll: float = 0.2, *, host: str | None = None) -> None:
        """Keep the view up to date until ``stop`` is set, waking the agent of ``host``
        with ``on_change`` when another process gave it work (see
        :class:`~vmledger.projections.following.LogFollower`)."""
        LogFollower(self, on_change, host).run(stop, poll)

    def own_position(self) -> int:
        """Where this process's own folds (its commands', its catch-ups') left the
        serving layout."""
        layout = self.view.layout.name
        return max(self.command_fold.written.get(layout, 0), self._reached.get(layout, 0))

    def rebuild(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Drop the view's rows and position, then fold the whole log again (in larger
        transactions than live catch-up: fewer loads and writes of each row; secondary
        indexes dropped meanwhile and built once at the end, except on PostgreSQL for a
        log of up to :data:`~vmledger.projections.rebuilding.KEEP_INDEXES_UP_TO`
        events). On PostgreSQL the tables are emptied in a thread while the first pages
        are read and folded (:func:`~vmledger.projections.rebuilding.emptied`)."""
        keep = rebuilding.keeps_indexes(self.view, self.app.recorder)
        try:
            with rebuilding.collector_paused(), self.view.pinned(), self.view.bulk(), \
                    rebuilding.emptied(self.view, partial(self._clear, keep),
                                       self._lock) as cleared:
                return self.catch_up(progress, batch_events=REBUILD_BATCH_EVENTS,
                                     prefetch=True, cleared=cleared)
        finally:
            self.view.restore_indexes(analyze=True)

    def _clear(self, keep_indexes: bool) -> None:
        self.view.clear(drop_indexes=not keep_indexes)
        self.command_fold.forget_committed()

    # --- layouts: the serving one, and upgrades beside it -----------------------------
    @contextmanager
    def request(self) -> Iterator[Layout]:
        """Around one API request: every read and fold in it goes to the layout serving
        when it starts (see :meth:`ServersView.pinned`), checked against the registry at
        most every :data:`REFRESH_EVERY` seconds."""
        try:
            self.refresh()
        except Exception:
            log.exception("checking which read-model layout serves failed")
        with self.view.pinned() as layout:
            written = self.command_fold.written
            if len(written) > 1 or (written and layout.name not in written):
                self._settle(layout)
            yield layout

    def _settle(self, layout: Layout) -> None:
        """Fold into ``layout`` (pinned) what this process's commands folded into
        another one, up to where they did (after a switch: the commands whose requests
        had pinned the old layout)."""
        behind = self.command_fold.written_beside(layout.name)
        if behind <= self._settled.get(layout.name, 0):
            return
        self._catch_up_to(behind)
        self._settled[layout.name] = max(self._settled.get(layout.name, 0), behind)

    def _catch_up_to(self, position: int, timeout: float = 10.0) -> None:
        """Catch the layout this thread reads up to at least ``position`` (written by
        a command of this process, committed or about to be), for ``timeout`` at most."""
        deadline = time.monotonic() + timeout
        while self.view.position() < position and time.monotonic() < deadline:
            self.catch_up()

    def refresh(self, every: float | None = None) -> bool:
        """Follow a switch made by another process (or thread): when another layout
        serves now, and this process was serving an older one while its own was folded,
        fold into the new one what this process has not folded yet, then read from it.
        Checks the registry at most every ``every`` seconds (default
        :data:`REFRESH_EVERY`). Returns whether the serving layout changed."""
        now = time.monotonic()
        if every is None:
            every = REFRESH_EVERY
        if now - self._checked < every or not self._refreshing.acquire(blocking=False):
            return False
        try:
            self._checked = now
            name = layouts.serving_name(self.view)
            if name is None or name == self.view.serving.name:
                return False
            if self.view.serving == self.view.target:
                # another release switched away from this release's layout: this process
                # keeps it (its own commands and follower keep folding it) until it is
                # restarted on that release, within the grace before the tables go
                return False
            new = Layout(name)
            ViewUpdater(self.app, self.view.at(new), page_size=self.page_size,
                        batch_events=self.batch_events).catch_up()
            log.info("the read models' layout %s serves (was %s)", name,
                     self.view.serving.name)
            self.view.serving = new
            return True
        finally:
            self._refreshing.release()

    def upgrade_needed(self) -> bool:
        """Whether this release's layout is still being folded, or an old one's tables
        wait to be dropped."""
        return layouts.upgrade_pending(self.view) or bool(layouts.retired(self.view))

    def upgrade(self, progress: Callable[[int, int], None] | None = None,
                stop: threading.Event | None = None,
                grace: float | None = None, drop: bool = True,
                pace: float = 0.0) -> UpgradeReport:
        """Fold this release's layout beside the serving one (from where an earlier,
        interrupted upgrade stopped), switch to it atomically once it has caught up with
        the log, then drop the old layout's tables (once no request of this process
        reads them and ``grace`` seconds have passed, :data:`DROP_GRACE` by default;
        not with ``drop`` false). With ``pace``, it rests after each transaction for
        that many times as long as the transaction took (in the background of a serving
        process: its requests get the interpreter and the database more often).
        Meanwhile the serving layout keeps answering and keeps being folded by commands
        and catch-up. Returns early, having switched nothing, when ``stop`` is set."""
        target = self.view.target
        started = time.perf_counter()
        folded = 0
        to_switch: float | None = None
        if layouts.upgrade_pending(self.view):
            beside = self.view.at(target)
            batch = UPGRADE_BATCH_EVENTS.get(self.view.dialect, BATCH_EVENTS)
            builder = ViewUpdater(self.app, beside, page_size=self.page_size,
                                  batch_events=batch)
            if beside.position() == 0:
                # a fresh fold: fill the tables without their secondary indexes, which
                # are built once at the end (as a rebuild does)
                beside.clear(drop_indexes=True)

            last = [time.perf_counter(), 0, 2**62]

            def step(read: int, position: int) -> None:
                if stop is not None and stop.is_set():
                    raise _Stopped
                if progress is not None:
                    progress(folded + read, position)
                page, last[1] = read - last[1], read
                if pace > 0 and page >= builder.page_size:  # not at the log's end
                    # rest only while gaining on the log: under a heavier load than a
                    # paced fold keeps up with, it goes at full speed
                    gap = (self.app.recorder.max_notification_id() or 0) - position
                    gaining, last[2] = gap < last[2], gap
                    if not gaining:
                        last[0] = time.perf_counter()
                        return
                    rest = (time.perf_counter() - last[0]) * pace
                    if stop is not None:
                        stop.wait(rest)
                    else:
                        time.sleep(rest)
                    last[0] = time.perf_counter()

            try:
                while layouts.serving_name(self.view) != target.name:
                    folded += builder.catch_up(step, prefetch=True)
                    head = self.app.recorder.max_notification_id() or 0
                    if head - beside.position() > SWITCH_LIMIT:
                        continue
                    for statement in beside.create_statements():
                        if statement.startswith("CREATE INDEX"):
                            # one at a time: on SQLite each holds the write lock
                            with beside.transaction() as curs:
                                curs.execute(statement)
                    # and what the read models keep beside their tables (the name
                    # grams' triggers and rows), which the fresh fold went without
                    beside.restore_extensions()
                    beside.analyze()
                    if self._switch(beside):
                        to_switch = time.perf_counter() - started
                        log.info("the read models' layout %s serves, folded beside %s "
                                 "in %.2f s", target.name, self.view.serving.name,
                                 to_switch)
                        break
            except _Stopped:
                return UpgradeReport(target.name, folded, None, ())
            self.refresh(every=0.0)
            self.view.serving = target
        dropped = self._drop_retired(DROP_GRACE if grace is None else grace,
                                     stop) if drop else ()
        return UpgradeReport(target.name, folded, to_switch, dropped)

    def _switch(self, beside: ServersView) -> bool:
        """In one transaction holding the log's write lock: fold the events the new
        layout lacks and make it the serving one. False when too many are left (more
        catch-up first)."""
        new = beside.layout
        decoder = EventDecoder(self.app.mapper, beside.wants)
        recorder = self.app.recorder
        with beside.transaction(commit=True) as curs:
            lock_log(recorder, curs)
            current = beside.locked_position(curs)
            rows = read_missed(recorder, curs, current, 2**62, most=SWITCH_LIMIT)
            if rows is None:
                return False
            if rows:
                beside.fold_pages(curs, [(rows, rows[-1][0])], decoder, empty=not current,
                             bulk=False)
            switched = layouts.switch(curs, self.view, new)
        return switched or layouts.serving_name(self.view) == new.name

    def _drop_retired(self, grace: float, stop: threading.Event | None) -> tuple[str, ...]:
        self.refresh(every=0.0)
        dropped: list[str] = []
        for old in layouts.retired(self.view):
            deadline = time.monotonic() + grace
            while (self.view.readers(old) or time.monotonic() < deadline):
                if stop is not None and stop.wait(0.05):
                    return tuple(dropped)
                if stop is None:
                    time.sleep(0.05)
            # what this process's commands folded into the old layout (those whose
            # requests pinned it across the switch) is in the serving one before the
            # record of it goes with the old tables: else a request after the drop
            # would not know to wait for it (:meth:`_settle`), and read it stale
            self._catch_up_to(self.command_fold.written_into(old.name))
            layouts.drop(self.view, old)
            self.command_fold.forget_written(old.name)
            log.info("dropped the tables of the read models' layout %s", old.name)
            dropped.append(old.name)
        return tuple(dropped)

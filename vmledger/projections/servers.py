"""The ``servers`` read model: one row per server, built from the event log.

Each row holds the server's document (every field the API and the agent need, as JSON)
plus indexed columns for the queries that must be fast: a project's servers, the work
queue of a host agent (servers with an action in flight), and open resize deadlines.

Rows are folded from events with the events' own ``apply`` methods, so the view can
never disagree with the aggregate about what an event means. A page of events is
written in one transaction together with the tracking position (exactly once); the
same code rebuilds the view from scratch.

Every statement goes to the tables of one layout (:attr:`ServersView.layout`: the read
models' table and index names take its suffix), so a new layout can be folded beside the
serving one (:mod:`vmledger.projections.layouts`).

The other read models are written in the same transaction (:class:`ViewExtension`, in
:mod:`vmledger.projections.extensions`). The view's SQLite and PostgreSQL classes are
:mod:`vmledger.projections.server_backends`; its reads
:mod:`vmledger.projections.server_queries`; the database they all share, and the form
documents are stored in, :mod:`vmledger.projections.store`.
"""

from __future__ import annotations

import copy
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from contextvars import ContextVar, Token
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError, Tracking
from eventsourcing.utils import resolve_topic

from vmledger.domain import lifecycle as lc
from vmledger.domain.server import Server
from vmledger.projections.extensions import ExtensionBatch as ExtensionBatch
from vmledger.projections.extensions import Follow
from vmledger.projections.extensions import ViewExtension as ViewExtension
from vmledger.projections.server_queries import ServerQueries
from vmledger.projections.store import (
    Layout,
    RowWriter,
    chunks,
    dumps,
    loads_stored,
    stored_ts,
)

#: the servers view's columns, in the order :func:`row_of` gives them
COLUMNS = ("id", "project_id", "host", "name", "vm_state", "task_state", "pending_action",
            "pending_request_id", "confirm_deadline", "created_at", "updated_at", "deleted",
            "version", "doc")


_INDEX_NAME = re.compile(r"CREATE INDEX IF NOT EXISTS (\w+) ON ")
#: the names a layout's statements define (its tables, indexes, triggers and trigger
#: functions): the names that take the layout's suffix
_DEFINED = re.compile(r"(?:CREATE (?:UNIQUE )?(?:TABLE|INDEX) IF NOT EXISTS|"
                      r"DROP INDEX IF EXISTS|CREATE TRIGGER(?: IF NOT EXISTS)?|"
                      r"CREATE OR REPLACE FUNCTION) (\w+)")

_TABLE_NAME = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+)")

#: the layout a request (or a fold) reads and writes throughout, whatever the view
#: switches to meanwhile: (the view, its layout)
_PINNED: ContextVar[tuple[Any, Layout] | None] = ContextVar("vmledger_layout", default=None)
#: whether this thread's (or task's) writing transactions are a bulk load (see
#: :meth:`ServersView.bulk`)
_BULK: ContextVar[bool] = ContextVar("vmledger_bulk", default=False)


def row_of(doc: dict[str, Any], base: dict[str, Any] | None = None) -> tuple[Any, ...]:
    """A server's row from its document (its times datetimes, or in stored form as
    :meth:`ServersView._load` leaves them); ``base``: the document as loaded, when it
    was (see :func:`~vmledger.projections.store.dumps`)."""
    pending = doc.get("pending") or {}
    return (doc["id"], doc.get("project_id"), doc.get("host"), doc.get("name"),
            doc.get("vm_state"), doc.get("task_state"), pending.get("action"),
            pending.get("request_id"), stored_ts(doc.get("confirm_deadline")),
            stored_ts(doc["created_at"]), stored_ts(doc["updated_at"]),
            1 if doc.get("vm_state") == lc.DELETED else 0, doc["version"], dumps(doc, base))


#: per set of columns: those an update compares with the row loaded (by index), and
#: the document's, always written
_COMPARED: dict[tuple[str, ...], tuple[tuple[int, ...], int]] = {}

#: per set of changed columns (by index in the columns, with those): the update of a
#: server's row
_UPDATES: dict[tuple[tuple[str, ...], tuple[int, ...]], str] = {}


#: a page of the log as read: its rows and the position of its last row
RawPage = tuple[Sequence[Any], int]
#: decodes a page's rows into the domain events the view wants
Decode = Callable[[Sequence[Any]], list[Any]]
#: the answers of reads queued earlier in a command's transaction
#: (:meth:`ServersView.queue_position_and_rows`), taken with the fold's cursor: the
#: position, locked, and the documents of the command's servers
PositionAndRows = Callable[[Any], tuple[int, dict[str, dict[str, Any] | None] | None]]
#: the answer of a read of the log after the position, queued earlier in a command's
#: transaction (:meth:`ServersView.queue_log_after_position`): the position it read
#: after, the rows, and the documents of their servers (by id; those in the view)
LogAfterPosition = Callable[[], tuple[int, list[Any], dict[str, dict[str, Any]]]]


class _LateCursor:
    """The cursor of a transaction opened after the fold (:meth:`ServersView._fold`'s
    ``begin``): the read models' batches are given it before, and use it only to
    write."""

    target: Any = None

    def __getattr__(self, name: str) -> Any:
        if self.target is None:
            raise AttributeError(f"{name}: the transaction is not open yet")
        return getattr(self.target, name)


#: per event class: whether it is a server's; the extensions (by index) its share goes
#: to; those whose ``server_folded`` it is passed to; those whose ``server_changed`` is
#: called before it (the first time in a fold for its server); and its ``apply``
Route = tuple[bool, tuple[int, ...], tuple[int, ...], tuple[int, ...], Any]


class _Plan:
    """What a view's extensions' batches implement (learnt from one batch of each), and
    the routes (:data:`Route`) of the event classes met so far."""

    def __init__(self, extensions: tuple[ViewExtension, ...], batches: Sequence[Any]
                 ) -> None:
        self.extensions = extensions
        #: those given the server events with their ids' text (``fold_servers``)
        self.keyed = frozenset(index for index, batch in enumerate(batches)
                               if hasattr(batch, "fold_servers"))
        #: those with a ``preload``
        self.preloads = tuple(index for index, batch in enumerate(batches)
                              if hasattr(batch, "preload"))
        #: those following the folded documents (``server_folded``), and the event
        #: classes that change nothing they read (``unchanged_by``)
        self.follows = tuple((index, tuple(getattr(batch, "unchanged_by", ())))
                             for index, batch in enumerate(batches)
                             if hasattr(batch, "server_folded"))
        #: the same for ``server_changed``
        self.changes = tuple((index, tuple(getattr(batch, "unchanged_by", ())))
                             for index, batch in enumerate(batches)
                             if hasattr(batch, "server_changed"))
        self.changing = frozenset(index for index, _ in self.changes)
        #: the extensions that may want their batch written whatever the fold
        #: (``write_always``, read at each fold)
        self.always = tuple(index for index, extension in enumerate(extensions)
                            if hasattr(extension, "write_always"))
        self.routes: dict[type, Route] = {}


class _Pin:
    """:meth:`ServersView.pinned` (a class: every command's fold and every request
    enters one, and a generator's context manager cost twice as much)."""

    __slots__ = ("layout", "token", "view")

    def __init__(self, view: ServersView) -> None:
        self.view = view
        self.token: Token[tuple[Any, Layout] | None] | None = None

    def __enter__(self) -> Layout:
        view = self.view
        pinned = _PINNED.get()
        if view._fixed is not None or (pinned is not None and pinned[0] is view):
            return view.layout
        layout = self.layout = view.serving
        with view._readers_lock:
            view._readers[layout.name] = view._readers.get(layout.name, 0) + 1
        self.token = _PINNED.set((view, layout))
        return layout

    def __exit__(self, *exc: object) -> None:
        if self.token is None:
            return
        _PINNED.reset(self.token)
        view = self.view
        with view._readers_lock:
            view._readers[self.layout.name] -= 1


class ServersView(ServerQueries):
    """The servers view and the read models written with it: their schema, and the
    fold of pages of the log (SQLite and PostgreSQL subclasses in
    :mod:`vmledger.projections.server_backends`; the reads are
    :class:`~vmledger.projections.server_queries.ServerQueries`)."""

    extensions: tuple[ViewExtension, ...] = ()
    #: the layout this process reads and folds (the serving version, as last seen; see
    #: :mod:`vmledger.projections.layouts`)
    serving: Layout
    #: this release's layout (the one its code defines)
    target: Layout
    #: a view of one layout only (:meth:`at`): the one an upgrade folds
    _fixed: Layout | None = None

    if TYPE_CHECKING:  # provided by the backend's tracking recorder
        def _insert_tracking(self, curs: Any, tracking: Tracking) -> None: ...

        def max_tracking_id(self, application_name: str) -> int | None: ...

        def create_table(self) -> None: ...

    def _init_layouts(self) -> None:
        self.target = self.serving = Layout.current()
        self._readers: dict[str, int] = {}
        self._readers_lock = threading.Lock()
        self._renames: dict[str, tuple[re.Pattern[str], dict[str, str]]] = {}
        #: the layouts whose tables this process emptied (:meth:`clear`) and has not
        #: folded into since
        self._cleared: set[str] = set()

    # --- layouts ------------------------------------------------------------------
    @property
    def layout(self) -> Layout:
        """The layout statements go to now: the view's own when it is fixed to one,
        else the one pinned for this request (:meth:`pinned`), else the serving one."""
        if self._fixed is not None:
            return self._fixed
        pinned = _PINNED.get()
        if pinned is not None and pinned[0] is self:
            return pinned[1]
        return self.serving

    def at(self, layout: Layout) -> ServersView:
        """This view fixed to ``layout`` (its tables and position), for folding a new
        version beside the serving one."""
        other = copy.copy(self)
        other._fixed = layout
        return other

    def pinned(self) -> AbstractContextManager[Layout]:
        """Within: this thread's (or task's) statements go to the layout serving on entry,
        even if the view switches meanwhile (a request never reads a mix of versions);
        the old version's tables are not dropped while it is pinned."""
        return _Pin(self)

    @contextmanager
    def bulk(self) -> Iterator[None]:
        """Within: this thread's (or task's) writing transactions are a bulk load (a
        rebuild): on SQLite, the rows they delete or replace are not overwritten with
        zeros first (``secure_delete``, which Debian's SQLite turns on: it doubles what
        a rebuild writes, and the read models hold nothing the log does not keep)."""
        token = _BULK.set(True)
        try:
            yield
        finally:
            _BULK.reset(token)

    def readers(self, layout: Layout) -> int:
        """How many requests (or folds) of this process have ``layout`` pinned."""
        with self._readers_lock:
            return self._readers.get(layout.name, 0)

    def defined_names(self) -> list[str]:
        """The tables and indexes the layout's statements define (every read model's):
        the names a layout's suffix is added to."""
        return self._found_in_statements(_DEFINED)

    def defined_tables(self) -> list[str]:
        """The tables among :meth:`defined_names`."""
        return self._found_in_statements(_TABLE_NAME)

    def _found_in_statements(self, pattern: re.Pattern[str]) -> list[str]:
        # the statements of this backend's dialect (an extension may define other
        # tables on each: the name grams' offsets are SQLite's alone), unsuffixed
        def unsuffixed(text: str) -> str:
            return text.replace("{t}", self.table).replace("?", self.placeholder)

        names = []
        for statement in self.layout_statements(unsuffixed):
            names.extend(pattern.findall(statement))
        return list(dict.fromkeys(names))

    def sql(self, text: str) -> str:
        suffix = self.layout.suffix
        if suffix:
            text = self._rename(text, suffix)
        return text.replace("?", self.placeholder)

    def _rename(self, text: str, suffix: str) -> str:
        found = self._renames.get(suffix)
        if found is None:
            names = sorted(self.defined_names(), key=len, reverse=True)
            pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
            found = self._renames[suffix] = (pattern, {})
        pattern, done = found
        renamed = done.get(text)
        if renamed is None:
            if len(done) > 4096:  # statements with IN lists of many lengths: bounded
                done.clear()
            renamed = done[text] = pattern.sub(lambda m: m.group(1) + suffix, text)
        return renamed

    def _sql(self, text: str) -> str:
        return self.sql(text.replace("{t}", self.table))

    def wants(self, topic: str) -> bool:
        """Whether a page's events of this topic must be decoded: server events, and the
        event types the extensions declare (``event_types``); everything as soon as one
        extension declares none. Others (idempotency records...) are skipped unread."""
        cache: dict[str, bool] | None = self.__dict__.get("_wanted")
        if cache is None:
            cache = self.__dict__["_wanted"] = {}
        found = cache.get(topic)
        if found is None:
            types: list[type] = [Server.Event]
            for extension in self.extensions:
                declared = getattr(extension, "event_types", None)
                if declared is None:
                    types = [object]
                    break
                types.extend(declared)
            try:
                cls = resolve_topic(topic)
            except Exception:  # unknown topic: decoding raises the library's error
                found = True
            else:  # not a class: decoding raises the library's error too
                found = not isinstance(cls, type) or issubclass(cls, tuple(types))
            cache[topic] = found
        return found

    def create_statements(self) -> list[str]:
        """The statements that create the tables and indexes of the view's layout."""
        return self.layout_statements(self._sql)

    def layout_statements(self, sql: Callable[[str], str]) -> list[str]:
        own = [sql(
            "CREATE TABLE IF NOT EXISTS {t} (id TEXT PRIMARY KEY, project_id TEXT, host TEXT,"
            " name TEXT, vm_state TEXT, task_state TEXT, pending_action TEXT,"
            " pending_request_id TEXT, confirm_deadline TEXT, created_at TEXT,"
            " updated_at TEXT, deleted INTEGER, version INTEGER, doc TEXT)"),
            # list pages: index-only scans in the view's order (newest first), per project
            # and across projects, the name included so that a name pattern's scan
            # reads no table row; they replace the older (project_id, created_at) and
            # name-less page indexes
            sql("DROP INDEX IF EXISTS {t}_project"),
            sql("DROP INDEX IF EXISTS {t}_page"),
            sql("DROP INDEX IF EXISTS {t}_all_page"),
            sql("CREATE INDEX IF NOT EXISTS {t}_list ON {t}"
                      " (project_id, deleted, created_at, id, version, name)"),
            sql("CREATE INDEX IF NOT EXISTS {t}_all_list ON {t}"
                      " (deleted, created_at, id, version, name)"),
            # a host's actions in flight, and its idle servers by id (the power-state
            # sync's batches); replaces {t}_pending (host, pending_action)
            sql("DROP INDEX IF EXISTS {t}_pending"),
            sql("CREATE INDEX IF NOT EXISTS {t}_host_pending ON {t}"
                      " (host, pending_action, deleted, id)"),
            sql("CREATE INDEX IF NOT EXISTS {t}_deadline ON {t} (confirm_deadline)"),
            # the timer's idle shelved and soft-deleted servers (replaces {t}_shelved)
            sql("DROP INDEX IF EXISTS {t}_shelved"),
            sql("CREATE INDEX IF NOT EXISTS {t}_state_age ON {t} (vm_state, updated_at)"),
            # os-hypervisors' current workload: a host's servers building or busy
            sql("CREATE INDEX IF NOT EXISTS {t}_host_state ON {t}"
                      " (host, vm_state, task_state)"),
            # the name filter's literal prefix (in code point order, see
            # server_filters.pattern_conditions)
            sql("CREATE INDEX IF NOT EXISTS {t}_name ON {t} ("
                      + ('name COLLATE "C"' if self.dialect == "postgres" else "name") + ")"),
        ]
        for extension in self.extensions:
            own.extend(extension.create_statements(sql))
        return own

    # --- writing ------------------------------------------------------------------
    def position(self) -> int:
        return self.max_tracking_id(self.layout.name) or 0

    def apply_pages(self, pages: Iterable[RawPage], decode: Decode, *,
                    after: int | None = None,
                    cleared: Callable[[], None] | None = None) -> int:
        """Fold consecutive pages of the log in one transaction, with a tracking record
        per page, loading and writing each row once for all of them. Each page is
        decoded and folded in turn (its events are not kept).

        ``after``: where the caller read the pages from. The position is read again in
        the transaction (locked): when another writer (a catch-up of another process,
        or a command folding its own events) moved it meanwhile, ``IntegrityError`` is
        raised and nothing is written, so no event is ever folded twice.

        ``cleared`` (a rebuild's first transaction, ``after`` 0): the caller is emptying
        the tables in another thread, and ``cleared()`` returns once that committed
        (raising its error). The pages are folded first, with nothing to load, and the
        transaction opens only for the writes, after ``cleared()``: the clear's server
        time overlaps the fold. The position is checked in it all the same.

        Returns the number of server rows written.
        """
        if cleared is not None:
            return self._apply_cleared(pages, decode, after or 0, cleared)
        # nothing but what the log can give again: the commit need not wait for the disk
        with self.transaction(commit=True, flushed=False) as curs:
            current = self._locked_position(curs)
            if after is not None and current != after:
                raise IntegrityError(f"the read models are at {current}, not {after}")
            return self._fold(curs, pages, decode, empty=not current, bulk=True)

    def _apply_cleared(self, pages: Iterable[RawPage], decode: Decode, after: int,
                       cleared: Callable[[], None]) -> int:
        """:meth:`apply_pages` into tables being emptied (see its ``cleared``)."""
        if after:
            raise ValueError("pages folded before the transaction start the view")
        late = _LateCursor()
        with ExitStack() as stack:
            def begin() -> Any:
                cleared()
                curs = stack.enter_context(self.transaction(commit=True, flushed=False))
                current = self._locked_position(curs)
                if current != after:
                    raise IntegrityError(f"the read models are at {current}, not {after}")
                late.target = curs
                # emptied by this process, nothing written since (the position is 0)
                self._cleared.discard(self.layout.name)
                return curs

            return self._fold(late, pages, decode, empty=True, bulk=True, begin=begin)

    def fold_written(self, curs: Any, rows: Sequence[Any], decode: Decode,
                     missed: Callable[[Any, int, int], Sequence[Any] | None],
                     queued: PositionAndRows | None = None) -> bool:
        """Fold the rows a command is writing, inside its own transaction (``curs``),
        with the tracking position, so the read models show the command when it commits.

        The events between the position and the first new row (written by other
        processes, not yet followed here) are folded first, in order: ``missed(curs,
        position, first)`` reads them from the log in this transaction (which holds the
        log's write lock), or returns None when there are too many for a command to
        carry: then nothing is folded here (the caller's catch-up does it, as before).
        ``queued``: the position and documents, read already (queued in the write's
        first round trip: :meth:`queue_position_and_rows`). Returns whether the rows
        were folded.
        """
        if not rows:
            return False
        current, read = (self._position_and_rows(curs, rows) if queued is None
                         else queued(curs))
        first = rows[0][0]
        if current >= first:
            return False  # cannot happen while the log is append-only: leave it to catch-up
        if current < first - 1:
            before = missed(curs, current, first)
            if before is None:
                return False
            rows = [*before, *rows]
        self._fold(curs, [(rows, rows[-1][0])], decode, empty=not current, bulk=False,
                   read=read, held=True)
        return True

    def _advance_position(self, curs: Any, tracking: Tracking) -> None:
        """Move the position this transaction holds locked (and found before
        ``tracking``) to ``tracking``."""
        self._insert_tracking(curs, tracking)

    def _position_and_rows(self, curs: Any, rows: Sequence[Any]
                           ) -> tuple[int, dict[str, dict[str, Any] | None] | None]:
        """The position, locked, and (per backend: PostgreSQL reads them in the same
        round trip) the documents of the servers ``rows`` are about, None for a server
        with no row yet; or None when they were not read."""
        return self._locked_position(curs), None

    def queue_position_and_rows(self, curs: Any, ids: Sequence[str]
                                ) -> PositionAndRows | None:
        """Queue the reads of :meth:`_position_and_rows` for the servers ``ids`` on
        ``curs``'s connection without waiting for them (PostgreSQL: in the write's
        pipeline); returns what takes their answers, or None where a backend does not
        queue them."""
        return None

    def queue_log_after_position(self, curs: Any, events_table: str, limit: int
                                 ) -> LogAfterPosition | None:
        """Queue the read of up to ``limit`` rows of the log (``events_table``) after
        the position, and of their servers' documents, in a command's transaction that
        holds the log's write lock (PostgreSQL: in the write's pipeline, behind the
        position's lock); returns what takes the answer, or None where a backend does
        not queue it."""
        return None

    def locked_position(self, curs: Any) -> int:
        """The position, read in ``curs``'s transaction and held until it ends (see
        :meth:`_locked_position`)."""
        return self._locked_position(curs)

    def fold_pages(self, curs: Any, pages: Sequence[RawPage], decode: Decode, *,
                   empty: bool, bulk: bool) -> int:
        """Fold ``pages`` in ``curs``'s transaction, with their tracking records."""
        return self._fold(curs, pages, decode, empty=empty, bulk=bulk)

    def delete_tracking(self, curs: Any) -> None:
        """Forget the layout's position (its tracking records), in ``curs``'s
        transaction."""
        self._delete_tracking(curs)

    def _locked_position(self, curs: Any) -> int:
        """The position, read in the transaction of ``curs`` so that no other writer can
        move it before the transaction ends (SQLite: the transaction holds the write
        lock; PostgreSQL: the tracking row is locked)."""
        curs.execute(self._position_sql(), [self.layout.name])
        row = curs.fetchone()
        value = None if row is None else (row["n"] if isinstance(row, dict) else row[0])
        return int(value or 0)

    def _fold(self, curs: Any, pages: Iterable[RawPage], decode: Decode, *, empty: bool,
              bulk: bool, read: dict[str, dict[str, Any] | None] | None = None,
              held: bool = False, begin: Callable[[], Any] | None = None) -> int:
        """``read``: documents already read in this transaction (by id; None: no row).
        ``held``: the position was read locked in this transaction, and is before the
        pages (the tracking record's write cannot be refused). ``begin``: the
        transaction opens only once the pages are folded (an empty view, nothing to
        load: :meth:`_apply_cleared`): ``begin()`` opens it, binds ``curs`` (a
        :class:`_LateCursor`) to it and returns its cursor.

        An extension's batch is made only when something goes to it (a share of the
        events, a server folded or changed it follows, a preload) or its extension asks
        for a write regardless (``write_always``), and only the batches made are
        written: a command's fold of one event (a lock) makes two or three of them, not
        one per read model."""
        name = self.layout.name
        names: dict[Any, str] = {}  # originator id -> its text (str() of a UUID is slow)
        # tables this process emptied (:meth:`clear`), nothing folded into them since:
        # the position, read locked, is still 0 (with ``begin``: checked by it)
        fresh = empty and bulk and (begin is not None or name in self._cleared)
        if begin is None:
            self._cleared.discard(name)
        writer = RowWriter(curs, self._sql, self.dialect, bulk=bulk, fresh=fresh)
        extensions = self.extensions
        batches: list[Any] = [None] * len(extensions)

        def batch_of(index: int) -> Any:
            made = batches[index] = extensions[index].batch(writer, empty=empty)
            return made

        plan = self._plan(batch_of)
        for index in plan.always:
            if batches[index] is None and getattr(extensions[index], "write_always", False):
                batch_of(index)
        docs: dict[str, dict[str, Any] | None] = {}
        # each server's document is folded in place: the same result as ``fold`` (a
        # fresh namespace per event) without copying the document for every event (an
        # event's ``apply`` assigns the document's keys, and changes no value in place:
        # :func:`row_of` relies on it, and the read models given the document only read
        # it)
        targets: dict[str, SimpleNamespace] = {}
        # per server: the extensions whose ``server_changed`` it was not given to yet
        told: dict[str, set[int]] = {}
        # SQLite, the view not empty: the rows loaded, so that each is updated in the
        # columns that changed alone (see :meth:`_write_rows`)
        stored: dict[str, Any] | None = (
            {} if not empty and self.dialect == "sqlite" else None)
        # the documents :meth:`_load` read (in stored form), by id, for :func:`row_of`
        bases: dict[str, dict[str, Any]] | None = None if stored is None else {}
        routes = plan.routes
        # per event class met in this fold: its route with the bound methods of this
        # fold's batches it calls (those batches made as the class is first met)
        local: dict[type, tuple[bool, tuple[int, ...], tuple[Follow, ...],
                                tuple[tuple[int, Callable[[str, dict[str, Any]], None]], ...],
                                Any]] = {}

        def route_of(cls: type) -> Any:
            found = routes.get(cls) or self._route(cls, plan)
            follows, changes = found[2], found[3]
            made = local[cls] = (
                found[0], found[1],
                tuple([(batches[i] or batch_of(i)).server_folded for i in follows])
                if follows else (),
                tuple([(i, (batches[i] or batch_of(i)).server_changed) for i in changes])
                if changes else (),
                found[4])
            return made

        positions: list[int] = []
        for rows, position in pages:
            positions.append(position)
            events = decode(rows)
            folded: list[tuple[str, Any]] = []
            shares: dict[int, list[Any]] = {}  # by extension, those it has any of
            for event in events:
                cls = type(event)
                try:  # (a subscript: cheaper than ``get`` for a key nearly always there)
                    route = local[cls]
                except KeyError:
                    route = route_of(cls)
                if route[1]:  # (an empty tuple's loop still makes an iterator)
                    for index in route[1]:
                        try:
                            shares[index].append(event)
                        except KeyError:
                            shares[index] = [event]
                if route[0]:
                    oid = event.originator_id
                    ikey = oid.int if type(oid) is UUID else oid  # see ActionsBatch
                    try:
                        key = names[ikey]
                    except KeyError:
                        key = names[ikey] = str(oid)
                    folded.append((key, event))
            if not empty:  # an empty view has no rows to load: ``docs`` stays empty
                unknown = [key for key in dict.fromkeys(key for key, _ in folded)
                           if key not in docs]
                if unknown:
                    rest = unknown if read is None else [k for k in unknown if k not in read]
                    loaded = self._load(curs, rest, stored) if rest else {}
                    if bases is not None:
                        bases.update(loaded)
                    if read is not None:
                        loaded.update((k, d) for k, d in read.items() if d is not None)
                    for key in unknown:
                        docs[key] = loaded.get(key)
                    for index in plan.preloads:
                        (batches[index] or batch_of(index)).preload(unknown)
            for key, event in folded:
                target = targets.get(key)
                version = event.originator_version
                if target is None:
                    current = docs.get(key)
                    if current is not None and current["version"] >= version:
                        continue  # already folded (a rebuild overlapping a live update)
                    target = targets[key] = SimpleNamespace(**(current or {}))
                    result = target.__dict__
                    if "created_at" not in result:  # its first event
                        result["created_at"] = event.timestamp
                elif target.version >= version:
                    continue
                else:
                    result = target.__dict__
                route = local[type(event)]
                if route[3]:  # read models told of the server before this event
                    untold = told.get(key)
                    if untold is None:
                        untold = told[key] = set(plan.changing)
                    if untold:
                        for index, change in route[3]:
                            if index in untold:
                                untold.discard(index)
                                change(key, result)
                # the class's own ``apply``, found once per class: ``event.apply`` is
                # looked up the slow way at a site that sees events of many classes
                route[4](event, target)
                result["id"] = key
                result["version"] = version
                result["updated_at"] = event.timestamp
                if route[2]:
                    for follow in route[2]:
                        follow(key, result, event)
            if folded:
                for index in plan.keyed:
                    (batches[index] or batch_of(index)).fold_servers(folded)
            for index in sorted(shares):  # (in the extensions' order, as they were)
                (batches[index] or batch_of(index)).fold(shares[index])
        changed = [target.__dict__ for target in targets.values()]
        if begin is not None:
            curs = begin()
        if stored is None:
            writer.upsert(self.table, COLUMNS, "id", [row_of(d) for d in changed])
        else:
            self._write_rows(curs, targets, stored, bases or {})
        for batch in batches:
            if batch is not None:
                batch.write()
        for position in positions:
            if held:
                self._advance_position(curs, Tracking(name, position))
            else:
                self._insert_tracking(curs, Tracking(name, position))
        return len(changed)

    def _write_rows(self, curs: Any, targets: dict[str, SimpleNamespace],
                    stored: dict[str, Any], bases: dict[str, dict[str, Any]]) -> None:
        """Write the changed servers' rows: a server new to the view inserted (or
        replaced), one already there (its row as ``stored``, read by :meth:`_load`)
        updated in the columns that changed alone, its document always, so that
        SQLite rewrites the entries of the indexes on those alone (each index entry
        assigned is rewritten, changed or not: pages more to write and flush)."""
        fresh: list[tuple[Any, ...]] = []
        columns = COLUMNS
        found = _COMPARED.get(columns)
        if found is None:
            found = _COMPARED[columns] = (tuple(
                i for i, column in enumerate(columns) if column not in ("id", "doc")),
                columns.index("doc"))
        compared, document = found
        for key, target in targets.items():
            row = row_of(target.__dict__, bases.get(key))
            before = stored.get(key)
            if before is None:
                fresh.append(row)
                continue
            assigned = (*[i for i in compared if before[i] != row[i]], document)
            statement = _UPDATES.get((columns, assigned))
            if statement is None:
                statement = _UPDATES[(columns, assigned)] = (
                    "UPDATE {t} SET " + ", ".join(f"{columns[i]} = ?" for i in assigned)
                    + " WHERE id = ?")
            curs.execute(self._sql(statement), [*(row[i] for i in assigned), row[0]])
        RowWriter(curs, self._sql, self.dialect, bulk=False).upsert(
            self.table, columns, "id", fresh)

    def _plan(self, batch_of: Callable[[int], Any]) -> _Plan:
        """What the extensions' batches implement, and the routes of the event classes
        met: worked out once per view (by its first fold, which makes every batch to
        learn it, through ``batch_of``), so that a fold makes only the batches it needs
        and dispatches a page in one pass instead of each extension sifting every
        event."""
        plan: _Plan | None = self.__dict__.get("_event_routes")
        if plan is None or plan.extensions is not self.extensions:
            plan = self.__dict__["_event_routes"] = _Plan(
                self.extensions, [batch_of(index) for index in range(len(self.extensions))])
        return plan

    def _route(self, cls: type, plan: _Plan) -> Route:
        """An event class's route (see :data:`Route`), kept in ``plan``."""
        server = issubclass(cls, Server.Event)
        takers = []
        for index, extension in enumerate(self.extensions):
            if server and index in plan.keyed:
                continue  # given the server events with their ids (``fold_servers``)
            declared = getattr(extension, "event_types", None)
            if declared is None or issubclass(cls, tuple(declared)):
                takers.append(index)
        route = (server, tuple(takers),
                 tuple(index for index, unchanged in plan.follows
                       if server and not issubclass(cls, unchanged)),
                 tuple(index for index, unchanged in plan.changes
                       if server and not issubclass(cls, unchanged)),
                 getattr(cls, "apply", None))
        plan.routes[cls] = route
        return route

    def _position_sql(self) -> Any:  # pragma: no cover - per backend
        raise NotImplementedError

    def _load(self, curs: Any, ids: list[str], stored: dict[str, Any] | None = None
              ) -> dict[str, dict[str, Any]]:
        """The documents of these servers (those in the view), in stored form: their
        times stay ``{"$dt": ...}`` (no event's ``apply`` reads a time, and the fold
        writes those it leaves as they were, without parsing and formatting them
        again); with ``stored``, their rows go there too, by id."""
        found: dict[str, dict[str, Any]] = {}
        what = "id, doc" if stored is None else ", ".join(COLUMNS)  # in row_of's order
        for chunk in chunks(ids, 500):
            marks = ",".join("?" for _ in chunk)
            curs.execute(self._sql(f"SELECT {what} FROM {{t}} WHERE id IN ({marks})"),
                         chunk)
            for row in curs.fetchall():
                found[row["id"]] = loads_stored(row["doc"])
                if stored is not None:
                    stored[row["id"]] = row
        return found

    def clear(self, *, drop_indexes: bool = False) -> None:
        """Forget every row and the position (before a rebuild); with ``drop_indexes``
        the secondary indexes go too (filling tables without them and indexing once at
        the end is cheaper: :meth:`restore_indexes`, which opening the view also does)."""
        with self.transaction(commit=True) as curs:
            self._empty_tables(curs)
            curs.execute(self._sql("DELETE FROM {t}"))
            for extension in self.extensions:
                extension.clear(curs, self._sql)
            self.delete_tracking(curs)
            if drop_indexes:
                for name in self._index_names():
                    curs.execute(f"DROP INDEX IF EXISTS {name}")
        self._cleared.add(self.layout.name)

    def _empty_tables(self, curs: Any) -> None:
        """Before :meth:`clear` deletes the rows: nothing here (see the PostgreSQL
        view)."""

    def restore_indexes(self, *, analyze: bool = False) -> None:
        """Create the secondary indexes that are missing (and what extensions keep
        beside them: :meth:`restore_extensions`); with ``analyze``, then
        :meth:`analyze` the tables in the same transaction (one commit less)."""
        with self.transaction(commit=True) as curs:
            for statement in self.create_statements():
                if statement.startswith("CREATE INDEX"):
                    curs.execute(statement)
            self._restore_extensions(curs)
            if analyze:
                self._analyze(curs)

    def restore_extensions(self) -> None:
        """What extensions keep beside the tables (their optional ``restore(curs,
        sql)``: the name grams' triggers and rows), after a fold that went without them
        (:meth:`clear` with ``drop_indexes``), in one transaction."""
        with self.transaction(commit=True) as curs:
            self._restore_extensions(curs)

    def analyze(self) -> None:
        """Give PostgreSQL's planner the statistics of tables just filled at once (a
        rebuild, a layout folded beside): until autovacuum's analyze comes round, it
        takes them for nearly empty and may plan a name filter's gram scan or a
        prefix's range through the page index, reading every server (measured: 15 ms
        where 1 ms was expected at 10,000 servers, growing with the fleet). SQLite's
        plans here are held by hints (``CROSS JOIN``, ``INDEXED BY``): nothing to do."""
        if self.dialect != "postgres":
            return
        with self.transaction(commit=True) as curs:
            self._analyze(curs)

    def _analyze(self, curs: Any) -> None:
        if self.dialect == "postgres":  # every table in one statement (one round trip)
            curs.execute(self._sql(f"ANALYZE {', '.join(self.defined_tables())}"))

    def _restore_extensions(self, curs: Any) -> None:
        for extension in self.extensions:
            restore = getattr(extension, "restore", None)
            if restore is not None:
                restore(curs, self._sql)

    def _index_names(self) -> list[str]:
        names = []
        for statement in self.create_statements():
            match = _INDEX_NAME.match(statement)
            if match is not None:
                names.append(match.group(1))
        return names

    def _delete_tracking(self, curs: Any) -> None:  # pragma: no cover - per backend
        raise NotImplementedError

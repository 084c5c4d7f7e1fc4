"""The ``servers`` read model: one row per server, built from the event log.

Each row holds the server's document (every field the API and the agent need, as JSON)
plus indexed columns for the queries that must be fast: a project's servers, the work
queue of a host agent (servers with an action in flight), and open resize deadlines.

This module is the view itself: its tables, its layouts (every statement goes to the
tables of one layout, :attr:`ServersView.layout`: the read models' table and index names
take its suffix, so a new layout can be folded beside the serving one,
:mod:`vmledger.projections.layouts`) and the pinning of one per request, its tracking
position, clearing and indexing it, and the entry points that fold pages of the log
into it (:meth:`ServersView.apply_pages`, :meth:`ServersView.fold_written`,
:meth:`ServersView.fold_pages`). A page of events is written in one transaction together
with the tracking position (exactly once); the same code rebuilds the view from scratch.

How the events are folded into the rows and the other read models is
:mod:`vmledger.projections.folding`. The other read models are written in the same
transaction (:class:`ViewExtension`, in :mod:`vmledger.projections.extensions`). The
view's SQLite and PostgreSQL classes are :mod:`vmledger.projections.server_backends`;
its reads :mod:`vmledger.projections.server_queries`; the database they all share, and
the form documents are stored in, :mod:`vmledger.projections.store`.
"""

from __future__ import annotations

import copy
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any

from eventsourcing.persistence import IntegrityError, Tracking
from eventsourcing.utils import resolve_topic

from vmledger.domain.server import Server
from vmledger.projections import folding
from vmledger.projections.extensions import ExtensionBatch as ExtensionBatch
from vmledger.projections.extensions import ViewExtension as ViewExtension
from vmledger.projections.folding import Decode as Decode
from vmledger.projections.folding import RawPage as RawPage
from vmledger.projections.server_queries import ServerQueries
from vmledger.projections.store import Layout

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


#: the answers of reads queued earlier in a command's transaction
#: (:meth:`ServersView.queue_position_and_rows`), taken with the fold's cursor: the
#: position, locked, and the documents of the command's servers
PositionAndRows = Callable[[Any], tuple[int, dict[str, dict[str, Any] | None] | None]]
#: the answer of a read of the log after the position, queued earlier in a command's
#: transaction (:meth:`ServersView.queue_log_after_position`): the position it read
#: after, the rows, and the documents of their servers (by id; those in the view)
LogAfterPosition = Callable[[], tuple[int, list[Any], dict[str, dict[str, Any]]]]


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
    """The servers view and the read models written with it: their schema, layouts and
    position, and the transactions pages of the log are folded in (the fold itself is
    :func:`vmledger.projections.folding.fold`; SQLite and PostgreSQL subclasses in
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
    #: told the version each fold brought servers to, and what the other processes'
    #: notifications say they wrote, by id (None: anything may have been written), the
    #: aggregate cache's :meth:`~vmledger.domain.service.StoreRepository.notice`; None:
    #: nobody listens
    noticed: Callable[[dict[str, int] | None], None] | None = None

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
        # the table's columns are those the fold writes (folding.COLUMNS, in its order)
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
            return folding.fold_into_cleared(self, pages, decode, after or 0, cleared)
        # nothing but what the log can give again: the commit need not wait for the disk
        with self.transaction(commit=True, flushed=False) as curs:
            current = self._locked_position(curs)
            if after is not None and current != after:
                raise IntegrityError(f"the read models are at {current}, not {after}")
            return folding.fold(self, curs, pages, decode, empty=not current, bulk=True)

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
        folding.fold(self, curs, [(rows, rows[-1][0])], decode, empty=not current,
                     bulk=False, read=read, held=True)
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
        return folding.fold(self, curs, pages, decode, empty=empty, bulk=bulk)

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

    def _position_sql(self) -> Any:  # pragma: no cover - per backend
        raise NotImplementedError

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

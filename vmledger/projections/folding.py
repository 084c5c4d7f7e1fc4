"""The fold: how consecutive pages of the log are folded into the servers view and the
read models written with it, in one transaction, with the tracking position.

Each server's document is folded with the events' own ``apply`` methods, so the view can
never disagree with the aggregate about what an event means; its row (:func:`row_of`) is
loaded once and written once per transaction, however many events it had. The other read
models get the events through their batches (:class:`ExtensionBatch`), each event class
routed once per view to those that take it (:data:`Route`). The same code folds a
command's own events inside its transaction, a catch-up's pages, and a rebuild.

The view folded into (its tables, layouts and position, and the entry points that open
the transaction and call :func:`fold`) is :mod:`vmledger.projections.servers`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError, Tracking

from vmledger.domain import lifecycle as lc
from vmledger.domain.server import Server
from vmledger.projections.extensions import ExtensionBatch, Follow, ViewExtension
from vmledger.projections.store import RowWriter, chunks, dumps, loads_stored, stored_ts

if TYPE_CHECKING:
    from vmledger.projections.servers import ServersView

#: the servers view's columns, in the order :func:`row_of` gives them (those of its
#: table, :meth:`~vmledger.projections.servers.ServersView.layout_statements`)
COLUMNS = ("id", "project_id", "host", "name", "vm_state", "task_state", "pending_action",
           "pending_request_id", "confirm_deadline", "created_at", "updated_at", "deleted",
           "version", "doc")

#: a page of the log as read: its rows and the position of its last row
RawPage = tuple[Sequence[Any], int]
#: decodes a page's rows into the domain events the view wants
Decode = Callable[[Sequence[Any]], list[Any]]


def row_of(doc: dict[str, Any], base: dict[str, Any] | None = None) -> tuple[Any, ...]:
    """A server's row from its document (its times datetimes, or in stored form as
    :func:`load_documents` leaves them); ``base``: the document as loaded, when it
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


class _LateCursor:
    """The cursor of a transaction opened after the fold (:func:`fold`'s ``begin``):
    the read models' batches are given it before, and use it only to write."""

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

    def __init__(self, extensions: tuple[ViewExtension, ...],
                 batches: Sequence[ExtensionBatch]) -> None:
        self.extensions = extensions
        #: those given the server events with their ids' text (``fold_servers``)
        self.keyed = frozenset(index for index, batch in enumerate(batches)
                               if hasattr(batch, "fold_servers"))
        #: those with a ``preload``
        self.preloads = tuple(index for index, batch in enumerate(batches)
                              if hasattr(batch, "preload"))
        #: those of them whose ``preload`` has work in a fold that is not a bulk load (a
        #: command's own): the others are not made for it there (``preload_bulk_only``)
        self.command_preloads = tuple(
            index for index in self.preloads
            if not getattr(batches[index], "preload_bulk_only", False))
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

    def route(self, cls: type) -> Route:
        """An event class's route (see :data:`Route`), worked out and kept in
        :attr:`routes`."""
        server = issubclass(cls, Server.Event)
        takers = []
        for index, extension in enumerate(self.extensions):
            if server and index in self.keyed:
                continue  # given the server events with their ids (``fold_servers``)
            declared = getattr(extension, "event_types", None)
            if declared is None or issubclass(cls, tuple(declared)):
                takers.append(index)
        route = (server, tuple(takers),
                 tuple(index for index, unchanged in self.follows
                       if server and not issubclass(cls, unchanged)),
                 tuple(index for index, unchanged in self.changes
                       if server and not issubclass(cls, unchanged)),
                 getattr(cls, "apply", None))
        self.routes[cls] = route
        return route


def _plan_of(view: ServersView, batch_of: Callable[[int], Any]) -> _Plan:
    """What the view's extensions' batches implement, and the routes of the event
    classes met: worked out once per view (by its first fold, which makes every batch
    to learn it, through ``batch_of``), so that a fold makes only the batches it needs
    and dispatches a page in one pass instead of each extension sifting every event."""
    plan: _Plan | None = view.__dict__.get("_event_routes")
    if plan is None or plan.extensions is not view.extensions:
        plan = view.__dict__["_event_routes"] = _Plan(
            view.extensions, [batch_of(index) for index in range(len(view.extensions))])
    return plan


def fold_into_cleared(view: ServersView, pages: Iterable[RawPage], decode: Decode,
                      after: int, cleared: Callable[[], None]) -> int:
    """:meth:`~vmledger.projections.servers.ServersView.apply_pages` into tables being
    emptied (see its ``cleared``): the pages folded first, the transaction opened for
    the writes alone, once ``cleared()`` returns."""
    if after:
        raise ValueError("pages folded before the transaction start the view")
    late = _LateCursor()
    with ExitStack() as stack:
        def begin() -> Any:
            cleared()
            curs = stack.enter_context(view.transaction(commit=True, flushed=False))
            current = view.locked_position(curs)
            if current != after:
                raise IntegrityError(f"the read models are at {current}, not {after}")
            late.target = curs
            # emptied by this process, nothing written since (the position is 0)
            view._cleared.discard(view.layout.name)
            return curs

        return fold(view, late, pages, decode, empty=True, bulk=True, begin=begin)


def fold(view: ServersView, curs: Any, pages: Iterable[RawPage], decode: Decode, *,
         empty: bool, bulk: bool, read: dict[str, dict[str, Any] | None] | None = None,
         held: bool = False, begin: Callable[[], Any] | None = None) -> int:
    """Fold ``pages`` into ``view``'s tables (of its layout) in ``curs``'s transaction,
    with a tracking record per page; returns the number of server rows written.

    ``empty``: the view has no rows yet (nothing to load). ``bulk``: a catch-up's or a
    rebuild's load, not a command's own fold. ``read``: documents already read in this
    transaction (by id; None: no row). ``held``: the position was read locked in this
    transaction, and is before the pages (the tracking record's write cannot be
    refused). ``begin``: the transaction opens only once the pages are folded (an empty
    view, nothing to load: :func:`fold_into_cleared`): ``begin()`` opens it, binds
    ``curs`` (a :class:`_LateCursor`) to it and returns its cursor.

    An extension's batch is made only when something goes to it (a share of the
    events, a server folded or changed it follows, a preload with work in this fold)
    or its extension asks for a write regardless (``write_always``), and only the
    batches made are written: a command's fold of one event (a lock) makes one or two
    of them, not one per read model."""
    name = view.layout.name
    names: dict[Any, str] = {}  # originator id -> its text (str() of a UUID is slow)
    # tables this process emptied (``clear``), nothing folded into them since: the
    # position, read locked, is still 0 (with ``begin``: checked by it)
    fresh = empty and bulk and (begin is not None or name in view._cleared)
    if begin is None:
        view._cleared.discard(name)
    writer = RowWriter(curs, view._sql, view.dialect, bulk=bulk, fresh=fresh)
    extensions = view.extensions
    batches: list[Any] = [None] * len(extensions)

    def batch_of(index: int) -> Any:
        made = batches[index] = extensions[index].batch(writer, empty=empty)
        return made

    plan = _plan_of(view, batch_of)
    preloads = plan.preloads if bulk else plan.command_preloads
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
    # columns that changed alone (see :func:`_write_rows`)
    stored: dict[str, Any] | None = (
        {} if not empty and view.dialect == "sqlite" else None)
    # the documents :func:`load_documents` read (in stored form), by id, for
    # :func:`row_of`
    bases: dict[str, dict[str, Any]] | None = None if stored is None else {}
    routes = plan.routes
    # per event class met in this fold: its route with the bound methods of this
    # fold's batches it calls (those batches made as the class is first met)
    local: dict[type, tuple[bool, tuple[int, ...], tuple[Follow, ...],
                            tuple[tuple[int, Callable[[str, dict[str, Any]], None]], ...],
                            Any]] = {}

    def route_of(cls: type) -> Any:
        found = routes.get(cls) or plan.route(cls)
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
                loaded = load_documents(view, curs, rest, stored) if rest else {}
                if bases is not None:
                    bases.update(loaded)
                if read is not None:
                    loaded.update((k, d) for k, d in read.items() if d is not None)
                for key in unknown:
                    docs[key] = loaded.get(key)
                for index in preloads:
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
    if view.noticed is not None and targets:
        # the servers' versions met: a command's cached copy of an older one is read
        # again before it is decided on (StoreRepository.get_trusted)
        view.noticed({key: target.version for key, target in targets.items()})
    if begin is not None:
        curs = begin()
    if stored is None:
        writer.upsert(view.table, COLUMNS, "id", [row_of(d) for d in changed])
    else:
        _write_rows(view, curs, targets, stored, bases or {})
    for batch in batches:
        if batch is not None:
            batch.write()
    for position in positions:
        if held:
            view._advance_position(curs, Tracking(name, position))
        else:
            view._insert_tracking(curs, Tracking(name, position))
    return len(changed)


def _write_rows(view: ServersView, curs: Any, targets: dict[str, SimpleNamespace],
                stored: dict[str, Any], bases: dict[str, dict[str, Any]]) -> None:
    """Write the changed servers' rows: a server new to the view inserted (or
    replaced), one already there (its row as ``stored``, read by
    :func:`load_documents`) updated in the columns that changed alone, its document
    always, so that SQLite rewrites the entries of the indexes on those alone (each
    index entry assigned is rewritten, changed or not: pages more to write and flush)."""
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
        curs.execute(view._sql(statement), [*(row[i] for i in assigned), row[0]])
    RowWriter(curs, view._sql, view.dialect, bulk=False).upsert(
        view.table, columns, "id", fresh)


def load_documents(view: ServersView, curs: Any, ids: list[str],
                   stored: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The documents of these servers (those in the view), in stored form: their
    times stay ``{"$dt": ...}`` (no event's ``apply`` reads a time, and the fold
    writes those it leaves as they were, without parsing and formatting them
    again); with ``stored``, their rows go there too, by id."""
    found: dict[str, dict[str, Any]] = {}
    what = "id, doc" if stored is None else ", ".join(COLUMNS)  # in row_of's order
    for chunk in chunks(ids, 500):
        marks = ",".join("?" for _ in chunk)
        curs.execute(view._sql(f"SELECT {what} FROM {{t}} WHERE id IN ({marks})"), chunk)
        for row in curs.fetchall():
            found[row["id"]] = loads_stored(row["doc"])
            if stored is not None:
                stored[row["id"]] = row
    return found

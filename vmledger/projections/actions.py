"""The instance-actions read model: Nova's os-instance-actions, built from the log.

One action per request_id (the ``x-openstack-request-id`` of the call that started it,
or the timer's or an admin's id), with its events: the host agent's work as one event
named as Nova names it (``compute_reboot_instance``…), started by the agent's first
step and finished by the outcome (``Success`` or ``Error`` with the fault's message as
details). Written in the servers view's transaction (a :class:`ViewExtension`).

The names come from the action's lifecycle row (``instance_action`` and ``event``); an
action name no row has raises :class:`~vmledger.domain.lifecycle.UnknownAction`. An
administrator's abort or force-complete of a live migration is an action of its own, as
Nova records it (``live_migration_cancel``, ``live_migration_force_complete``), with no
events: the source host's agent passes it on within the live migration's own action.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from vmledger.domain import lifecycle as lc
from vmledger.domain.server import Server
from vmledger.projections.store import (
    ReadStore,
    RowWriter,
    dumps_ordered,
    dumps_stored,
    isoformat,
    loads,
    loads_stored,
    stamped,
    stored_ts,
)

#: one row per (server, request): a request that creates several servers starts an
#: action on each of them (``vmledger_instance_actions``, keyed by the request alone,
#: is its predecessor: dropped, and the read models rebuilt, on first start)
TABLE = "vmledger_server_actions"
OLD_TABLE = "vmledger_instance_actions"

_COLUMNS = ("server_id", "request_id", "action", "user_id", "project_id", "start_time",
            "updated_at", "message", "doc")

#: an action document: while a transaction folds it, the times it sets are datetimes (a
#: row loaded from the table keeps the stored form, {"$dt": text}); written in the stored
#: form (``loads`` gives datetimes back)
Doc = dict[str, Any]


def _new(event: Server.Event, server_id: str, action: str, at: datetime) -> Doc:
    # the keys in sorted order, as the agent events' below: see :meth:`ActionsBatch.write`
    return {"action": action, "cause": event.cause, "events": [], "message": None,
            "project_id": event.project_id, "request_id": event.request_id,
            "server_id": server_id, "start_time": at, "updated_at": at,
            "user_id": event.user_id}


#: the value types a document may hold and still be written without sorting its dicts
#: (a dict or list from an event could hold dicts in any key order)
_SCALARS = frozenset({str, int, float, bool, type(None)})


# what each kind of server event does to the actions: starts one, or is a step of one
# (the steps and the outcome last: ``kind >= _STEP`` is the action in flight's)
_STARTS, _LOCK, _RESET, _STEER, _OTHER, _STEP, _OUTCOME = range(7)
_KINDS: dict[type, int] = {}
#: the kinds that begin a new action document whatever was there before
_BEGINS = frozenset({_STARTS, _LOCK, _RESET, _STEER})
#: Nova's instance-action names of a live migration's steering
_STEERS = {"abort": "live_migration_cancel", "force_complete": "live_migration_force_complete"}


def _kind(cls: type) -> int:
    kind = _KINDS.get(cls)
    if kind is None:
        if issubclass(cls, Server.Requested | Server.ActionRequested):
            kind = _STARTS
        elif issubclass(cls, Server.LockChanged):
            kind = _LOCK
        elif issubclass(cls, Server.StateReset):
            kind = _RESET
        elif issubclass(cls, Server.MigrationSteered):
            kind = _STEER
        elif issubclass(cls, Server.TaskAdvanced | Server.HypervisorCalled):
            kind = _STEP
        elif issubclass(cls, Server.ActionCompleted | Server.ActionFailed):
            kind = _OUTCOME
        else:
            kind = _OTHER
        _KINDS[cls] = kind
    return kind


#: per action name: its instance-action event's name (:func:`_event_name`)
_EVENT_NAMES: dict[str, str] = {}
#: per action name: its lifecycle row's (instance action, event) names
_INSTANCE_ACTIONS: dict[str, tuple[str, str]] = {}


def _event_name(action: str) -> str:
    """The instance-action event an action's agent work is recorded as (from its
    lifecycle row, looked up once per name)."""
    name = _EVENT_NAMES.get(action)
    if name is None:
        name = lc.row(action).event
        if not name:
            raise ValueError(f"action {action!r} declares no instance-action event in"
                             " the lifecycle table")
        _EVENT_NAMES[action] = name
    return name


class InstanceActions:
    """A :class:`~vmledger.projections.servers.ViewExtension` keeping one row per action."""

    #: the events this read model folds (the others need not be decoded for it)
    event_types: tuple[type, ...] = (Server.Event,)

    def create_statements(self, sql: Callable[[str], str]) -> list[str]:
        return [
            sql(f"DROP TABLE IF EXISTS {OLD_TABLE}"),
            sql(f"CREATE TABLE IF NOT EXISTS {TABLE} (server_id TEXT NOT NULL,"
                " request_id TEXT NOT NULL, action TEXT, user_id TEXT, project_id TEXT,"
                " start_time TEXT, updated_at TEXT, message TEXT, doc TEXT,"
                " PRIMARY KEY (server_id, request_id))"),
            sql(f"CREATE INDEX IF NOT EXISTS {TABLE}_server ON {TABLE}"
                " (server_id, start_time)"),
        ]

    def batch(self, writer: RowWriter, *, empty: bool) -> ActionsBatch:
        return ActionsBatch(writer, empty=empty)

    def clear(self, curs: Any, sql: Callable[[str], str]) -> None:
        curs.execute(sql(f"DELETE FROM {TABLE}"))


class ActionsBatch:
    """One transaction's fold of the instance actions: each page folded with its own
    hosts (as page-by-page application would), each action's row loaded and written
    once."""

    def __init__(self, writer: RowWriter, *, empty: bool) -> None:
        self.writer = writer
        self.curs = writer.curs
        self.sql = writer.sql
        self.empty = empty
        # keyed by (server id, request id)
        self.docs: dict[tuple[str, str], Doc | None] = {}
        self.changed: dict[tuple[str, str], Doc] = {}
        self.names: dict[Any, str] = {}
        #: the documents to write with their dicts' keys sorted: those loaded from the
        #: table, and those holding a value from an event that is not a scalar (a dict
        #: in any key order). The others, made in this batch, have every dict's keys in
        #: sorted order already (a rebuild's: all of them), and are written as they are
        self.unordered: set[tuple[str, str]] = set()

    def _load(self, keys: list[tuple[str, str]]) -> None:
        # by the primary key (server_id, request_id): the server ids select index ranges
        # (a query by request id alone would scan the whole table)
        wanted = set(keys)
        for i in range(0, len(keys), 250):
            chunk = keys[i:i + 250]
            servers = list(dict.fromkeys(server_id for server_id, _ in chunk))
            requests = list(dict.fromkeys(request_id for _, request_id in chunk))
            self.curs.execute(self.sql(
                f"SELECT server_id, request_id, doc FROM {TABLE} "
                f"WHERE server_id IN ({','.join('?' for _ in servers)}) "
                f"AND request_id IN ({','.join('?' for _ in requests)})"),
                [*servers, *requests])
            for row in self.curs.fetchall():
                key = (row["server_id"], row["request_id"])
                if key in wanted:
                    self.docs[key] = loads_stored(row["doc"])
                    self.unordered.add(key)

    def _load_begun(self, pairs: Sequence[tuple[str, Any]]) -> None:
        """Load the rows of the actions these events (with their server ids) continue
        that earlier transactions began."""
        docs, kinds = self.docs, _KINDS
        unknown: list[tuple[str, str]] = []
        for sid, event in pairs:
            kind = kinds.get(type(event))
            if kind is None:
                kind = _kind(type(event))
            if kind == _OTHER:
                continue
            key = (sid, event.request_id)
            if key not in docs:
                docs[key] = None
                # an action's first event here starts it: an older row with its key
                # would be replaced, so it need not be read
                if kind not in _BEGINS:
                    unknown.append(key)
        if unknown:
            self._load(unknown)

    def fold(self, events: Sequence[Any]) -> None:
        # (an id's text is made once per batch: formatting a UUID is slow; looked up by
        # the UUID's integer: hashing a UUID runs Python code)
        names = self.names
        pairs: list[tuple[str, Any]] = []
        for event in events:  # server events only (``event_types``)
            oid = event.originator_id
            ikey = oid.int if type(oid) is UUID else oid
            sid = names.get(ikey)
            if sid is None:
                sid = names[ikey] = str(oid)
            pairs.append((sid, event))
        self.fold_servers(pairs)

    def fold_servers(self, pairs: Sequence[tuple[str, Any]]) -> None:
        """Fold a page's server events, each with its server's id as text (which the
        servers view has made already). Each page is folded with its own hosts, as
        page-by-page application would. An event's time stays the datetime it is until
        :meth:`write`: most are replaced by the next step of the same action, and
        formatting every one cost a third of this fold."""
        if not self.empty:
            self._load_begun(pairs)
        docs, changed, kinds = self.docs, self.changed, _KINDS
        unordered, scalars = self.unordered, _SCALARS
        event_names, instance_actions = _EVENT_NAMES, _INSTANCE_ACTIONS
        requested, failed = Server.Requested, Server.ActionFailed
        hosts: dict[str, str | None] = {}  # by server id text (its hash is cached)
        # (lookups by subscript: cheaper than ``get`` where a key is nearly always
        # there; an event's fields are in its instance's dict: a step without a host,
        # read by ``getattr``, raised and formatted an AttributeError each time)
        for sid, event in pairs:
            try:
                kind = kinds[type(event)]
            except KeyError:
                kind = _kind(type(event))
            if kind == _OTHER:
                continue  # neither starts an action nor belongs to one
            key = (sid, event.request_id)
            at = event.timestamp
            if kind >= _STEP:  # a step or the outcome of an action in flight
                try:
                    doc = docs[key]
                except KeyError:
                    continue
                if doc is None:
                    continue
                action = event.action
                if not action:  # a hypervisor call recorded with no action in flight
                    continue
                try:
                    name = event_names[action]
                except KeyError:
                    name = _event_name(action)
                doc["updated_at"] = at
                for agent in doc["events"]:
                    if agent["event"] == name and agent["finish_time"] is None:
                        if not agent["host"]:
                            host = agent["host"] = (
                                (kind == _STEP and event.__dict__.get("host"))
                                or hosts.get(sid))
                            if type(host) not in scalars:
                                unordered.add(key)
                        break
                else:
                    # (the keys in sorted order: see :meth:`write`)
                    host = ((kind == _STEP and event.__dict__.get("host"))
                            or hosts.get(sid))
                    agent = {"details": None, "event": name, "finish_time": None,
                             "host": host, "result": None, "start_time": at,
                             "traceback": None}
                    doc["events"].append(agent)
                    if type(host) not in scalars:
                        unordered.add(key)
                if kind == _OUTCOME:
                    agent["finish_time"] = at
                    if isinstance(event, failed):
                        agent["result"] = "Error"
                        details = agent["details"] = event.fault.get("message")
                        if type(details) not in scalars:
                            unordered.add(key)
                        doc["message"] = "Error"
                    else:
                        agent["result"] = "Success"
                if key not in changed:  # (a row loaded from the table)
                    changed[key] = doc
                continue
            if kind == _STEER:  # a live migration's steering
                doc = _new(event, sid, _STEERS.get(event.steer, str(event.steer)), at)
            else:
                if kind == _STARTS:
                    if isinstance(event, requested):
                        hosts[sid] = event.host
                        name = "create"
                    else:
                        name = event.action
                elif kind == _LOCK:
                    name = event.action
                else:
                    name = "reset_state"
                found = instance_actions.get(name)
                if found is None:
                    row = lc.row(name)
                    found = instance_actions[name] = (row.instance_action, row.event)
                doc = _new(event, sid, found[0], at)
                if kind == _LOCK:
                    doc["events"].append({"details": None, "event": found[1],
                                          "finish_time": at, "host": None,
                                          "result": "Success", "start_time": at,
                                          "traceback": None})
            docs[key] = changed[key] = doc
            # a new document: sorted unless a value from the event is not a scalar (the
            # request id is one: a key's part, hashable, from JSON)
            if unordered:
                unordered.discard(key)
            if (type(doc["cause"]) not in scalars or type(doc["user_id"]) not in scalars
                    or type(doc["project_id"]) not in scalars):
                unordered.add(key)

    def write(self) -> None:
        rows = []
        unordered = self.unordered
        for key, d in self.changed.items():
            # the times folded here are datetimes: each formatted once (an action's
            # start is its last update until a step follows; an outcome is its last),
            # its column's text with it
            start, updated = d["start_time"], d["updated_at"]
            latest = updated
            if type(updated) is datetime:
                d["updated_at"], updated_at = stamped(updated)
            else:
                updated_at = stored_ts(updated)
            if start is latest:
                d["start_time"], start_time = d["updated_at"], updated_at
            elif type(start) is datetime:
                d["start_time"], start_time = stamped(start)
            else:
                start_time = stored_ts(start)
            for agent in d["events"]:
                begun, finished = agent["start_time"], agent["finish_time"]
                if type(begun) is datetime:
                    agent["start_time"] = {"$dt": isoformat(begun)}
                if type(finished) is datetime:
                    agent["finish_time"] = (d["updated_at"] if finished is latest
                                            else {"$dt": isoformat(finished)})
            # a document made here has every dict's keys in sorted order already
            rows.append((d["server_id"], d["request_id"], d["action"], d["user_id"],
                         d["project_id"], start_time, updated_at, d["message"],
                         dumps_stored(d) if key in unordered else dumps_ordered(d)))
        self.writer.upsert(TABLE, _COLUMNS, ("server_id", "request_id"), rows)


def list_actions(store: ReadStore, server_id: str) -> list[dict[str, Any]]:
    """A server's actions, newest first (Nova: created_at desc, id desc)."""
    rows = store.query(f"SELECT doc FROM {TABLE} WHERE server_id = ? "
                       "ORDER BY start_time DESC, request_id DESC", [server_id])
    return [loads(r["doc"]) for r in rows]


def get_action(store: ReadStore, server_id: str, request_id: str) -> dict[str, Any] | None:
    rows = store.query(f"SELECT doc FROM {TABLE} WHERE server_id = ? AND request_id = ?",
                       [server_id, request_id])
    return loads(rows[0]["doc"]) if rows else None

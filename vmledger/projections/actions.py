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
    dumps_stored,
    isoformat,
    loads,
    loads_stored,
    stored_ts,
)

#: one row per (server, request): a request that creates several servers starts an
#: action on each of them (``vmledger_instance_actions``, keyed by the request alone,
#: is its predecessor: dropped, and the read models rebuilt, on first start)
TABLE = "vmledger_server_actions"
OLD_TABLE = "vmledger_instance_actions"

_COLUMNS = ("server_id", "request_id", "action", "user_id", "project_id", "start_time",
            "updated_at", "message", "doc")

#: an action document as stored: times are kept in the stored form ({"$dt": text}) while
#: folding, so writing a document needs no conversion (``loads`` gives datetimes back)
Doc = dict[str, Any]


def _stored_time(value: datetime) -> dict[str, str]:
    return {"$dt": isoformat(value)}


def _new(event: Server.Event, server_id: str, action: str, at: dict[str, str]) -> Doc:
    return {"request_id": event.request_id, "server_id": server_id,
            "action": action, "user_id": event.user_id, "project_id": event.project_id,
            "start_time": at, "updated_at": at, "message": None,
            "events": [], "cause": event.cause}


def _agent_event(doc: Doc, name: str, at: dict[str, str], host: str | None) -> Doc:
    for existing in doc["events"]:
        if existing["event"] == name and existing["finish_time"] is None:
            found: Doc = existing
            found["host"] = found["host"] or host
            return found
    e: Doc = {"event": name, "start_time": at, "finish_time": None, "result": None,
              "traceback": None, "host": host, "details": None}
    doc["events"].append(e)
    return e


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


def fold_action(doc: Doc | None, event: Any, host: str | None,
                server_id: str | None = None, kind: int | None = None) -> Doc | None:
    """The action document (in stored form) after ``event`` (a server event); None when
    the event starts no action and belongs to none. ``kind``: the event's
    :func:`_kind`, when the caller has it."""
    if kind is None:
        kind = _kind(type(event))
    if kind == _OTHER:
        return doc
    if kind >= _STEP:  # a step or the outcome of the action in flight
        if doc is None:
            return None
        action = event.action
        if not action:  # a hypervisor call recorded with no action in flight
            return doc
        name = _EVENT_NAMES.get(action) or _event_name(action)
        at = {"$dt": isoformat(event.timestamp)}
        doc["updated_at"] = at
        if kind == _STEP:
            _agent_event(doc, name, at, getattr(event, "host", None) or host)
        else:
            e = _agent_event(doc, name, at, host)
            e["finish_time"] = at
            if isinstance(event, Server.ActionFailed):
                e["result"] = "Error"
                e["details"] = event.fault.get("message")
                doc["message"] = "Error"
            else:
                e["result"] = "Success"
        return doc
    at = _stored_time(event.timestamp)
    sid = server_id if server_id is not None else str(event.originator_id)
    if kind == _STARTS:
        name = "create" if isinstance(event, Server.Requested) else event.action
        return _new(event, sid, lc.row(name).instance_action, at)
    if kind == _LOCK:
        row = lc.row(event.action)
        new = _new(event, sid, row.instance_action, at)
        new["events"].append({"event": row.event, "start_time": at,
                              "finish_time": at, "result": "Success",
                              "traceback": None, "host": None, "details": None})
        return new
    if kind == _RESET:
        return _new(event, sid, lc.row("reset_state").instance_action, at)
    return _new(event, sid, _STEERS.get(event.steer, str(event.steer)), at)


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

    def _key(self, event: Any) -> tuple[str, str]:
        """(server id text, request id): an id's text is made once per batch (formatting
        a UUID is slow), looked up by the UUID's integer (hashing a UUID runs Python
        code)."""
        oid = event.originator_id
        ikey = oid.int if type(oid) is UUID else oid
        name = self.names.get(ikey)
        if name is None:
            name = self.names[ikey] = str(oid)
        return name, event.request_id

    def _load_begun(self, events: Sequence[Any]) -> None:
        """Load the rows of the actions these events continue that earlier
        transactions began."""
        docs, kinds = self.docs, _KINDS
        unknown: list[tuple[str, str]] = []
        for event in events:
            kind = kinds.get(type(event))
            if kind is None:
                kind = _kind(type(event))
            if kind == _OTHER:
                continue
            key = self._key(event)
            if key not in docs:
                docs[key] = None
                # an action's first event here starts it: an older row with its key
                # would be replaced, so it need not be read
                if kind not in _BEGINS:
                    unknown.append(key)
        if unknown:
            self._load(unknown)

    def fold(self, events: Sequence[Any]) -> None:
        if not self.empty:
            self._load_begun(events)
        docs, changed, names, kinds = self.docs, self.changed, self.names, _KINDS
        requested = Server.Requested
        hosts: dict[str, str | None] = {}  # by server id text (its hash is cached)
        for event in events:  # server events only (``event_types``)
            kind = kinds.get(type(event))
            if kind is None:
                kind = _kind(type(event))
            if kind == _OTHER:
                continue  # neither starts an action nor belongs to one
            oid = event.originator_id  # (as ``_key``, inline: once per event)
            ikey = oid.int if type(oid) is UUID else oid
            sid = names.get(ikey)
            if sid is None:
                sid = names[ikey] = str(oid)
            key = (sid, event.request_id)
            if kind >= _STEP:  # a step or the outcome of an action in flight
                doc = docs.get(key)
                if doc is None:
                    continue
                doc = fold_action(doc, event, hosts.get(sid), sid, kind)
            else:
                if kind == _STARTS and isinstance(event, requested):
                    hosts[sid] = event.host
                doc = fold_action(None, event, None, sid, kind)
            if doc is not None:
                docs[key] = changed[key] = doc

    def write(self) -> None:
        self.writer.upsert(TABLE, _COLUMNS, ("server_id", "request_id"), [
            (d["server_id"], d["request_id"], d["action"], d["user_id"], d["project_id"],
             stored_ts(d["start_time"]), stored_ts(d["updated_at"]), d["message"],
             dumps_stored(d))
            for d in self.changed.values()])


def list_actions(store: ReadStore, server_id: str) -> list[dict[str, Any]]:
    """A server's actions, newest first (Nova: created_at desc, id desc)."""
    rows = store.query(f"SELECT doc FROM {TABLE} WHERE server_id = ? "
                       "ORDER BY start_time DESC, request_id DESC", [server_id])
    return [loads(r["doc"]) for r in rows]


def get_action(store: ReadStore, server_id: str, request_id: str) -> dict[str, Any] | None:
    rows = store.query(f"SELECT doc FROM {TABLE} WHERE server_id = ? AND request_id = ?",
                       [server_id, request_id])
    return loads(rows[0]["doc"]) if rows else None

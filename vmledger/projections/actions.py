"""The instance-actions read model: Nova's os-instance-actions, built from the log.

One action per request_id (the ``x-openstack-request-id`` of the call that started it,
or the timer's or an admin's id), with its events: the host agent's work as one event
named as Nova names it (``compute_reboot_instance``…), started by the agent's first
step and finished by the outcome (``Success`` or ``Error`` with the fault's message as
details). Written in the servers view's transaction (a :class:`ViewExtension`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from vmledger.domain import lifecycle as lc
from vmledger.domain.server import Server
from vmledger.projections.servers import Page, _ts, dumps, loads

TABLE = "vmledger_instance_actions"

#: Nova's compute event name for the agent's work on each action
NOVA_EVENTS: dict[str, str] = {
    "create": "compute__do_build_and_run_instance",
    "reboot_soft": "compute_reboot_instance",
    "reboot_hard": "compute_reboot_instance",
    "rebuild": "compute_rebuild_instance",
    "resize": "compute_resize_instance",
    "confirm_resize": "compute_confirm_resize",
    "revert_resize": "compute_revert_resize",
    "pause": "compute_pause_instance",
    "unpause": "compute_unpause_instance",
    "suspend": "compute_suspend_instance",
    "resume": "compute_resume_instance",
    "stop": "compute_stop_instance",
    "start": "compute_start_instance",
    "delete": "compute_terminate_instance",
    "create_image": "compute_snapshot_instance",
}

_COLUMNS = ("request_id", "server_id", "action", "user_id", "project_id", "start_time",
            "updated_at", "message", "doc")


def _new(event: Server.Event, action: str) -> dict[str, Any]:
    return {"request_id": event.request_id, "server_id": str(event.originator_id),
            "action": action, "user_id": event.user_id, "project_id": event.project_id,
            "start_time": event.timestamp, "updated_at": event.timestamp, "message": None,
            "events": [], "cause": event.cause}


def _agent_event(doc: dict[str, Any], name: str, at: datetime, host: str | None
                 ) -> dict[str, Any]:
    for existing in doc["events"]:
        if existing["event"] == name and existing["finish_time"] is None:
            found: dict[str, Any] = existing
            found["host"] = found["host"] or host
            return found
    e: dict[str, Any] = {"event": name, "start_time": at, "finish_time": None, "result": None,
         "traceback": None, "host": host, "details": None}
    doc["events"].append(e)
    return e


def fold_action(doc: dict[str, Any] | None, event: Server.Event, host: str | None
                ) -> dict[str, Any] | None:
    """The action document after ``event`` (None when the event starts no action)."""
    if isinstance(event, Server.Requested):
        return _new(event, "create")
    if isinstance(event, Server.ActionRequested):
        return _new(event, lc.ACTIONS[event.action].instance_action)
    if isinstance(event, Server.LockChanged):
        new = _new(event, event.action)
        new["events"].append({"event": f"api_{event.action}", "start_time": event.timestamp,
                              "finish_time": event.timestamp, "result": "Success",
                              "traceback": None, "host": None, "details": None})
        return new
    if isinstance(event, Server.StateReset):
        return _new(event, "resetState")
    if doc is None:
        return None
    action = getattr(event, "action", "")
    name = NOVA_EVENTS.get(action)
    if name is None:
        return doc
    doc["updated_at"] = event.timestamp
    if isinstance(event, Server.TaskAdvanced | Server.HypervisorCalled):
        _agent_event(doc, name, event.timestamp, getattr(event, "host", None) or host)
    elif isinstance(event, Server.ActionCompleted | Server.ActionFailed):
        e = _agent_event(doc, name, event.timestamp, host)
        e["finish_time"] = event.timestamp
        if isinstance(event, Server.ActionFailed):
            e["result"] = "Error"
            e["details"] = event.fault.get("message")
            doc["message"] = "Error"
        else:
            e["result"] = "Success"
    return doc


class InstanceActions:
    """A :class:`~vmledger.projections.servers.ViewExtension` keeping one row per action."""

    #: the events this read model folds (the others need not be decoded for it)
    event_types: tuple[type, ...] = (Server.Event,)

    def create_statements(self, sql: Callable[[str], str]) -> list[str]:
        return [
            sql(f"CREATE TABLE IF NOT EXISTS {TABLE} (request_id TEXT PRIMARY KEY,"
                " server_id TEXT, action TEXT, user_id TEXT, project_id TEXT,"
                " start_time TEXT, updated_at TEXT, message TEXT, doc TEXT)"),
            sql(f"CREATE INDEX IF NOT EXISTS {TABLE}_server ON {TABLE}"
                " (server_id, start_time)"),
        ]

    def apply(self, curs: Any, sql: Callable[[str], str], all_events: Sequence[Any],
              notifications: Sequence[Any]) -> None:
        self.apply_pages(curs, sql, [(all_events, 0, notifications)])

    def apply_pages(self, curs: Any, sql: Callable[[str], str], pages: Sequence[Page]
                    ) -> None:
        """Fold consecutive pages as :meth:`apply` one after the other would (each page
        with its own hosts), loading and writing each action's row once."""
        server_event, requested = Server.Event, Server.Requested
        per_page = [[e for e in all_events if isinstance(e, server_event)]
                    for all_events, _, _ in pages]
        ids = list(dict.fromkeys(e.request_id for events in per_page for e in events))
        if not ids:
            return
        docs: dict[str, dict[str, Any]] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            marks = ",".join("?" for _ in chunk)
            curs.execute(sql(f"SELECT request_id, doc FROM {TABLE} "
                             f"WHERE request_id IN ({marks})"), chunk)
            for row in curs.fetchall():
                docs[row["request_id"]] = loads(row["doc"])
        changed: dict[str, dict[str, Any]] = {}
        for events in per_page:
            # keyed by the originator id itself: equal ids are equal texts, and hashing
            # a UUID is cheaper than formatting it
            hosts: dict[Any, str | None] = {}
            for event in events:
                if isinstance(event, requested):
                    hosts[event.originator_id] = event.host
                doc = fold_action(docs.get(event.request_id), event,
                                  hosts.get(event.originator_id))
                if doc is not None:
                    docs[event.request_id] = changed[event.request_id] = doc
        if changed:
            cols = ", ".join(_COLUMNS)
            marks = ", ".join("?" for _ in _COLUMNS)
            updates = ", ".join(f"{c}=excluded.{c}" for c in _COLUMNS if c != "request_id")
            curs.executemany(
                sql(f"INSERT INTO {TABLE} ({cols}) VALUES ({marks}) "
                    f"ON CONFLICT (request_id) DO UPDATE SET {updates}"),
                [(d["request_id"], d["server_id"], d["action"], d["user_id"], d["project_id"],
                  _ts(d["start_time"]), _ts(d["updated_at"]), d["message"], dumps(d))
                 for d in changed.values()])

    def clear(self, curs: Any, sql: Callable[[str], str]) -> None:
        curs.execute(sql(f"DELETE FROM {TABLE}"))


def list_actions(view: Any, server_id: str) -> list[dict[str, Any]]:
    """A server's actions, newest first (Nova: created_at desc, id desc)."""
    rows = view._query(f"SELECT doc FROM {TABLE} WHERE server_id = ? "
                       "ORDER BY start_time DESC, request_id DESC", [server_id])
    return [loads(r["doc"]) for r in rows]


def get_action(view: Any, server_id: str, request_id: str) -> dict[str, Any] | None:
    rows = view._query(f"SELECT doc FROM {TABLE} WHERE server_id = ? AND request_id = ?",
                       [server_id, request_id])
    return loads(rows[0]["doc"]) if rows else None

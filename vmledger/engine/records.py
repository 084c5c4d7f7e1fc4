"""What the embedding API returns: a server as the read model shows it, and one event of
a server's history in readable form."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from vmledger.domain import status as st
from vmledger.domain.server import Server


@dataclass(frozen=True)
class ServerInfo:
    """A server as the read model shows it."""

    id: str
    name: str
    status: str
    vm_state: str
    task_state: str | None
    power_state: int
    flavor: dict[str, Any]
    image: dict[str, Any]
    #: the host it is placed on; None when no host could take it
    host: str | None
    project_id: str
    user_id: str
    locked: bool
    fault: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    launched_at: datetime | None
    confirm_deadline: datetime | None
    version: int
    doc: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> ServerInfo:
        return cls(
            id=doc["id"], name=doc["name"], status=st.status_of(doc["vm_state"],
                                                                doc["task_state"]),
            vm_state=doc["vm_state"], task_state=doc["task_state"],
            power_state=doc["power_state"], flavor=doc["flavor"], image=doc["image"],
            host=None if doc.get("unplaced") else doc["host"],
            project_id=doc["project_id"], user_id=doc["user_id"],
            locked=doc["locked"], fault=doc.get("fault"), created_at=doc["created_at"],
            updated_at=doc["updated_at"], launched_at=doc.get("launched_at"),
            confirm_deadline=doc.get("confirm_deadline"), version=doc["version"], doc=doc)


_BASE_FIELDS = ("originator_id", "originator_version", "timestamp", "originator_topic",
                "request_id", "user_id", "project_id", "cause")


@dataclass(frozen=True)
class HistoryEntry:
    """One event of a server's history, in readable form."""

    version: int
    timestamp: datetime
    event: str
    request_id: str
    user_id: str | None
    project_id: str | None
    cause: str
    details: dict[str, Any]

    @classmethod
    def from_event(cls, event: Server.Event) -> HistoryEntry:
        details = {k: v for k, v in vars(event).items() if k not in _BASE_FIELDS}
        return cls(version=event.originator_version, timestamp=event.timestamp,
                   event=type(event).__name__, request_id=event.request_id,
                   user_id=event.user_id, project_id=event.project_id, cause=event.cause,
                   details=details)

    def __str__(self) -> str:
        d = self.details
        what = {
            "Requested": lambda: f"create {d.get('name')!r} ({d.get('flavor', {}).get('name')})",
            "ActionRequested": lambda: f"{d.get('action')} → task {d.get('task_state')}",
            "TaskAdvanced": lambda: f"{d.get('action')} → task {d.get('task_state')}",
            "HypervisorCalled": lambda: (
                f"{d.get('driver')}.{d.get('call')} "
                f"{'failed: ' + str(d['error']) if d.get('error') else 'ok'}"
                f" ({d.get('duration_ms')} ms)"),
            "HypervisorCallStarted": lambda: (
                f"{d.get('driver')}.{d.get('call')} about to be called"),
            "ActionCompleted": lambda: f"{d.get('action')} done → {d.get('vm_state')}",
            "ActionFailed": lambda: (f"{d.get('action')} failed → {d.get('vm_state')}: "
                                     f"{d.get('fault', {}).get('message')}"),
            "LockChanged": lambda: str(d.get("action")),
            "StateReset": lambda: f"reset to {d.get('vm_state')}",
            "DriftObserved": lambda: (
                f"drift: hypervisor power {d.get('observed_power_state')}, "
                f"{d.get('previous_vm_state')} → {d.get('vm_state')} ({d.get('drift_action')})"),
            "Updated": lambda: f"updated {sorted(d.get('changes', {}))}",
            "StepReached": lambda: (
                f"{d.get('action')} → host {d.get('host')}, task {d.get('task_state')}"
                + "".join(f", {k} {v}" for k, v in sorted(d.get("changes", {}).items()))),
            "MigrationSteered": lambda: f"{d.get('action')}: {d.get('steer')} asked",
        }.get(self.event, lambda: self.event)()
        who = self.user_id or "-"
        return (f"v{self.version:<3} {self.timestamp.isoformat()}  {self.cause:<5} {who:<8} "
                f"{self.event:<16} {what}  [{self.request_id}]")

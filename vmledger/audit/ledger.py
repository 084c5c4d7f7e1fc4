"""Reading the ledger: a server's history, its state as of a moment, a request's causal
chain, and why a server is in its current status.

Everything here reads the event log itself (never the servers view), so it answers the
same after a view rebuild, for deleted servers, and for any moment in the past. The
request index (``vmledger_requests``, written with the events by the audited recorder)
makes the causal chain of a request and the "as of a timestamp" lookup index queries
instead of log scans; a log written without it is scanned instead.
"""

from __future__ import annotations

import json
import string
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import StoredEvent

from vmledger.audit.chain import AuditedRecorder, request_fields
from vmledger.domain import lifecycle as lc
from vmledger.domain import status as st
from vmledger.domain.commands.pipeline import IdempotencyRecord
from vmledger.domain.compute_service import ComputeService
from vmledger.domain.errors import ServerNotFound
from vmledger.domain.flavors import FlavorRecord
from vmledger.domain.image import CustomImage
from vmledger.domain.keypair import Keypair
from vmledger.domain.power import PowerState
from vmledger.domain.quota import QuotaClass, QuotaSet
from vmledger.domain.server import ADMIN, AGENT, TIMER, Server
from vmledger.domain.server_group import ServerGroup
from vmledger.domain.service import ServerService

__all__ = ["HistoryPage", "Ledger", "LedgerEntry"]

_BASE_FIELDS = frozenset(("originator_id", "originator_version", "timestamp",
                          "originator_topic", "request_id", "user_id", "project_id", "cause"))
#: events that start or settle a request (they change vm_state or task_state)
_DECISIVE = frozenset(("Requested", "ActionRequested", "ActionCompleted", "ActionFailed",
                       "StateReset"))


@dataclass(frozen=True)
class LedgerEntry:
    """One event, readable: where it is in the log, who caused it, what it says."""

    #: the notification id (the event's position in the whole log); None if unknown
    position: int | None
    server_id: str
    version: int
    timestamp: datetime
    request_id: str
    #: who acted: the user, ``timer`` or ``agent``
    actor: str
    user_id: str | None
    project_id: str | None
    cause: str
    event: str
    payload: dict[str, Any]
    #: what kind of aggregate recorded it: ``server``, ``image`` or ``keypair`` (whose
    #: id is then in ``server_id``)
    aggregate: str = "server"

    @classmethod
    def of(cls, event: Any, position: int | None) -> LedgerEntry:
        payload = {k: v for k, v in vars(event).items() if k not in _BASE_FIELDS}
        return cls(position=position, server_id=str(event.originator_id),
                   version=event.originator_version, timestamp=event.timestamp,
                   request_id=event.request_id, actor=event.user_id or event.cause,
                   user_id=event.user_id, project_id=event.project_id, cause=event.cause,
                   event=type(event).__name__, payload=payload,
                   aggregate=_aggregate_kind(event))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (datetimes as ISO 8601 strings)."""
        data: dict[str, Any] = json.loads(json.dumps({
            "position": self.position, "server_id": self.server_id, "version": self.version,
            "timestamp": self.timestamp, "request_id": self.request_id, "actor": self.actor,
            "user_id": self.user_id, "project_id": self.project_id, "cause": self.cause,
            "event": self.event, "payload": self.payload, "aggregate": self.aggregate},
            default=_json_default))
        return data

    def __str__(self) -> str:
        at = "-" if self.position is None else str(self.position)
        return (f"#{at:<6} v{self.version:<4} {self.timestamp.isoformat()} "
                f"{self.cause:<5} {self.actor:<10} {self.event:<16} "
                f"{_compact(self.payload, 100)} [{self.request_id}]")


@dataclass(frozen=True)
class HistoryPage:
    """A page of one server's history, oldest first."""

    server_id: str
    entries: list[LedgerEntry]
    #: pass as ``after`` to get the next page; None when this is the last page
    next_after: int | None


#: the aggregates whose events a request's causal chain shows, and their names
_KINDS: tuple[tuple[type, str], ...] = (
    (Server.Event, "server"), (CustomImage.Event, "image"), (Keypair.Event, "keypair"),
    (QuotaSet.Event, "quota"), (QuotaClass.Event, "quota_class"),
    (ServerGroup.Event, "server_group"),
    (FlavorRecord.Event, "flavor"), (ComputeService.Event, "compute_service"),
    (IdempotencyRecord.Recorded, "idempotency"))
_LABELS = {"server": "Server", "image": "Image", "keypair": "Key pair", "quota": "Quota set",
           "quota_class": "Quota class",
           "server_group": "Server group", "flavor": "Flavor",
           "compute_service": "Compute service", "idempotency": "Idempotency key"}


def _aggregate_kind(event: object) -> str:
    for cls, kind in _KINDS:
        if isinstance(event, cls):
            return kind
    return "server"


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _compact(value: object, limit: int) -> str:
    text = json.dumps(value, default=_json_default, sort_keys=True, separators=(",", ":"))
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _ts(value: datetime) -> str:
    return value.isoformat()


def _power(value: object) -> str:
    try:
        return PowerState(int(value)).name.lower()  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return str(value)


def _status(server: Server | None) -> str:
    return "-" if server is None else st.status_of(server.vm_state, server.task_state)


def _state(server: Server | None) -> str:
    """The status and the task in flight, as a narration shows them."""
    if server is None or server.task_state is None:
        return _status(server)
    return f"{_status(server)} (task {server.task_state})"


class Ledger:
    """Audit reads over a :class:`~vmledger.domain.service.ServerService`'s log."""

    def __init__(self, app: ServerService) -> None:
        self.app = app
        recorder = app.recorder
        self._audited: AuditedRecorder | None = (
            recorder if isinstance(recorder, AuditedRecorder) else None)

    # --- helpers ----------------------------------------------------------------------
    @staticmethod
    def _uuid(server_id: str | uuid.UUID) -> uuid.UUID:
        if isinstance(server_id, uuid.UUID):
            return server_id
        try:
            return uuid.UUID(str(server_id))
        except ValueError:
            raise ServerNotFound(str(server_id)) from None

    def _stored(self, sid: uuid.UUID, *, gt: int | None = None, lte: int | None = None,
                limit: int | None = None) -> Sequence[StoredEvent]:
        return self.app.recorder.select_events(sid, gt=gt, lte=lte, limit=limit)

    def _entries(self, stored: Sequence[StoredEvent], sid: uuid.UUID, *,
                 every_kind: bool = False) -> list[tuple[Server.Event, LedgerEntry]]:
        """Server events as entries (with ``every_kind``, image and key-pair events
        too: a request's causal chain)."""
        positions: dict[int, int] = {}
        if stored and self._audited is not None:
            positions = self._audited.chain_positions(
                sid, stored[0].originator_version, stored[-1].originator_version)
        kinds: tuple[type, ...] = (tuple(cls for cls, _ in _KINDS) if every_kind
                                   else (Server.Event,))
        out: list[tuple[Server.Event, LedgerEntry]] = []
        for s in stored:
            event: Any = self.app.mapper.to_domain_event(s)
            if isinstance(event, kinds):
                # a server event, unless every_kind (callers then use the entry only)
                out.append((cast("Server.Event", event), LedgerEntry.of(
                    event, positions.get(s.originator_version))))
        return out

    def _events(self, server_id: str | uuid.UUID, page_size: int = 1000
                ) -> Iterator[tuple[Server.Event, LedgerEntry]]:
        sid = self._uuid(server_id)
        after = 0
        found = False
        while True:
            stored = self._stored(sid, gt=after, limit=page_size)
            if not stored:
                break
            for pair in self._entries(stored, sid):
                found = True
                yield pair
            after = stored[-1].originator_version
            if len(stored) < page_size:
                break
        if not found:
            raise ServerNotFound(str(server_id))

    # --- history ----------------------------------------------------------------------
    def history(self, server_id: str | uuid.UUID, *, after: int = 0, limit: int = 100
                ) -> HistoryPage:
        """Events of one server (deleted ones too) with versions > ``after``, oldest first."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        sid = self._uuid(server_id)
        stored = list(self._stored(sid, gt=after, limit=limit + 1))
        more = len(stored) > limit
        stored = stored[:limit]
        entries = [entry for _, entry in self._entries(stored, sid)]
        if not entries and after == 0:
            raise ServerNotFound(str(server_id))
        return HistoryPage(str(sid), entries,
                           stored[-1].originator_version if more and stored else None)

    def iter_history(self, server_id: str | uuid.UUID, *, page_size: int = 1000
                     ) -> Iterator[LedgerEntry]:
        """Every event of one server, oldest first, read in pages."""
        for _, entry in self._events(server_id, page_size):
            yield entry

    # --- as of ------------------------------------------------------------------------
    def version_at(self, server_id: str | uuid.UUID, at: datetime) -> int | None:
        """The server's version at ``at``: its last event at or before it (None: not yet)."""
        sid = self._uuid(server_id)
        if self._audited is not None:
            version = self._audited.version_at(sid, at)
            if version is not None or self._audited.indexed_versions(sid) > 0:
                return version
        # a log written without the request index: scan the server's events
        found: int | None = None
        for s in self._stored(sid):
            fields = request_fields(s.state)
            if fields is not None and fields[1] <= at:
                found = s.originator_version
        return found

    def as_of(self, server_id: str | uuid.UUID, *, at: datetime | None = None,
              version: int | None = None, use_snapshots: bool = True) -> Server:
        """The server as it was at ``at`` (its last event at or before it) or at
        ``version`` (both: the earlier of the two). Deleted servers included.

        ``use_snapshots=False`` replays from the events alone: snapshots are not covered
        by the audit chain, so a verified replay does not trust them.
        """
        if at is None and version is None:
            raise ValueError("give a timestamp (at=) or a version (version=)")
        sid = self._uuid(server_id)
        if at is not None:
            found = self.version_at(sid, at)
            if found is None:
                raise ServerNotFound(f"{server_id} (it did not exist at {at.isoformat()})")
            version = found if version is None else min(version, found)
        assert version is not None
        if version < 1:
            raise ValueError("versions start at 1")
        aggregate: object
        try:
            if use_snapshots:
                aggregate = self.app.repository.get(sid, version=version)
            else:
                aggregate = None
                for event in self.app.repository.event_store.get(sid, lte=version):
                    aggregate = event.mutate(aggregate)  # type: ignore[attr-defined]
        except AggregateNotFoundError:
            raise ServerNotFound(str(server_id)) from None
        if not isinstance(aggregate, Server):
            raise ServerNotFound(str(server_id))
        return aggregate

    # --- causal chain -----------------------------------------------------------------
    def causal_chain(self, request_id: str) -> list[LedgerEntry]:
        """Every event any server recorded for ``request_id``, in log order: the request,
        the agent's steps, its hypervisor calls (with answers and durations), the
        outcome."""
        if self._audited is None:
            return self._scan_for_request(request_id)
        rows = self._audited.request_rows(request_id)
        by_server: dict[str, set[int]] = {}
        for row in rows:
            by_server.setdefault(row.originator_id, set()).add(row.originator_version)
        entries: list[LedgerEntry] = []
        for oid, versions in by_server.items():
            sid = uuid.UUID(oid)
            stored = [s for s in self._stored(sid, gt=min(versions) - 1, lte=max(versions))
                      if s.originator_version in versions]
            entries += [entry for _, entry in self._entries(stored, sid, every_kind=True)
                        if entry.request_id == request_id]
        return sorted(entries, key=lambda e: (e.position or 0, e.server_id, e.version))

    def _scan_for_request(self, request_id: str) -> list[LedgerEntry]:
        entries: list[LedgerEntry] = []
        after = 0
        while True:
            page = self.app.recorder.select_notifications(start=after, limit=1000,
                                                          inclusive_of_start=False)
            if not page:
                return entries
            for n in page:
                fields = request_fields(n.state)
                if fields is not None and fields[0] == request_id:
                    event = self.app.mapper.to_domain_event(n)
                    if isinstance(event, tuple(cls for cls, _ in _KINDS)):
                        entries.append(LedgerEntry.of(event, n.id))
            after = page[-1].id

    def story(self, request_id: str) -> list[str]:
        """The causal chain of a request in plain English."""
        entries = self.causal_chain(request_id)
        if not entries:
            return [f"No event was recorded for request {request_id}."]
        lines: list[str] = []
        for server_id in dict.fromkeys(e.server_id for e in entries):
            mine = [e for e in entries if e.server_id == server_id]
            lines.append(f"{_LABELS.get(mine[0].aggregate, 'Server')} {server_id}:")
            lines += _narrate(mine, [None] * len(mine), indent="  ")
        return lines

    # --- explain ----------------------------------------------------------------------
    def explain(self, server_id: str | uuid.UUID, *, last_requests: int | None = None
                ) -> list[str]:
        """Plain-English lines saying why the server is in its current status: each
        request (who asked what, when), what the agent and the hypervisor did and
        answered, failures with their faults, timer auto-confirms, and the outcome."""
        server: Server | None = None
        groups: dict[str, tuple[list[LedgerEntry], list[str | None]]] = {}
        for event, entry in self._events(server_id):
            server = event.mutate(server)  # type: ignore[arg-type]
            entries, statuses = groups.setdefault(entry.request_id, ([], []))
            entries.append(entry)
            statuses.append(_state(server))
        assert server is not None
        ordered = list(groups.items())
        shown = ordered if last_requests is None else ordered[-last_requests:]
        lines = [f"Server {server_id} ({server.name!r}): {len(ordered)} requests, "
                 f"{server.version} events."]
        if len(shown) < len(ordered):
            lines.append(f"(the first {len(ordered) - len(shown)} requests are not shown)")
        superseded = {
            str(e.payload.get("supersedes") or e.payload.get("superseded")): e.request_id
            for entries, _ in groups.values() for e in entries
            if e.payload.get("supersedes") or e.payload.get("superseded")}
        decisive: tuple[str, list[LedgerEntry]] | None = None
        for request_id, (entries, statuses) in shown:
            lines += _narrate(entries, statuses, indent="")
            opened = entries[0].event in ("Requested", "ActionRequested")
            settled = any(e.event in ("ActionCompleted", "ActionFailed") for e in entries)
            if opened and not settled:
                if request_id in superseded:
                    lines.append(f"  it never finished: request {superseded[request_id]} "
                                 "cut it short")
                elif server.pending_request_id == request_id:
                    lines.append(f"  still in progress (task {server.task_state})")
        for request_id, (entries, _) in ordered:
            if any(e.event in _DECISIVE for e in entries):
                decisive = (request_id, entries)
        lines.append(_now(server))
        if decisive is not None:
            lines.append("Why: " + _why(server, *decisive))
        return lines


# --- narration ------------------------------------------------------------------------

def _who(e: LedgerEntry) -> str:
    if e.cause == TIMER:
        return "the timer"
    if e.cause == AGENT:
        return "the host agent"
    who = e.user_id or "an unknown user"
    if e.project_id:
        who += f" (project {e.project_id})"
    return f"administrator {who}" if e.cause == ADMIN else who


class _Blank:
    """A parameter missing, None or "": the story falls back to the plain name."""


class _Fallback(Exception):
    pass


class _StoryFormatter(string.Formatter):
    """Fills a row's ``story`` template from a request's parameters."""

    def get_value(self, key: int | str, args: Sequence[Any], kwargs: Mapping[str, Any]
                  ) -> Any:
        value = kwargs.get(str(key))
        return _Blank() if value is None or value == "" else value

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        return value if isinstance(value, _Blank) else super().convert_field(value,
                                                                              conversion)

    def format_field(self, value: Any, format_spec: str) -> Any:
        if format_spec.startswith("or "):  # a default for a blank parameter
            return format_spec[3:] if isinstance(value, _Blank) else str(value)
        if isinstance(value, _Blank):
            raise _Fallback
        return super().format_field(value, format_spec)


_STORIES = _StoryFormatter()


def _what(action: str, params: dict[str, Any]) -> str:
    """What a request asked for, as its row's ``story`` tells it."""
    story = lc.row(action).story
    if story:
        try:
            return _STORIES.format(story, **params)
        except (_Fallback, LookupError, TypeError):  # a parameter it needs is not there
            pass
    return action.replace("_", " ")


def _opening(e: LedgerEntry) -> str:
    p = e.payload
    at = _ts(e.timestamp)
    if e.event == "Requested":
        flavor = p.get("flavor") or {}
        image = p.get("image") or {}
        return (f"{at} {_who(e)} asked to create server {p.get('name')!r} (flavor "
                f"{flavor.get('name')}, image {image.get('name')}) on host {p.get('host')}")
    if e.event == "ActionRequested":
        action = str(p.get("action"))
        if e.cause == TIMER and lc.row(action).timer_story:
            text = f"{at} {lc.row(action).timer_story}"
        else:
            text = f"{at} {_who(e)} asked to {_what(action, dict(p.get('params') or {}))}"
        if p.get("supersedes"):
            text += f", cutting short request {p['supersedes']}"
        return text
    if e.event == "LockChanged":
        reason = f" (reason: {p['locked_reason']!r})" if p.get("locked_reason") else ""
        return f"{at} {_who(e)} {p.get('action')}ed the server{reason}"
    if e.event == "StateReset":
        text = f"{at} {_who(e)} reset the state to {p.get('vm_state')}"
        if p.get("superseded"):
            text += f", abandoning request {p['superseded']}"
        return text
    if e.event == "Updated":
        changes = ", ".join(f"{k} to {v!r}" for k, v in dict(p.get("changes") or {}).items())
        return f"{at} {_who(e)} changed {changes or 'nothing'}"
    if e.event == "DriftObserved":
        text = (f"{at} the host agent found the guest {_power(p.get('observed_power_state'))} "
                f"on {p.get('host')} while the server was {p.get('previous_vm_state')}: now "
                f"{p.get('vm_state')}")
        if p.get("call"):
            text += " (it powered the guest off, as Nova's power-state sync does)"
        return text
    if e.aggregate == "idempotency":
        return (f"{at} {_who(e)} sent it with idempotency key {p.get('key')!r}: a repeat "
                "with that key is answered with this request's result")
    return f"{at} {_who(e)}: {_step(e)}"


def _step(e: LedgerEntry) -> str:
    p = e.payload
    if e.event == "TaskAdvanced":
        return f"the host agent moved {p.get('action')} to task {p.get('task_state')}"
    if e.event == "HypervisorCalled":
        call = (f"the host agent called {p.get('driver')}.{p.get('call')}"
                f"({_compact(p.get('arguments') or {}, 80)}) on {p.get('host')}")
        took = f"in {p.get('duration_ms')} ms"
        if p.get("error"):
            return f"{call}: it failed {took}: {p['error']}"
        return f"{call}: it answered {_compact(p.get('result'), 120)} {took}"
    if e.event == "StepReached":
        changes = dict(p.get("changes") or {})
        learned = sorted(dict(p.get("data") or {}))
        text = (f"{p.get('action')} reached a step: {p.get('host')}'s agent acts next, task"
                f" {p.get('task_state')}")
        if "migration_status" in changes:
            text += f", migration {changes['migration_status']}"
        return text + (f" (passing on: {', '.join(learned)})" if learned else "")
    if e.event == "MigrationSteered":
        what = "abort" if p.get("steer") == "abort" else "force to complete"
        return f"{_who(e)} asked to {what} the live migration in progress"
    if e.event == "HypervisorCallStarted":
        return (f"the host agent is about to call {p.get('driver')}.{p.get('call')}"
                f"({_compact(p.get('arguments') or {}, 80)}) on {p.get('host')}")
    if e.event == "ActionCompleted":
        text = f"{p.get('action')} completed (power {_power(p.get('power_state'))})"
        deadline = dict(p.get("changes") or {}).get("confirm_deadline")
        if isinstance(deadline, datetime):
            text += f"; to be confirmed by {_ts(deadline)} or the timer confirms it"
        return text
    if e.event == "ActionFailed":
        fault = dict(p.get("fault") or {})
        text = f"{p.get('action')} failed with fault {fault.get('code')}: {fault.get('message')}"
        return text + (" and was rolled back" if p.get("rollback") else "")
    if e.event in _OPENINGS:
        return _opening(e)
    # any other event (of this version or a later one): its name and what it says
    return f"{e.event} {_compact(e.payload, 120)}"


#: events :func:`_opening` describes itself (the others go through :func:`_step`)
_OPENINGS = frozenset(("Requested", "ActionRequested", "LockChanged", "StateReset",
                       "Updated", "DriftObserved"))


def _narrate(entries: list[LedgerEntry], statuses: Sequence[str | None], indent: str
             ) -> list[str]:
    lines: list[str] = []
    shown: str | None = None
    for i, (e, status) in enumerate(zip(entries, statuses, strict=True)):
        after = f" → {status}" if status is not None and status != shown else ""
        shown = status
        if i == 0:
            lines.append(f"{indent}{_opening(e)}{after} [request {e.request_id}]")
        else:
            lines.append(f"{indent}  {_ts(e.timestamp)} {_step(e)}{after}")
    return lines


def _now(server: Server) -> str:
    text = (f"Now: {_status(server)} (vm_state {server.vm_state}, task_state "
            f"{server.task_state}, power {_power(server.power_state)}, version "
            f"{server.version})")
    if server.locked:
        text += f", locked by {server.locked_by}"
    if server.fault and _status(server) == "ERROR":
        text += f", fault {server.fault.get('code')}: {server.fault.get('message')}"
    return text + "."


def _why(server: Server, request_id: str, entries: list[LedgerEntry]) -> str:
    first = entries[0]
    outcome = next((e for e in reversed(entries)
                    if e.event in ("ActionCompleted", "ActionFailed")), None)
    if first.event == "StateReset":
        return (f"{_who(first)} reset the state to {first.payload.get('vm_state')} at "
                f"{_ts(first.timestamp)} [request {request_id}].")
    if first.event == "Requested":
        asked = f"the create requested by {_who(first)} at {_ts(first.timestamp)}"
    elif first.event == "ActionRequested":
        action = str(first.payload.get("action"))
        what = _what(action, dict(first.payload.get("params") or {}))
        if first.cause == TIMER:
            what = lc.row(action).timer_reason or what
            asked = f"the automatic {what} by the timer at {_ts(first.timestamp)}"
        else:
            asked = f"the {what} requested by {_who(first)} at {_ts(first.timestamp)}"
    else:
        asked = f"request {request_id} at {_ts(first.timestamp)}"
    if outcome is None:
        if server.pending_request_id == request_id:
            return f"{asked} is still in progress (task {server.task_state}) [{request_id}]."
        return f"{asked} never finished [{request_id}]."
    if outcome.event == "ActionFailed":
        fault = dict(outcome.payload.get("fault") or {})
        calls = [e for e in entries if e.event == "HypervisorCalled" and e.payload.get("error")]
        cause = (f"; the hypervisor said: {calls[-1].payload['error']}" if calls else "")
        rolled = "was rolled back" if outcome.payload.get("rollback") else "failed"
        return (f"{asked} {rolled} at {_ts(outcome.timestamp)} with fault "
                f"{fault.get('code')}: {fault.get('message')}{cause} [{request_id}].")
    return f"{asked} completed at {_ts(outcome.timestamp)} [{request_id}]."

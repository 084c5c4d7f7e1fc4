"""The Server aggregate and its events.

Commands (public methods) check the lifecycle table and then trigger events. Event
``apply`` methods only assign fields: they never validate, so an old history replays
forever even after the rules change. Every event carries its causal context
(request_id, user_id, project_id, cause) and a timestamp from the injected clock.

Two-phase actions, as in Nova: the *request* event (:class:`Server.ActionRequested`)
is recorded when the guard accepts a command; the host agent then records progress
(:class:`Server.TaskAdvanced`), each hypervisor call it is about to make, ahead of it
(:class:`Server.HypervisorCallStarted`), the calls it made
(:class:`Server.HypervisorCalled`) and the outcome (:class:`Server.ActionCompleted` or
:class:`Server.ActionFailed`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate

from vmledger.domain import lifecycle as lc
from vmledger.domain import status as st
from vmledger.domain.changes import resolve
from vmledger.domain.drift import drift
from vmledger.domain.errors import Forbidden

#: causes of an event
USER, TIMER, AGENT, ADMIN = "user", "timer", "agent", "admin"


@dataclass(frozen=True)
class Context:
    """Who asked, on behalf of whom, and why: copied into every event."""

    request_id: str
    user_id: str | None
    project_id: str | None
    cause: str = USER
    is_admin: bool = False
    #: False when the request id was made up for a reusable caller context: each call
    #: made with it then gets a fresh request id (see ``Engine.context``)
    pinned: bool = True

    def fields(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "user_id": self.user_id,
                "project_id": self.project_id, "cause": self.cause}


class RequestEvent(Aggregate.Event):
    """What every event of vmledger's aggregates carries: the request that caused it, who
    asked (user and project; None for the timer) and why (:data:`USER`, ``timer``…), as
    :meth:`Context.fields` gives them."""

    request_id: str
    user_id: str | None
    project_id: str | None
    cause: str


class Server(Aggregate):
    """One virtual machine: its lifecycle state and everything the API shows."""

    # --- events -------------------------------------------------------------------
    class Event(RequestEvent):
        """A server's events."""

    class Requested(Aggregate.Created, Event):
        """A server was asked for (the create action was accepted)."""

        name: str
        owner_project_id: str
        owner_user_id: str
        flavor: dict[str, Any]
        image: dict[str, Any]
        host: str
        metadata: dict[str, str]
        description: str | None
        key_name: str | None
        availability_zone: str
        addresses: dict[str, Any]
        attributes: dict[str, Any]

        def apply(self, server: Server) -> None:
            server.name = self.name
            server.project_id = self.owner_project_id
            server.user_id = self.owner_user_id
            server.flavor = self.flavor
            server.image = self.image
            server.host = self.host
            server.metadata = dict(self.metadata)
            server.description = self.description
            server.key_name = self.key_name
            server.availability_zone = self.availability_zone
            server.addresses = self.addresses
            server.attributes = dict(self.attributes)
            server.vm_state = lc.BUILDING
            server.task_state = lc.SCHEDULING
            server.power_state = 0
            server.progress = 0
            server.launched_at = None
            server.terminated_at = None
            server.locked = False
            server.locked_by = None
            server.locked_reason = None
            server.fault = None
            server.pending = {"action": "create", "request_id": self.request_id,
                              "stashed": lc.BUILDING, "params": {}}
            server.old_vm_state = None
            server.old_flavor = None
            server.migration_status = None
            server.confirm_deadline = None

    class ActionRequested(Event):
        """The guard accepted an action; the host agent will enact it."""

        action: str
        vm_state: str
        task_state: str | None
        params: dict[str, Any]
        changes: dict[str, Any]
        supersedes: str | None

        def apply(self, server: Server) -> None:
            server.vm_state = self.vm_state
            server.task_state = self.task_state
            for key, value in self.changes.items():
                setattr(server, key, value)
            server.pending = {"action": self.action, "request_id": self.request_id,
                              "stashed": server.old_vm_state, "params": self.params}

    class TaskAdvanced(Event):
        """The host agent moved an action to its next task_state."""

        action: str
        task_state: str | None

        def apply(self, server: Server) -> None:
            server.task_state = self.task_state

    class HypervisorCalled(Event):
        """What the hypervisor was told and what it answered, and how long it took."""

        action: str
        host: str
        driver: str
        call: str
        arguments: dict[str, Any]
        result: dict[str, Any] | None
        error: str | None
        duration_ms: float

        def apply(self, server: Server) -> None:
            pending = server.pending
            if pending and (pending.get("calling") or {}).get("call") == self.call:
                server.pending = {k: v for k, v in pending.items() if k != "calling"}

    class HypervisorCallStarted(Event):
        """The host agent is about to make a hypervisor call (written ahead of it, with
        the guest as last seen): until the call is recorded, a crash leaves it in doubt,
        and the agent restarted compares the guest with ``observed`` before calling."""

        action: str
        host: str
        driver: str
        call: str
        arguments: dict[str, Any]
        observed: dict[str, Any] | None

        def apply(self, server: Server) -> None:
            if server.pending is not None:
                server.pending = {**server.pending, "calling": {
                    "call": self.call, "arguments": self.arguments,
                    "observed": self.observed}}

    class StepReached(Event):
        """An action that moves a server reached a step of its own: the host whose agent
        acts next (``host``: the other one, or the same), its task state, what the step
        learned for the next (``data``: what the destination answered, the disk the
        source sent…) and what else it changed (the migration status)."""

        action: str
        host: str
        task_state: str | None
        data: dict[str, Any]
        changes: dict[str, Any]

        def apply(self, server: Server) -> None:
            server.task_state = self.task_state
            for key, value in self.changes.items():
                setattr(server, key, value)
            if server.pending is not None:
                # a call in doubt was this host's own: the next host starts afresh
                pending = {k: v for k, v in server.pending.items() if k != "calling"}
                pending["host"] = self.host
                pending["handover"] = {**(pending.get("handover") or {}), **self.data}
                server.pending = pending

    class MigrationSteered(Event):
        """An administrator asked a live migration in progress to stop (``abort``) or to
        finish now (``force_complete``); the source host's agent acts on it."""

        action: str
        steer: str

        def apply(self, server: Server) -> None:
            if server.pending is not None:
                server.pending = {**server.pending, "steer": self.steer}

    class ActionCompleted(Event):
        """The host agent finished an action successfully."""

        action: str
        vm_state: str
        power_state: int
        changes: dict[str, Any]

        def apply(self, server: Server) -> None:
            server.vm_state = self.vm_state
            server.task_state = None
            server.power_state = self.power_state
            server.pending = None
            for key, value in self.changes.items():
                setattr(server, key, value)

    class ActionFailed(Event):
        """The action failed; the server ends as the table's failure rule says."""

        action: str
        vm_state: str
        power_state: int
        rollback: bool
        fault: dict[str, Any]
        changes: dict[str, Any]

        def apply(self, server: Server) -> None:
            server.vm_state = self.vm_state
            server.task_state = None
            server.power_state = self.power_state
            server.pending = None
            server.fault = self.fault
            for key, value in self.changes.items():
                setattr(server, key, value)

    class LockChanged(Event):
        """lock or unlock: synchronous, no task_state."""

        action: str
        locked: bool
        locked_by: str | None
        locked_reason: str | None

        def apply(self, server: Server) -> None:
            server.locked = self.locked
            server.locked_by = self.locked_by
            server.locked_reason = self.locked_reason

    class StateReset(Event):
        """An admin set the vm_state (active or error) and cleared the task_state."""

        vm_state: str
        superseded: str | None

        def apply(self, server: Server) -> None:
            server.vm_state = self.vm_state
            server.task_state = None
            server.pending = None

    class DriftObserved(Event):
        """The hypervisor disagreed with the record; what it said and what was done.

        ``action`` is ``"stop"`` (Nova's power-state sync stops the server; ``call``
        describes the power-off the agent made, if the guest was still on) or
        ``"record"`` (only the power state is updated).
        """

        host: str
        observed_power_state: int
        power_state: int
        previous_vm_state: str
        vm_state: str
        drift_action: str
        call: dict[str, Any] | None

        def apply(self, server: Server) -> None:
            server.vm_state = self.vm_state
            server.power_state = self.power_state

    class EvacuatedGuestRemoved(Event):
        """The host a server was evacuated from is back, and its agent removed the old
        guest left there (Nova's ``_destroy_evacuated_instances``): ``call`` is the
        hypervisor call it made (None when there was no guest left). The evacuation's
        migration is ``completed``."""

        host: str
        call: dict[str, Any] | None

        def apply(self, server: Server) -> None:
            if server.migration_status == "done":
                server.migration_status = "completed"

    class Updated(Event):
        """Name, description or access addresses changed (PUT /servers/{id})."""

        changes: dict[str, Any]

        def apply(self, server: Server) -> None:
            for key, value in self.changes.items():
                setattr(server, key, value)

    # --- typed fields (set by Requested.apply; listed for readers and mypy) -------
    name: str
    project_id: str
    user_id: str
    flavor: dict[str, Any]
    image: dict[str, Any]
    host: str
    metadata: dict[str, str]
    description: str | None
    key_name: str | None
    availability_zone: str
    addresses: dict[str, Any]
    attributes: dict[str, Any]
    vm_state: str
    task_state: str | None
    power_state: int
    progress: int
    launched_at: datetime | None
    terminated_at: datetime | None
    locked: bool
    locked_by: str | None
    locked_reason: str | None
    fault: dict[str, Any] | None
    pending: dict[str, Any] | None
    old_vm_state: str | None
    old_flavor: dict[str, Any] | None
    migration_status: str | None
    confirm_deadline: datetime | None
    #: set by a completed shelve, cleared by an unshelve (absent from older histories)
    shelved_image_id: str | None
    #: the host a move in progress goes to (set by its request, cleared by its outcome)
    migration_dest: str | None
    #: the host keeping the old copy of a server moved by a resize or a cold migration,
    #: until it is confirmed or reverted
    migration_source: str | None

    def __init__(self) -> None:
        """Fields are assigned by :meth:`Requested.apply` (so replay builds the same)."""

    def __deepcopy__(self, memo: dict[int, Any]) -> Server:
        """A copy for one command (the repository copies its cached aggregate per load).

        Event ``apply`` methods and commands only ever *assign* attributes, never change
        a nested value in place, so sharing the nested values is safe and a full deep
        copy (~100 µs, a tenth of a SQLite command) is not needed. A test guards the rule.
        """
        clone = type(self).__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone._pending_events = []
        return clone

    # --- reading -------------------------------------------------------------------
    @property
    def status(self) -> str:
        return st.status_of(self.vm_state, self.task_state)

    @property
    def subject(self) -> lc.Subject:
        return lc.Subject(server_id=str(self.id), vm_state=self.vm_state,
                          task_state=self.task_state, launched=self.launched_at is not None,
                          locked=self.locked, migration_status=self.migration_status)

    @property
    def pending_action(self) -> str | None:
        return self.pending["action"] if self.pending else None

    @property
    def pending_request_id(self) -> str | None:
        return self.pending["request_id"] if self.pending else None

    @property
    def acting_host(self) -> str | None:
        """Whose host agent enacts the action in flight now (see
        :func:`~vmledger.domain.lifecycle.acting_host`)."""
        pending = self.pending or {}
        return lc.acting_host(pending.get("action"), self.host, pending.get("params"),
                              getattr(self, "migration_source", None), pending.get("host"))

    # --- commands (guard, then record) ---------------------------------------------
    @classmethod
    def request(cls, *, id: UUID, ctx: Context, at: datetime, name: str,
                flavor: dict[str, Any], image: dict[str, Any], host: str,
                metadata: dict[str, str], description: str | None, key_name: str | None,
                availability_zone: str, addresses: dict[str, Any],
                attributes: dict[str, Any]) -> Server:
        assert ctx.project_id is not None and ctx.user_id is not None
        lc.fire("request:create", lc.NEW, None)
        return cls._create(
            cls.Requested, id=id, timestamp=at, **ctx.fields(), name=name,
            owner_project_id=ctx.project_id, owner_user_id=ctx.user_id, flavor=flavor,
            image=image, host=host, metadata=metadata, description=description,
            key_name=key_name, availability_zone=availability_zone, addresses=addresses,
            attributes=attributes)

    def request_action(self, action: str, ctx: Context, at: datetime, *,
                       params: dict[str, Any] | None = None,
                       changes: dict[str, Any] | None = None) -> None:
        """Guard an asynchronous action and record its request."""
        vm_state, task_state = lc.check(action, self.subject, is_admin=ctx.is_admin)
        row = lc.ACTIONS[action]
        changes = dict(changes or {})
        if row.stashes_vm_state:
            changes["old_vm_state"] = self.vm_state
        if row.steps:
            changes.setdefault("progress", 0)
        self.trigger_event(
            self.ActionRequested, timestamp=at, **ctx.fields(), action=action,
            vm_state=vm_state, task_state=task_state, params=dict(params or {}),
            changes=changes, supersedes=self.pending_request_id)

    def lock(self, ctx: Context, at: datetime, reason: str | None) -> None:
        lc.check("lock", self.subject, is_admin=ctx.is_admin)
        self.trigger_event(self.LockChanged, timestamp=at, **ctx.fields(), action="lock",
                           locked=True, locked_by="admin" if ctx.is_admin else "owner",
                           locked_reason=reason)

    def unlock(self, ctx: Context, at: datetime) -> None:
        lc.check("unlock", self.subject, is_admin=ctx.is_admin)
        if self.locked and self.locked_by == "admin" and not ctx.is_admin:
            raise Forbidden("Policy doesn't allow os_compute_api:os-lock-server:"
                            "unlock:unlock_override to be performed.")
        self.trigger_event(self.LockChanged, timestamp=at, **ctx.fields(), action="unlock",
                           locked=False, locked_by=None, locked_reason=None)

    def reset_state(self, ctx: Context, at: datetime, target: str) -> None:
        vm_state, _ = lc.check("reset_state", self.subject, is_admin=ctx.is_admin,
                               target=target)
        self.trigger_event(self.StateReset, timestamp=at, **ctx.fields(), vm_state=vm_state,
                           superseded=self.pending_request_id)

    def evacuated_guest_removed(self, ctx: Context, at: datetime, *, host: str,
                                call: dict[str, Any] | None) -> bool:
        """Record that ``host``, which this server was evacuated from, removed the old
        guest; False (nothing recorded) unless the evacuation is done and ``host`` is
        not where the server is now."""
        if self.migration_status != "done" or host == self.host:
            return False
        self.trigger_event(self.EvacuatedGuestRemoved, timestamp=at, **ctx.fields(),
                           host=host, call=call)
        return True

    def observe_drift(self, ctx: Context, at: datetime, *, host: str, observed: int,
                      power_state: int, call: dict[str, Any] | None) -> bool:
        """Record what a power-state sync found; False (nothing recorded) if in sync."""
        decision = drift(self.vm_state, self.task_state, observed)
        if decision is None or (observed == self.power_state and decision != "stop"):
            return False
        vm_state = lc.STOPPED if decision == "stop" else self.vm_state
        if vm_state == self.vm_state and power_state == self.power_state and call is None:
            return False
        self.trigger_event(self.DriftObserved, timestamp=at, **ctx.fields(), host=host,
                           observed_power_state=observed, power_state=power_state,
                           previous_vm_state=self.vm_state, vm_state=vm_state,
                           drift_action=decision, call=call)
        return True

    def update(self, ctx: Context, at: datetime, changes: dict[str, Any]) -> None:
        self.trigger_event(self.Updated, timestamp=at, **ctx.fields(), changes=changes)

    def change_metadata(self, ctx: Context, at: datetime, metadata: dict[str, str], *,
                        action: str = "update_metadata") -> None:
        """Set the whole metadata (``action``: ``update_metadata`` or
        ``delete_metadata``, whose rows in the lifecycle table decide when it may)."""
        lc.check(action, self.subject, is_admin=ctx.is_admin)
        if metadata != self.metadata:
            self.trigger_event(self.Updated, timestamp=at, **ctx.fields(),
                               changes={"metadata": dict(metadata)})

    def change_tags(self, ctx: Context, at: datetime, tags: list[str], *, action: str
                    ) -> None:
        """Set the server's tags (``action``: one of the table's tag rows, which decide
        when it may)."""
        lc.check(action, self.subject, is_admin=ctx.is_admin)
        if tags != list(self.attributes.get("tags") or []):
            self.trigger_event(self.Updated, timestamp=at, **ctx.fields(),
                               changes={"attributes": {**self.attributes, "tags": tags}})

    # --- agent outcomes ---------------------------------------------------------------
    def advance(self, ctx: Context, at: datetime, task_state: str) -> None:
        action = self._in_flight()
        _, new_task = lc.outcome("advance", action, self.vm_state, self.task_state)
        if new_task != task_state:
            raise lc.NotAllowed(f"{action}: next step is {new_task}, not {task_state}")
        self.trigger_event(self.TaskAdvanced, timestamp=at, **ctx.fields(), action=action,
                           task_state=task_state)

    def record_call(self, ctx: Context, at: datetime, *, host: str, driver: str, call: str,
                    arguments: dict[str, Any], result: dict[str, Any] | None,
                    error: str | None, duration_ms: float) -> None:
        self.trigger_event(self.HypervisorCalled, timestamp=at, **ctx.fields(),
                           action=self.pending_action or "", host=host, driver=driver,
                           call=call, arguments=arguments, result=result, error=error,
                           duration_ms=round(duration_ms, 3))

    def start_call(self, ctx: Context, at: datetime, *, host: str, driver: str, call: str,
                   arguments: dict[str, Any], observed: dict[str, Any] | None) -> None:
        """Write a hypervisor call ahead of making it (see :class:`HypervisorCallStarted`)."""
        self.trigger_event(self.HypervisorCallStarted, timestamp=at, **ctx.fields(),
                           action=self._in_flight(), host=host, driver=driver, call=call,
                           arguments=arguments, observed=observed)

    def reach_step(self, ctx: Context, at: datetime, *, host: str,
                   task_state: str | None = None, data: dict[str, Any] | None = None,
                   changes: dict[str, Any] | None = None) -> None:
        """Record that the action in flight reached a step: ``host`` acts next, in
        ``task_state`` (the current one when None, else the next of its row's steps)."""
        action = self._in_flight()
        if task_state is not None and task_state != self.task_state:
            steps = lc.row(action).steps
            if (task_state not in steps or self.task_state not in steps
                    or steps.index(task_state) < steps.index(self.task_state)):
                raise lc.NotAllowed(f"{action}: no step {task_state} after "
                                    f"{self.task_state}")
        self.trigger_event(self.StepReached, timestamp=at, **ctx.fields(), action=action,
                           host=host, task_state=task_state or self.task_state,
                           data=dict(data or {}), changes=dict(changes or {}))

    def steer_migration(self, ctx: Context, at: datetime, steer: str) -> None:
        """Ask the live migration in flight to ``abort`` or ``force_complete``."""
        self.trigger_event(self.MigrationSteered, timestamp=at, **ctx.fields(),
                           action=self._in_flight(), steer=steer)

    @property
    def call_in_doubt(self) -> dict[str, Any] | None:
        """The hypervisor call written ahead and not recorded (``call``, ``arguments``,
        ``observed``): the agent died between the two, before or after making it."""
        calling: dict[str, Any] | None = (self.pending or {}).get("calling")
        return calling

    def complete(self, ctx: Context, at: datetime, *, power_state: int,
                 confirm_window: timedelta | None = None) -> None:
        """Record success; the action's row says the end state and what else changes."""
        action = self._in_flight()
        assert self.pending is not None
        vm_state, _ = lc.outcome("complete", action, self.vm_state, self.task_state,
                                 stashed=self.pending["stashed"])
        changes = resolve(lc.row(action).on_complete, server=self, at=at,
                          params=self.pending.get("params") or {},
                          confirm_window=confirm_window)
        self.trigger_event(self.ActionCompleted, timestamp=at, **ctx.fields(), action=action,
                           vm_state=vm_state, power_state=power_state, changes=changes)

    def fail(self, ctx: Context, at: datetime, *, power_state: int, rollback: bool,
             message: str, code: int = 500, details: str | None = None,
             unplaced: bool = False, changes: dict[str, Any] | None = None) -> None:
        """Record failure: ERROR with a fault, or back where it was (rollback); the
        action's row says what else changes. ``unplaced``: a new server no host could
        take (it shows no host, as in Nova). ``changes``: what else changes beyond the
        row's rule (an aborted live migration is ``cancelled``, not ``failed``)."""
        action = self._in_flight()
        assert self.pending is not None
        vm_state, _ = lc.outcome("rollback" if rollback else "fail", action, self.vm_state,
                                 self.task_state)
        recorded: dict[str, Any] = {"unplaced": True} if unplaced else {}
        recorded.update(resolve(lc.row(action).on_fail, server=self, at=at,
                                params=self.pending.get("params") or {}))
        recorded.update(changes or {})
        fault = {"code": code, "message": message, "details": details, "created": at}
        self.trigger_event(self.ActionFailed, timestamp=at, **ctx.fields(), action=action,
                           vm_state=vm_state, power_state=power_state, rollback=rollback,
                           fault=fault, changes=recorded)

    def _in_flight(self) -> str:
        if not self.pending:
            raise lc.NotAllowed("no action in flight")
        return str(self.pending["action"])

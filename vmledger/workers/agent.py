"""The host agent: enacts requested transitions on one hypervisor host.

Level-triggered: every pass reconciles every server on its host that has an action in
flight (on start-up too), so a crash anywhere never leaves a server stuck. Before acting
it asks the hypervisor where the guest really is and skips a call whose effect is
already there, so a step repeated after a crash is harmless. Every hypervisor call is
recorded as an event (what was asked, what was answered, how long it took), then the
outcome, following the lifecycle table's success and failure rules.

What an action costs: the agent gathers its steps and records them together, in one
command (one commit) at each point where it must: *about to call* — the remaining task
states, the observations made and the call written ahead (``HypervisorCallStarted``),
before every call that changes the guest — and *outcome* — the call's record with the
completion or failure. A hard reboot is three commits in all with the request. A call
written ahead and never recorded is *in doubt* after a crash: the agent restarted
compares the guest with what it saw before the call (power state, definition, and the
boot counter and disk generation when the driver reports them); if it changed, the
call acted and is recorded as found, not made again; if not, it is made (exactly once).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any, Protocol

from vmledger.adapters.hypervisor import (
    GuestSpec,
    Hypervisor,
    HypervisorError,
    Observation,
    PowerState,
)
from vmledger.domain import lifecycle as lc
from vmledger.domain.commands import Commands
from vmledger.domain.errors import VmledgerError
from vmledger.domain.server import Context, Server
from vmledger.domain.service import ServerService
from vmledger.projections import images as image_view
from vmledger.projections.migrations import list_migrations
from vmledger.projections.runner import ViewUpdater

log = logging.getLogger(__name__)

#: unexpected errors (not hypervisor refusals) tolerated per action before it fails
MAX_UNEXPECTED = 5
#: servers read and compared per batch of a power-state sync pass, and the pause
#: between batches (seconds) that lets the API's threads run
SYNC_BATCH = 100
SYNC_PAUSE = 0.001
#: calls never made twice: in doubt after a crash, they count as made (an NMI leaves
#: nothing to observe, and a second one would dump the guest twice)
AT_MOST_ONCE = frozenset({"inject_nmi"})

Step = Callable[[Server, Context, Any], None]


class _Superseded(Exception):
    """The action moved on (superseded, finished): the agent stops enacting it."""

_STATE_OF_POWER = {
    PowerState.RUNNING: "running", PowerState.PAUSED: "paused",
    PowerState.SHUTDOWN: "shut off", PowerState.SUSPENDED: "suspended",
}


class AgentObserver(Protocol):
    """Told what the agent did and how long it took (the metrics listen)."""

    def hypervisor_call(self, call: str, error: str | None, seconds: float) -> None:
        """One hypervisor call made (``error``: None when it succeeded)."""

    def agent_pass(self, kind: str, seconds: float, handled: int) -> None:
        """One pass done: ``reconcile`` (actions in flight) or ``power_sync``."""


class HostAgent:
    """One per hypervisor host; safe to stop and start again at any moment."""

    def __init__(self, service: ServerService, commands: Commands, updater: ViewUpdater,
                 hypervisor: Hypervisor, host: str, *,
                 stopwatch: Callable[[], float] = time.perf_counter) -> None:
        self.service = service
        #: what the agent records goes through the command pipeline
        self.outcomes = commands.outcomes
        self.images = commands.images
        self.stopwatch = stopwatch
        self.updater = updater
        self.hypervisor = hypervisor
        self.host = host
        self._unexpected: dict[str, int] = {}
        self._started = False
        self.observers: list[AgentObserver] = []
        #: the action being reconciled (server id, request id) and its steps not yet
        #: recorded: they are recorded together at the next commit (see the module)
        self._action: tuple[str, str] | None = None
        self._steps: list[Step] = []
        #: the guest as last seen (see :func:`seen`), written ahead with a call
        self._seen: dict[str, Any] | None = None
        #: a call in doubt found to have acted before a crash: not made again
        self._found: tuple[str, dict[str, Any]] | None = None

    def _observe_call(self, call: str, error: str | None, seconds: float) -> None:
        for observer in self.observers:
            observer.hypervisor_call(call, error, seconds)

    def _observe_pass(self, kind: str, started: float, handled: int) -> None:
        seconds = time.perf_counter() - started  # wall time, whatever the stopwatch
        for observer in self.observers:
            observer.agent_pass(kind, seconds, handled)

    # --- the loop ---------------------------------------------------------------------
    def pending(self) -> list[tuple[str, str]]:
        self.updater.catch_up()
        return self.updater.view.in_flight(self.host)

    def run_once(self) -> int:
        """Reconcile every server with an action in flight; return how many were handled.
        The first pass also removes the guests of servers evacuated away from this host
        while it was down (as Nova's compute does when it starts)."""
        started = time.perf_counter()
        handled = 0
        if not self._started:
            self._started = True
            handled += self.remove_evacuated_guests()
        for server_id, request_id in self.pending():
            try:
                self.reconcile(server_id, request_id)
            except Exception:  # a bug or a lost connection: retried on the next pass
                count = self._unexpected.get(request_id, 0) + 1
                self._unexpected[request_id] = count
                log.exception("agent %s: reconciling %s (%s) failed, attempt %d",
                              self.host, server_id, request_id, count)
                if count >= MAX_UNEXPECTED:
                    self._give_up(server_id, request_id)
            handled += 1
        self._observe_pass("reconcile", started, handled)
        return handled

    def _give_up(self, server_id: str, request_id: str) -> None:
        obs = self.hypervisor.observe(server_id)
        self.outcomes.record(server_id, request_id, lambda s, c, at: s.fail(
            c, at, power_state=int(obs.power_state), rollback=False,
            message="The host agent could not complete the action", code=500))

    # --- evacuated servers ----------------------------------------------------------------
    def remove_evacuated_guests(self) -> int:
        """Destroy the guests this host still has of servers evacuated from it (their
        evacuation ``done``, the server rebuilt elsewhere): the old copy must not run
        beside the new one. Each is recorded on its server (``EvacuatedGuestRemoved``,
        the evacuation ``completed``); a guest that cannot be destroyed now is tried
        again on the next power-state sync. Returns how many were recorded."""
        self.updater.catch_up()
        removed = 0
        for row in list_migrations(self.updater.view, equal={
                "migration_type": "evacuation", "source_compute": self.host,
                "status": "done"}):
            server_id = str(row["server_id"])
            obs = self.hypervisor.observe(server_id)
            call: dict[str, Any] | None = None
            if obs.exists:
                started = self.stopwatch()
                try:
                    result: Any = dict(self.hypervisor.destroy(server_id))
                except HypervisorError as e:
                    self._observe_call("destroy", e.message, self.stopwatch() - started)
                    log.warning("agent %s: the guest %s evacuated from here could not be "
                                "removed: %s", self.host, server_id, e.message)
                    continue
                self._observe_call("destroy", None, self.stopwatch() - started)
                call = {"call": "destroy", "driver": self.hypervisor.driver,
                        "result": result, "error": None,
                        "duration_ms": round((self.stopwatch() - started) * 1000, 3)}
            if self.outcomes.record_evacuated_guest_removed(server_id, host=self.host,
                                                           call=call).accepted:
                removed += 1
        if removed:
            self.updater.catch_up()
        return removed

    # --- drift -------------------------------------------------------------------------------
    def sync_power_states(self) -> int:
        """Compare every idle server on this host with the hypervisor (Nova's
        ``_sync_power_states``); record each difference as an event, stopping the server
        where Nova's policy says so. Returns how many servers drifted. Guests left behind
        by evacuated servers are removed first (:meth:`remove_evacuated_guests`)."""
        started = time.perf_counter()
        self.remove_evacuated_guests()
        self.updater.catch_up()
        drifted = 0
        after: str | None = None
        while True:  # in batches by id: bounded reads, and the API runs in between
            batch = self.updater.view.idle_states(self.host, after=after, limit=SYNC_BATCH)
            for server_id, vm_state, task_state, power_state in batch:
                if self.sync_one(server_id, vm_state, task_state, power_state):
                    drifted += 1
            if len(batch) < SYNC_BATCH:
                break
            after = batch[-1][0]
            time.sleep(SYNC_PAUSE)
        if drifted:
            self.updater.catch_up()
        self._observe_pass("power_sync", started, drifted)
        return drifted

    def sync_one(self, server_id: str, vm_state: str, task_state: str | None,
                 recorded_power: int) -> bool:
        obs = self.hypervisor.observe(server_id)
        observed = int(obs.power_state) if obs.exists else int(PowerState.NOSTATE)
        decision = lc.drift(vm_state, task_state, observed)
        if decision is None or (decision == "record" and observed == recorded_power):
            return False
        power, call = observed, None
        if decision == "stop" and obs.exists and obs.power_state in (
                PowerState.RUNNING, PowerState.PAUSED, PowerState.CRASHED):
            started = self.stopwatch()
            try:
                result: Any = dict(self.hypervisor.power_off(server_id))
                error = None
            except HypervisorError as e:
                result, error = None, e.message
            self._observe_call("power_off", error, self.stopwatch() - started)
            call = {"call": "power_off", "driver": self.hypervisor.driver, "result": result,
                    "error": error,
                    "duration_ms": round((self.stopwatch() - started) * 1000, 3)}
            power = int(self.hypervisor.observe(server_id).power_state)
        recorded = self.outcomes.record_drift(server_id, host=self.host, observed=observed,
                                             power_state=power, call=call)
        if recorded.accepted:
            log.warning("agent %s: %s drifted (hypervisor says power %d, record said %s/%d):"
                        " %s", self.host, server_id, observed, vm_state, recorded_power,
                        decision)
        return recorded.accepted

    # --- one server ---------------------------------------------------------------------
    def reconcile(self, server_id: str, request_id: str) -> None:
        """Drive the action ``request_id`` of one server to its outcome."""
        server = self.service.get(server_id, include_deleted=True)
        if server.pending_request_id != request_id or server.host != self.host:
            return
        action = server.pending_action
        assert action is not None
        self._action, self._steps, self._seen, self._found = (
            (server_id, request_id), [], None, None)
        try:
            # the remaining task states, recorded with the first commit
            steps = lc.ACTIONS[action].steps
            if server.task_state in steps:
                self._steps.extend(_advance_to(task_state) for task_state
                                   in steps[steps.index(server.task_state) + 1:])
            self._resolve_doubt(server)
            try:
                _PLANS[action](self, server)
            except HypervisorError as error:
                self._failed(server, error)
                return
            obs = self.hypervisor.observe(server_id)
            window = self.service.confirm_window
            self._steps.append(lambda s, c, at: s.complete(
                c, at, power_state=int(obs.power_state),
                confirm_window=window if window > timedelta(0) else None))
            self._commit()
        except _Superseded:
            return
        except Exception:
            # what was seen and done so far is recorded before the error is handled
            with contextlib.suppress(Exception):
                self._commit()
            raise
        finally:
            self._action, self._steps, self._found = None, [], None
        self._unexpected.pop(request_id, None)
        if action == "unshelve":
            self._drop_shelved_image(server, request_id)

    def _commit(self) -> None:
        """Record the gathered steps in one command; :class:`_Superseded` when the
        action has moved on meanwhile (nothing is recorded, nothing more is done)."""
        if not self._steps:
            return
        assert self._action is not None
        steps, self._steps = self._steps, []
        server_id, request_id = self._action

        def apply(server: Server, ctx: Context, at: Any) -> None:
            for step in steps:
                step(server, ctx, at)
        if not self.outcomes.record(server_id, request_id, apply).accepted:
            raise _Superseded

    def _resolve_doubt(self, server: Server) -> None:
        """A call written ahead and not recorded (the agent died in between): if the
        guest changed since it was written ahead, the call acted (or it is one never made
        twice): it is recorded as found and not made again; otherwise the plan makes it."""
        doubt = server.call_in_doubt
        if doubt is None:
            return
        name, arguments = str(doubt["call"]), dict(doubt.get("arguments") or {})
        found = seen(self.hypervisor.observe(str(server.id)))
        if name not in AT_MOST_ONCE and found == doubt.get("observed"):
            log.info("agent %s: %s of %s was not made before the restart: making it",
                     self.host, name, server.id)
            return
        log.warning("agent %s: %s of %s was made before the restart: not repeated",
                    self.host, name, server.id)
        self._found = (name, arguments)
        self._seen = found
        self._steps.append(lambda s, c, at: s.record_call(
            c, at, host=self.host, driver=self.hypervisor.driver, call=name,
            arguments=arguments, result={"found_after_restart": found}, error=None,
            duration_ms=0.0))

    def _drop_shelved_image(self, server: Server, request_id: str) -> None:
        """Delete the image a server was shelved into once it runs again (as Nova)."""
        assert server.pending is not None
        image_id = server.pending["params"].get("image_id")
        if not image_id:
            return
        with contextlib.suppress(VmledgerError):  # deleted meanwhile by its owner
            self.images.record_image(str(image_id), request_id,
                                      lambda i, c, at: i.delete(c, at))

    def _failed(self, server: Server, error: HypervisorError) -> None:
        obs = self.hypervisor.observe(str(server.id))
        rollback = error.rollback
        if server.pending_action in ("reboot_soft", "reboot_hard"):
            # Nova: a guest still running after a failed reboot stays ACTIVE
            rollback = obs.power_state == PowerState.RUNNING
        self._steps.append(lambda s, c, at: s.fail(
            c, at, power_state=int(obs.power_state), rollback=rollback,
            message=error.message, code=error.code))
        self._commit()

    # --- recorded hypervisor calls ----------------------------------------------------------
    def call(self, server: Server, name: str, arguments: dict[str, Any],
             fn: Callable[[], Any]) -> Any:
        """Make one hypervisor call and record it, with its answer or its error.

        A call that changes the guest (any but ``observe``) is written ahead first, with
        the steps gathered so far, in one commit; its record waits for the next commit
        (the next call's, or the outcome's). If the process dies during the call, the
        call is in doubt: the agent restarted settles it (see :meth:`_resolve_doubt`).
        """
        if name != "observe":
            if self._found == (name, arguments):
                self._found = None
                return {"already": True}
            if self._seen is None:
                self._seen = seen(self.hypervisor.observe(str(server.id)))
            observed, host, driver = self._seen, self.host, self.hypervisor.driver
            self._steps.append(lambda s, c, at: s.start_call(
                c, at, host=host, driver=driver, call=name, arguments=arguments,
                observed=observed))
            self._commit()
            self._seen = None  # the call may change the guest
        started = self.stopwatch()
        try:
            result = fn()
        except HypervisorError as e:
            self._record_call(name, arguments, None, e.message, started)
            raise
        except Exception as e:
            self._record_call(name, arguments, None, repr(e), started)
            raise
        if isinstance(result, Observation):
            self._seen = seen(result)
        recorded = (result.as_dict() if isinstance(result, Observation)
                    else dict(result) if result is not None else None)
        self._record_call(name, arguments, recorded, None, started)
        return result

    def _record_call(self, name: str, arguments: dict[str, Any],
                     result: dict[str, Any] | None, error: str | None, started: float
                     ) -> None:
        elapsed = (self.stopwatch() - started) * 1000
        self._observe_call(name, error, elapsed / 1000)
        host, driver = self.host, self.hypervisor.driver
        self._steps.append(lambda s, c, at: s.record_call(
            c, at, host=host, driver=driver, call=name, arguments=arguments, result=result,
            error=error, duration_ms=elapsed))

    def observe(self, server: Server) -> Observation:
        obs: Observation = self.call(server, "observe", {},
                                     lambda: self.hypervisor.observe(str(server.id)))
        return obs


def seen(obs: Observation) -> dict[str, Any]:
    """What a call written ahead is compared with after a crash: the observation, and
    the boot counter and disk generation when the driver reports them (a reboot or a
    rebuild shows only there)."""
    return {**obs.as_dict(), **{key: obs.details[key] for key in ("boot_count", "generation")
                                if key in obs.details}}


def _advance_to(task_state: str) -> Step:
    def step(server: Server, ctx: Context, at: Any) -> None:
        server.advance(ctx, at, task_state)
    return step


def spec_of(server: Server, flavor: dict[str, Any] | None = None) -> GuestSpec:
    f = flavor or server.flavor
    return GuestSpec(server_id=str(server.id), name=server.name, flavor_id=str(f["id"]),
                     vcpus=int(f["vcpus"]), ram_mb=int(f["ram"]), disk_gb=int(f["disk"]),
                     image_id=str(server.image["id"]), mac=_mac_of(server))


def _mac_of(server: Server) -> str | None:
    """The MAC of the server's first port, as the API shows it."""
    for ports in (getattr(server, "addresses", None) or {}).values():
        for port in ports:
            mac = port.get("OS-EXT-IPS-MAC:mac_addr")
            if isinstance(mac, str):
                return mac
    return None


def _missing(obs: Observation) -> None:
    if not obs.exists:
        raise HypervisorError("Domain not found: the guest no longer exists", code=404)


# --- what each action does on the hypervisor (idempotent given an observation) -------
def _create(agent: HostAgent, server: Server) -> None:
    obs = agent.observe(server)
    if obs.exists and obs.power_state == PowerState.RUNNING:
        return
    hv = agent.hypervisor
    if obs.exists:
        agent.call(server, "power_on", {}, lambda: hv.power_on(str(server.id)))
        return
    spec = spec_of(server)
    agent.call(server, "spawn", _spec_args(spec), lambda: hv.spawn(spec))


def _spec_args(spec: GuestSpec) -> dict[str, Any]:
    return {"flavor_id": spec.flavor_id, "vcpus": spec.vcpus, "ram_mb": spec.ram_mb,
            "disk_gb": spec.disk_gb, "image_id": spec.image_id}


def _reboot(hard: bool) -> Callable[[HostAgent, Server], None]:
    def enact(agent: HostAgent, server: Server) -> None:
        _missing(agent.observe(server))
        agent.call(server, "reboot", {"hard": hard},
                   lambda: agent.hypervisor.reboot(str(server.id), hard=hard))
    return enact


def _rebuild(agent: HostAgent, server: Server) -> None:
    _missing(agent.observe(server))
    spec = spec_of(server)
    agent.call(server, "rebuild", _spec_args(spec), lambda: agent.hypervisor.rebuild(spec))


def _resize(agent: HostAgent, server: Server) -> None:
    obs = agent.observe(server)
    _missing(obs)
    assert server.pending is not None
    new = server.pending["params"]["flavor"]
    if obs.resize_pending and obs.flavor_id == str(new["id"]):
        return  # done before a crash
    spec = spec_of(server, new)
    agent.call(server, "resize", _spec_args(spec), lambda: agent.hypervisor.resize(spec))


def _confirm(agent: HostAgent, server: Server) -> None:
    obs = agent.observe(server)
    _missing(obs)
    if obs.resize_pending:
        agent.call(server, "confirm_resize", {},
                   lambda: agent.hypervisor.confirm_resize(str(server.id)))


def _revert(agent: HostAgent, server: Server) -> None:
    obs = agent.observe(server)
    _missing(obs)
    if obs.resize_pending:
        agent.call(server, "revert_resize", {},
                   lambda: agent.hypervisor.revert_resize(str(server.id)))
        obs = agent.hypervisor.observe(str(server.id))
    # a server resized while stopped is stopped again after the revert
    if server.old_vm_state == lc.STOPPED and obs.power_state != PowerState.SHUTDOWN:
        agent.call(server, "power_off", {},
                   lambda: agent.hypervisor.power_off(str(server.id)))


def _power(op: str, target: PowerState) -> Callable[[HostAgent, Server], None]:
    def enact(agent: HostAgent, server: Server) -> None:
        obs = agent.observe(server)
        _missing(obs)
        if obs.power_state == target:
            return
        fn = getattr(agent.hypervisor, op)
        agent.call(server, op, {}, lambda: fn(str(server.id)))
    return enact


def _delete(agent: HostAgent, server: Server) -> None:
    obs = agent.observe(server)
    if obs.exists:
        agent.call(server, "destroy", {}, lambda: agent.hypervisor.destroy(str(server.id)))


def _create_image(agent: HostAgent, server: Server) -> None:
    assert server.pending is not None
    _save_image(agent, server, str(server.pending["params"]["image_id"]))


def _create_backup(agent: HostAgent, server: Server) -> None:
    """Save the backup, then delete the server's backups of the same type beyond the
    newest ``rotation`` (Nova's ``_rotate_backups``; images already deleted are
    skipped, so a step repeated after a crash deletes nothing twice)."""
    assert server.pending is not None
    params = server.pending["params"]
    _save_image(agent, server, str(params["image_id"]))
    agent.updater.catch_up()
    backups = [image for image in image_view.list_images(agent.updater.view, None)
               if image.get("server_id") == str(server.id)
               and (image.get("metadata") or {}).get("image_type") == "backup"
               and (image.get("metadata") or {}).get("backup_type") == params["backup_type"]]
    backups.sort(key=lambda image: (image["created_at"], image["id"]), reverse=True)
    request_id = str(server.pending_request_id)
    for image in backups[int(params["rotation"]):]:
        with contextlib.suppress(VmledgerError):  # deleted meanwhile by its owner
            agent.images.record_image(str(image["id"]), request_id,
                                       lambda i, c, at: i.delete(c, at))


def _save_image(agent: HostAgent, server: Server, image_id: str) -> None:
    """Snapshot the guest into the queued custom image ``image_id`` and activate it (or
    mark it failed); nothing when it is already active (a step repeated after a crash)."""
    request_id = str(server.pending_request_id)
    images = agent.images
    try:
        image = images.get_image(image_id)
    except VmledgerError:
        raise HypervisorError(f"Image {image_id} was deleted before it was saved",
                              rollback=True, code=404) from None
    if image.status != "active":
        _missing(agent.observe(server))
        images.record_image(image_id, request_id, lambda i, c, at: i.saving(c, at))
        try:
            result = agent.call(server, "snapshot", {"image_id": image_id},
                                lambda: agent.hypervisor.snapshot(str(server.id), image_id))
        except HypervisorError as error:
            message = error.message
            images.record_image(image_id, request_id,
                                 lambda i, c, at: i.fail(c, at, message))
            raise
        images.record_image(image_id, request_id, lambda i, c, at: i.activate(
            c, at, size=int(result.get("size", 0)), checksum=result.get("checksum")))


def _shelve(agent: HostAgent, server: Server) -> None:
    """Power off (gracefully, as a stop), then save the disk as the shelved image."""
    assert server.pending is not None
    obs = agent.observe(server)
    _missing(obs)
    # a suspended guest stays as it is: its saved memory goes with the offload
    if obs.power_state in (PowerState.RUNNING, PowerState.PAUSED, PowerState.CRASHED):
        agent.call(server, "power_off", {},
                   lambda: agent.hypervisor.power_off(str(server.id)))
    _save_image(agent, server, str(server.pending["params"]["image_id"]))


def _soft_delete(agent: HostAgent, server: Server) -> None:
    """Power the guest off (a suspended one keeps its saved state); it stays defined."""
    obs = agent.observe(server)
    if obs.exists and obs.power_state in (PowerState.RUNNING, PowerState.PAUSED,
                                          PowerState.CRASHED):
        agent.call(server, "power_off", {},
                   lambda: agent.hypervisor.power_off(str(server.id)))


def _restore(agent: HostAgent, server: Server) -> None:
    obs = agent.observe(server)
    _missing(obs)
    hv = agent.hypervisor
    if obs.power_state == PowerState.SUSPENDED:
        agent.call(server, "resume", {}, lambda: hv.resume(str(server.id)))
    elif obs.power_state != PowerState.RUNNING:
        agent.call(server, "power_on", {}, lambda: hv.power_on(str(server.id)))


def _trigger_crash_dump(agent: HostAgent, server: Server) -> None:
    """An NMI leaves nothing to observe: a step repeated after a crash looks in the
    server's history for an NMI this request already sent, so none is sent twice; one
    written ahead and never recorded counts as sent (:data:`AT_MOST_ONCE`)."""
    request_id = server.pending_request_id
    sent = any(isinstance(e, Server.HypervisorCalled) and e.request_id == request_id
               and e.call == "inject_nmi" and e.error is None
               for e in agent.service.history(server.id))
    if sent:
        return
    _missing(agent.observe(server))
    agent.call(server, "inject_nmi", {}, lambda: agent.hypervisor.inject_nmi(str(server.id)))


def _rescue(agent: HostAgent, server: Server) -> None:
    assert server.pending is not None
    obs = agent.observe(server)
    _missing(obs)
    if obs.rescued and obs.power_state == PowerState.RUNNING:
        return  # done before a crash
    # (rescued but not running: the driver starts it)
    spec = replace(spec_of(server), image_id=str(server.pending["params"]["image_id"]))
    agent.call(server, "rescue", _spec_args(spec), lambda: agent.hypervisor.rescue(spec))


def _unrescue(agent: HostAgent, server: Server) -> None:
    obs = agent.observe(server)
    _missing(obs)
    hv = agent.hypervisor
    if obs.rescued:
        agent.call(server, "unrescue", {}, lambda: hv.unrescue(str(server.id)))
    elif obs.power_state != PowerState.RUNNING:
        # its own definition is back but not started (a crash in between): boot it
        agent.call(server, "power_on", {}, lambda: hv.power_on(str(server.id)))


def _shelve_offload(agent: HostAgent, server: Server) -> None:
    _delete(agent, server)


def _shelve_and_offload(agent: HostAgent, server: Server) -> None:
    _shelve(agent, server)
    _delete(agent, server)


def _evacuate(agent: HostAgent, server: Server) -> None:
    """On the host the server was evacuated to: a new guest from its image (there is no
    shared storage: the disk is new, as Nova's evacuate without it), powered off again
    when the server is to end stopped (it was, or the request said so: 2.95)."""
    obs = agent.observe(server)
    hv = agent.hypervisor
    if not obs.exists:
        spec = spec_of(server)
        agent.call(server, "spawn", _spec_args(spec), lambda: hv.spawn(spec))
        obs = agent.observe(server)
    stop = server.pending_action == "evacuate_stopped" or server.vm_state == lc.STOPPED
    if stop and obs.power_state != PowerState.SHUTDOWN:
        agent.call(server, "power_off", {}, lambda: hv.power_off(str(server.id)))


def _unshelve(agent: HostAgent, server: Server) -> None:
    """A guest still defined (shelved, not offloaded) is powered on; an offloaded one is
    spawned again from its shelved image."""
    assert server.pending is not None
    obs = agent.observe(server)
    hv = agent.hypervisor
    if obs.exists:
        if obs.power_state == PowerState.SUSPENDED:
            agent.call(server, "resume", {}, lambda: hv.resume(str(server.id)))
        elif obs.power_state != PowerState.RUNNING:
            agent.call(server, "power_on", {}, lambda: hv.power_on(str(server.id)))
        return
    image_id = server.pending["params"].get("image_id")
    if not image_id:
        raise HypervisorError("The server has no shelved image to unshelve from",
                              rollback=True, code=409)
    spec = replace(spec_of(server), image_id=str(image_id))
    agent.call(server, "spawn", _spec_args(spec), lambda: hv.spawn(spec))


_PLANS: dict[str, Callable[[HostAgent, Server], None]] = {
    "create": _create,
    "reboot_soft": _reboot(False),
    "reboot_hard": _reboot(True),
    "rebuild": _rebuild,
    "resize": _resize,
    "confirm_resize": _confirm,
    "revert_resize": _revert,
    "pause": _power("pause", PowerState.PAUSED),
    "unpause": _power("unpause", PowerState.RUNNING),
    "suspend": _power("suspend", PowerState.SUSPENDED),
    "resume": _power("resume", PowerState.RUNNING),
    "stop": _power("power_off", PowerState.SHUTDOWN),
    "start": _power("power_on", PowerState.RUNNING),
    "delete": _delete,
    "create_image": _create_image,
    "create_backup": _create_backup,
    "shelve": _shelve,
    "rescue": _rescue,
    "soft_delete": _soft_delete,
    "restore": _restore,
    "trigger_crash_dump": _trigger_crash_dump,
    "unrescue": _unrescue,
    "shelve_and_offload": _shelve_and_offload,
    "shelve_offload": _shelve_offload,
    "unshelve": _unshelve,
    "evacuate": _evacuate,
    "evacuate_stopped": _evacuate,
}

assert set(_PLANS) == {a.name for a in lc.ACTIONS.values() if a.asynchronous}

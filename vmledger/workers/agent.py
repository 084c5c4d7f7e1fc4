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
import functools
import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Protocol

from vmledger.adapters.hypervisor import (
    Hypervisor,
    HypervisorError,
    Observation,
    PowerState,
)
from vmledger.domain import lifecycle as lc
from vmledger.domain.commands import CommandResult, Commands
from vmledger.domain.drift import drift
from vmledger.domain.errors import VmledgerError
from vmledger.domain.server import Context, Server
from vmledger.domain.service import ServerService
from vmledger.projections.migrations import list_migrations
from vmledger.projections.runner import ViewUpdater
from vmledger.workers.moves import REPEATABLE, MigrationCancelled, ends_on, moving
from vmledger.workers.plans import PLANS

log = logging.getLogger(__name__)

#: unexpected errors (not hypervisor refusals) tolerated per action before it fails
MAX_UNEXPECTED = 5
#: servers read and compared per batch of a power-state sync pass, and the pause
#: between batches (seconds) that lets the API's threads run: at least SYNC_PAUSE, and
#: as long as the batch took (SYNC_REST times), so that a pass takes at most about half
#: of the process's time (and of the database's, whose work for a batch happens in
#: another process on PostgreSQL). A batch holds the interpreter for under a
#: millisecond with the simulator: a request during a pass then costs about what it
#: costs on a quiet process (batches of 100 made it up to 1.8x at 100,000 servers,
#: and on PostgreSQL with a fixed 1 ms pause 1.7x; a pass takes about twice as long)
SYNC_BATCH = 50
SYNC_PAUSE = 0.001
SYNC_REST = 1.0
#: calls never made twice: in doubt after a crash, they count as made (an NMI leaves
#: nothing to observe, and a second one would dump the guest twice)
AT_MOST_ONCE = frozenset({"inject_nmi"})
#: how often (seconds) a live migration in progress looks for an abort or force-complete
STEER_POLL = 0.02

Step = Callable[[Server, Context, Any], None]


class _Superseded(Exception):
    """The action moved on (superseded, finished): the agent stops enacting it."""


class _HandedOver(Exception):
    """The action was handed over to another host's agent: this one stops here."""

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
        #: the task state the action is in, with the steps gathered
        self._task: str | None = None
        #: the server as :meth:`reconcile` loaded it, then as the last commit saved it:
        #: the next commit starts from it instead of reading it again (if it is stale,
        #: another writer having recorded meanwhile, that commit loses on the version
        #: and reads it afresh)
        self._loaded: Server | None = None
        #: whether the outcome of the action being reconciled is folded into the read
        #: models in its own transaction, also within a pass that defers its commands'
        #: folds (:meth:`ViewUpdater.deferred`)
        self._fold_outcome = False
        #: the log position of the last command the latest pass recorded (None: it
        #: recorded nothing): the read models reach it without a catch-up when that
        #: command was folded in its own transaction (see :meth:`Timer.run_once`)
        self.recorded_through: int | None = None

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
        self.recorded_through = None
        if not self._started:
            self._started = True
            handled += self.remove_evacuated_guests()
        pending = self.pending()
        for index, (server_id, request_id) in enumerate(pending):
            # the last action's outcome is folded into the read models in its own
            # transaction (the pass's catch-up then has nothing left to fold): a client
            # waiting for it sees it one transaction sooner
            self._fold_outcome = index == len(pending) - 1
            try:
                self.reconcile(server_id, request_id)
            except Exception:  # a bug or a lost connection: retried on the next pass
                count = self._unexpected.get(request_id, 0) + 1
                self._unexpected[request_id] = count
                log.exception("agent %s: reconciling %s (%s) failed, attempt %d",
                              self.host, server_id, request_id, count)
                if count >= MAX_UNEXPECTED:
                    self._give_up(server_id, request_id)
            finally:
                self._fold_outcome = False
            handled += 1
        self._observe_pass("reconcile", started, handled)
        return handled

    def _give_up(self, server_id: str, request_id: str) -> None:
        obs = self.hypervisor.observe(server_id)
        self._recorded(self.outcomes.record(server_id, request_id, lambda s, c, at: s.fail(
            c, at, power_state=int(obs.power_state), rollback=False,
            message="The host agent could not complete the action", code=500)))

    def _recorded(self, result: CommandResult) -> None:
        if result.position is not None:
            self.recorded_through = max(self.recorded_through or 0, result.position)

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
            began = time.perf_counter()
            batch = self.updater.view.idle_states(self.host, after=after, limit=SYNC_BATCH)
            for server_id, vm_state, task_state, power_state in batch:
                if self.sync_one(server_id, vm_state, task_state, power_state):
                    drifted += 1
            if len(batch) < SYNC_BATCH:
                break
            after = batch[-1][0]
            time.sleep(max(SYNC_PAUSE, (time.perf_counter() - began) * SYNC_REST))
        if drifted:
            self.updater.catch_up()
        self._observe_pass("power_sync", started, drifted)
        return drifted

    def sync_one(self, server_id: str, vm_state: str, task_state: str | None,
                 recorded_power: int) -> bool:
        obs = self.hypervisor.observe(server_id)
        observed = int(obs.power_state) if obs.exists else int(PowerState.NOSTATE)
        decision = drift(vm_state, task_state, observed)
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
        # the cached copy when nothing newer is known: if another process wrote the
        # server meanwhile, the first commit below (before any call) loses on the
        # version and is decided again on a read, as the pipeline does for any copy;
        # leaving the action alone is decided on a read (another process, with nothing
        # to tell this one, may have handed it here)
        def ours(server: Server) -> bool:
            return server.pending_request_id == request_id and server.acting_host == self.host

        server = self.service.get(server_id, include_deleted=True, trusted=True)
        if not ours(server):
            server = self.service.get(server_id, include_deleted=True)
            if not ours(server):
                return
        action = server.pending_action
        assert action is not None
        self._action, self._steps, self._seen, self._found = (
            (server_id, request_id), [], None, None)
        self._loaded = server
        self._task = server.task_state
        try:
            # the remaining task states, recorded with the first commit (an action
            # moving between hosts sets its own as each host hands it over)
            steps = lc.ACTIONS[action].steps
            if server.task_state in steps and not moving(server):
                self._steps.extend(_advance_to(task_state) for task_state
                                   in steps[steps.index(server.task_state) + 1:])
            self._resolve_doubt(server)
            try:
                PLANS[action](self, server)
            except HypervisorError as error:
                self._failed(server, error)
                return
            obs = self.hypervisor.observe(server_id)
            # a server that ends on another host keeps the power state it has there
            power = (int(obs.power_state) if ends_on(server) == self.host
                     else server.power_state)
            window = self.service.confirm_window
            self._steps.append(lambda s, c, at: s.complete(
                c, at, power_state=power,
                confirm_window=window if window > timedelta(0) else None))
            if action == "unshelve":
                # as Nova, the image the server was shelved into is deleted before the
                # server is shown running again: a client that waits for ACTIVE and then
                # looks for the image finds it gone (deleted again after a restart
                # between the two: already gone, nothing more is recorded)
                self._drop_shelved_image(server, request_id)
            self._commit(outcome=True)
        except (_Superseded, _HandedOver):
            return
        except Exception:
            # what was seen and done so far is recorded before the error is handled
            with contextlib.suppress(Exception):
                self._commit()
            raise
        finally:
            self._action, self._steps, self._found, self._loaded = None, [], None, None
        self._unexpected.pop(request_id, None)

    def _commit(self, *, outcome: bool = False) -> None:
        """Record the gathered steps in one command; :class:`_Superseded` when the
        action has moved on meanwhile (nothing is recorded, nothing more is done).
        ``outcome``: the commit that ends the action."""
        if not self._steps:
            return
        assert self._action is not None
        steps, self._steps = self._steps, []
        server_id, request_id = self._action

        def apply(server: Server, ctx: Context, at: Any) -> None:
            for step in steps:
                step(server, ctx, at)
        loaded, self._loaded = self._loaded, None
        folded_now = self.updater.deferred(False) if outcome and self._fold_outcome else (
            contextlib.nullcontext())
        with folded_now:
            recorded = self.outcomes.record(server_id, request_id, apply, loaded=loaded,
                                            saved=self._keep)
        self._recorded(recorded)
        if not recorded.accepted:
            raise _Superseded

    def _keep(self, server: Server) -> None:
        """The server as a commit of the action saved it: the next commit's start."""
        if self._action is not None:
            self._loaded = server

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
        # a server failing on another host than its own keeps its power state
        power = int(obs.power_state) if server.host == self.host else server.power_state
        changes = ({"migration_status": "cancelled"} if isinstance(error, MigrationCancelled)
                   else None)
        self._steps.append(lambda s, c, at: s.fail(
            c, at, power_state=power, rollback=rollback, message=error.message,
            code=error.code, changes=changes))
        self._commit(outcome=True)

    # --- actions moving between hosts (see :mod:`vmledger.workers.moves`) ----------------
    def hand_over(self, server: Server, host: str, task_state: str | None = None, *,
                  data: dict[str, Any] | None = None,
                  changes: dict[str, Any] | None = None) -> None:
        """Record, with the steps gathered, that ``host``'s agent acts next (in
        ``task_state``, with ``data``); when that is another host, this agent stops
        enacting the action (:class:`_HandedOver`)."""
        step_data, step_changes = dict(data or {}), dict(changes or {})
        task = task_state if task_state is not None and task_state != self._task else None
        self._steps.append(lambda s, c, at: s.reach_step(
            c, at, host=host, task_state=task, data=step_data, changes=step_changes))
        if task is not None:
            self._task = task
        self._commit()
        if host != self.host:
            raise _HandedOver

    def note(self, changes: dict[str, Any]) -> None:
        """A step of this host's that changes the server (a migration status), recorded
        with the next commit."""
        host, step_changes = self.host, dict(changes)
        self._steps.append(lambda s, c, at: s.reach_step(c, at, host=host,
                                                         changes=step_changes))

    def advance(self, task_state: str) -> None:
        """Move to ``task_state`` (recorded with the next commit), unless already there."""
        if task_state != self._task:
            self._steps.append(_advance_to(task_state))
            self._task = task_state

    def watching(self, server: Server, fn: Callable[[], Any]) -> Any:
        """Run a long hypervisor call (a live migration) in a thread while looking, every
        :data:`STEER_POLL` seconds, for an administrator's ``abort`` or
        ``force_complete`` of it, each passed on to the hypervisor once (recorded)."""
        box: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            try:
                box["result"] = fn()
            except BaseException as error:  # re-raised in the agent's thread
                box["error"] = error
            finally:
                done.set()

        threading.Thread(target=run, name=f"migrate-{server.id}", daemon=True).start()
        passed: set[str] = set()
        sid = str(server.id)
        while not done.wait(STEER_POLL):
            steer = (self.service.get(server.id).pending or {}).get("steer")
            if steer in ("abort", "force_complete") and steer not in passed:
                passed.add(steer)
                op = "abort_migration" if steer == "abort" else "force_complete_migration"
                steer_call: Callable[[str], Any] = getattr(self.hypervisor, op)
                with contextlib.suppress(HypervisorError):
                    self.call(server, op, {}, functools.partial(steer_call, sid))
        if "error" in box:
            raise box["error"]
        return box["result"]

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
                if name not in REPEATABLE:  # else the driver answers what it did
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

"""The embedding façade: :class:`Engine`.

:class:`Engine` builds the whole graph with :func:`vmledger.bootstrap.build` and offers
the calls a Python program needs — create and act on servers, read them back (from the
read models, after the command is reflected in them), resources, hosts, the ledger —
each delegating to a command module, the read models or the fleet. Its parts are
written along concepts (:mod:`.servers`, :mod:`.resources`, :mod:`.operations`).

Two ways to drive the agent and the timer: call :meth:`Engine.run_until_idle` (tests,
scripts, deterministic simulations) or :meth:`Engine.run_in_background` (a
long-running service). An engine made with ``agent=False`` runs neither (an API process
beside separate ``vmledger agent`` processes): it has no host of its own, and in the
background only follows the log.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta

from vmledger.adapters.hypervisor import Hypervisor
from vmledger.bootstrap import Settings, build
from vmledger.domain.catalog import Catalog
from vmledger.domain.clock import Clock
from vmledger.domain.scheduling import AllocationRatios
from vmledger.engine.operations import OperationsFacade
from vmledger.engine.records import HistoryEntry, ServerInfo
from vmledger.engine.resources import ResourceFacade
from vmledger.engine.servers import ServerFacade
from vmledger.persistence import DEFAULT_URL
from vmledger.projections import runner
from vmledger.projections.hosts import SERVICE_DOWN_TIME

log = logging.getLogger(__name__)


class Engine(ServerFacade, ResourceFacade, OperationsFacade):
    """vmledger as a library: servers, their lifecycle and their history."""

    def __init__(self, url: str = DEFAULT_URL, *, clock: Clock | None = None,
                 hypervisor: Hypervisor | None = None, host: str = "compute-1",
                 confirm_window: timedelta = timedelta(hours=24),
                 catalog: Catalog | None = None, seed: int | None = None,
                 id_factory: Callable[[], uuid.UUID] | None = None,
                 request_id_factory: Callable[[], str] | None = None,
                 stopwatch: Callable[[], float] = time.perf_counter,
                 shelved_offload_time: timedelta | None = timedelta(0),
                 reclaim_interval: timedelta = timedelta(0),
                 service_down_time: timedelta = SERVICE_DOWN_TIME,
                 allocation_ratios: AllocationRatios | None = None,
                 allow_resize_to_same_host: bool = True, agent: bool = True) -> None:
        self.url = url
        #: whether this engine runs a host agent and the timer (for its ``host``)
        self.runs_agent = agent
        self._wake = threading.Event()
        self._passing: int | None = None
        self._left: dict[str, bool] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._follower: threading.Thread | None = None
        self._upgrader: threading.Thread | None = None
        self._attach(build(url, Settings(
            clock=clock, hypervisor=hypervisor, host=host, confirm_window=confirm_window,
            catalog=catalog, seed=seed, id_factory=id_factory,
            request_id_factory=request_id_factory, stopwatch=stopwatch,
            shelved_offload_time=shelved_offload_time, reclaim_interval=reclaim_interval,
            service_down_time=service_down_time, allocation_ratios=allocation_ratios,
            allow_resize_to_same_host=allow_resize_to_same_host, agent=agent)))
        # a command saved in this process that gives this host's agent work wakes it
        # at once (see :mod:`vmledger.domain.wakeups`)
        self.commands.deps.pipeline.on_saved(self._nudge_for)

    # --- driving the agent and the timer ------------------------------------------------
    def run_once(self) -> int:
        """One pass of the host agent and the timer; return how much they did. What they
        record reaches the read models by the next catch-up (one transaction for a pass),
        not in each of their commands' transactions, except the outcome of the pass's
        last action, folded in its own. Nothing, without an agent."""
        if not self.runs_agent:
            return 0
        self.report_host()
        with self.updater.deferred():
            handled = self.graph.guests.answer() + self.agent.run_once()
            # an agent that recorded nothing has just caught the read models up (for
            # its own pending work): the timer's candidates are read from there; one
            # that did brings them up to its last command
            return handled + self.timer.run_once(caught_up=not handled,
                                                 through=self.agent.recorded_through)

    def answer_guest_reads(self) -> int:
        """Answer the questions other processes asked of this host's guests."""
        return self.graph.guests.answer()

    def run_until_idle(self, max_passes: int = 1000) -> int:
        """Run passes until nothing is in flight and no deadline is due."""
        total = 0
        for _ in range(max_passes):
            did = self.run_once()
            total += did
            if did == 0:
                return total
        raise RuntimeError(f"still busy after {max_passes} passes")

    def sync_power_states(self) -> int:
        """Compare idle servers with the hypervisor now; return how many drifted."""
        return self.agent.sync_power_states()

    def run_in_background(self, interval: float = 0.5, sync_interval: float = 60.0) -> None:
        """Run the agent and the timer in a background thread until :meth:`close`; the
        power-state sync runs every ``sync_interval`` seconds (Nova: 600).

        New work for this host wakes the thread at once: a command saved in this
        process that leaves an action for this host to enact (the command pipeline's
        signal), or one saved by another process (PostgreSQL: the log's LISTEN/NOTIFY
        channel, whose payload names the hosts given work; SQLite: the log polled every
        ``interval``, waking on what another process wrote). A lock, a rename, a quota
        change wake nobody. Idle, a pass runs every ``interval`` seconds for what no
        event announces: deadlines coming due and other processes' questions about this
        host's guests. Without an agent, only the view follows the log."""
        if self._thread is not None or self._follower is not None:
            return
        self._stop.clear()
        if self.runs_agent:
            self._start_agent(interval, sync_interval)
        # the view follows the log (events from other processes too) and wakes the agent
        self._follower = threading.Thread(
            target=self.updater.follow, args=(self._stop, self._wake.set, interval),
            kwargs={"host": self.host}, name="vmledger-view-follower", daemon=True)
        self._follower.start()
        if self.updater.upgrade_needed():
            # this release's read-model layout is folded beside the serving one, which
            # answers until the new one has caught up
            self._upgrader = threading.Thread(
                target=self._upgrade, name="vmledger-view-upgrade", daemon=True)
            self._upgrader.start()

    def _upgrade(self) -> None:
        try:
            self.updater.upgrade(stop=self._stop, pace=runner.BACKGROUND_PACE)
        except Exception:
            log.exception("upgrading the read models' layout failed; the next start "
                          "resumes it")

    def _start_agent(self, interval: float, sync_interval: float) -> None:
        self._thread = threading.Thread(target=self._loop, args=(interval, sync_interval),
                                        name=f"vmledger-agent-{self.host}", daemon=True)
        self._thread.start()

    def _loop(self, interval: float, sync_interval: float) -> None:
        next_sync = time.monotonic() + sync_interval
        # the pass's own commands do not wake it (see :meth:`_nudge_for`)
        self._passing = threading.get_ident()
        while not self._stop.is_set():
            # cleared before the pass: work saved during it by others wakes the next one
            self._wake.clear()
            self._left.clear()
            try:
                started = time.perf_counter()
                busy = self.run_once()
                if time.monotonic() >= next_sync:
                    next_sync = time.monotonic() + sync_interval
                    busy += self.sync_power_states()
                if busy:  # an idle pass says nothing: it runs five times a second
                    took = round((time.perf_counter() - started) * 1000, 1)
                    log.info("host %s: %d step(s) in %.1f ms", self.host, busy, took,
                             extra={"host": self.host, "steps": busy, "duration_ms": took})
            except Exception:
                log.exception("agent pass failed; retrying")
                busy = 0
            # again at once only for an action the pass left in flight on this host (a
            # step it must go on with); one that it completed leaves nothing to look
            # for, and a pass over nothing would cost a read of the log, of the actions
            # in flight, of the deadlines and of the guests' questions
            if not (busy and any(self._left.values())):
                self._wake.wait(interval)

    def close(self) -> None:
        """Stop the background thread (if any) and close the database connections."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._follower is not None:
            self._follower.join(timeout=10)
            self._follower = None
        if self._upgrader is not None:
            self._upgrader.join(timeout=30)
            self._upgrader = None
        self.service.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["AllocationRatios", "Engine", "HistoryEntry", "ServerInfo"]

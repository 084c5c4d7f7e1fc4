"""Deterministic simulation: thousands of random commands, agent passes, injected
hypervisor faults, process crashes and restarts, and clock jumps, from one seed.

After every step: the guard's decision equals the table; every touched server replayed
from its events equals the live aggregate and the view; every status is one of Nova's;
no action has two outcomes. At the end, once the agent drains, no server has a task in
flight; and the same seed gives the identical event log.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.engines import counter_ids, counter_request_ids, make_engine
from tests.oracle import expected_refusal
from vmledger import AllocationRatios, Engine, FakeClock, Simulator, VmledgerError
from vmledger.adapters.simulator import SimulatedCrash
from vmledger.domain import lifecycle as lc
from vmledger.domain import status as st
from vmledger.domain.errors import Forbidden
from vmledger.domain.server import Server

FLAVORS = ["m1.small", "m1.medium", "m1.large"]
UNLIMITED = AllocationRatios(cpu=math.inf, ram=math.inf, disk=math.inf)
IMAGES = ["cirros-0.6.2-x86_64", "debian-12-genericcloud-amd64"]
USER_ACTIONS = ["reboot_soft", "reboot_hard", "rebuild", "resize", "confirm_resize",
                "revert_resize", "pause", "unpause", "suspend", "resume", "stop", "start",
                "delete", "lock", "unlock", "reset_state", "shelve", "shelve_offload",
                "unshelve", "rescue", "unrescue", "trigger_crash_dump", "restore"]


class Simulation:
    def __init__(self, url: str, seed: int) -> None:
        self.url = url
        self.seed = seed
        self.rng = random.Random(seed)
        self.clock = FakeClock()
        self.sim = Simulator(seed=seed, fail_rate=0.04, crash_rate=0.03)
        ticks = itertools.count()
        self.stopwatch = lambda: next(ticks) / 1000  # deterministic durations
        self.ids = counter_ids(seed)
        self.request_ids = counter_request_ids()
        self.engine = self._open()
        self.servers: list[str] = []
        self.counts: Counter[str] = Counter()

    def _open(self) -> Engine:
        # hosts never fill up here: the run is about the lifecycle (capacity has its own
        # tests), and a full host would turn most creates and resizes into refusals
        engine = make_engine(self.url, clock=self.clock, seed=self.seed, hypervisor=self.sim,
                             ids=self.ids, request_ids=self.request_ids,
                             allocation_ratios=UNLIMITED)
        engine.agent.stopwatch = self.stopwatch
        return engine

    def restart(self) -> None:
        self.engine.close()
        self.engine = self._open()
        self.counts["restart"] += 1

    # --- steps --------------------------------------------------------------------
    def step(self) -> None:
        roll = self.rng.random()
        self.clock.tick()
        if roll < 0.08 or not self.servers:
            self.create()
        elif roll < 0.50:
            self.command()
        elif roll < 0.85:
            self.agent_pass()
        elif roll < 0.93:
            self.clock.advance(minutes=self.rng.choice([1, 30, 60 * 6, 60 * 25]))
            self.timer_pass()
        elif roll < 0.97:
            self.timer_pass()
        else:
            self.restart()

    def create(self) -> None:
        server = self.engine.create_server(
            f"vm-{len(self.servers)}", flavor=self.rng.choice(FLAVORS),
            image=self.rng.choice(IMAGES))
        self.servers.append(server.id)
        self.counts["create"] += 1

    def command(self) -> None:
        sid = self.rng.choice(self.servers)
        action = self.rng.choice(USER_ACTIONS)
        admin = self.rng.random() < 0.3
        ctx = self.engine.context(is_admin=admin)
        live = self.engine.service.get(sid, include_deleted=True)
        params: dict[str, Any] = {}
        if action == "resize":
            params["flavor"] = self.rng.choice([f for f in FLAVORS if f != live.flavor["name"]])
        elif action == "rebuild":
            params["image"] = self.rng.choice(IMAGES)
        elif action == "reset_state":
            params["state"] = self.rng.choice([lc.ACTIVE, lc.ERROR])
        expected = expected_refusal(lc.ACTIONS[action], live.subject, admin)
        if (action == "unlock" and expected is None and live.locked_by == "admin"
                and not admin):
            expected = Forbidden  # an administrator's lock (Nova's unlock_override)
        if live.vm_state == lc.DELETED:
            expected = VmledgerError  # a deleted server is not found
        try:
            self.engine.act(sid, action, ctx=ctx, **params)
            outcome: type[Exception] | None = None
        except VmledgerError as e:
            outcome = type(e)
        if expected is None:
            assert outcome is None, f"{action} on {live.subject} refused: {outcome}"
        else:
            assert outcome is not None and issubclass(outcome, expected), (
                f"{action} on {live.subject}: expected {expected}, got {outcome}")
        self.counts[f"{action}:{'ok' if outcome is None else 'refused'}"] += 1

    def agent_pass(self) -> None:
        try:
            self.engine.agent.run_once()
        except SimulatedCrash:
            self.counts["crash"] += 1
            self.restart()

    def timer_pass(self) -> None:
        self.counts["auto_confirm"] += self.engine.timer.run_once()

    # --- invariants ---------------------------------------------------------------------
    def check(self, server_ids: list[str]) -> None:
        service = self.engine.service
        self.engine.updater.catch_up()
        for sid in server_ids:
            events = service.history(sid)
            replayed: Any = None
            for event in events:
                replayed = event.mutate(replayed)
            live = service.get(sid, include_deleted=True)
            assert vars(replayed) == vars(live)
            doc = self.engine.view.get(sid)
            assert doc is not None
            assert (doc["vm_state"], doc["task_state"], doc["version"]) == (
                live.vm_state, live.task_state, live.version)
            assert live.status in st.STATUSES
            outcomes = Counter(e.request_id for e in events
                               if isinstance(e, Server.ActionCompleted | Server.ActionFailed))
            assert all(n == 1 for n in outcomes.values()), outcomes

    def drain(self) -> None:
        for _ in range(200):
            try:
                if self.engine.run_until_idle() == 0:
                    return
            except SimulatedCrash:
                self.restart()
        raise AssertionError("the agent did not drain")

    def log(self) -> list[tuple[str, int, str, bytes]]:
        recorder = self.engine.service.recorder
        return [(str(n.originator_id), n.originator_version, n.topic, n.state)
                for n in recorder.select_notifications(start=1, limit=10**9)]


def simulate(url: str, seed: int, steps: int) -> Simulation:
    sim = Simulation(url, seed)
    for _ in range(steps):
        sim.step()
        sim.check(sim.servers[-5:] + sim.rng.sample(sim.servers, min(3, len(sim.servers))))
    sim.sim.fail_rate = sim.sim.crash_rate = 0.0  # let the agent finish
    sim.drain()
    sim.check(sim.servers)
    for sid in sim.servers:
        server = sim.engine.service.get(sid, include_deleted=True)
        assert server.task_state is None and server.pending is None, server.subject
    return sim


def test_seeded_simulation_keeps_every_invariant(tmp_path: Path) -> None:
    sim = simulate(f"sqlite:///{tmp_path / 'a.db'}", seed=7, steps=2500)
    counts = sim.counts
    # the run exercised what it is meant to exercise
    assert counts["crash"] > 5 and counts["restart"] > 20 and counts["auto_confirm"] > 0
    assert sum(v for k, v in counts.items() if k.endswith(":ok")) > 300
    assert sum(v for k, v in counts.items() if k.endswith(":refused")) > 300
    for action in ("shelve", "unshelve", "rescue", "unrescue", "trigger_crash_dump"):
        assert counts[f"{action}:ok"] > 0, action
    failed = [e for sid in sim.servers for e in sim.engine.history(sid)
              if e.event == "ActionFailed"]
    assert failed, "injected faults produced failures"
    again = simulate(f"sqlite:///{tmp_path / 'b.db'}", seed=7, steps=2500)
    assert sim.log() == again.log()
    sim.engine.close()
    again.engine.close()


@pytest.mark.postgres
def test_simulation_on_postgres(postgres_url: str) -> None:
    sim = simulate(postgres_url, seed=11, steps=600)
    assert sim.counts["crash"] > 0
    sim.engine.close()


def test_replay_equals_live_after_deadline_jumps(tmp_path: Path) -> None:
    sim = Simulation(f"sqlite:///{tmp_path / 'c.db'}", seed=3)
    sim.sim.fail_rate = sim.sim.crash_rate = 0.0
    sim.create()
    sim.drain()
    sim.engine.resize(sim.servers[0], flavor="m1.medium" if sim.engine.get_server(
        sim.servers[0]).flavor["name"] != "m1.medium" else "m1.small")
    sim.drain()
    sim.clock.advance(timedelta(hours=25))
    sim.drain()
    sim.check(sim.servers)
    assert sim.engine.get_server(sim.servers[0]).status == "ACTIVE"
    sim.engine.close()

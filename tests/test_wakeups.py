"""Which agents a command wakes (only those of the hosts it gave work), and which view
followers catch up after it (on PostgreSQL, none for a write folded in its transaction).

Both engines below run in the background with a 30 s idle interval, so an agent pass
within the tests' few seconds is one that a command (or, across processes, the log's
notification) woke.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.support.waiting import wait_for
from vmledger import Engine
from vmledger.adapters.hypervisor import Result
from vmledger.adapters.simulator import Simulator
from vmledger.domain.wakeups import hosts_of, payload, wakes

IMAGE = "cirros-0.6.2-x86_64"
IDLE = 30.0  # seconds between passes nobody asked for: longer than any test here


class Passes:
    """Counts an agent's passes (as the metrics are told of them)."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def hypervisor_call(self, call: str, error: str | None, seconds: float) -> None:
        pass

    def agent_pass(self, kind: str, seconds: float, handled: int) -> None:
        if kind == "reconcile":
            with self._lock:
                self.count += 1


def counted(engine: Engine) -> Passes:
    passes = Passes()
    engine.agent.observers.append(passes)
    return passes


def settled(passes: Passes, quiet: float = 0.3) -> int:
    """The count once no pass has run for ``quiet`` seconds."""
    last = -1
    while passes.count != last:
        last = passes.count
        time.sleep(quiet)
    return last


@pytest.fixture
def two_hosts(url: str) -> Iterator[tuple[Engine, Engine]]:
    """compute-1 and compute-2 on one database, as two processes would be."""
    first, second = Engine(url, host="compute-1"), Engine(url, host="compute-2")
    try:
        first.run_until_idle()
        second.run_until_idle()  # both hosts reported: both are scheduled on
        yield first, second
    finally:
        second.close()
        first.close()


def test_a_command_that_leaves_no_action_wakes_no_agent(
        two_hosts: tuple[Engine, Engine]) -> None:
    first, second = two_hosts
    server = first.create_server("quiet", flavor="m1.small", image=IMAGE)
    first.run_until_idle()
    second.run_until_idle()
    mine, theirs = counted(first), counted(second)
    first.run_in_background(IDLE)
    second.run_in_background(IDLE)
    before = (settled(mine), settled(theirs))
    for i in range(10):
        first.lock(server.id) if i % 2 == 0 else first.act(server.id, "unlock")
        first.update_server(server.id, name=f"quiet-{i}")
    assert (settled(mine), settled(theirs)) == before
    # an action does wake the agent of its host: it is done long before the idle pass
    first.pause(server.id)
    owner = first if server.host == "compute-1" else second
    wait_for(lambda: owner.updater.catch_up() >= 0
             and owner.get_server(server.id).status == "PAUSED")


def test_an_action_wakes_the_agent_of_its_host_in_another_process(
        two_hosts: tuple[Engine, Engine]) -> None:
    """The command is saved by compute-1's process; compute-2's agent enacts it, woken
    by the log's notification on PostgreSQL and by its view's poll on SQLite."""
    first, second = two_hosts
    made = first.create_servers("far", flavor="m1.small", image=IMAGE, count=2)
    far = next(s for s in made if s.host == "compute-2")
    # SQLite has no notification: its view polls the log every ``interval``
    interval = IDLE if first.url.startswith("postgresql") else 0.05
    second.run_in_background(interval)
    first.run_in_background(interval)
    wait_for(lambda: first.updater.catch_up() >= 0
             and first.get_server(far.id).status == "ACTIVE")
    first.pause(far.id)
    wait_for(lambda: first.updater.catch_up() >= 0
             and first.get_server(far.id).status == "PAUSED")


def test_a_notification_that_names_no_hosts_wakes_every_agent(postgres_url: str) -> None:
    """A writer of an earlier release notifies without naming hosts: every agent
    looks, as before."""
    with Engine(postgres_url, host="compute-2") as engine:
        engine.run_until_idle()
        passes = counted(engine)
        engine.run_in_background(IDLE)
        quiet = settled(passes)
        channel = engine.service.recorder.channel_name  # type: ignore[attr-defined]
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute("SELECT pg_notify(%s, %s)", (channel, payload(frozenset())))
            time.sleep(0.3)
            assert passes.count == quiet  # names nobody: nobody looks
            conn.execute("SELECT pg_notify(%s, %s)", (channel, payload(frozenset({"other"}))))
            time.sleep(0.3)
            assert passes.count == quiet
            conn.execute("SELECT pg_notify(%s, '')", (channel,))
            wait_for(lambda: passes.count > quiet)
            now = settled(passes)
            conn.execute("SELECT pg_notify(%s, %s)",
                         (channel, payload(frozenset({"compute-2", "other"}))))
            wait_for(lambda: passes.count > now)


def test_the_payload_names_the_hosts_or_every_one() -> None:
    assert hosts_of(payload(frozenset({"b", "a"}))) == {"a", "b"}
    assert hosts_of(payload(frozenset())) == frozenset()
    assert hosts_of(payload(None)) == {"*"}
    assert hosts_of("") is None
    assert wakes(hosts_of(""), "compute-1")
    assert wakes(hosts_of(payload(None)), "compute-1")
    assert not wakes(hosts_of(payload(frozenset({"compute-2"}))), "compute-1")
    many = frozenset(f"compute-{i:05d}.example.org" for i in range(1000))
    assert hosts_of(payload(many)) == {"*"}  # beyond PostgreSQL's payload limit


def test_a_write_folded_in_its_transaction_needs_no_catch_up_elsewhere(
        postgres_url: str) -> None:
    """On PostgreSQL the notification says which read models the write was folded
    into: another process's view follower reads nothing for it. A write that was not
    folded (here: a process whose fold is switched off) is caught up at once."""
    with Engine(postgres_url, host="compute-1") as first, \
            Engine(postgres_url, host="compute-2") as second:
        server = first.create_server("folded", flavor="m1.small", image=IMAGE)
        first.run_until_idle()
        catch_ups = [0]
        real = second.updater.catch_up

        def counting(*args: object, **kwargs: object) -> int:
            catch_ups[0] += 1
            return real(*args, **kwargs)  # type: ignore[arg-type]
        second.updater.catch_up = counting  # type: ignore[method-assign]
        second.run_in_background(IDLE)
        time.sleep(0.3)
        before = catch_ups[0]
        for i in range(10):
            first.lock(server.id) if i % 2 == 0 else first.act(server.id, "unlock")
        assert second.get_server(server.id).locked is False  # the shared view has it
        time.sleep(0.3)
        assert catch_ups[0] == before
        first.service.recorder.in_transaction.clear()  # type: ignore[attr-defined]
        first.lock(server.id)
        wait_for(lambda: second.view.get(server.id)["locked"] is True)
        assert catch_ups[0] > before


def test_an_action_done_in_one_pass_leaves_no_pass_after_it(url: str) -> None:
    """The agent's own commands (the action's steps and outcome) do not wake it again:
    an action begun and completed in a pass is followed by no pass over nothing."""
    engine = Engine(url)
    try:
        server = engine.create_server("one-pass", flavor="m1.small", image=IMAGE)
        engine.run_until_idle()
        passes = counted(engine)
        engine.run_in_background(IDLE)
        before = settled(passes)
        for action, status in (("pause", "PAUSED"), ("unpause", "ACTIVE")) * 3:
            engine.act(server.id, action)
            wait_for(lambda status=status: engine.get_server(server.id).status == status
                     and engine.get_server(server.id).task_state is None)
        assert settled(passes) - before == 6
    finally:
        engine.close()


class _SlowCalls(Simulator):
    """Pauses and unpauses that take 50 ms: the notification of the agent's "about to
    call" step reaches the view follower while the pass is still going."""

    def pause(self, server_id: str) -> Result:
        time.sleep(0.05)
        return super().pause(server_id)

    def unpause(self, server_id: str) -> Result:
        time.sleep(0.05)
        return super().unpause(server_id)


def test_the_follower_leaves_the_agents_deferred_steps_to_its_pass(
        postgres_url: str) -> None:
    """On PostgreSQL, the view follower does not catch up for this process's agent's
    steps, whose fold the pass defers and does before it ends: no catch-up of the
    follower's runs while the agent enacts actions (each of them once read the log's
    position and its page, and often folded the step in a transaction of its own)."""
    engine = Engine(postgres_url, hypervisor=_SlowCalls(seed=0))
    try:
        server = engine.create_server("deferred", flavor="m1.small", image=IMAGE)
        engine.run_until_idle()
        catch_ups = []
        catch_up = engine.updater.catch_up

        def counted_catch_up(*args: Any, **kwargs: Any) -> int:
            if threading.current_thread().name == "vmledger-view-follower":
                catch_ups.append(1)
            return catch_up(*args, **kwargs)

        engine.updater.catch_up = counted_catch_up  # type: ignore[method-assign]
        engine.run_in_background(IDLE)
        time.sleep(0.3)  # the follower's first catch-up, once listening
        del catch_ups[:]
        for action, status in (("pause", "PAUSED"), ("unpause", "ACTIVE")) * 2:
            engine.act(server.id, action)
            wait_for(lambda status=status: engine.get_server(server.id).status == status
                     and engine.get_server(server.id).task_state is None)
        time.sleep(0.2)
        assert catch_ups == []
    finally:
        engine.close()

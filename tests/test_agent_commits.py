"""The host agent's fast path: an action in few commits (the request, then "about to call"
and "outcome"), each hypervisor call written ahead, and the agent killed on either side of
a call completing the action exactly once after a restart, with no call repeated."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.actions import Counts, traced_sqlite
from tests.engines import counter_ids, counter_request_ids, make_engine
from vmledger import Engine, FakeClock, Simulator
from vmledger.adapters.simulator import SimulatedCrash


class Killed(BaseException):
    """The agent's process dies here (not an error any code may catch)."""


class Host:
    """An engine over one database and one simulated host that can be restarted, as a
    process killed and started again."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.clock = FakeClock()
        self.sim = Simulator(seed=1)
        self.ids = counter_ids(1)
        self.request_ids = counter_request_ids()
        self.engine = self._open()

    def _open(self) -> Engine:
        return make_engine(self.url, clock=self.clock, hypervisor=self.sim, ids=self.ids,
                           request_ids=self.request_ids)

    def restart(self) -> None:
        self.engine.close()
        self.engine = self._open()

    def calls(self, op: str, sid: str) -> int:
        return self.sim.calls.count((op, sid))


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    h = Host(f"sqlite:///{tmp_path / 'agent.db'}")
    yield h
    h.engine.close()


def _running(host: Host) -> str:
    sid = host.engine.create_server("vm", flavor="m1.small", image="cirros-0.6.2-x86_64").id
    host.engine.run_until_idle()
    assert host.engine.get_server(sid).status == "ACTIVE"
    return sid


def _events(host: Host, sid: str, request_id: str) -> list[str]:
    return [e.event + (f":{e.details['call']}" if "call" in e.details else "")
            for e in host.engine.history(sid) if e.request_id == request_id]


def _boots(host: Host, sid: str) -> int:
    return int(host.sim.observe(sid).details["boot_count"])


def test_a_hard_reboot_is_three_commits_with_the_call_written_ahead(host: Host) -> None:
    sid = _running(host)
    counts = Counts()
    with traced_sqlite(counts):
        host.restart()  # its connections traced from here on
        host.engine.reboot(sid, hard=True)  # the first pass after a start does more
        host.engine.run_until_idle()
        before = counts.commits
        request = host.engine.reboot(sid, hard=True).request_id
        host.engine.run_until_idle()
    assert host.engine.get_server(sid).status == "ACTIVE"
    assert _events(host, sid, request) == [
        "ActionRequested", "TaskAdvanced", "TaskAdvanced", "HypervisorCalled:observe",
        "HypervisorCallStarted:reboot", "HypervisorCalled:reboot", "ActionCompleted"]
    # the request, "about to call" and "outcome": the outcome, the pass's last, folds
    # the pass into the read models in its transaction (no catch-up transaction)
    assert counts.commits - before <= 3, counts


def test_killed_after_writing_ahead_the_call_makes_it_once_after_a_restart(
        host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    sid = _running(host)
    boots = _boots(host, sid)

    def killed(*_args: object, **_kw: object) -> None:
        raise Killed
    with monkeypatch.context() as patched:
        patched.setattr(host.sim, "reboot", killed)
        request = host.engine.reboot(sid, hard=True).request_id
        with pytest.raises(Killed):
            host.engine.run_until_idle()
    assert _events(host, sid, request)[-1] == "HypervisorCallStarted:reboot"
    assert host.calls("reboot", sid) == 0
    host.restart()
    host.engine.run_until_idle()
    assert host.engine.get_server(sid).status == "ACTIVE"
    assert host.calls("reboot", sid) == 1 and _boots(host, sid) == boots + 1
    events = _events(host, sid, request)
    assert events.count("ActionCompleted") == 1
    assert events.count("HypervisorCalled:reboot") == 1
    assert host.engine.verify().ok


def test_killed_after_the_call_does_not_repeat_it_after_a_restart(host: Host) -> None:
    sid = _running(host)
    boots = _boots(host, sid)
    host.sim.inject("reboot", "crash", server_id=sid)  # it reboots, then the agent dies
    request = host.engine.reboot(sid, hard=True).request_id
    with pytest.raises(SimulatedCrash):
        host.engine.run_until_idle()
    assert _events(host, sid, request)[-1] == "HypervisorCallStarted:reboot"
    host.restart()
    host.engine.run_until_idle()
    assert host.engine.get_server(sid).status == "ACTIVE"
    # one reboot in all: the one made before the crash, found by the agent restarted
    assert host.calls("reboot", sid) == 1 and _boots(host, sid) == boots + 1
    events = _events(host, sid, request)
    assert events.count("ActionCompleted") == 1
    assert events.count("HypervisorCalled:reboot") == 1
    found = [e for e in host.engine.history(sid)
             if e.request_id == request and e.details.get("call") == "reboot"
             and e.event == "HypervisorCalled"]
    assert "found_after_restart" in (found[0].details["result"] or {})
    assert host.engine.verify().ok


def test_killed_after_stopping_the_guest_completes_the_stop_once(host: Host) -> None:
    sid = _running(host)
    host.sim.inject("power_off", "crash", server_id=sid)
    request = host.engine.act(sid, "stop").request_id
    with pytest.raises(SimulatedCrash):
        host.engine.run_until_idle()
    host.restart()
    host.engine.run_until_idle()
    assert host.engine.get_server(sid).status == "SHUTOFF"
    assert host.calls("power_off", sid) == 1
    assert _events(host, sid, request).count("ActionCompleted") == 1
    assert host.engine.verify().ok


def test_a_crash_dump_in_doubt_is_not_sent_again(host: Host) -> None:
    sid = _running(host)
    host.sim.inject("inject_nmi", "crash", server_id=sid)
    host.engine.act(sid, "trigger_crash_dump")
    with pytest.raises(SimulatedCrash):
        host.engine.run_until_idle()
    host.restart()
    host.engine.run_until_idle()
    assert host.calls("inject_nmi", sid) == 1
    assert host.engine.get_server(sid).status == "ACTIVE"


def test_a_superseded_action_makes_no_call(host: Host,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The write-ahead is refused when the action moved on (a delete superseded the
    reboot while the agent was looking at the guest): its call is not made."""
    sid = _running(host)
    real = host.sim.observe

    def observe_then_deleted(server_id: str):  # type: ignore[no-untyped-def]
        found = real(server_id)
        if server_id == sid and host.engine.get_server(sid).task_state == "rebooting_hard":
            host.engine.act(sid, "delete")
        return found
    host.engine.reboot(sid, hard=True)
    monkeypatch.setattr(host.sim, "observe", observe_then_deleted)
    host.engine.run_until_idle()
    assert host.calls("reboot", sid) == 0


def test_a_command_wakes_the_background_agent_at_once(host: Host) -> None:
    """A command saved in this process wakes the agent: it does not wait for the idle
    poll (here a minute)."""
    sid = _running(host)
    engine = host.engine
    engine.run_in_background(interval=60.0)
    time.sleep(0.3)  # the first pass is done: the thread now waits
    # straight through the command modules (no façade call to nudge the agent)
    engine.commands.actions.act(engine.context(), sid, "stop")
    assert _wait_until_stopped(engine, sid) == "stopped"


def _wait_until_stopped(engine: Engine, sid: str, seconds: float = 10.0) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        server = engine.service.get(sid)
        if server.vm_state == "stopped" and server.task_state is None:
            break
        time.sleep(0.02)
    return engine.service.get(sid).vm_state


@pytest.mark.postgres
def test_another_process_wakes_the_agent_through_postgres(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An API process without an agent saves the command; the agent's process (here an
    engine of its own on the same database) is woken by PostgreSQL's LISTEN/NOTIFY, not
    by its idle poll (here a minute)."""
    sim = Simulator(seed=2)
    worker = make_engine(postgres_url, hypervisor=sim, ids=counter_ids(2),
                         request_ids=counter_request_ids("w"))
    api = make_engine(postgres_url, hypervisor=sim, ids=counter_ids(3),
                      request_ids=counter_request_ids("a"))
    try:
        sid = api.create_server("vm", flavor="m1.small", image="cirros-0.6.2-x86_64").id
        worker.run_until_idle()
        # the API process folds its own command into the shared read models first (its
        # read-your-writes), so the worker finds nothing left to fold when woken
        real_catch_up = worker.updater.catch_up

        def slow_catch_up(*args: Any, **kwargs: Any) -> int:
            time.sleep(0.2)
            return real_catch_up(*args, **kwargs)
        monkeypatch.setattr(worker.updater, "catch_up", slow_catch_up)
        worker.run_in_background(interval=60.0)
        time.sleep(0.5)  # the first pass is done: the thread now waits
        api.act(sid, "stop")
        assert _wait_until_stopped(worker, sid) == "stopped"
        assert worker.verify().ok
    finally:
        api.close()
        worker.close()


def _shown_done(engine: Engine, sid: str) -> bool:
    """Whether the read models (what the API answers from) show the action done."""
    info = engine.get_server(sid)
    return info.status == "ACTIVE" and info.task_state is None


def test_the_last_outcome_of_a_pass_is_in_the_read_models_when_it_commits(
        url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The outcome of a pass's last action is folded in its own transaction, with what
    the pass recorded before it (the agent's other commands leave their fold to it): a
    client polling for an action sees it done as soon as the outcome commits, not after
    a catch-up (here: catch-ups fold nothing)."""
    with make_engine(url) as engine:
        first, second = (engine.create_server(name, flavor="m1.small",
                                              image="cirros-0.6.2-x86_64").id
                         for name in ("a", "b"))
        engine.run_until_idle()
        engine.reboot(first, hard=True)
        engine.reboot(second, hard=True)
        monkeypatch.setattr(engine.updater, "catch_up", lambda *_a, **_k: 0)
        assert engine.run_once() == 2
        assert _shown_done(engine, first) and _shown_done(engine, second)
        monkeypatch.undo()
        assert engine.updater.catch_up() == 0  # nothing was left to fold

"""trigger_crash_dump (2.17): an NMI to the guest, recorded as an action; the simulated
kernel panics, dumps and boots again. Engine, API and libvirt's test driver."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.support.compute import action, active_server, assert_bad_request
from vmledger import Conflict, FakeClock, Simulator
from vmledger.adapters.hypervisor import GuestSpec, HypervisorError
from vmledger.api.testing import ApiClient
from vmledger.engine import Engine

IMAGE = "cirros-0.6.2-x86_64"


def test_an_nmi_makes_the_guest_dump_and_boot_again() -> None:
    sim = Simulator()
    with Engine("memory", clock=FakeClock(), hypervisor=sim) as engine:
        sid = engine.create_server("web", flavor="m1.small", image=IMAGE).id
        engine.run_until_idle()
        result = engine.trigger_crash_dump(sid)
        s = engine.get_server(sid)
        assert (s.status, s.task_state) == ("ACTIVE", None)  # no task state, as Nova
        engine.run_until_idle()
        assert engine.get_server(sid).status == "ACTIVE"
        assert sim.guests()[sid]["boot_count"] == 2
        assert "Kernel panic - not syncing: NMI" in engine.console_output(sid)
        [dump] = [a for a in engine.instance_actions(sid)
                  if a["action"] == "trigger_crash_dump"]
        assert dump["request_id"] == result.request_id
        assert [(e["event"], e["result"]) for e in dump["events"]] == [
            ("compute_trigger_crash_dump", "Success")]


def test_an_nmi_is_not_sent_twice_when_the_agent_dies_before_the_outcome() -> None:
    sim = Simulator()
    with Engine("memory", clock=FakeClock(), hypervisor=sim) as engine:
        sid = engine.create_server("web", flavor="m1.small", image=IMAGE).id
        engine.run_until_idle()
        engine.trigger_crash_dump(sid)
        # the NMI is sent and recorded, then the agent dies before the outcome
        original = engine.commands.outcomes.record
        calls = 0

        def dying(server_id: str, request_id: str, step: object) -> object:
            nonlocal calls
            calls += 1
            if calls == 3:  # observe recorded, inject_nmi recorded, then the outcome
                raise RuntimeError("the agent died")
            return original(server_id, request_id, step)  # type: ignore[arg-type]

        engine.commands.outcomes.record = dying  # type: ignore[method-assign]
        engine.agent.run_once()  # the failure is logged, the action stays in flight
        engine.commands.outcomes.record = original  # type: ignore[method-assign]
        assert engine.get_server(sid).status == "ACTIVE"
        engine.run_until_idle()  # the next pass finishes it without a second NMI
        assert sim.guests()[sid]["boot_count"] == 2
        assert [c for c in sim.calls if c[0] == "inject_nmi"] == [("inject_nmi", sid)]
        [dump] = [a for a in engine.instance_actions(sid)
                  if a["action"] == "trigger_crash_dump"]
        assert dump["events"][0]["result"] == "Success"


def test_refusals_and_a_guest_that_is_not_running() -> None:
    with Engine("memory", clock=FakeClock()) as engine:
        sid = engine.create_server("web", flavor="m1.small", image=IMAGE).id
        engine.run_until_idle()
        engine.stop(sid)
        engine.run_until_idle()
        with pytest.raises(Conflict, match="vm_state stopped"):
            engine.trigger_crash_dump(sid)
        engine.reset_state(sid, "error")  # an ERROR server may be dumped: it is not running
        engine.trigger_crash_dump(sid)
        engine.run_until_idle()
        s = engine.get_server(sid)
        assert (s.status, s.task_state) == ("ERROR", None)
        assert s.fault is not None and "is not running" in s.fault["message"]


def test_api_from_2_17(memory_engine: Engine, noauth_client: ApiClient) -> None:
    engine, client = memory_engine, noauth_client
    sid = active_server(engine, client)
    r = action(client, sid, {"trigger_crash_dump": None}, "2.16")
    assert r.status_code == 404 and "itemNotFound" in r.json()
    assert_bad_request(action(client, sid, {"trigger_crash_dump": {}}, "2.17"))
    r = action(client, sid, {"trigger_crash_dump": None}, "2.17")
    assert (r.status_code, r.content) == (202, b"")
    engine.run_until_idle()
    assert engine.get_server(sid).status == "ACTIVE"


def test_libvirt_injects_the_nmi(tmp_path: Path) -> None:
    pytest.importorskip("libvirt", reason="libvirt-python is not installed")
    from tests.support.libvirtd import node_uri
    from vmledger.adapters.libvirt import LibvirtDriver

    with LibvirtDriver(node_uri(tmp_path)) as driver:
        sid = str(uuid.uuid4())
        driver.spawn(GuestSpec(server_id=sid, name="web-1", flavor_id="1", vcpus=1,
                               ram_mb=512, disk_gb=0, image_id="none"))
        assert driver.inject_nmi(sid) == {"nmi": True}
        driver.power_off(sid)
        with pytest.raises(HypervisorError) as refused:
            driver.inject_nmi(sid)
        assert (refused.value.code, refused.value.rollback) == (409, True)

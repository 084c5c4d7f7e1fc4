"""Console output (``os-getConsoleOutput``): what the guest wrote to its serial console,
from the simulator and from libvirt's test driver, through the engine and the API."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.compute import built
from vmledger import Conflict, FakeClock, NotFound, Simulator
from vmledger.adapters.hypervisor import HypervisorError
from vmledger.api import create_app
from vmledger.api.testing import ApiClient
from vmledger.domain.catalog import image_id_for
from vmledger.engine import Engine

IMAGE = "cirros-0.6.2-x86_64"



def test_the_console_shows_every_boot_and_the_power_down() -> None:
    sim = Simulator()
    with Engine("memory", clock=FakeClock(), hypervisor=sim) as engine:
        sid = built(engine)
        first = engine.console_output(sid)
        assert first.count("Linux version") == 1 and first.endswith("web login: \n")
        engine.reboot(sid, hard=True)
        engine.run_until_idle()
        engine.stop(sid)
        engine.run_until_idle()
        text = engine.console_output(sid)
        assert text.startswith(first) and text.count("Linux version") == 2
        assert text.rstrip("\n").endswith("reboot: Power down")
        assert engine.console_output(sid) == text  # reading changes nothing
        assert engine.history(sid)[-1].event == "ActionCompleted"  # and records nothing


def test_length_cuts_as_nova_does() -> None:
    with Engine("memory", clock=FakeClock()) as engine:
        sid = built(engine)
        text = engine.console_output(sid)
        pieces = text.split("\n")
        assert engine.console_output(sid, length=-1) == text
        assert engine.console_output(sid, length=0) == ""
        assert engine.console_output(sid, length=3) == "\n".join(pieces[-3:])
        assert engine.console_output(sid, length=1000) == text


def test_control_characters_are_removed() -> None:
    class Noisy(Simulator):
        def console_output(self, server_id: str) -> str:
            return "a\x00b\x1b[0mc\td\r\ne\x7f"

    with Engine("memory", clock=FakeClock(), hypervisor=Noisy()) as engine:
        sid = built(engine)
        assert engine.console_output(sid) == "ab[0mc\td\ne\x7f"


def test_not_ready_not_found_and_deleting() -> None:
    sim = Simulator()
    with Engine("memory", clock=FakeClock(), hypervisor=sim) as engine:
        building = engine.create_server("new", flavor="m1.small", image=IMAGE).id
        with pytest.raises(Conflict, match=f"Instance {building} is not ready"):
            engine.console_output(building)
        sid = built(engine)
        engine.shelve(sid)
        engine.run_until_idle()
        with pytest.raises(Conflict, match="is not ready"):  # offloaded: no host
            engine.console_output(sid)
        other = built(engine, "other")
        sim.destroy(other)  # the guest vanished behind the engine's back
        with pytest.raises(NotFound, match="Guest does not have a console available"):
            engine.console_output(other)
        engine.delete(other)
        with pytest.raises(Conflict, match="task_state deleting"):
            engine.console_output(other)
        alice = engine.context(user_id="alice", project_id="p1", is_admin=False)
        with pytest.raises(NotFound):
            engine.console_output(building, ctx=alice)


def test_a_failing_read_is_a_conflict_not_a_crash() -> None:
    class Broken(Simulator):
        def console_output(self, server_id: str) -> str:
            raise HypervisorError("the console device is busy", code=500)

    with Engine("memory", clock=FakeClock(), hypervisor=Broken()) as engine:
        sid = built(engine)
        with pytest.raises(Conflict, match="busy"):
            engine.console_output(sid)


# --- the Compute API ---------------------------------------------------------------------
@pytest.fixture
def api() -> Iterator[tuple[Engine, ApiClient]]:
    with Engine("memory", clock=FakeClock()) as engine:
        yield engine, ApiClient(create_app(engine, auth="token", tokens=[
            "alice-secret:alice:p1:member", "bob-secret:bob:p2:member"]))


def _act(client: ApiClient, sid: str, body: Any, token: str = "alice-secret"
         ) -> httpx.Response:
    return client.post(f"/v2.1/servers/{sid}/action", json=body,
                       headers={"X-Auth-Token": token})


def test_api_console_output(api: tuple[Engine, ApiClient]) -> None:
    engine, client = api
    r = client.post("/v2.1/servers", headers={"X-Auth-Token": "alice-secret"}, json={
        "server": {"name": "vm", "flavorRef": "2", "imageRef": image_id_for(IMAGE)}})
    sid = r.json()["server"]["id"]
    r = _act(client, sid, {"os-getConsoleOutput": {}})
    assert r.status_code == 409  # still building
    assert r.json()["conflictingRequest"]["message"] == f"Instance {sid} is not ready"
    engine.run_until_idle()
    whole = engine.console_output(sid)
    for body, expected in (({}, whole), ({"length": None}, whole), ({"length": 2}, None),
                           ({"length": "2"}, None), ({"length": -1}, whole),
                           ({"length": 0}, "")):
        r = _act(client, sid, {"os-getConsoleOutput": body})
        assert r.status_code == 200, r.text
        output = r.json()["output"]
        assert output == (expected if expected is not None
                          else "\n".join(whole.split("\n")[-2:]))
    for bad in ({"length": -2}, {"length": "ten"}, {"length": True}, {"length": 1.5},
                {"lenght": 1}, None, []):
        r = _act(client, sid, {"os-getConsoleOutput": bad})
        assert r.status_code == 400, (bad, r.text)
        assert "badRequest" in r.json()
    r = _act(client, sid, {"os-getConsoleOutput": {}}, token="bob-secret")
    assert r.status_code == 404 and "itemNotFound" in r.json()

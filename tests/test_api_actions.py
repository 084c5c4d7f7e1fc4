"""``POST /servers/{id}/action``: every action's status code, the status it leads to, and
Nova's refusals."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from vmledger import Engine
from vmledger.api import create_app
from vmledger.api.testing import ApiClient
from vmledger.domain.catalog import image_id_for

IMAGE = image_id_for("cirros-0.6.2-x86_64")
IMAGE2 = image_id_for("debian-12-genericcloud-amd64")


@pytest.fixture
def client(system_clock_engine: Engine) -> ApiClient:
    return ApiClient(create_app(system_clock_engine))


@pytest.fixture
def sid(client: ApiClient, system_clock_engine: Engine) -> str:
    """An ACTIVE server of project a1 on flavor 2 (m1.small)."""
    r = client.post("/v2.1/a1/servers", json={"server": {
        "name": "vm", "flavorRef": "2", "imageRef": IMAGE}})
    assert r.status_code == 202
    system_clock_engine.run_until_idle()
    return str(r.json()["server"]["id"])


def mv(version: str) -> dict[str, str]:
    return {"X-OpenStack-Nova-API-Version": version}


def act(client: ApiClient, sid: str, body: Any, version: str = "2.1") -> httpx.Response:
    return client.post(f"/v2.1/a1/servers/{sid}/action", json=body, headers=mv(version))


def state(client: ApiClient, sid: str, version: str = "2.1") -> dict[str, Any]:
    server: dict[str, Any] = client.get(f"/v2.1/a1/servers/{sid}",
                                        headers=mv(version)).json()["server"]
    return server


def status(client: ApiClient, sid: str) -> tuple[str, str | None]:
    s = state(client, sid)
    return s["status"], s["OS-EXT-STS:task_state"]


def settled(client: ApiClient, engine: Engine, sid: str) -> tuple[str, str | None]:
    engine.run_until_idle()
    return status(client, sid)


# --- each action: status code, in-flight status, end status ------------------------------
@pytest.mark.parametrize(("body", "in_flight"), [
    ({"reboot": {"type": "SOFT"}}, ("REBOOT", "rebooting")),
    ({"reboot": {"type": "soft"}}, ("REBOOT", "rebooting")),
    ({"reboot": {"type": "Hard"}}, ("HARD_REBOOT", "rebooting_hard")),
    ({"reboot": {"type": "HARD"}}, ("HARD_REBOOT", "rebooting_hard")),
])
def test_reboot(client: ApiClient, system_clock_engine: Engine, sid: str, body: dict[str, Any],
                in_flight: tuple[str, str]) -> None:
    r = act(client, sid, body)
    assert (r.status_code, r.content) == (202, b"")
    assert status(client, sid) == in_flight
    assert settled(client, system_clock_engine, sid) == ("ACTIVE", None)
    requested = [h for h in system_clock_engine.history(sid) if h.event == "ActionRequested"][-1]
    assert requested.request_id == r.headers["x-openstack-request-id"]


@pytest.mark.parametrize("kind", ["SoFt", "REBOOT", "", None, 1])
def test_reboot_type_is_validated(client: ApiClient, sid: str, kind: Any) -> None:
    r = act(client, sid, {"reboot": {"type": kind}})
    assert r.status_code == 400
    assert "Invalid input for field/attribute type" in r.json()["badRequest"]["message"]
    bodies: list[dict[str, Any]] = [{"reboot": {}}, {"reboot": None},
                                    {"reboot": {"type": "SOFT", "x": 1}}]
    for body in bodies:
        assert act(client, sid, body).status_code == 400


def test_pause_unpause_suspend_resume_stop_start(client: ApiClient, system_clock_engine: Engine,
                                                 sid: str) -> None:
    steps = [("pause", ("ACTIVE", "pausing"), "PAUSED"),
             ("unpause", ("PAUSED", "unpausing"), "ACTIVE"),
             ("suspend", ("ACTIVE", "suspending"), "SUSPENDED"),
             ("resume", ("SUSPENDED", "resuming"), "ACTIVE"),
             ("os-stop", ("ACTIVE", "powering-off"), "SHUTOFF"),
             ("os-start", ("SHUTOFF", "powering-on"), "ACTIVE")]
    for key, in_flight, end in steps:
        r = act(client, sid, {key: None})
        assert (r.status_code, r.content) == (202, b""), (key, r.text)
        assert status(client, sid) == in_flight, key
        assert settled(client, system_clock_engine, sid) == (end, None), key


def test_stopped_power_state(client: ApiClient, system_clock_engine: Engine, sid: str) -> None:
    act(client, sid, {"os-stop": None})
    system_clock_engine.run_until_idle()
    s = state(client, sid)
    assert (s["OS-EXT-STS:vm_state"], s["OS-EXT-STS:power_state"]) == ("stopped", 4)
    assert "progress" not in s  # SHUTOFF does not show progress


def test_resize_confirm(client: ApiClient, system_clock_engine: Engine, sid: str) -> None:
    r = act(client, sid, {"resize": {"flavorRef": "3"}})
    assert (r.status_code, r.content) == (202, b"")
    assert status(client, sid) == ("RESIZE", "resize_prep")
    assert settled(client, system_clock_engine, sid) == ("VERIFY_RESIZE", None)
    assert state(client, sid)["flavor"]["id"] == "3"
    r = act(client, sid, {"confirmResize": None})
    assert (r.status_code, r.content) == (204, b"")
    # a confirm never changes the state fields; a second one finds nothing to confirm
    assert status(client, sid) == ("VERIFY_RESIZE", None)
    r = act(client, sid, {"confirmResize": None})
    assert r.status_code == 400
    assert r.json()["badRequest"]["message"] == "Instance has not been resized."
    assert settled(client, system_clock_engine, sid) == ("ACTIVE", None)
    assert state(client, sid)["flavor"]["id"] == "3"


def test_resize_revert(client: ApiClient, system_clock_engine: Engine, sid: str) -> None:
    act(client, sid, {"resize": {"flavorRef": 3}})
    system_clock_engine.run_until_idle()
    r = act(client, sid, {"revertResize": None})
    assert (r.status_code, r.content) == (202, b"")
    assert status(client, sid) == ("REVERT_RESIZE", "resize_reverting")
    assert settled(client, system_clock_engine, sid) == ("ACTIVE", None)
    s = state(client, sid, "2.47")
    assert s["flavor"]["original_name"] == "m1.small"


def test_resize_from_stopped_confirms_to_shutoff(client: ApiClient, system_clock_engine: Engine,
                                                 sid: str) -> None:
    act(client, sid, {"os-stop": None})
    system_clock_engine.run_until_idle()
    act(client, sid, {"resize": {"flavorRef": "3"}})
    assert settled(client, system_clock_engine, sid) == ("VERIFY_RESIZE", None)
    assert act(client, sid, {"confirmResize": None}).status_code == 204
    assert settled(client, system_clock_engine, sid) == ("SHUTOFF", None)


@pytest.mark.parametrize(("body", "message"), [
    ({"resize": {"flavorRef": "2"}}, "When resizing, instances must change flavor!"),
    ({"resize": {"flavorRef": "99"}}, "Flavor 99 could not be found."),
    ({"resize": {}}, "'flavorRef' is a required property"),
    ({"resize": {"flavorRef": None}}, "flavorRef"),
    ({"resize": None}, "resize"),
])
def test_resize_refusals(client: ApiClient, sid: str, body: dict[str, Any],
                         message: str) -> None:
    r = act(client, sid, body)
    assert r.status_code == 400
    assert message in r.json()["badRequest"]["message"]


def test_rebuild_returns_202_with_the_server(client: ApiClient, system_clock_engine: Engine,
                                             sid: str) -> None:
    before = state(client, sid)
    r = act(client, sid, {"rebuild": {"imageRef": IMAGE2, "name": "rebuilt",
                                      "metadata": {"k": "v"}, "adminPass": "pw"}})
    assert r.status_code == 202
    assert r.headers["location"] == f"http://testserver/v2.1/a1/servers/{sid}"
    body = r.json()["server"]
    assert body["id"] == sid
    assert body["status"] == "REBUILD"
    assert body["image"]["id"] == IMAGE2
    assert body["flavor"]["id"] == "2"
    assert (body["name"], body["metadata"], body["adminPass"]) == ("rebuilt", {"k": "v"}, "pw")
    # before 2.75 the body is the reduced view
    assert "OS-EXT-STS:vm_state" not in body
    assert "security_groups" not in body
    assert "OS-EXT-IPS:type" not in str(body["addresses"])
    assert settled(client, system_clock_engine, sid) == ("ACTIVE", None)
    after = state(client, sid)
    assert after["image"]["id"] == IMAGE2
    assert after["addresses"] == before["addresses"]


def test_rebuild_body_by_microversion(client: ApiClient, sid: str) -> None:
    r = act(client, sid, {"rebuild": {"imageRef": IMAGE2}}, version="2.96")
    assert r.status_code == 202
    body = r.json()["server"]
    assert body["OS-EXT-STS:task_state"] == "rebuilding"
    assert body["server_groups"] == []
    assert body["user_data"] is None
    assert "OS-EXT-SRV-ATTR:user_data" not in body  # Nova leaves it out of rebuild
    assert body["OS-EXT-SRV-ATTR:hostname"] == "vm"  # the rest of the admin view is there
    assert len(body["adminPass"]) == 12
    assert body["flavor"]["original_name"] == "m1.small"


def test_rebuild_of_stopped_server_ends_shutoff(client: ApiClient, system_clock_engine: Engine,
                                                sid: str) -> None:
    act(client, sid, {"os-stop": None})
    system_clock_engine.run_until_idle()
    r = act(client, sid, {"rebuild": {"imageRef": IMAGE2}})
    assert r.json()["server"]["image"]["id"] == IMAGE2
    assert settled(client, system_clock_engine, sid) == ("SHUTOFF", None)


@pytest.mark.parametrize(("body", "message"), [
    ({"rebuild": {}}, "'imageRef' is a required property"),
    ({"rebuild": {"imageRef": "cirros"}}, "is not a 'uuid'"),
    ({"rebuild": {"imageRef": "6b0e4b3c-0000-4000-8000-000000000000"}},
     "Cannot find image for rebuild"),
    ({"rebuild": {"imageRef": IMAGE, "name": ""}}, "name"),
    ({"rebuild": {"imageRef": IMAGE, "description": "x"}}, "'description' was unexpected"),
    ({"rebuild": {"imageRef": IMAGE, "bogus": 1}}, "'bogus' was unexpected"),
])
def test_rebuild_refusals(client: ApiClient, sid: str, body: dict[str, Any],
                          message: str) -> None:
    r = act(client, sid, body)
    assert r.status_code == 400, r.text
    assert message in r.json()["badRequest"]["message"]


def test_lock_and_unlock(client: ApiClient, sid: str) -> None:
    r = act(client, sid, {"lock": None})
    assert (r.status_code, r.content) == (202, b"")
    s = state(client, sid, "2.73")
    assert (s["locked"], s["locked_reason"], s["status"]) == (True, None, "ACTIVE")
    assert act(client, sid, {"unlock": None}).status_code == 202
    assert state(client, sid, "2.9")["locked"] is False
    r = act(client, sid, {"lock": {"locked_reason": "maintenance"}}, version="2.73")
    assert r.status_code == 202
    assert state(client, sid, "2.73")["locked_reason"] == "maintenance"
    r = act(client, sid, {"lock": {"locked_reason": "x"}}, version="2.72")
    assert r.status_code == 400


def test_reset_state(client: ApiClient, system_clock_engine: Engine, sid: str) -> None:
    act(client, sid, {"os-stop": None})  # leaves task_state powering-off until the agent runs
    r = act(client, sid, {"os-resetState": {"state": "error"}})
    assert (r.status_code, r.content) == (202, b"")
    assert status(client, sid) == ("ERROR", None)
    assert act(client, sid, {"os-resetState": {"state": "active"}}).status_code == 202
    assert settled(client, system_clock_engine, sid) == ("ACTIVE", None)
    bad_bodies: list[dict[str, Any]] = [{"os-resetState": {"state": "stopped"}},
                                        {"os-resetState": {}}, {"os-resetState": None}]
    for bad in bad_bodies:
        assert act(client, sid, bad).status_code == 400


# --- refusals ----------------------------------------------------------------------------
def test_wrong_state_is_409_with_novas_message(client: ApiClient, system_clock_engine: Engine,
                                               sid: str) -> None:
    act(client, sid, {"pause": None})
    system_clock_engine.run_until_idle()
    r = act(client, sid, {"pause": None})
    assert r.status_code == 409
    assert r.json() == {"conflictingRequest": {
        "code": 409,
        "message": f"Cannot 'pause' instance {sid} while it is in vm_state paused"}}
    assert r.headers["x-openstack-nova-api-version"] == "2.1"
    r = act(client, sid, {"resume": None})
    assert r.json()["conflictingRequest"]["message"] == (
        f"Cannot 'resume' instance {sid} while it is in vm_state paused")


def test_action_during_a_transition_is_409(client: ApiClient, sid: str) -> None:
    assert act(client, sid, {"os-stop": None}).status_code == 202
    r = act(client, sid, {"os-stop": None})
    assert r.status_code == 409
    assert r.json()["conflictingRequest"]["message"] == (
        f"Cannot 'stop' instance {sid} while it is in task_state powering-off")
    r = act(client, sid, {"confirmResize": None})
    assert r.json()["conflictingRequest"]["message"] == (
        f"Cannot 'confirmResize' instance {sid} while it is in vm_state active")


@pytest.mark.parametrize("content", [b"{", b"not json", b"", b"[]", b'"pause"',
                                     b'{"pause": null, "unpause": null}', b"{}"])
def test_malformed_action_body_is_400(client: ApiClient, sid: str, content: bytes) -> None:
    r = client.post(f"/v2.1/a1/servers/{sid}/action", content=content,
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.json() == {"badRequest": {"code": 400, "message": "Malformed request body"}}


@pytest.mark.parametrize("key", ["changePassword", "os-migrate", "migrateLive", "Pause"])
def test_unknown_action_is_400(client: ApiClient, sid: str, key: str) -> None:
    r = act(client, sid, {key: None})
    assert r.status_code == 400
    assert r.json()["badRequest"]["message"] == f"There is no such action: {key}"


def test_validation_comes_before_lookup(client: ApiClient) -> None:
    missing = "6b0e4b3c-0000-4000-8000-000000000000"
    assert act(client, missing, {"nope": None}).status_code == 400
    r = act(client, missing, {"pause": None})
    assert r.status_code == 404
    assert r.json()["itemNotFound"]["message"] == f"Instance {missing} could not be found."


def test_action_params_must_be_null(client: ApiClient, sid: str) -> None:
    assert act(client, sid, {"pause": {"now": True}}).status_code == 400
    assert act(client, sid, {"pause": {}}).status_code == 202


def test_action_body_over_one_mib_is_413(client: ApiClient, sid: str) -> None:
    r = client.post(f"/v2.1/a1/servers/{sid}/action",
                    content=b'{"pause": "' + b"x" * (1024 * 1024 + 1) + b'"}',
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert r.json()["overLimit"] == {"code": 413, "message": "Request is too large."}
    assert status(client, sid) == ("ACTIVE", None)


def test_delete_after_actions_ends_404(client: ApiClient,
                                       system_clock_engine: Engine, sid: str) -> None:
    act(client, sid, {"resize": {"flavorRef": "3"}})
    system_clock_engine.run_until_idle()
    assert client.delete(f"/v2.1/a1/servers/{sid}").status_code == 204
    system_clock_engine.run_until_idle()
    r = client.get(f"/v2.1/a1/servers/{sid}")
    assert r.status_code == 404
    assert act(client, sid, {"os-start": None}).status_code == 404

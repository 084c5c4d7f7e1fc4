"""``/servers/{id}/os-instance-actions``: fields per microversion, paging, deleted servers."""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta
from typing import Any

import httpx
import pytest

from vmledger import Engine, FakeClock
from vmledger.api import create_app
from vmledger.api.testing import ApiClient
from vmledger.domain.catalog import image_id_for

IMAGE = image_id_for("cirros-0.6.2-x86_64")
MISSING = "6b0e4b3c-0000-4000-8000-000000000000"
MICRO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}$")


@pytest.fixture
def client(memory_engine: Engine) -> ApiClient:
    return ApiClient(create_app(memory_engine))


def mv(version: str) -> dict[str, str]:
    return {"X-OpenStack-Nova-API-Version": version}


def create(client: ApiClient, engine: Engine) -> tuple[str, str]:
    """An ACTIVE server of project a1 and the request id of its create."""
    r = client.post("/v2.1/a1/servers", json={"server": {
        "name": "vm", "flavorRef": "1", "imageRef": IMAGE}})
    assert r.status_code == 202, r.text
    engine.run_until_idle()
    return str(r.json()["server"]["id"]), r.headers["x-compute-request-id"]


def act(client: ApiClient, engine: Engine, clock: FakeClock, sid: str, body: Any) -> str:
    clock.tick(1)
    r = client.post(f"/v2.1/a1/servers/{sid}/action", json=body)
    assert r.status_code in (202, 204), r.text
    engine.run_until_idle()
    return r.headers["x-compute-request-id"]


def actions(client: ApiClient, sid: str, version: str = "2.1", **params: str
            ) -> httpx.Response:
    return client.get(f"/v2.1/a1/servers/{sid}/os-instance-actions", headers=mv(version),
                      params=params)


def action(client: ApiClient, sid: str, rid: str, version: str = "2.1") -> httpx.Response:
    return client.get(f"/v2.1/a1/servers/{sid}/os-instance-actions/{rid}",
                      headers=mv(version))


BASE_KEYS = {"action", "instance_uuid", "request_id", "user_id", "project_id", "start_time",
             "message"}


def test_list_newest_first_with_2_1_fields(client: ApiClient, memory_engine: Engine,
                                           clock: FakeClock) -> None:
    sid, create_rid = create(client, memory_engine)
    reboot_rid = act(client, memory_engine, clock, sid, {"reboot": {"type": "HARD"}})
    r = actions(client, sid)
    assert r.status_code == 200
    assert r.headers["x-openstack-nova-api-version"] == "2.1"
    listed = r.json()["instanceActions"]
    assert [a["action"] for a in listed] == ["reboot", "create"]
    assert [a["request_id"] for a in listed] == [reboot_rid, create_rid]
    for a in listed:
        assert set(a) == BASE_KEYS
        assert a["instance_uuid"] == sid
        assert (a["user_id"], a["project_id"], a["message"]) == ("admin", "a1", None)
        assert MICRO_TIME.match(a["start_time"])
    assert set(r.json()) == {"instanceActions"}


def test_updated_at_from_2_58(client: ApiClient, memory_engine: Engine) -> None:
    sid, rid = create(client, memory_engine)
    assert "updated_at" not in actions(client, sid, "2.57").json()["instanceActions"][0]
    [a] = actions(client, sid, "2.58").json()["instanceActions"]
    assert MICRO_TIME.match(a["updated_at"]) and a["updated_at"] >= a["start_time"]
    shown = action(client, sid, rid, "2.58").json()["instanceAction"]
    assert shown["updated_at"] == a["updated_at"]
    assert "updated_at" not in action(client, sid, rid, "2.57").json()["instanceAction"]


@pytest.mark.parametrize(("version", "keys"), [
    ("2.1", {"event", "start_time", "finish_time", "result", "traceback"}),
    ("2.51", {"event", "start_time", "finish_time", "result", "traceback"}),
    ("2.62", {"event", "start_time", "finish_time", "result", "traceback", "host", "hostId"}),
    ("2.84", {"event", "start_time", "finish_time", "result", "traceback", "host", "hostId",
              "details"}),
])
def test_show_event_fields_for_admins(client: ApiClient, memory_engine: Engine, version: str,
                                      keys: set[str]) -> None:
    sid, rid = create(client, memory_engine)
    r = action(client, sid, rid, version)
    assert r.status_code == 200
    shown = r.json()["instanceAction"]
    assert shown["action"] == "create" and shown["request_id"] == rid
    [event] = shown["events"]
    assert set(event) == keys
    assert event["event"] == "compute__do_build_and_run_instance"
    assert event["result"] == "Success"
    assert MICRO_TIME.match(event["start_time"]) and MICRO_TIME.match(event["finish_time"])
    if "hostId" in keys:
        assert event["host"] == memory_engine.host
        assert event["hostId"] == hashlib.sha224(b"a1" + memory_engine.host.encode()).hexdigest()


def test_events_newest_first_and_failure_details(client: ApiClient, memory_engine: Engine,
                                                 clock: FakeClock) -> None:
    sid, _ = create(client, memory_engine)
    memory_engine.hypervisor.inject("pause", "fail", rollback=True)  # type: ignore[attr-defined]
    rid = act(client, memory_engine, clock, sid, {"pause": None})
    shown = action(client, sid, rid, "2.84").json()["instanceAction"]
    assert shown["message"] == "Error"
    [event] = shown["events"]
    assert event["result"] == "Error"
    assert "Injected failure" in event["details"]
    listed = actions(client, sid).json()["instanceActions"]
    assert listed[0]["message"] == "Error"


def test_lock_events_have_a_host(client: ApiClient, memory_engine: Engine,
                                 clock: FakeClock) -> None:
    sid, _ = create(client, memory_engine)
    rid = act(client, memory_engine, clock, sid, {"lock": None})
    [event] = action(client, sid, rid, "2.62").json()["instanceAction"]["events"]
    assert event["event"] == "api_lock"
    assert event["host"] == memory_engine.host and len(event["hostId"]) == 56


def test_unknown_request_id_and_server_are_404(client: ApiClient, memory_engine: Engine) -> None:
    sid, _ = create(client, memory_engine)
    r = action(client, sid, "req-nope")
    assert r.status_code == 404
    assert r.json() == {"itemNotFound": {"code": 404, "message": "Action req-nope not found"}}
    for r in (actions(client, MISSING), action(client, MISSING, "req-x")):
        assert r.status_code == 404
        assert r.json()["itemNotFound"]["message"] == f"Instance {MISSING} could not be found."


def test_other_projects_server_is_404(client: ApiClient, memory_engine: Engine) -> None:
    sid, rid = create(client, memory_engine)
    member = ApiClient(create_app(memory_engine, auth="token", tokens=["bob:bob:a2:member"]))
    bob = {"X-Auth-Token": "bob"}
    assert member.get(f"/v2.1/servers/{sid}/os-instance-actions",
                      headers=bob).status_code == 404
    assert member.get(f"/v2.1/servers/{sid}/os-instance-actions/{rid}",
                      headers=bob).status_code == 404
    # noauth callers are administrators: every project's servers are theirs to read
    assert client.get(f"/v2.1/a2/servers/{sid}/os-instance-actions").status_code == 200


def test_deleted_server_readable_from_2_21(client: ApiClient, memory_engine: Engine,
                                           clock: FakeClock) -> None:
    sid, rid = create(client, memory_engine)
    clock.tick(1)
    assert client.delete(f"/v2.1/a1/servers/{sid}").status_code == 204
    memory_engine.run_until_idle()
    assert actions(client, sid, "2.20").status_code == 404
    assert action(client, sid, rid, "2.20").status_code == 404
    r = actions(client, sid, "2.21")
    assert r.status_code == 200
    assert [a["action"] for a in r.json()["instanceActions"]] == ["delete", "create"]
    assert action(client, sid, rid, "2.21").json()["instanceAction"]["action"] == "create"


def test_query_ignored_before_2_58(client: ApiClient, memory_engine: Engine) -> None:
    sid, _ = create(client, memory_engine)
    r = actions(client, sid, "2.57", limit="x", marker="nope", bogus="1")
    assert r.status_code == 200 and len(r.json()["instanceActions"]) == 1


def test_limit_marker_and_links_from_2_58(client: ApiClient, memory_engine: Engine,
                                          clock: FakeClock) -> None:
    sid, create_rid = create(client, memory_engine)
    rids = [act(client, memory_engine, clock, sid, {"reboot": {"type": "SOFT"}}) for _ in range(3)]
    newest_first = [*reversed(rids), create_rid]
    r = actions(client, sid, "2.58", limit="2")
    body = r.json()
    assert [a["request_id"] for a in body["instanceActions"]] == newest_first[:2]
    [link] = body["links"]
    assert link["rel"] == "next"
    assert link["href"] == (f"http://testserver/v2.1/a1/servers/{sid}/os-instance-actions"
                            f"?limit=2&marker={newest_first[1]}")
    r = actions(client, sid, "2.58", limit="2", marker=newest_first[1])
    assert [a["request_id"] for a in r.json()["instanceActions"]] == newest_first[2:]
    r = actions(client, sid, "2.58", marker=newest_first[-1])
    assert r.json() == {"instanceActions": []}
    assert "links" not in actions(client, sid, "2.58").json()
    assert actions(client, sid, "2.58", limit="0").json() == {"instanceActions": []}


@pytest.mark.parametrize(("version", "params", "message"), [
    ("2.58", {"marker": "req-unknown"}, "Marker req-unknown could not be found."),
    ("2.58", {"limit": "-1"}, "Invalid input for query parameters limit."),
    ("2.58", {"limit": "abc"}, "Invalid input for query parameters limit."),
    ("2.58", {"changes-since": "yesterday"},
     "Invalid input for query parameters changes-since. Value: yesterday. 'yesterday' is "
     "not a 'date-time'"),
    ("2.58", {"bogus": "1"}, "Additional properties are not allowed ('bogus' was unexpected)"),
    ("2.65", {"changes-before": "2026-01-01T00:00:00Z"},
     "Additional properties are not allowed ('changes-before' was unexpected)"),
    ("2.66", {"changes-since": "2026-01-02T00:00:00Z",
              "changes-before": "2026-01-01T00:00:00Z"},
     "The value of changes-since must be less than or equal to changes-before."),
])
def test_query_errors_are_400(client: ApiClient, memory_engine: Engine, version: str,
                              params: dict[str, str], message: str) -> None:
    sid, _ = create(client, memory_engine)
    r = actions(client, sid, version, **params)
    assert r.status_code == 400
    assert r.json()["badRequest"]["message"].startswith(message)


def test_changes_since_and_before(client: ApiClient, memory_engine: Engine, clock: FakeClock
                                  ) -> None:
    sid, create_rid = create(client, memory_engine)
    clock.advance(hours=1)
    middle = clock.now()
    clock.advance(hours=1)
    reboot_rid = act(client, memory_engine, clock, sid, {"reboot": {"type": "HARD"}})
    since = middle.strftime("%Y-%m-%dT%H:%M:%SZ")
    r = actions(client, sid, "2.58", **{"changes-since": since})
    assert [a["request_id"] for a in r.json()["instanceActions"]] == [reboot_rid]
    r = actions(client, sid, "2.66", **{"changes-before": since})
    assert [a["request_id"] for a in r.json()["instanceActions"]] == [create_rid]
    future = (clock.now() + timedelta(days=1)).isoformat()
    r = actions(client, sid, "2.58", **{"changes-since": future})
    assert r.json() == {"instanceActions": []}

"""Backups (``createBackup``): a snapshot image marked as a backup of a type, and the
rotation that keeps only the newest ones of that type; engine and Compute API."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from tests.support.compute import action, active_server, assert_bad_request, built
from vmledger import BadRequest, Conflict, FakeClock, NotFound, Simulator
from vmledger.api.testing import ApiClient
from vmledger.engine import Engine

IMAGE = "cirros-0.6.2-x86_64"



def backup(engine: Engine, clock: FakeClock, sid: str, name: str, kind: str = "daily",
           rotation: int = 2) -> str:
    clock.advance(timedelta(minutes=1))
    result = engine.create_backup(sid, name, backup_type=kind, rotation=rotation)
    engine.run_until_idle()
    return str(result.details["image_id"])


def custom(engine: Engine) -> list[dict[str, Any]]:
    """The images made from servers (the catalog's pre-built ones left out)."""
    return [i for i in engine.list_images() if i.get("server_id")]


def names(engine: Engine) -> list[str]:
    return sorted(i["name"] for i in custom(engine))


def test_a_backup_is_a_snapshot_image_marked_as_such() -> None:
    clock = FakeClock()
    sim = Simulator()
    with Engine("memory", clock=clock, hypervisor=sim) as engine:
        sid = built(engine, "db")
        result = engine.create_backup(sid, "db-daily-1", backup_type="daily", rotation=2,
                                      metadata={"owner": "ops"})
        s = engine.get_server(sid)
        assert (s.status, s.task_state) == ("ACTIVE", "image_backup")
        engine.run_until_idle()
        image = engine.get_image(result.details["image_id"])
        assert (image["status"], image["server_id"]) == ("active", sid)
        assert image["metadata"] == {"owner": "ops", "image_type": "backup",
                                     "backup_type": "daily"}
        assert image["id"] in sim.snapshots()
        [action] = [a for a in engine.instance_actions(sid) if a["action"] == "createBackup"]
        assert [(e["event"], e["result"]) for e in action["events"]] == [
            ("compute_backup_instance", "Success")]
        steps = [h.details.get("task_state") for h in engine.history(sid)
                 if h.event in ("ActionRequested", "TaskAdvanced")
                 and h.details.get("action") == "create_backup"]
        assert steps == ["image_backup", "image_pending_upload", "image_uploading"]


def test_rotation_keeps_the_newest_of_each_type_and_server() -> None:
    clock = FakeClock()
    with Engine("memory", clock=clock) as engine:
        sid, other = built(engine, "db"), built(engine, "web")
        engine.create_image(sid, "golden")  # a snapshot, not a backup: never rotated
        backup(engine, clock, other, "web-daily-1")  # another server's: never rotated
        for n in (1, 2, 3):
            backup(engine, clock, sid, f"daily-{n}")
        backup(engine, clock, sid, "weekly-1", kind="weekly")
        assert names(engine) == ["daily-2", "daily-3", "golden", "web-daily-1", "weekly-1"]
        backup(engine, clock, sid, "daily-4", rotation=1)
        assert names(engine) == ["daily-4", "golden", "web-daily-1", "weekly-1"]
        # rotation 0: the new backup is made, then removed with every other of its type
        backup(engine, clock, sid, "weekly-2", kind="weekly", rotation=0)
        assert names(engine) == ["daily-4", "golden", "web-daily-1"]
        deleted = [h for h in engine.causal_chain(engine.instance_actions(sid)[0]["request_id"])
                   if h.event == "Deleted"]
        assert len(deleted) == 2  # weekly-1 and weekly-2, in the backup's own request


def test_refusals() -> None:
    with Engine("memory", clock=FakeClock()) as engine:
        sid = built(engine, "db")
        with pytest.raises(BadRequest):
            engine.create_backup(sid, "x", backup_type="daily", rotation=-1)
        with pytest.raises(BadRequest):
            engine.create_backup(sid, " x", backup_type="daily", rotation=1)
        engine.create_backup(sid, "b", backup_type="daily", rotation=1)
        with pytest.raises(Conflict, match="task_state image_backup"):
            engine.create_backup(sid, "b", backup_type="daily", rotation=1)
        engine.run_until_idle()
        alice = engine.context(user_id="alice", project_id="p1", is_admin=False)
        with pytest.raises(NotFound):
            engine.create_backup(sid, "b", backup_type="daily", rotation=1, ctx=alice)


# --- the Compute API ---------------------------------------------------------------------
def test_api_create_backup_per_microversion(memory_engine: Engine, noauth_client: ApiClient
                                            ) -> None:
    engine, client = memory_engine, noauth_client
    sid = active_server(engine, client)
    body = {"createBackup": {"name": "b1", "backup_type": "daily", "rotation": "2"}}
    r = action(client, sid, body, "2.44")
    assert (r.status_code, r.content) == (202, b"")
    image_id = r.headers["Location"].rsplit("/", 1)[1]
    engine.run_until_idle()
    r = action(client, sid, {"createBackup": {"name": "b2", "backup_type": "daily",
                                            "rotation": 2, "metadata": {"k": "v"}}}, "2.45")
    assert r.status_code == 202 and set(r.json()) == {"image_id"}
    engine.run_until_idle()
    glance = client.get(f"/image/v2/images/{r.json()['image_id']}").json()
    assert (glance["image_type"], glance["backup_type"], glance["k"]) == (
        "backup", "daily", "v")
    # rotation 0 before 2.45: no Location (the image will not stay)
    r = action(client, sid, {"createBackup": {"name": "b3", "backup_type": "weekly",
                                            "rotation": 0}}, "2.44")
    assert r.status_code == 202 and "Location" not in r.headers
    engine.run_until_idle()
    assert {i["name"] for i in custom(engine)} == {"b1", "b2"}
    assert engine.get_image(image_id)["name"] == "b1"


@pytest.mark.parametrize("body", [
    None, {}, {"name": "b", "backup_type": "daily"}, {"name": "b", "rotation": 1},
    {"backup_type": "daily", "rotation": 1},
    {"name": "b", "backup_type": "daily", "rotation": -1},
    {"name": "b", "backup_type": "daily", "rotation": "1.5"},
    {"name": "b", "backup_type": "daily", "rotation": True},
    {"name": "b", "backup_type": 3, "rotation": 1},
    {"name": "", "backup_type": "daily", "rotation": 1},
    {"name": "b", "backup_type": "daily", "rotation": 1, "extra": 1},
    {"name": "b", "backup_type": "daily", "rotation": 1, "metadata": {"k": 1}},
])
def test_api_bad_bodies_are_400_and_write_nothing(memory_engine: Engine, noauth_client: ApiClient,
                                                   body: Any) -> None:
    engine, client = memory_engine, noauth_client
    sid = active_server(engine, client)
    r = action(client, sid, {"createBackup": body})
    assert_bad_request(r)
    assert custom(engine) == []
    assert engine.get_server(sid).task_state is None

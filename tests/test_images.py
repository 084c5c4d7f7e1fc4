"""Custom images from servers (createImage): Nova's task states, the image catalog
behind them, servers built from a snapshot, failures, isolation and audit."""

from __future__ import annotations

import pytest

from tests.engines import make_engine
from vmledger import BadRequest, FakeClock, InvalidState, NotFound, Simulator
from vmledger.engine import Engine

IMAGE = "cirros-0.6.2-x86_64"


def active(engine: Engine, ctx: object = None) -> str:
    server = engine.create_server("src", flavor="m1.small", image=IMAGE, ctx=ctx)  # type: ignore[arg-type]
    engine.run_until_idle()
    return server.id


def test_snapshot_then_build_from_it(url: str) -> None:
    sim = Simulator()
    with make_engine(url, clock=FakeClock(), hypervisor=sim) as engine:
        owner = engine.context(user_id="alice", project_id="p1", is_admin=False)
        sid = active(engine, owner)
        engine.rebuild(sid, image=IMAGE, ctx=owner)  # disk generation 1
        engine.run_until_idle()
        result = engine.create_image(sid, "gold", metadata={"purpose": "backup"}, ctx=owner)
        image_id = result.details["image_id"]
        s = engine.get_server(sid)
        assert (s.status, s.task_state) == ("ACTIVE", "image_snapshot")  # status unchanged
        assert engine.get_image(image_id, ctx=owner)["status"] == "queued"
        engine.run_until_idle()
        assert engine.get_server(sid).task_state is None
        image = engine.get_image(image_id, ctx=owner)
        assert (image["status"], image["server_id"], image["name"]) == ("active", sid, "gold")
        assert image["size"] > 0 and image["metadata"] == {"purpose": "backup"}
        steps = [h.details.get("task_state") for h in engine.history(sid)
                 if h.event in ("ActionRequested", "TaskAdvanced")
                 and h.details.get("action") == "create_image"]
        assert steps == ["image_snapshot", "image_snapshot_pending", "image_pending_upload",
                         "image_uploading"]
        calls = [h.details["call"] for h in engine.history(sid) if h.event == "HypervisorCalled"
                 and h.request_id == result.request_id]
        assert calls == ["observe", "snapshot"]
        assert engine.instance_actions(sid)[0]["action"] == "createImage"

        # a new server from the custom image boots the captured disk
        clone = engine.create_server("clone", flavor="m1.small", image=image_id, ctx=owner)
        engine.run_until_idle()
        c = engine.get_server(clone.id)
        assert c.status == "ACTIVE"
        assert c.image == {"id": image_id, "name": "gold", "snapshot_of": sid}
        captured = sim.snapshots()[image_id]
        assert (captured["source_image_id"], captured["generation"]) == (s.image["id"], 1)
        assert sim.guests()[clone.id]["image_id"] == image_id

        # a stopped server can be snapshotted and stays stopped
        engine.stop(sid, ctx=owner)
        engine.run_until_idle()
        engine.create_image(sid, "cold", ctx=owner)
        engine.run_until_idle()
        assert engine.get_server(sid).status == "SHUTOFF"


def test_refusals_isolation_and_delete(url: str) -> None:
    sim = Simulator()
    with make_engine(url, clock=FakeClock(), hypervisor=sim) as engine:
        owner = engine.context(user_id="alice", project_id="p1", is_admin=False)
        other = engine.context(user_id="bob", project_id="p2", is_admin=False)
        sid = active(engine, owner)
        with pytest.raises(BadRequest):
            engine.create_image(sid, "x" * 256, ctx=owner)
        engine.resize(sid, flavor="m1.medium", ctx=owner)
        engine.run_until_idle()
        with pytest.raises(InvalidState, match=f"Cannot 'createImage' instance {sid} while it "
                                               "is in vm_state resized"):
            engine.create_image(sid, "snap", ctx=owner)
        engine.confirm_resize(sid, ctx=owner)
        engine.run_until_idle()
        image_id = engine.create_image(sid, "snap", ctx=owner).details["image_id"]
        with pytest.raises(InvalidState, match="task_state image_snapshot"):
            engine.pause(sid, ctx=owner)
        engine.run_until_idle()
        assert [i["id"] for i in engine.list_images(ctx=owner) if i["type"] == "snapshot"] == [
            image_id]
        assert [i for i in engine.list_images(ctx=other) if i["type"] == "snapshot"] == []
        with pytest.raises(NotFound):
            engine.get_image(image_id, ctx=other)
        with pytest.raises(NotFound):
            engine.delete_image(image_id, ctx=other)
        with pytest.raises(BadRequest):  # another project cannot boot it either
            engine.create_server("nope", flavor="m1.small", image=image_id, ctx=other)
        engine.delete_image(image_id, ctx=owner)
        with pytest.raises(NotFound):
            engine.get_image(image_id, ctx=owner)


def test_failed_snapshot_returns_the_server_and_marks_the_image(url: str) -> None:
    sim = Simulator()
    with make_engine(url, clock=FakeClock(), hypervisor=sim) as engine:
        sid = active(engine)
        sim.inject("snapshot", "fail", rollback=True)
        image_id = engine.create_image(sid, "broken").details["image_id"]
        engine.run_until_idle()
        s = engine.get_server(sid)
        assert (s.status, s.task_state) == ("ACTIVE", None)
        assert engine.get_image(image_id)["status"] == "error"
        assert engine.instance_actions(sid)[0]["message"] == "Error"

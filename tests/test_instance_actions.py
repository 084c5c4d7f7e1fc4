"""Instance actions (Nova's os-instance-actions) built from the log."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from tests.engines import make_engine
from vmledger import FakeClock, NotFound, Simulator


def test_actions_follow_tempest_expectations(tmp_path: Path) -> None:
    clock = FakeClock()
    sim = Simulator()
    with make_engine(f"sqlite:///{tmp_path / 'a.db'}", clock=clock, hypervisor=sim) as engine:
        ctx = engine.context(user_id="alice", project_id="p1", is_admin=False)
        server = engine.create_server("a", flavor="m1.small", image="cirros-0.6.2-x86_64",
                                      ctx=ctx)
        engine.run_until_idle()
        clock.tick()
        reboot = engine.reboot(server.id, hard=True, ctx=ctx)
        engine.run_until_idle()
        actions = engine.instance_actions(server.id, ctx=ctx)
        assert [a["action"] for a in actions] == ["reboot", "create"]  # newest first
        create = engine.instance_action(server.id, actions[1]["request_id"], ctx=ctx)
        assert create["server_id"] == server.id and create["user_id"] == "alice"
        assert [e["event"] for e in create["events"]] == ["compute__do_build_and_run_instance"]
        assert create["events"][0]["result"] == "Success"
        assert create["events"][0]["host"] == "compute-1"
        assert engine.instance_action(server.id, reboot.request_id)["message"] is None

        clock.tick()
        sim.inject("pause", "fail", rollback=True)
        paused = engine.pause(server.id, ctx=ctx)
        engine.run_until_idle()
        failed = engine.instance_action(server.id, paused.request_id, ctx=ctx)
        assert failed["message"] == "Error"
        assert failed["events"][0]["result"] == "Error"
        assert "Injected failure" in failed["events"][0]["details"]

        clock.tick()
        engine.resize(server.id, flavor="m1.medium", ctx=ctx)
        engine.run_until_idle()
        clock.advance(timedelta(hours=25))
        engine.run_until_idle()
        auto = engine.instance_actions(server.id)[0]
        assert (auto["action"], auto["user_id"], auto["project_id"]) == ("confirmResize",
                                                                       None, None)
        clock.tick()
        engine.delete(server.id, ctx=ctx)
        engine.run_until_idle()
        names = [a["action"] for a in engine.instance_actions(server.id)]
        assert names[0] == "delete" and names[-1] == "create"
        with pytest.raises(NotFound, match="Action req-nope not found"):
            engine.instance_action(server.id, "req-nope")
        other = engine.context(user_id="bob", project_id="p2", is_admin=False)
        with pytest.raises(NotFound):
            engine.instance_actions(server.id, ctx=other)
        before = engine.instance_actions(server.id)
        engine.updater.rebuild()
        assert engine.instance_actions(server.id) == before

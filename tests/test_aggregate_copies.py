"""The Server aggregate's cheap copy is safe: applying events and running commands
never change a nested value in place, so a cached aggregate is never altered by a
command on its copy, even one whose save fails."""

from __future__ import annotations

import copy
import uuid
from pathlib import Path
from typing import Any

from tests.engines import make_engine
from vmledger import FakeClock, Simulator


def test_replay_does_not_touch_events_and_commands_do_not_touch_the_cache(
        tmp_path: Path) -> None:
    with make_engine(f"sqlite:///{tmp_path / 'c.db'}", clock=FakeClock(),
                     hypervisor=Simulator()) as engine:
        sid = engine.create_server("c", flavor="m1.small", image="cirros-0.6.2-x86_64",
                                   metadata={"k": "v"}).id
        engine.run_until_idle()
        for act in ("resize", "confirm_resize", "pause", "unpause", "lock", "unlock"):
            kwargs: dict[str, Any] = {"flavor": "m1.medium"} if act == "resize" else {}
            engine.act(sid, act, **kwargs)
            engine.run_until_idle()
        events = engine.service.history(sid)
        before = [copy.deepcopy(vars(e)) for e in events]
        replayed: Any = None
        for e in events:
            replayed = e.mutate(replayed)
        assert [vars(e) for e in events] == before

        service = engine.service
        original = service.repository.get(uuid.UUID(sid))
        snapshot = {k: copy.deepcopy(v) for k, v in vars(original).items()}
        working = copy.deepcopy(original)
        working.request_action("rebuild", engine.context(), service.clock.now(),
                               params={"image": {"id": "x", "name": "x"}},
                               changes={"image": {"id": "x", "name": "x"}, "name": "renamed"})
        working.lock(engine.context(), service.clock.now(), "why")
        assert {k: v for k, v in vars(original).items()} == snapshot
        assert original.pending_events == [] and len(working.pending_events) == 2

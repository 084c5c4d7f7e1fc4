"""Concurrent writers: one wins, the others are decided again by the guard (409), never
an unhandled error; the view survives being rebuilt from the log."""

from __future__ import annotations

import functools

import pytest

from tests.engines import make_engine
from tests.support.racing import racing
from vmledger import Engine, FakeClock
from vmledger.domain.errors import InvalidState


def race(engines: list[Engine], server_id: str, action: str) -> list[str]:
    return racing([functools.partial(e.act, server_id, action) for e in engines])


def test_racing_commands_one_wins_the_rest_get_409(url: str) -> None:
    clock = FakeClock()
    engines = [make_engine(url, clock=clock) for _ in range(4)]
    try:
        server = engines[0].create_server("raced", flavor="m1.small",
                                          image="cirros-0.6.2-x86_64")
        engines[0].run_until_idle()
        results = race(engines, server.id, "stop")
        assert results == ["InvalidState", "InvalidState", "InvalidState", "ok"]
        engines[0].run_until_idle()
        assert engines[0].get_server(server.id).status == "SHUTOFF"
        stops = [e for e in engines[0].history(server.id)
                 if e.details.get("action") == "stop" and e.event == "ActionRequested"]
        assert len(stops) == 1
        with pytest.raises(InvalidState):
            engines[1].stop(server.id)
    finally:
        for e in engines:
            e.close()


def test_view_rebuilds_from_the_log(url: str) -> None:
    with make_engine(url) as engine:
        ids = []
        for i in range(5):
            ids.append(engine.create_server(f"vm-{i}", flavor="m1.small",
                                            image="cirros-0.6.2-x86_64").id)
        engine.run_until_idle()
        engine.pause(ids[0])
        engine.delete(ids[1])
        engine.run_until_idle()
        before = {s.id: s.doc for s in engine.list_servers(include_deleted=True)}
        progress: list[int] = []
        read = engine.updater.rebuild(lambda n, _pos: progress.append(n))
        assert read > 0 and progress
        after = {s.id: s.doc for s in engine.list_servers(include_deleted=True)}
        assert after == before
        assert engine.get_server(ids[0]).status == "PAUSED"

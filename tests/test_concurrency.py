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


@pytest.mark.postgres
def test_commands_saved_at_once_share_a_commit_and_a_lost_race_is_decided_again(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL: the commands one process saves while a write is under way go in one
    transaction (group commit); a command of the group that lost its race is refused
    alone (409), the others are recorded, and the audit chain verifies."""
    import time

    import psycopg

    from vmledger.audit import verify

    with make_engine(postgres_url) as engine:
        raced = engine.create_server("raced", flavor="m1.small", image="cirros-0.6.2-x86_64")
        others = [engine.create_server(f"vm-{i}", flavor="m1.small",
                                       image="cirros-0.6.2-x86_64") for i in range(4)]
        engine.run_until_idle()
        recorder = engine.service.recorder
        write = recorder._insert_once  # type: ignore[attr-defined]
        first = [True]

        def slow_first(events: object, *rest: object) -> object:
            if first[0]:  # the others queue up meanwhile
                first[0] = False
                time.sleep(0.5)
            return write(events, *rest)

        monkeypatch.setattr(recorder, "_insert_once", slow_first)
        calls = [functools.partial(engine.act, raced.id, "stop") for _ in range(3)]
        calls += [functools.partial(engine.lock, s.id) for s in others]
        assert racing(calls) == ["InvalidState", "InvalidState", "ok", "ok", "ok", "ok",
                                 "ok"]
        monkeypatch.undo()
        stops = [e for e in engine.history(raced.id)
                 if e.details.get("action") == "stop" and e.event == "ActionRequested"]
        assert len(stops) == 1
        assert all(engine.get_server(s.id).locked for s in others)
        with psycopg.connect(postgres_url) as conn:
            row = conn.execute(
                "SELECT count(DISTINCT xmin::text) FROM vmledger_events WHERE topic LIKE "
                "'%Server.LockChanged'").fetchone()
        assert row is not None and row[0] < len(others)  # fewer commits than commands
        assert verify(engine.service).ok
        engine.run_until_idle()
        assert engine.get_server(raced.id).status == "SHUTOFF"

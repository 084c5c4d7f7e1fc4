"""The ledger on both backends: paged history, state as of a moment or a version (equal
to what the engine showed then), causal chains of requests, and explanations."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from tests.engines import make_engine
from tests.test_audit_chain import IMAGE, Scenario, scenario
from vmledger import Engine, FakeClock, ServerInfo
from vmledger.audit import Ledger, LedgerEntry, verify
from vmledger.audit.chain import REQUESTS_TABLE
from vmledger.domain.errors import ServerNotFound
from vmledger.domain.server import Server


@pytest.fixture
def lived(engine: Engine, clock: FakeClock) -> Scenario:
    return scenario(engine, clock)


def same(server: Server, info: ServerInfo) -> None:
    """The aggregate as of a moment equals what the engine showed at that moment."""
    assert (server.status, server.vm_state, server.task_state, server.power_state,
            server.flavor, server.image, server.name, server.locked, server.fault,
            server.launched_at, server.confirm_deadline, server.version) == (
        info.status, info.vm_state, info.task_state, info.power_state, info.flavor,
        info.image, info.name, info.locked, info.fault, info.launched_at,
        info.confirm_deadline, info.version)


def test_as_of_a_moment_or_a_version_equals_what_the_engine_showed(
        engine: Engine, clock: FakeClock, lived: Scenario) -> None:
    ledger = Ledger(engine.service)
    checked = 0
    for snap in lived.snapshots:
        if snap.info is None:
            continue
        same(ledger.as_of(snap.server_id, at=snap.at), snap.info)
        same(ledger.as_of(snap.server_id, version=snap.info.version), snap.info)
        same(ledger.as_of(snap.server_id, at=snap.at, use_snapshots=False), snap.info)
        checked += 1
    assert checked >= 12
    # a deleted server: gone from the engine, still in the ledger
    with pytest.raises(ServerNotFound):
        engine.get_server(lived.tmp)
    gone = ledger.as_of(lived.tmp, at=clock.now())
    assert gone.vm_state == "deleted" and gone.terminated_at is not None
    alive = next(s for s in lived.snapshots if s.server_id == lived.tmp and s.info)
    assert alive.info is not None
    same(ledger.as_of(lived.tmp, at=alive.at), alive.info)
    # before it existed, it is not found; between events, the last one before counts
    first = lived.snapshots[0]
    with pytest.raises(ServerNotFound):
        ledger.as_of(lived.web, at=first.at - timedelta(seconds=1))
    assert ledger.version_at(lived.web, first.at - timedelta(seconds=1)) is None
    with pytest.raises(ValueError):
        ledger.as_of(lived.web)


def test_as_of_uses_snapshots_and_the_log_alike_for_a_long_history(
        engine: Engine, clock: FakeClock) -> None:
    sid = engine.create_server("busy", flavor="m1.small", image=IMAGE).id
    engine.run_until_idle()
    moments = []
    for _ in range(22):  # ~6 events per reboot: past the snapshot interval (100)
        clock.tick()
        engine.reboot(sid)
        engine.run_until_idle()
        moments.append((clock.now(), engine.get_server(sid)))
    ledger = Ledger(engine.service)
    assert moments[-1][1].version > 120
    for at, info in moments[::5] + moments[-1:]:
        same(ledger.as_of(sid, at=at), info)
        same(ledger.as_of(sid, at=at, use_snapshots=False), info)


def test_history_pages_carry_positions_actors_and_payloads(
        engine: Engine, lived: Scenario) -> None:
    ledger = Ledger(engine.service)
    entries: list[LedgerEntry] = []
    after = 0
    pages = 0
    while True:
        page = ledger.history(lived.web, after=after, limit=7)
        entries += page.entries
        pages += 1
        if page.next_after is None:
            break
        after = page.next_after
    assert pages > 3
    assert entries == list(ledger.iter_history(lived.web, page_size=5))
    assert [e.version for e in entries] == list(range(1, len(entries) + 1))
    positions = [e.position or 0 for e in entries]
    assert all(positions) and positions == sorted(positions)
    # positions are notification ids of the whole log
    log = {n.id: n for n in engine.service.recorder.select_notifications(start=1, limit=10**6)}
    for e in entries:
        assert e.position is not None
        n = log[e.position]
        assert (str(n.originator_id), n.originator_version) == (lived.web, e.version)
    first = entries[0]
    assert (first.event, first.actor, first.cause, first.user_id, first.project_id) == (
        "Requested", "alice", "user", "alice", "p1")
    assert first.payload["name"] == "web-1" and first.payload["flavor"]["name"] == "m1.small"
    assert {e.actor for e in entries} >= {"alice", "agent", "timer"}
    calls = [e for e in entries if e.event == "HypervisorCalled"]
    assert calls and all("duration_ms" in e.payload and "call" in e.payload for e in calls)
    assert entries[-1].as_dict()["timestamp"] == entries[-1].timestamp.isoformat()
    # the engine's history says the same
    assert [(h.version, h.event, h.request_id) for h in engine.history(lived.web)] == [
        (e.version, e.event, e.request_id) for e in entries]
    with pytest.raises(ServerNotFound):
        ledger.history("00000000-0000-4000-8000-00000000ffff")
    with pytest.raises(ServerNotFound):
        ledger.history("not-a-uuid")


def test_causal_chain_of_a_request(engine: Engine, lived: Scenario) -> None:
    ledger = Ledger(engine.service)
    chain = ledger.causal_chain(lived.resize_request)
    assert {e.request_id for e in chain} == {lived.resize_request}
    assert [e.position for e in chain] == sorted(e.position or 0 for e in chain)
    assert chain[0].event == "ActionRequested" and chain[0].actor == "alice"
    assert chain[0].payload["action"] == "resize"
    assert chain[-1].event == "ActionCompleted"
    resize = [e for e in chain if e.event == "HypervisorCalled"
              and e.payload["call"] == "resize"]
    assert resize and resize[0].payload["result"] and resize[0].payload["error"] is None
    assert isinstance(resize[0].payload["duration_ms"], float)
    # exactly the server's events that carry this request id
    expected = [e for e in ledger.iter_history(lived.web)
                if e.request_id == lived.resize_request]
    assert chain == expected
    # a failure: the hypervisor's error and the fault
    failed = ledger.causal_chain(lived.rebuild_request)
    assert failed[-1].event == "ActionFailed"
    assert failed[-1].payload["fault"]["message"] == "Injected failure in rebuild"
    assert any(e.payload.get("error") for e in failed if e.event == "HypervisorCalled")
    story = ledger.story(lived.rebuild_request)
    assert any("failed" in line and "Injected failure in rebuild" in line for line in story)
    # the timer's auto-confirm is its own request, caused by the timer
    timer_request = next(e.request_id for e in ledger.iter_history(lived.web)
                         if e.cause == "timer")
    confirm = ledger.causal_chain(timer_request)
    assert confirm[0].payload["action"] == "confirm_resize"
    assert confirm[-1].event == "ActionCompleted"
    assert ledger.causal_chain("req-unknown") == []
    assert ledger.story("req-unknown") == ["No event was recorded for request req-unknown."]


def test_causal_chain_lookup_uses_the_request_index(tmp_path: Path) -> None:
    path = tmp_path / "plan.db"
    with make_engine(f"sqlite:///{path}") as engine:
        engine.create_server("x", flavor="m1.small", image=IMAGE)
    conn = sqlite3.connect(path)
    try:
        plan = " ".join(str(r) for r in conn.execute(
            f"EXPLAIN QUERY PLAN SELECT * FROM {REQUESTS_TABLE} WHERE request_id=? "
            "ORDER BY notification_id", ("r",)))
        assert f"{REQUESTS_TABLE}_request_idx" in plan and "SCAN" not in plan
        plan = " ".join(str(r) for r in conn.execute(
            f"EXPLAIN QUERY PLAN SELECT MAX(originator_version) FROM {REQUESTS_TABLE} "
            "WHERE originator_id=? AND event_time<=?", ("o", "t")))
        assert f"{REQUESTS_TABLE}_time_idx" in plan
    finally:
        conn.close()


def test_explain_tells_why_a_server_is_in_its_status(engine: Engine, lived: Scenario) -> None:
    ledger = Ledger(engine.service)
    text = "\n".join(ledger.explain(lived.db))
    assert "alice (project p1) asked to create server 'db-1'" in text
    assert "asked to rebuild with image debian-12-genericcloud-amd64" in text
    assert "failed with fault 500: Injected failure in rebuild" in text
    assert "→ ERROR" in text
    assert "ops (project admin) reset the state to active → ACTIVE" in text
    assert "Now: ACTIVE" in text
    assert "Why: ops (project admin) reset the state to active" in text
    web = "\n".join(ledger.explain(lived.web))
    assert "the timer confirmed the resize automatically" in web
    assert "to be confirmed by" in web
    assert "locked the server (reason: 'maintenance')" in web
    assert "changed name to 'web-one'" in web
    assert "Now: SHUTOFF" in web and "locked by owner" in web
    assert "Why: the stop requested by alice (project p1)" in web and "completed" in web
    assert "simulator.spawn" in web and " ms" in web
    gone = ledger.explain(lived.tmp)
    assert gone[-2].startswith("Now: DELETED")
    assert gone[-1].startswith("Why: the delete requested by alice")
    short = ledger.explain(lived.web, last_requests=2)
    assert "not shown" in short[1] and len(short) < len(web.splitlines())


def test_an_action_in_flight_and_a_superseded_one(engine: Engine) -> None:
    sid = engine.create_server("w", flavor="m1.small", image=IMAGE).id
    engine.run_until_idle()
    engine.stop(sid)
    lines = Ledger(engine.service).explain(sid)
    assert "asked to stop → ACTIVE (task powering-off)" in "\n".join(lines)
    assert lines[-2].startswith("Now: ACTIVE (vm_state active, task_state powering-off")
    assert "still in progress (task powering-off)" in lines[-1]
    engine.delete(sid)  # cuts the stop short
    engine.run_until_idle()
    text = "\n".join(Ledger(engine.service).explain(sid))
    assert "cutting short request" in text and "it never finished" in text


def test_ledger_and_verify_after_a_view_rebuild_and_a_restart(
        url: str, clock: FakeClock) -> None:
    with make_engine(url, clock=clock) as engine:
        lived = scenario(engine, clock)
        ledger = Ledger(engine.service)
        before = (ledger.explain(lived.web), list(ledger.iter_history(lived.db)),
                  ledger.causal_chain(lived.delete_request))
        assert engine.updater.rebuild() > 0
        after = (ledger.explain(lived.web), list(ledger.iter_history(lived.db)),
                 ledger.causal_chain(lived.delete_request))
        assert before == after
        assert verify(engine.service).ok
    with make_engine(url, clock=clock) as again:  # a new process on the same database
        ledger = Ledger(again.service)
        assert ledger.explain(lived.web) == before[0]
        assert ledger.causal_chain(lived.delete_request) == before[2]
        snap = next(s for s in lived.snapshots if s.server_id == lived.db and s.info)
        assert snap.info is not None
        same(ledger.as_of(lived.db, at=snap.at), snap.info)
        assert verify(again.service).ok


def test_a_requests_chain_includes_its_images_and_key_pairs(tmp_path: Path) -> None:
    """A createImage request's chain has the server's and the image's events; a key
    pair import's chain has the key pair's (who imported which key, when)."""
    from vmledger.api import create_app
    from vmledger.api.testing import ApiClient

    with make_engine(f"sqlite:///{tmp_path / 'k.db'}") as engine:
        imported = "req-import-laptop"
        ctx = engine.context(user_id="alice", project_id="p1", is_admin=False,
                             request_id=imported)
        engine.generate_keypair("laptop", ctx=ctx)
        ctx = engine.context(user_id="alice", project_id="p1", is_admin=False)
        chain = engine.ledger.causal_chain(imported)
        assert [(e.aggregate, e.event, e.user_id) for e in chain] == [
            ("keypair", "Imported", "alice")]
        story = engine.ledger.story(imported)
        assert story[0].startswith("Key pair ") and "Imported" in story[1]

        server = engine.create_server("s", flavor="m1.small", image=IMAGE, ctx=ctx)
        engine.run_until_idle()
        snap = engine.create_image(server.id, "snap", ctx=ctx)
        engine.run_until_idle()
        kinds = {e.aggregate for e in engine.ledger.causal_chain(snap.request_id)}
        assert kinds == {"server", "image"}
        body = ApiClient(create_app(engine)).get(f"/ledger/v1/requests/{imported}").json()
        assert body["entries"][0]["aggregate"] == "keypair"

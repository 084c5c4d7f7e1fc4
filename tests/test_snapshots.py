"""Snapshots: a server's snapshot (taken every hundred events, of the aggregate the
command has just saved) holds the state its events replay to, and a server loaded
from it reads back as the one replayed."""

from __future__ import annotations

from pathlib import Path

from tests.engines import make_engine


def test_a_snapshot_holds_the_state_its_events_replay_to(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'snapshots.db'}"
    engine = make_engine(url)
    try:
        sid = engine.create_server("snap", "1", "cirros-0.6.2-x86_64").id
        engine.run_until_idle()
        while engine.history(sid)[-1].version < 150:  # past a snapshot
            engine.reboot(sid, hard=True)
            engine.lock(sid)
            engine.act(sid, "unlock")
            engine.run_until_idle()
        engine.resize(sid, flavor="m1.medium")  # a resize waiting: both flavors held
        engine.run_until_idle()
        while engine.history(sid)[-1].version < 230:  # past another one
            engine.lock(sid)
            engine.act(sid, "unlock")
        last = engine.history(sid)[-1].version
    finally:
        engine.close()
    reopened = make_engine(url)
    try:
        for version in (100, 200, last):
            from_snapshot = reopened.ledger.as_of(sid, version=version)
            replayed = reopened.ledger.as_of(sid, version=version, use_snapshots=False)
            assert vars(from_snapshot) == vars(replayed), version
        server = reopened.get_server(sid)
        assert (server.status, server.doc["flavor"]["name"]) == ("VERIFY_RESIZE", "m1.medium")
    finally:
        reopened.close()

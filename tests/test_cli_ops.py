"""The operational commands: a standalone agent, rebuilding the read models, and the
audit commands, driven as an operator would."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.engines import make_engine
from vmledger import Engine, FakeClock
from vmledger.cli import main


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'ops.db'}"
    with make_engine(url, clock=FakeClock()) as engine:
        sid = engine.create_server("ops", flavor="m1.small", image="cirros-0.6.2-x86_64").id
        engine.run_until_idle()
        engine.pause(sid)
        engine.run_until_idle()
    return url


def server_id(url: str) -> str:
    with Engine(url) as engine:
        return engine.list_servers()[0].id


def test_projections_rebuild_reports_progress(db: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["projections", "rebuild", "--db", db]) == 0
    out = capsys.readouterr()
    assert "rebuilt the read models from" in out.out and "1 servers" in out.out
    assert "events" in out.err and "/s" in out.err and "#" in out.err
    with Engine(db) as engine:
        assert engine.list_servers()[0].status == "PAUSED"


def test_audit_commands(db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sid = server_id(db)
    assert main(["audit", "verify", "--db", db]) == 0
    assert capsys.readouterr().out.startswith("audit chain: OK")
    assert main(["audit", "history", sid, "--db", db, "--limit", "3", "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["event"] == "Requested"
    request_id = json.loads(lines[0])["request_id"]
    assert main(["audit", "request", request_id, "--db", db]) == 0
    assert "spawn" in capsys.readouterr().out
    assert main(["audit", "as-of", sid, "--version", "1", "--db", db]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "BUILD"
    assert main(["audit", "explain", sid, "--db", db]) == 0
    assert "PAUSED" in capsys.readouterr().out
    assert main(["audit", "as-of", sid, "--at", "yesterday", "--db", db]) == 2

    # tamper with a stored event: verify fails and names the position
    path = db.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE stored_events SET state = replace(state, 'ops', 'pwn') "
                     "WHERE originator_version = 1")
    capsys.readouterr()
    assert main(["audit", "verify", "--db", db, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["breaks"][0]["notification_id"] == 1


def test_standalone_agent_enacts_what_an_api_process_asked(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    with Engine(url, host="compute-7") as api:
        sid = api.create_server("remote", flavor="m1.small",
                                image="cirros-0.6.2-x86_64").id
        agent = subprocess.Popen(
            [sys.executable, "-m", "vmledger.cli", "agent", "--host", "compute-7",
             "--db", url, "--hypervisor", f"simulator://{tmp_path / 'guests.json'}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                api.updater.catch_up()
                if api.get_server(sid).status == "ACTIVE":
                    break
                time.sleep(0.1)
            assert api.get_server(sid).status == "ACTIVE"
        finally:
            agent.send_signal(signal.SIGTERM)
            _out, err = agent.communicate(timeout=20)
        assert agent.returncode == 0, err
        assert "agent for host compute-7" in err

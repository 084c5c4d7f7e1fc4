"""The API process killed (SIGKILL) between a command's commit and its response, or just
before the commit: after a restart the command is either fully there — in the read
models, in the history, in the audit chain, and replayed (not repeated) when the client
retries with the same ``Idempotency-Key`` — or absent, and then the retry performs it
once. Never half. On SQLite and on PostgreSQL (where concurrent commands are written in
groups: the group commit path)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.engines import make_engine
from tests.support.killing import KEY, WHEN, WHEN_ENV
from tests.support.server import IMAGE, _ready, _stop, free_port
from vmledger.audit import verify

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCKED_VERSION = {"X-OpenStack-Nova-API-Version": "2.9"}  # "locked" in the server view


@contextmanager
def serving(url: str, workdir: Path, kill: str | None = None) -> Iterator[str]:
    """``vmledger serve`` on ``url`` in ``workdir`` (where its simulator keeps its
    guests across restarts), dying around the keyed command's commit when ``kill``
    says when; yield its compute endpoint."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != WHEN_ENV}
    module = "vmledger.cli"
    if kill is not None:
        env[WHEN_ENV] = kill
        module = "tests.support.killing"
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    with (workdir / "serve.log").open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", module, "serve", "--db", url, "--port", str(port),
             "--log-level", "warning"], cwd=workdir, env=env, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}/v2.1"
    try:
        deadline = time.monotonic() + 30
        while not _ready(base):
            assert process.poll() is None and time.monotonic() < deadline, (
                (workdir / "serve.log").read_text(errors="replace")[-2000:])
            time.sleep(0.05)
        yield base
    finally:
        _stop(process)


def lock_events(url: str, sid: str) -> list[Any]:
    with make_engine(url) as engine:
        return [e for e in engine.history(sid)
                if e.event == "LockChanged" and e.details.get("action") == "lock"]


@pytest.mark.parametrize("when", WHEN)
def test_the_api_killed_around_the_commit_leaves_the_command_whole_or_absent(
        url: str, tmp_path: Path, when: str) -> None:
    with serving(url, tmp_path, kill=when) as base, httpx.Client(base_url=base,
                                                                 timeout=30) as client:
        created = client.post("/servers", json={"server": {
            "name": "web", "flavorRef": "1", "imageRef": IMAGE, "networks": "none"}})
        assert created.status_code == 202
        sid = created.json()["server"]["id"]
        with pytest.raises(httpx.TransportError):  # the process dies: no response
            client.post(f"/servers/{sid}/action", json={"lock": None},
                        headers={"Idempotency-Key": KEY})

    committed = when == "after-commit"
    assert len(lock_events(url, sid)) == (1 if committed else 0)
    with serving(url, tmp_path) as base, httpx.Client(base_url=base, timeout=30) as client:
        # the read models show what the log has, with no catch-up of the command missing
        shown = client.get(f"/servers/{sid}", headers=LOCKED_VERSION).json()["server"]
        assert shown["locked"] is committed
        actions = client.get(f"/servers/{sid}/os-instance-actions").json()
        assert [a["action"] for a in actions["instanceActions"]].count("lock") == (
            1 if committed else 0)
        # the client retries with the same key: replayed when it was committed, else
        # performed now; once either way
        again = client.post(f"/servers/{sid}/action", json={"lock": None},
                            headers={"Idempotency-Key": KEY})
        assert again.status_code == 202
        assert (again.headers.get("idempotency-replayed") == "true") is committed
        shown = client.get(f"/servers/{sid}", headers=LOCKED_VERSION).json()["server"]
        assert shown["locked"] is True
    assert len(lock_events(url, sid)) == 1
    with make_engine(url) as engine:
        assert verify(engine.service).ok

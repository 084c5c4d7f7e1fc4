"""A real ``vmledger serve`` for the client acceptance tests (openstacksdk, the
``openstack`` CLI, tempest.lib).

:func:`running_server` starts ``python -m vmledger.cli serve`` as a subprocess on a free
port of 127.0.0.1, with a SQLite database in a temporary directory, polls ``GET /v2.1``
until it answers, and kills the process (its whole process group) on exit. Its output goes
to ``serve.log`` in that directory and is shown when it fails to start.

Fixtures (import them into a test module to use them):

- ``vmledger_server``: noauth, module scope;
- ``vmledger_token_server``: ``--auth token`` with :data:`ADMIN_TOKEN` (role admin) and
  :data:`MEMBER_TOKEN` (no roles), module scope;
- ``vmledger_keystone_server``: ``--auth keystone`` with the user ``admin`` /
  :data:`KEYSTONE_PASSWORD` in project ``admin``, module scope.

:func:`served` serves an app of the test's own in a thread, on the HTTP server
``vmledger serve`` runs (:func:`vmledger.cli_http.http_server`).

:func:`clients_marks` gives ``[pytest.mark.clients]`` once that marker is registered in
``pyproject.toml`` (``--strict-markers`` refuses unknown marks), else nothing.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from vmledger.cli_http import http_server
from vmledger.domain.catalog import image_id_for

#: images of the default catalog
IMAGE = image_id_for("cirros-0.6.2-x86_64")
IMAGE2 = image_id_for("debian-12-genericcloud-amd64")
ADMIN_TOKEN = "acceptance-admin-token"
MEMBER_TOKEN = "acceptance-member-token"
KEYSTONE_PASSWORD = "acceptance-secret"
START_TIMEOUT = 30.0


@dataclass(frozen=True)
class RunningServer:
    """A ``vmledger serve`` process and where to reach it."""

    base: str
    workdir: Path
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def compute(self) -> str:
        """The compute endpoint, ``http://127.0.0.1:PORT/v2.1``."""
        return f"{self.base}/v2.1"

    @property
    def identity(self) -> str:
        return f"{self.base}/identity/v3"

    @property
    def image(self) -> str:
        return f"{self.base}/image"

    @property
    def network(self) -> str:
        return f"{self.base}/network"

    def server_errors(self) -> list[str]:
        """Lines of the log reporting a 500 (an unexpected error) or a traceback."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines()
                if "unexpected error serving request" in line or "Traceback" in line]

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def served(app: Any, **options: Any) -> Iterator[str]:
    """``app`` served as ``vmledger serve`` serves it (uvicorn on uvloop and httptools,
    or on what ``options`` say) on 127.0.0.1 (a free port) in a thread: its base URL."""
    server = http_server(app, host="127.0.0.1", port=free_port(), log_level="warning",
                         **{"timeout_graceful_shutdown": 2, "lifespan": "off", **options})
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            body = json.load(response)
            return response.status == 200 and body["version"]["id"] == "v2.1"
    except (OSError, ValueError, KeyError, urllib.error.URLError):
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@contextmanager
def running_server(workdir: Path, extra_args: Sequence[str] = (), *,
                   confirm_window: float = 86400.0, attempts: int = 3
                   ) -> Iterator[RunningServer]:
    """``vmledger serve`` in ``workdir`` until the block ends (see the module doc)."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "serve.log"
    last_error = ""
    for _ in range(attempts):  # a free port can be taken between the probe and the bind
        port = free_port()
        argv = [sys.executable, "-m", "vmledger.cli", "serve",
                "--db", f"sqlite:///{workdir / 'vmledger.db'}", "--bind", "127.0.0.1",
                "--port", str(port), "--confirm-window", str(confirm_window),
                "--log-level", "warning", *extra_args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        with log.open("ab") as out:
            process = subprocess.Popen(argv, cwd=workdir, env=env, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        server = RunningServer(base=f"http://127.0.0.1:{port}", workdir=workdir, log=log,
                               process=process)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and process.poll() is None:
            if _ready(server.compute):
                break
            time.sleep(0.05)
        if process.poll() is None and _ready(server.compute):
            try:
                yield server
            finally:
                _stop(process)
            return
        _stop(process)
        last_error = server.log_tail()
    raise RuntimeError(f"vmledger serve did not start; its log:\n{last_error}")


def _module_server(tmp_path_factory: pytest.TempPathFactory, name: str,
                   extra_args: Sequence[str]) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp(name), extra_args) as server:
        yield server
    errors = server.server_errors()
    assert not errors, ("vmledger serve answered 500 (never acceptable):\n"
                        + "\n".join(errors) + "\n" + server.log_tail())


@pytest.fixture(scope="module")
def vmledger_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """``vmledger serve`` with ``--auth noauth`` for the tests of one module."""
    yield from _module_server(tmp_path_factory, "serve-noauth", ())


@pytest.fixture(scope="module")
def vmledger_token_server(tmp_path_factory: pytest.TempPathFactory
                          ) -> Iterator[RunningServer]:
    """``vmledger serve --auth token`` with an admin and a member token."""
    yield from _module_server(tmp_path_factory, "serve-token", (
        "--auth", "token", "--token", f"{ADMIN_TOKEN}:acceptance-admin:admin:admin",
        "--token", f"{MEMBER_TOKEN}:acceptance-member:demo:member"))


@pytest.fixture(scope="module")
def vmledger_keystone_server(tmp_path_factory: pytest.TempPathFactory
                             ) -> Iterator[RunningServer]:
    """``vmledger serve --auth keystone``: user ``admin`` logs in to project ``admin``."""
    yield from _module_server(tmp_path_factory, "serve-keystone", (
        "--auth", "keystone", "--user", f"admin:{KEYSTONE_PASSWORD}:admin:admin,member"))


def clients_marks() -> list[pytest.MarkDecorator]:
    """The marks of the client acceptance modules (the ``clients`` tier)."""
    return [pytest.mark.clients]


def client_skip_reason(*modules: str) -> str | None:
    """Why the client tests cannot run here (a package missing), or None."""
    import importlib.util

    def absent(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is None
        except (ImportError, ValueError):  # a parent package missing, or a blocked module
            return True

    missing = [m for m in modules if absent(m)]
    if missing:
        return (f"client packages not installed ({', '.join(missing)}); install "
                "openstacksdk==4.22.0 keystoneauth1==5.18.1 python-openstackclient==10.5.0 "
                "osc-lib==4.7.0 tempest==47.0.0")
    return None

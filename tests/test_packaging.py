"""The package as a user installs it: a wheel built from the checkout, installed into a
fresh virtual environment with its runtime dependencies only, runs ``vmledger`` (help,
and a real ``serve`` answering its health check); the wheel carries the licence and
``py.typed``.

``slow``: installing the runtime dependencies asks the package index (pip's cache makes
it about 10 s; without an index reachable it fails)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
import zipfile
from pathlib import Path

import pytest

from tests.support.server import free_port

ROOT = Path(__file__).parent.parent
pytestmark = pytest.mark.slow


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                          **kwargs)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{argv}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
    return done  # type: ignore[no-any-return]


def test_the_wheel_installs_and_runs_from_a_fresh_environment(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(wheels),
         str(ROOT)])
    (wheel,) = wheels.glob("vmledger-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA")))
    assert "vmledger/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    lines = metadata.decode().splitlines()
    assert "License-Expression: Apache-2.0" in lines
    # the runtime needs exactly the project's dependencies; the test tooling is an extra
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = [line.removeprefix("Requires-Dist: ") for line in lines
                if line.startswith("Requires-Dist: ") and "extra ==" not in line]
    assert len(required) == len(declared["dependencies"])
    assert any(r.startswith("prometheus-client") for r in required)

    venv = tmp_path / "fresh"
    run([sys.executable, "-m", "venv", str(venv)])
    python, vmledger = venv / "bin" / "python", venv / "bin" / "vmledger"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run([str(python), "-m", "pip", "install", "--quiet", str(wheel)], env=env)
    listed = run([str(python), "-m", "pip", "list", "--format=freeze"], env=env).stdout
    installed = {line.split("==")[0].lower() for line in listed.splitlines()}
    assert "vmledger" in installed
    assert not installed & {"pytest", "mypy", "ruff", "hypothesis", "tempest", "httpx",
                            "openstacksdk"}, installed

    helped = run([str(vmledger), "--help"], env=env, cwd=tmp_path)
    assert "usage: vmledger" in helped.stdout and "serve" in helped.stdout
    # the installed copy, not the checkout's
    where = run([str(python), "-c", "import vmledger; print(vmledger.__file__)"], env=env,
                cwd=tmp_path).stdout
    assert str(venv) in where

    port = free_port()
    server = subprocess.Popen(
        [str(vmledger), "serve", "--db", f"sqlite:///{tmp_path / 'w.db'}", "--port",
         str(port), "--log-level", "warning"], env=env, cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        answer = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthcheck",
                                            timeout=5) as r:
                    answer = r.read().decode()
                    break
            except OSError:
                time.sleep(0.2)
        assert answer == "OK", server.stdout.read() if server.poll() is not None else answer
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)

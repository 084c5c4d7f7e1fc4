"""The ``vmledger`` command as an operator meets it: restarts that lose nothing, read
commands that never create a database, one-line start-up errors, ``--version`` and help,
servers named by name or id, and the logs of ``serve`` and ``agent``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support.postgres import postgres_skip_reason
from tests.support.server import IMAGE, RunningServer, free_port, running_server
from vmledger import Engine, FakeClock
from vmledger.cli import main


def vmledger(*argv: str, cwd: Path | None = None, timeout: float = 60
             ) -> subprocess.CompletedProcess[str]:
    """``python -m vmledger.cli ARGV`` as a user runs it."""
    return subprocess.run([sys.executable, "-m", "vmledger.cli", *argv], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a failed command (no traceback)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("vmledger: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


# --- restarts -------------------------------------------------------------------------

def call(server: RunningServer, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        f"{server.compute}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read()
        return json.loads(text) if text else None


def wait_for(server: RunningServer, sid: str, status: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        seen = call(server, "GET", f"/servers/{sid}")["server"]
        assert seen["status"] != "ERROR", seen
        if seen["status"] == status and seen["OS-EXT-STS:task_state"] is None:
            return
        time.sleep(0.1)
    raise AssertionError(f"{sid} is not {status}: {seen}")


def test_a_restart_of_the_default_set_up_keeps_every_guest(tmp_path: Path) -> None:
    fast_sync = ("--sync-interval", "0.3")  # a lost guest would be seen at once
    with running_server(tmp_path, fast_sync) as server:
        sid = call(server, "POST", "/servers", {"server": {
            "name": "web-1", "flavorRef": "1", "imageRef": IMAGE}})["server"]["id"]
        wait_for(server, sid, "ACTIVE")
    # the guests are kept beside the database, named for the host
    assert (tmp_path / "vmledger.db.compute-1.simulator.json").is_file()

    with running_server(tmp_path, fast_sync) as server:
        time.sleep(1.5)  # several power-state syncs
        wait_for(server, sid, "ACTIVE")
        call(server, "POST", f"/servers/{sid}/action", {"reboot": {"type": "SOFT"}})
        wait_for(server, sid, "ACTIVE")
        call(server, "POST", f"/servers/{sid}/action", {"os-stop": None})
        wait_for(server, sid, "SHUTOFF")
        shown = call(server, "GET", f"/servers/{sid}")["server"]
        assert shown["OS-EXT-STS:power_state"] == 4  # shutdown
        assert not server.server_errors()

    history = vmledger("history", "web-1", "--db", f"sqlite:///{tmp_path / 'vmledger.db'}")
    assert history.returncode == 0, history.stderr
    assert "DriftObserved" not in history.stdout
    assert "Failed" not in history.stdout


def test_an_in_memory_simulator_is_asked_for_by_name(tmp_path: Path) -> None:
    with running_server(tmp_path, ("--hypervisor", "simulator:memory")) as server:
        sid = call(server, "POST", "/servers", {"server": {
            "name": "tmp", "flavorRef": "1", "imageRef": IMAGE}})["server"]["id"]
        wait_for(server, sid, "ACTIVE")
    # nothing but the database and the log: no state file of any name
    assert {p.name for p in tmp_path.iterdir()} <= {
        "vmledger.db", "vmledger.db-wal", "vmledger.db-shm", "serve.log"}


def test_where_the_default_simulator_keeps_its_guests() -> None:
    from vmledger.cli_support import hypervisor_uri

    beside = os.path.abspath("data/v.db.c-1.simulator.json")
    assert hypervisor_uri(None, "sqlite:///data/v.db", "c-1") == f"simulator://{beside}"
    named = os.path.abspath("vmledger-prod.c-2.simulator.json")  # one per database
    assert hypervisor_uri("simulator", "postgresql://u@db/prod", "c-2") == (
        f"simulator://{named}")
    assert hypervisor_uri(None, "memory", "c-1") == "simulator:memory"
    assert hypervisor_uri("simulator:memory", "sqlite:///v.db", "c-1") == "simulator:memory"
    assert hypervisor_uri("qemu:///system", "sqlite:///v.db", "c-1") == "qemu:///system"


# --- reading commands never create a database -----------------------------------------

READERS = [
    ["audit", "verify"],
    ["audit", "explain", "web-1"],
    ["audit", "as-of", "web-1", "--version", "1"],
    ["audit", "history", "web-1"],
    ["audit", "request", "req-0"],
    ["history", "web-1"],
    ["projections", "rebuild"],
]


@pytest.mark.parametrize("argv", READERS, ids=lambda a: " ".join(a[:2]))
def test_a_reading_command_never_creates_a_database(
        argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.db"
    assert main([*argv, "--db", f"sqlite:///{missing}"]) == 2
    err = capsys.readouterr().err
    assert err == f"vmledger: no database at {missing}\n"
    assert list(tmp_path.iterdir()) == []

    assert main([*argv, "--db", "memory"]) == 2  # a new, empty log: nothing to read
    assert "a memory database holds nothing to read" in capsys.readouterr().err

    empty = tmp_path / "empty.db"  # a file that holds no event log is not one either
    empty.touch()
    assert main([*argv, "--db", f"sqlite:///{empty}"]) == 2
    assert "is not a vmledger database" in capsys.readouterr().err
    assert empty.stat().st_size == 0 and sorted(tmp_path.iterdir()) == [empty]


@pytest.mark.postgres
def test_a_reading_command_never_creates_the_tables_of_a_postgresql_database(
        postgres_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    import psycopg

    for argv in READERS:
        assert main([*argv, "--db", postgres_url]) == 2
        assert "is not a vmledger database" in capsys.readouterr().err
    with psycopg.connect(postgres_url) as conn:
        tables = conn.execute("SELECT count(*) FROM information_schema.tables "
                              "WHERE table_schema = 'public'").fetchone()
    assert tables == (0,)


def test_audit_verify_of_a_missing_database_fails_as_a_user_sees_it(tmp_path: Path) -> None:
    result = vmledger("audit", "verify", "--db", "sqlite:///nothing-here.db", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""  # no "audit chain: OK" on nothing
    assert one_line_error(result) == "vmledger: no database at nothing-here.db"
    assert list(tmp_path.iterdir()) == []


# --- start-up errors --------------------------------------------------------------------

@pytest.mark.parametrize("db", ["foo://bar", "mysql://x", "vmledger.db"])
@pytest.mark.parametrize("command", [["serve", "--port", "0"], ["agent", "--host", "c-1"]])
def test_a_bad_database_url_is_a_usage_error(db: str, command: list[str],
                                             tmp_path: Path) -> None:
    result = vmledger(*command, "--db", db, cwd=tmp_path)
    assert result.returncode == 2
    assert "bad --db" in one_line_error(result)
    assert list(tmp_path.iterdir()) == []


def test_a_bare_file_name_gets_a_hint(tmp_path: Path) -> None:
    result = vmledger("serve", "--db", "vmledger.db", cwd=tmp_path)
    assert "--db sqlite:///vmledger.db" in one_line_error(result)


def test_an_unwritable_sqlite_path_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    url = f"sqlite:///{tmp_path / 'a-file' / 'x.db'}"  # under a file: root cannot either
    for command in (["serve", "--port", "0"], ["agent", "--host", "c-1"]):
        result = vmledger(*command, "--db", url, "--hypervisor", "simulator:memory")
        assert result.returncode == 1
        assert "cannot open the database" in one_line_error(result)
        assert "serving" not in result.stderr


def test_an_unreachable_postgresql_is_one_line(tmp_path: Path) -> None:
    url = f"postgresql://postgres:s3cret@127.0.0.1:{free_port()}/vmledger?connect_timeout=5"
    result = vmledger("serve", "--db", url, "--port", "0", cwd=tmp_path)
    assert result.returncode == 1
    line = one_line_error(result)
    assert "cannot open the database" in line and "s3cret" not in line


def test_a_port_taken_is_one_line_before_anything_is_served(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = vmledger("serve", "--port", str(port), cwd=tmp_path)
    assert result.returncode == 1
    assert one_line_error(result) == (f"vmledger: cannot listen on 127.0.0.1:{port}: "
                                      "Address already in use")
    assert "serving" not in result.stdout + result.stderr
    assert list(tmp_path.iterdir()) == []  # nor was a database made


# --- version, help, names ---------------------------------------------------------------

def test_version_and_help() -> None:
    import vmledger as package

    result = vmledger("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"vmledger {package.__version__}"
    bare = vmledger()
    assert bare.returncode == 2
    for command in ("serve", "history", "agent", "projections", "audit"):
        assert command in bare.stderr  # the help, with every command, not only a usage line
    assert "Event-sourced VM lifecycle engine" in bare.stderr


@pytest.fixture
def named_db(tmp_path: Path) -> tuple[str, dict[str, Any]]:
    url = f"sqlite:///{tmp_path / 'named.db'}"
    with Engine(url, clock=FakeClock()) as engine:
        ids: dict[str, Any] = {"web-1": engine.create_server("web-1", flavor="1",
                                                             image=IMAGE).id}
        ids["twin"] = [engine.create_server("twin", flavor="1", image=IMAGE).id
                       for _ in range(2)]
        gone = engine.create_server("gone", flavor="1", image=IMAGE).id
        engine.run_until_idle()
        engine.delete(gone)
        engine.run_until_idle()
        ids["gone"] = gone
    return url, ids


@pytest.mark.parametrize(("command", "options"), [
    (["history"], []), (["audit", "explain"], []), (["audit", "history"], []),
    (["audit", "as-of"], ["--version", "1"])], ids=lambda a: " ".join(a))
def test_a_server_is_named_by_name_or_id(command: list[str], options: list[str],
                                         named_db: tuple[str, Any],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    url, ids = named_db
    assert main([*command, ids["web-1"], *options, "--db", url]) == 0
    by_id = capsys.readouterr().out
    assert main([*command, "web-1", *options, "--db", url]) == 0
    assert capsys.readouterr().out == by_id
    assert main([*command, "gone", *options, "--db", url]) == 0  # a deleted one too
    capsys.readouterr()
    assert main([*command, "twin", *options, "--db", url]) == 2  # as the openstack CLI
    err = capsys.readouterr().err
    assert err.startswith("vmledger: more than one server is named 'twin'")
    assert all(sid in err for sid in ids["twin"])
    assert main([*command, "nobody", *options, "--db", url]) == 1
    assert "could not be found" in capsys.readouterr().err


# --- logs -------------------------------------------------------------------------------

def json_lines(text: str) -> list[dict[str, Any]]:
    lines = [line for line in text.splitlines() if line.strip()]
    assert "\x1b" not in text  # no terminal escapes in a log file
    return [json.loads(line) for line in lines]


def test_serve_json_logs_are_plain_and_under_vmledger(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "vmledger.cli", "serve", "--port", str(port),
         "--log-format", "json", "--db", f"sqlite:///{tmp_path / 'v.db'}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2.1/servers",
                                            timeout=2) as response:
                    request_id = response.headers["x-openstack-request-id"]
                    size = len(response.read())
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise AssertionError("serve did not answer")
    finally:
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=20)
    records = json_lines(err)
    assert all(r["logger"].startswith("vmledger") for r in records), records
    assert not any("color_message" in r for r in records)
    assert any(r["logger"] == "vmledger.http" for r in records)  # uvicorn's, re-homed
    [access] = [r for r in records if r["logger"] == "vmledger.api.access"]
    assert access["request_id"] == request_id
    assert (access["method"], access["path"], access["status"]) == ("GET", "/v2.1/servers",
                                                                    200)
    assert access["bytes"] == size and access["duration_ms"] >= 0
    assert access["user_id"] == "admin" and access["project_id"] == "admin"  # noauth
    assert access["client"].startswith("127.0.0.1:")


def serve_once(tmp_path: Path, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Start ``vmledger serve --log-format json``, answer one request (a malformed one
    too), stop it: its log records."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "vmledger.cli", "serve", "--port", str(port),
         "--log-format", "json", "--db", f"sqlite:///{tmp_path / 'v.db'}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env={**os.environ, **(env or {})})
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2.1/servers",
                                            timeout=2) as response:
                    assert response.status == 200
                break
            except OSError:
                assert time.monotonic() < deadline, "serve did not answer"
                time.sleep(0.1)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"GET /v2.1 HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n")
            assert conn.recv(64).startswith(b"HTTP/1.1 400 ")  # the parser's, not a 500
    finally:
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=20)
    return json_lines(err)


def serving_on(records: list[dict[str, Any]]) -> str:
    [line] = [r["message"] for r in records if r["message"].startswith("HTTP server: ")]
    return line


def test_serve_runs_on_uvloop_and_httptools(tmp_path: Path) -> None:
    records = serve_once(tmp_path)
    line = serving_on(records)
    assert "event loop uvloop." in line and "protocol uvicorn.protocols.http." \
        "httptools_impl.HttpToolsProtocol" in line, line
    assert [r["message"] for r in records if r["level"] in ("warning", "error")] == [
        "Invalid HTTP request received."], records  # the malformed one only


def test_serve_falls_back_to_asyncio_and_h11_without_them(tmp_path: Path) -> None:
    """On a platform where uvloop and httptools cannot be imported it still serves, on
    asyncio's loop and h11, and says why."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(  # read at start-up, before any import
        "import sys\nsys.modules['uvloop'] = sys.modules['httptools'] = None\n")
    path = os.pathsep.join([str(hide), *filter(None, [os.environ.get("PYTHONPATH")])])
    records = serve_once(tmp_path, {"PYTHONPATH": path})
    line = serving_on(records)
    assert "event loop asyncio." in line and "h11_impl.H11Protocol" in line, line
    warned = [r["message"] for r in records if r["level"] == "warning"]
    assert len(warned) == 3 and "uvloop cannot be imported" in warned[0] \
        and "httptools cannot be imported" in warned[1], warned
    assert warned[2] == "Invalid HTTP request received."  # h11 refuses it alike


def test_the_agent_takes_log_options_and_logs_each_pass_that_did_work(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    with Engine(url, host="compute-7") as api:
        sid = api.create_server("remote", flavor="m1.small", image=IMAGE).id
        agent = subprocess.Popen(
            [sys.executable, "-m", "vmledger.cli", "agent", "--host", "compute-7",
             "--db", url, "--log-format", "json", "--log-level", "info"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                api.updater.catch_up()
                if api.get_server(sid).status == "ACTIVE":
                    break
                time.sleep(0.1)
            assert api.get_server(sid).status == "ACTIVE"
            time.sleep(1)  # idle passes: they log nothing
        finally:
            agent.send_signal(signal.SIGTERM)
            _out, err = agent.communicate(timeout=20)
    assert agent.returncode == 0, err
    records = json_lines(err)
    assert all(r["logger"].startswith("vmledger") for r in records), records
    passes = [r for r in records if "steps" in r]
    assert passes and all(r["host"] == "compute-7" and r["steps"] > 0 for r in passes)
    assert len(passes) < 20, "only the passes that did work"
    banner = records[0]["message"]
    assert "agent for host compute-7" in banner
    assert "shared.db.compute-7.simulator.json" in banner  # its guests kept beside the db


# --- the operations guide's PostgreSQL recipe -------------------------------------------

def recipe(section: str) -> str:
    """The shell block under ``section`` in docs/operations.md."""
    text = (Path(__file__).parent.parent / "docs" / "operations.md").read_text()
    after = text.split(section, 1)[1]
    block = after.split("```sh\n", 1)[1].split("```", 1)[0]
    return block


def run_recipe(script: str, workdir: Path, as_user: Sequence[str] = ()) -> None:
    """Run the recipe with its port and directory replaced; check PostgreSQL answered."""
    import psycopg

    port = free_port()
    script = script.replace("5433", str(port)).replace("/tmp/pg", str(workdir / "pg"))
    start, stop = script.split("# ... postgresql://postgres@127.0.0.1:5433/postgres"
                               .replace("5433", str(port)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    subprocess.run([*as_user, "bash", "-euxc", start], check=True, cwd="/", env=env,
                   timeout=120, capture_output=True)
    try:
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres") as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        subprocess.run([*as_user, "bash", "-euxc", stop], check=True, cwd="/", env=env,
                       timeout=120, capture_output=True)


@pytest.mark.postgres
@pytest.mark.skipif(postgres_skip_reason() is not None, reason=str(postgres_skip_reason()))
def test_the_postgresql_recipe_works_as_root_and_as_a_normal_user() -> None:
    import pwd
    import shutil
    import tempfile

    if os.geteuid() != 0:
        workdir = Path(tempfile.mkdtemp(prefix="vmledger-recipe-"))
        try:
            run_recipe(recipe("As a normal user"), workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        pytest.skip("the root recipe needs root")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no postgres user (the postgresql package creates it) to run it as")
    # root: as the guide says, then the normal user's recipe as an unprivileged user
    for section, as_user in (("As root", ()),
                             ("As a normal user", ("runuser", "-u", "postgres", "--"))):
        workdir = Path(tempfile.mkdtemp(prefix="vmledger-recipe-"))
        try:
            os.chmod(workdir, 0o777)
            run_recipe(recipe(section), workdir, as_user)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

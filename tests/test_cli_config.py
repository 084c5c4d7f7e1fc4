"""Configuring ``vmledger serve`` and ``vmledger agent``: flags, ``VMLEDGER_*`` variables
and a TOML file (flag > environment > file > default), secrets kept off the command line,
``vmledger config show`` with secrets masked, and one-line errors for a bad file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import IMAGE, free_port
from vmledger import Engine
from vmledger.cli import main


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No VMLEDGER_* variable of the caller's, and no configuration file of theirs."""
    for name in list(os.environ):
        if name.startswith("VMLEDGER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    yield


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def show(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, tuple[str, str]]:
    """``vmledger config show ARGV``: each setting's shown value and where it came from."""
    assert main(["config", "show", *argv]) == 0
    out = capsys.readouterr().out
    settings: dict[str, tuple[str, str]] = {}
    for line in out.splitlines()[1:]:
        name, _, rest = line.partition(" = ")
        value, _, source = rest.rpartition("  # ")
        settings[name.strip()] = (value.strip(), source)
    return settings


def failure(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The one line a failing command prints (exit 2)."""
    assert main(list(argv)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("vmledger: ")
    return lines[0]


# --- precedence -------------------------------------------------------------------------
def test_a_flag_beats_the_environment_which_beats_the_file_which_beats_the_default(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(tmp_path / "v.toml", """
port = 9001
confirm_window = 100
log_level = "debug"
""")
    monkeypatch.setenv("VMLEDGER_PORT", "9002")
    monkeypatch.setenv("VMLEDGER_CONFIRM_WINDOW", "200")
    settings = show(capsys, "serve", "--config", str(cfg), "--port", "9003")
    assert settings["port"] == ("9003", "flag --port")
    assert settings["confirm_window"] == ("200.0", "env VMLEDGER_CONFIRM_WINDOW")
    assert settings["log_level"] == ('"debug"', f"file {cfg} (log_level)")
    assert settings["bind"] == ('"127.0.0.1"', "default")
    # what `serve` is given is the same
    from vmledger import cli, cli_config
    args = cli_config.parse_args(cli.build_parser(), ["serve", "--config", str(cfg)])
    assert (args.port, args.confirm_window, args.log_level, args.bind) == (
        9002, 200.0, "debug", "127.0.0.1")


def test_a_commands_table_beats_the_top_level(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(tmp_path / "v.toml", """
db = "sqlite:///shared.db"
log_level = "warning"
[serve]
log_level = "debug"
host-name = "api-1"
[agent]
host = "compute-9"
""")
    serve = show(capsys, "serve", "--config", str(cfg))
    assert serve["log_level"] == ('"debug"', f"file {cfg} (serve.log_level)")
    assert serve["host_name"] == ('"api-1"', f"file {cfg} (serve.host_name)")
    assert serve["db"][0] == '"sqlite:///shared.db"'
    agent = show(capsys, "agent", "--config", str(cfg))
    assert agent["log_level"] == ('"warning"', f"file {cfg} (log_level)")
    assert agent["host"] == ('"compute-9"', f"file {cfg} (agent.host)")
    assert "host_name" not in agent


def test_where_the_configuration_file_is_found(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert show(capsys)["port"] == ("8774", "default")
    default = write(tmp_path / "xdg" / "vmledger" / "vmledger.toml", "port = 8000\n")
    assert show(capsys)["port"] == ("8000", f"file {default} (port)")
    named = write(tmp_path / "other.toml", "port = 8001\n")
    monkeypatch.setenv("VMLEDGER_CONFIG", str(named))
    assert show(capsys)["port"] == ("8001", f"file {named} (port)")
    flagged = write(tmp_path / "third.toml", "port = 8002\n")
    assert show(capsys, "--config", str(flagged))["port"] == (
        "8002", f"file {flagged} (port)")


def test_lists_from_the_environment_and_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(tmp_path / "v.toml", 'token_file = ["/etc/a", "/etc/b"]\n')
    monkeypatch.setenv("VMLEDGER_USER_FILE", "/run/users-1 /run/users-2")
    settings = show(capsys, "--config", str(cfg))
    assert settings["token_file"] == ('["/etc/a", "/etc/b"]', f"file {cfg} (token_file)")
    assert settings["user_file"] == ('["/run/users-1", "/run/users-2"]',
                                     "env VMLEDGER_USER_FILE")


# --- secrets -------------------------------------------------------------------------------
def test_secrets_are_masked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(tmp_path / "v.toml", """
[serve]
auth = "keystone"
user = ["alice:pa55word:p1:admin"]
""")
    key_file = write(tmp_path / "audit.key", "audit-secret\n")
    monkeypatch.setenv("VMLEDGER_DB", "postgresql://vm:hunter2@db.example:5432/ledger")
    monkeypatch.setenv("VMLEDGER_TOKEN", "t0ken-a:alice:p1:admin t0ken-b:bob:p1:member")
    assert main(["config", "show", "--config", str(cfg), "serve",
                 "--audit-key-file", str(key_file)]) == 0
    out = capsys.readouterr().out
    for secret in ("hunter2", "pa55word", "t0ken-a", "t0ken-b", "audit-secret"):
        assert secret not in out
    settings = show(capsys, "--config", str(cfg), "serve", "--audit-key-file", str(key_file))
    assert settings["db"] == ('"postgresql://vm:***@db.example:5432/ledger"',
                              "env VMLEDGER_DB")
    assert settings["token"] == ('["***:alice:p1:admin", "***:bob:p1:member"]',
                                 "env VMLEDGER_TOKEN")
    assert settings["user"] == ('["alice:***:p1:admin"]', f"file {cfg} (serve.user)")
    assert settings["audit_key"] == ("***", f"file {key_file}")


def test_the_database_password_apart_from_the_url(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("VMLEDGER_DB", "postgresql://vm@db.example/ledger")
    monkeypatch.setenv("VMLEDGER_DB_PASSWORD", "s3cret")
    settings = show(capsys)
    assert settings["db"][0] == '"postgresql://vm:***@db.example/ledger"'
    assert settings["db_password"] == ('"***"', "env VMLEDGER_DB_PASSWORD")
    from vmledger import cli, cli_config
    args = cli_config.parse_args(cli.build_parser(), ["serve"])
    assert args.db == "postgresql://vm:s3cret@db.example/ledger"
    # from a file instead
    monkeypatch.delenv("VMLEDGER_DB_PASSWORD")
    password = write(tmp_path / "pw", "p@ss word\n")
    args = cli_config.parse_args(cli.build_parser(),
                                 ["agent", "--host", "h", "--db-password-file", str(password)])
    assert args.db == "postgresql://vm:p%40ss%20word@db.example/ledger"
    # never two passwords, and none for SQLite
    monkeypatch.setenv("VMLEDGER_DB_PASSWORD", "s3cret")
    assert "not both" in failure(capsys, "serve", "--db-password-file", str(password))
    monkeypatch.setenv("VMLEDGER_DB", "sqlite:///v.db")
    assert "a database password is for a postgresql:// database" in failure(
        capsys, "config", "show")


def test_the_audit_key_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'v.db'}"
    monkeypatch.setenv("VMLEDGER_AUDIT_KEY", "the-real-key")
    with Engine(url) as engine:
        engine.create_server("one", flavor="m1.small", image=IMAGE)
    monkeypatch.delenv("VMLEDGER_AUDIT_KEY")

    def verify(key: str) -> subprocess.CompletedProcess[str]:
        key_file = write(tmp_path / "audit.key", key + "\n")
        env = {**os.environ, "VMLEDGER_AUDIT_KEY_FILE": str(key_file), "VMLEDGER_DB": url}
        return subprocess.run([sys.executable, "-m", "vmledger.cli", "audit", "verify"],
                              capture_output=True, text=True, env=env, timeout=60)

    good = verify("the-real-key")
    assert good.returncode == 0, good.stderr
    assert "audit chain: OK" in good.stdout and "key: file" in good.stdout
    assert verify("another-key").returncode == 1


# --- bad configuration -----------------------------------------------------------------------
@pytest.mark.parametrize(("text", "expected"), [
    ("port = \n", "not a valid TOML file: "),
    ("prot = 8774\n", "unknown setting 'prot'"),
    ("[servre]\nport = 1\n", "unknown table [servre]"),
    ("[agent]\nport = 1\n", "[agent] has no setting 'port'"),
    ('port = "http"\n', "port: not a port number: 'http'"),
    ("port = [1, 2]\n", "port: expected a single value"),
    ('auth = "none"\n', "auth: 'none' is not one of noauth, token, keystone"),
    ('[serve]\ntoken = "a:b:c:d"\nconfirm_window = -5\n',
     "serve.confirm_window: a number of seconds cannot be negative"),
])
@pytest.mark.parametrize("command", [["serve"], ["config", "show"]])
def test_a_bad_file_is_one_line_and_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str,
        command: list[str]) -> None:
    cfg = write(tmp_path / "bad.toml", text)
    line = failure(capsys, *command, "--config", str(cfg))
    assert str(cfg) in line
    assert expected in line


def test_a_missing_or_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere.toml"
    assert failure(capsys, "serve", "--config", str(missing)) == (
        f"vmledger: no configuration file at {missing}")
    monkeypatch.setenv("VMLEDGER_CONFIG", str(missing))
    assert failure(capsys, "agent", "--host", "h") == (
        f"vmledger: no configuration file at {missing}")
    binary = write(tmp_path / "binary.toml", "")
    binary.write_bytes(b"\xff\xfe port = 1")
    monkeypatch.setenv("VMLEDGER_CONFIG", str(binary))
    assert "not a valid TOML file" in failure(capsys, "serve")


def test_a_bad_environment_value_names_the_variable(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("VMLEDGER_PORT", "http")
    assert failure(capsys, "serve") == "vmledger: VMLEDGER_PORT: not a port number: 'http'"
    monkeypatch.setenv("VMLEDGER_PORT", "8774")
    monkeypatch.setenv("VMLEDGER_LOG_FORMAT", "xml")
    assert failure(capsys, "agent", "--host", "h") == (
        "vmledger: VMLEDGER_LOG_FORMAT: 'xml' is not one of text, json")


def test_the_agent_host_may_come_from_a_setting(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert failure(capsys, "agent") == (
        "vmledger: agent: --host is required (or VMLEDGER_HOST, or host in the "
        "configuration file)")
    monkeypatch.setenv("VMLEDGER_HOST", "compute-3")
    assert show(capsys, "agent")["host"] == ('"compute-3"', "env VMLEDGER_HOST")


# --- the commands honour them --------------------------------------------------------------
def _get(url: str, token: str | None = None) -> int:
    headers = {"X-Auth-Token": token} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_serve_runs_as_the_environment_and_the_file_say(tmp_path: Path) -> None:
    tokens = write(tmp_path / "tokens", "t0ken:alice:p1:admin\n")
    cfg = write(tmp_path / "vmledger.toml", f"""
log_level = "warning"
[serve]
auth = "token"
token_file = ["{tokens}"]
""")
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("VMLEDGER_")},
           "VMLEDGER_CONFIG": str(cfg), "VMLEDGER_PORT": str(port),
           "VMLEDGER_DB": f"sqlite:///{tmp_path / 'from-env.db'}",
           "VMLEDGER_HYPERVISOR": "simulator:memory"}
    process = subprocess.Popen([sys.executable, "-m", "vmledger.cli", "serve"], cwd=tmp_path,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}/v2.1"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if _get(base) == 200:
                    break
            except OSError:
                time.sleep(0.1)
        assert process.poll() is None, process.communicate()
        assert _get(f"{base}/servers", "t0ken") == 200
        assert _get(f"{base}/servers", "wrong") == 401
        assert (tmp_path / "from-env.db").is_file()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        _out, err = process.communicate(timeout=20)
    assert "serving the Compute API" not in err  # log_level warning, from the file


def test_the_agent_runs_as_the_environment_and_the_file_say(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    cfg = write(tmp_path / "vmledger.toml", f"""
log_format = "json"
[agent]
host = "compute-7"
hypervisor = "simulator://{tmp_path / 'guests.json'}"
""")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("VMLEDGER_")},
           "VMLEDGER_CONFIG": str(cfg), "VMLEDGER_DB": url}
    with Engine(url, host="compute-7") as api:
        sid = api.create_server("remote", flavor="m1.small", image=IMAGE).id
        agent = subprocess.Popen([sys.executable, "-m", "vmledger.cli", "agent"],
                                 cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and agent.poll() is None:
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
    assert err.lstrip().startswith("{")  # log_format json, from the file
    assert (tmp_path / "guests.json").is_file()

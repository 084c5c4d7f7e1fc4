"""The ``vmledger`` command: ``serve`` wiring and ``history`` output."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from vmledger import Engine, cli, cli_support
from vmledger.api.testing import ApiClient
from vmledger.domain.catalog import image_id_for

IMAGE = image_id_for("cirros-0.6.2-x86_64")


def test_history_prints_every_event(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                    ) -> None:
    url = f"sqlite:///{tmp_path / 'v.db'}"
    with Engine(url) as engine:
        server = engine.create_server("web-1", flavor="1", image=IMAGE)
        engine.run_until_idle()
        expected = [str(e) for e in engine.history(server.id)]
    assert cli.main(["history", server.id, "--db", url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(expected) >= 2
    assert "Requested" in lines[0] and "web-1" in lines[0]
    assert "ActionCompleted" in lines[-1]


def test_history_of_unknown_server_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    url = f"sqlite:///{tmp_path / 'v.db'}"
    Engine(url).close()
    missing = "6b0e4b3c-0000-4000-8000-000000000000"
    assert cli.main(["history", missing, "--db", url]) == 1
    assert f"Instance {missing} could not be found." in capsys.readouterr().err
    # a database that is not there is a usage error (2), and is not created
    assert cli.main(["history", missing, "--db", f"sqlite:///{tmp_path / 'none.db'}"]) == 2
    assert not (tmp_path / "none.db").exists()


def serve_with(monkeypatch: pytest.MonkeyPatch, run: Any) -> None:
    """``vmledger serve`` with ``run(app, host=, port=, log_level=)`` instead of the HTTP
    server, on a socket of a free port (not the one asked for, which may be taken)."""
    monkeypatch.setattr(cli, "listen", lambda address, port: cli_support.bind("127.0.0.1", 0))
    monkeypatch.setattr(cli, "run_http", lambda app, sock, **kw: run(app, **kw))


def test_serve_builds_the_engine_and_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_run(app: Any, *, host: str, port: int, log_level: str, **_: Any) -> None:
        seen.update(host=host, port=port)
        client = ApiClient(app)
        seen["version"] = client.get("/v2.1").json()["version"]["id"]
        r = client.post("/v2.1/servers", json={"server": {
            "name": "a", "flavorRef": "1", "imageRef": IMAGE}})
        seen["created"] = r.status_code

    closed: list[Engine] = []
    original_close = Engine.close

    def close(self: Engine) -> None:
        closed.append(self)
        original_close(self)

    serve_with(monkeypatch, fake_run)
    monkeypatch.setattr(Engine, "close", close)
    code = cli.main(["serve", "--db", "memory", "--bind", "0.0.0.0", "--port", "9999",
                     "--confirm-window", "0", "--host-name", "hv-7"])
    assert code == 0
    assert seen == {"host": "0.0.0.0", "port": 9999, "version": "v2.1", "created": 202}
    [engine] = closed
    assert engine.host == "hv-7"
    assert engine.service.confirm_window.total_seconds() == 0
    assert engine.service.shelved_offload_time == timedelta(0)  # Nova's default
    for value, expected in (("-1", None), ("3600", timedelta(hours=1))):
        assert cli.main(["serve", "--db", "memory", "--shelved-offload-time", value]) == 0
        assert closed[-1].service.shelved_offload_time == expected
    assert engine.service.reclaim_interval == timedelta(0)  # no soft delete, as Nova
    assert cli.main(["serve", "--db", "memory", "--reclaim-instance-interval", "60"]) == 0
    assert closed[-1].service.reclaim_interval == timedelta(minutes=1)


def test_serve_with_token_and_keystone_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_run(app: Any, *, host: str, port: int, log_level: str, **_: Any) -> None:
        client = ApiClient(app)
        seen["anonymous"] = client.get("/v2.1/servers").status_code
        seen["token"] = client.get("/v2.1/servers", headers={"X-Auth-Token": "t0"}).status_code
        login = client.post("/identity/v3/auth/tokens", json={"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": "alice", "password": "pw", "domain": {"name": "Default"}}}},
            "scope": {"project": {"name": "p1", "domain": {"name": "Default"}}}}})
        seen["login"] = login.status_code

    serve_with(monkeypatch, fake_run)
    assert cli.main(["serve", "--db", "memory", "--auth", "token",
                     "--token", "t0:u:p:admin"]) == 0
    assert seen == {"anonymous": 401, "token": 200, "login": 404}
    assert cli.main(["serve", "--db", "memory", "--auth", "keystone",
                     "--user", "alice:pw:p1:member", "--token", "t0:u:p:"]) == 0
    assert seen == {"anonymous": 401, "token": 200, "login": 201}


@pytest.mark.parametrize("argv", [
    ["serve", "--confirm-window", "-1"],
    ["serve", "--shelved-offload-time", "-2"],
    ["serve", "--reclaim-instance-interval", "-5"],
    ["serve", "--shelved-offload-time", "soon"],
    ["serve", "--port", "70000"],
    ["serve", "--auth", "kerberos"],
    ["serve", "--auth", "keystone"],
    ["serve", "--auth", "token"],
    ["serve", "--auth", "token", "--token", "no-fields"],
    ["serve", "--auth", "token", "--token", "t:u:p:", "--user", "u:pw:p:"],
    ["serve", "--token", "t:u:p:"],
    ["history"],
    [],
])
def test_bad_arguments_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2


def test_cli_auth_modes_are_the_apis() -> None:
    from vmledger.api.auth import AUTH_MODES

    assert cli.AUTH_MODES == AUTH_MODES


def test_secrets_from_files_stay_out_of_the_process_list(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Any, capsys: pytest.CaptureFixture[str]
        ) -> None:
    users = tmp_path / "users"
    users.write_text("# name:password:project:roles\nalice:s3cr:et:p1:member\n\n")
    users.chmod(0o600)
    tokens = tmp_path / "tokens"
    tokens.write_text("t0:ops:p1:admin\n")
    tokens.chmod(0o644)
    seen: dict[str, Any] = {}

    def fake_run(app: Any, **_: Any) -> None:
        client = ApiClient(app)
        seen["token"] = client.get("/v2.1/servers", headers={"X-Auth-Token": "t0"}).status_code
        login = client.post("/identity/v3/auth/tokens", json={"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": "alice", "password": "s3cr:et", "domain": {"name": "Default"}}}},
            "scope": {"project": {"name": "p1", "domain": {"name": "Default"}}}}})
        seen["login"] = login.status_code

    serve_with(monkeypatch, fake_run)
    assert cli.main(["serve", "--db", "memory", "--auth", "keystone",
                     "--user-file", str(users), "--token-file", str(tokens)]) == 0
    assert seen == {"token": 200, "login": 201}
    err = capsys.readouterr().err
    assert f"{tokens} holds secrets" in err and str(users) not in err
    with pytest.raises(SystemExit) as exc:  # a missing file is a usage error
        cli.main(["serve", "--auth", "token", "--token-file", str(tmp_path / "nope")])
    assert exc.value.code == 2

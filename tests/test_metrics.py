"""``GET /metrics`` and the agent's metrics port, scraped and parsed as Prometheus does
(``prometheus_client.parser``): requests, commands, retries, hypervisor calls, agent
passes, the read models' position and lag, hosts and servers."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from tests.engines import create_elsewhere, make_engine
from tests.support.server import free_port
from vmledger import Engine, FakeClock, Simulator
from vmledger.api import create_app
from vmledger.api.testing import ApiClient
from vmledger.domain.catalog import image_id_for

IMAGE = image_id_for("cirros-0.6.2-x86_64")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by name and labels."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def scrape(client: ApiClient) -> Samples:
    r = client.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(r.text)


def create(client: ApiClient, name: str = "web-1") -> str:
    r = client.post("/v2.1/servers", json={"server": {"name": name, "flavorRef": "1",
                                                      "imageRef": IMAGE}})
    assert r.status_code == 202, r.text
    return str(r.json()["server"]["id"])


def test_requests_commands_and_hypervisor_calls_are_counted(
        noauth_client: ApiClient, memory_engine: Engine) -> None:
    client, engine = noauth_client, memory_engine
    simulator = engine.hypervisor
    assert isinstance(simulator, Simulator)
    sid = create(client)
    engine.run_until_idle()
    action = f"/v2.1/servers/{sid}/action"
    assert client.post(action, json={"os-start": None}).status_code == 409  # already on
    assert client.post(action, json={"reboot": {"type": "SIDEWAYS"}}).status_code == 400
    assert client.post(action, json={"os-stop": None}).status_code == 202
    engine.run_until_idle()
    simulator.inject("power_on", "fail")
    assert client.post(action, json={"os-start": None}).status_code == 202
    engine.run_until_idle()
    assert client.get("/v2.1/servers/nothing-here").status_code == 404
    assert client.get("/v2.1/no/such/path/at/all").status_code == 404
    assert client.get(f"/v2.1/a1/servers/{sid}").status_code == 200

    m = scrape(client)
    route = "/v2.1/servers/{server_id}/action"
    assert value(m, "vmledger_http_requests_total", method="POST", route="/v2.1/servers",
                 status="202") == 1
    assert value(m, "vmledger_http_requests_total", method="POST", route=route,
                 status="409") == 1
    assert value(m, "vmledger_http_requests_total", method="GET",
                 route="/v2.1/{project_id}/servers/{server_id}", status="200") == 1
    assert value(m, "vmledger_http_requests_total", method="GET", route="unmatched",
                 status="404") == 1
    assert value(m, "vmledger_http_request_duration_seconds_count", method="POST",
                 route=route) == 4
    assert value(m, "vmledger_http_request_duration_seconds_bucket", method="POST",
                 route=route, le="+Inf") == 4

    assert value(m, "vmledger_commands_total", action="create_server",
                 result="accepted") == 1
    assert value(m, "vmledger_commands_total", action="os-start", result="conflict") == 1
    assert value(m, "vmledger_commands_total", action="reboot", result="refused") == 1
    assert value(m, "vmledger_commands_total", action="os-stop", result="accepted") == 1
    assert value(m, "vmledger_commands_total", action="os-start", result="accepted") == 1
    # reads are not commands
    assert not any(name == "vmledger_commands_total" and ("action", "show_server") in labels
                   for name, labels in m)

    assert value(m, "vmledger_hypervisor_calls_total", call="spawn", result="ok") == 1
    assert value(m, "vmledger_hypervisor_calls_total", call="power_off", result="ok") == 1
    assert value(m, "vmledger_hypervisor_calls_total", call="power_on", result="error") == 1
    assert value(m, "vmledger_hypervisor_call_duration_seconds_count", call="spawn") == 1
    assert (value(m, "vmledger_agent_pass_duration_seconds_count", kind="reconcile")
            or 0) >= 3

    # the read models, at scrape time
    head = value(m, "vmledger_log_head")
    assert head is not None and head > 0
    assert value(m, "vmledger_read_model_position") == head
    assert value(m, "vmledger_read_model_lag_events") == 0
    assert value(m, "vmledger_read_models_up") == 1
    assert value(m, "vmledger_hosts", state="up") == 1
    assert value(m, "vmledger_hosts", state="down") == 0
    assert value(m, "vmledger_host_up", host="compute-1") == 1
    assert value(m, "vmledger_servers", status="SHUTOFF") == 1  # the failed start


def test_servers_by_status_lag_and_hosts_are_read_at_scrape_time(tmp_path: Path) -> None:
    clock = FakeClock()
    with make_engine(f"sqlite:///{tmp_path / 'm.db'}", clock=clock) as engine:
        client = ApiClient(create_app(engine))
        first, second = create(client, "a"), create(client, "b")
        create(client, "c")
        engine.run_until_idle()
        assert client.post(f"/v2.1/servers/{first}/action",
                           json={"pause": None}).status_code == 202
        assert client.delete(f"/v2.1/servers/{second}").status_code == 204
        engine.run_until_idle()
        m = scrape(client)
        assert value(m, "vmledger_servers", status="ACTIVE") == 1
        assert value(m, "vmledger_servers", status="PAUSED") == 1
        assert value(m, "vmledger_servers", status="DELETED") is None  # not counted

        # another writer's events the read models have not folded yet
        create_elsewhere(engine.url, "behind", image=IMAGE)
        m = scrape(client)
        assert (value(m, "vmledger_read_model_lag_events") or 0) >= 1
        assert value(m, "vmledger_log_head") == (value(m, "vmledger_read_model_position")
                                                 or 0) + value(
            m, "vmledger_read_model_lag_events")  # type: ignore[operator]

        # another host's agent heard from, then not for longer than the down time
        other = make_engine(f"sqlite:///{tmp_path / 'm.db'}", clock=clock, host="compute-2")
        try:
            other.report_host()
        finally:
            other.close()
        m = scrape(client)
        assert value(m, "vmledger_host_up", host="compute-2") == 1
        assert value(m, "vmledger_hosts", state="up") == 2
        clock.advance(seconds=61)
        m = scrape(client)
        assert value(m, "vmledger_host_up", host="compute-2") == 0
        assert value(m, "vmledger_hosts", state="down") == 1


def test_lost_races_are_counted_as_retries(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'race.db'}"
    with make_engine(url) as engine, make_engine(url) as rival:
        client = ApiClient(create_app(engine))
        sid = create(client)
        engine.run_until_idle()
        save = engine.service.save
        raced: list[bool] = []

        def save_after_a_rival(*args: Any, **kwargs: Any) -> Any:
            if not raced:  # another process writes the same server first, once
                raced.append(True)
                rival.set_metadata(sid, {"rival": "first"})
            return save(*args, **kwargs)

        engine.service.save = save_after_a_rival  # type: ignore[method-assign]
        r = client.post(f"/v2.1/servers/{sid}/metadata", json={"metadata": {"k": "v"}})
        assert r.status_code == 200, r.text
        assert r.json()["metadata"] == {"rival": "first", "k": "v"}
        m = scrape(client)
        assert value(m, "vmledger_command_retries_total") == 1
        assert value(m, "vmledger_commands_total", action="update_metadata",
                     result="accepted") == 1


def test_each_app_has_its_own_registry() -> None:
    with Engine("memory") as one, Engine("memory") as two:
        first, second = ApiClient(create_app(one)), ApiClient(create_app(two))
        create(first)
        m1, m2 = scrape(first), scrape(second)
        assert value(m1, "vmledger_commands_total", action="create_server",
                     result="accepted") == 1
        assert value(m2, "vmledger_commands_total", action="create_server",
                     result="accepted") is None
    assert not any(name.startswith("vmledger_") for name in REGISTRY._names_to_collectors)


def test_a_scrape_answers_when_the_database_does_not(noauth_client: ApiClient,
                                                     memory_engine: Engine) -> None:
    client, engine = noauth_client, memory_engine
    engine.service.recorder.max_notification_id = _broken  # type: ignore[method-assign]
    m = scrape(client)
    assert value(m, "vmledger_read_models_up") == 0
    assert value(m, "vmledger_servers", status="ACTIVE") is None


def _broken() -> int:
    raise OSError("connection refused")


def test_the_standalone_agent_serves_its_metrics(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    port = free_port()
    with Engine(url, host="compute-7") as api:
        sid = api.create_server("remote", flavor="m1.small", image="cirros-0.6.2-x86_64").id
        agent = subprocess.Popen(
            [sys.executable, "-m", "vmledger.cli", "agent", "--host", "compute-7",
             "--db", url, "--hypervisor", f"simulator://{tmp_path / 'guests.json'}",
             "--metrics-port", str(port)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                api.updater.catch_up()
                if api.get_server(sid).status == "ACTIVE":
                    break
                time.sleep(0.1)
            assert api.get_server(sid).status == "ACTIVE"
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                m = parse(r.read().decode())
        finally:
            agent.send_signal(signal.SIGTERM)
            _out, err = agent.communicate(timeout=20)
        assert agent.returncode == 0, err
        assert f"metrics on http://127.0.0.1:{port}/metrics" in err
    assert value(m, "vmledger_hypervisor_calls_total", call="spawn", result="ok") == 1
    assert (value(m, "vmledger_agent_pass_duration_seconds_count", kind="reconcile")
            or 0) >= 1
    assert value(m, "vmledger_servers", status="ACTIVE") == 1
    assert value(m, "vmledger_host_up", host="compute-7") == 1


def test_the_agent_metrics_port_taken_is_a_one_line_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "vmledger.cli", "agent", "--host", "compute-7",
             "--db", f"sqlite:///{tmp_path / 'x.db'}", "--metrics-port", str(port)],
            capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"vmledger: cannot serve metrics on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


def test_made_up_methods_and_paths_do_not_grow_the_labels(noauth_client: ApiClient) -> None:
    client = noauth_client
    for i in range(5):
        assert client.request(f"BREW{i}", f"/v2.1/pot-{i}/a/b/c").status_code in (404, 405)
    m = scrape(client)
    assert value(m, "vmledger_http_requests_total", method="other", route="unmatched",
                 status="404") == 5
    assert not any("BREW" in dict(labels).get("method", "") for _, labels in m)


def test_route_labels_name_parameters_without_their_convertors() -> None:
    from vmledger.api.metrics import route_template

    assert route_template("/v2.1/{project_id:nova_project_id}/servers/{server_id}") == (
        "/v2.1/{project_id}/servers/{server_id}")
    assert route_template("/image/v2/images/{image_id}") == "/image/v2/images/{image_id}"

"""``/healthcheck`` as oslo.middleware answers it: 200 ``OK``, or 503 with the reasons
(the database unreachable, the read models lagging, no host agent heard from)."""

from __future__ import annotations

import pytest

from tests.engines import create_elsewhere
from tests.support.postgres import PostgresCluster, postgres_skip_reason
from vmledger import Engine, FakeClock
from vmledger.api import create_app
from vmledger.api.testing import ApiClient
from vmledger.domain.catalog import image_id_for

IMAGE = image_id_for("cirros-0.6.2-x86_64")


@pytest.fixture
def token_client(engine: Engine) -> ApiClient:
    """The API in token mode over the shared ``engine`` (SQLite and PostgreSQL, a fake
    clock): the health check answers without a token, as oslo's."""
    return ApiClient(create_app(engine, auth="token", tokens=["t:u:p:admin"]))


def test_healthy_answers_ok_in_every_form(token_client: ApiClient, engine: Engine) -> None:
    engine.run_once()  # the agent reports its host
    r = token_client.get("/healthcheck")
    assert (r.status_code, r.text) == (200, "OK")
    assert r.headers["content-type"].startswith("text/plain")
    assert token_client.request("HEAD", "/healthcheck").status_code == 204
    r = token_client.get("/healthcheck", headers={"Accept": "application/json"})
    assert r.status_code == 200
    assert r.json() == {"detailed": False, "reasons": ["OK"]}
    r = token_client.get("/healthcheck?detailed")
    assert r.status_code == 200
    body = r.json()
    assert body["detailed"] is True
    assert {"now", "python_version", "platform", "gc"} <= set(body)
    assert [x["class"] for x in body["reasons"]] == [
        "DatabaseCheck", "ReadModelLagCheck", "HostAgentCheck"]
    assert all(x["reason"] == "OK" for x in body["reasons"])
    assert "compute-1" in body["reasons"][2]["details"]
    assert token_client.get("/v2.1/servers").status_code == 401  # the API itself still asks


def test_no_host_agent_heard_from_is_503(token_client: ApiClient, engine: Engine,
                                         clock: FakeClock) -> None:
    r = token_client.get("/healthcheck")
    assert (r.status_code, r.text) == (503, "no host agent has reported within 60 s")
    assert token_client.request("HEAD", "/healthcheck").status_code == 503
    engine.run_once()
    assert token_client.get("/healthcheck").status_code == 200
    clock.advance(seconds=61)  # the agent stopped reporting
    r = token_client.get("/healthcheck", headers={"Accept": "application/json"})
    assert r.status_code == 503
    assert r.json() == {"detailed": False,
                        "reasons": ["no host agent has reported within 60 s"]}
    detail = token_client.get("/healthcheck?detailed").json()["reasons"][2]
    assert detail["class"] == "HostAgentCheck"
    assert "compute-1 at 2026-01-01T00:00:00" in detail["details"]
    engine.run_once()  # it reports again
    assert token_client.get("/healthcheck").status_code == 200


def test_read_models_lagging_behind_the_log_is_503(token_client: ApiClient,
                                                   engine: Engine) -> None:
    engine.run_once()
    app_health = token_client.app.state.health  # type: ignore[attr-defined]
    app_health.max_lag = 1
    # written by another process, and this one's follower is stuck
    for name in ("behind-1", "behind-2"):
        create_elsewhere(engine.url, name, image=IMAGE)
    r = token_client.get("/healthcheck")
    assert r.status_code == 503
    assert r.text.startswith("read models lag behind the log by ")
    assert int(r.text.split()[-2]) > 1
    engine.updater.catch_up()
    assert token_client.get("/healthcheck").status_code == 200


@pytest.mark.postgres
def test_database_unreachable_is_503() -> None:
    reason = postgres_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    with PostgresCluster() as cluster:
        url = cluster.create_database("health")
        with Engine(f"{url}?pool_size=1&max_overflow=0") as engine:
            app = create_app(engine)
            app.state.health.timeout = app.state.metrics.read_models.timeout = 1.0
            client = ApiClient(app)
            engine.run_once()
            assert client.get("/healthcheck").status_code == 200
            cluster._stop()  # the database goes away
            r = client.get("/healthcheck")
            assert r.status_code == 503
            assert r.text == "database unreachable"
            detail = client.get("/healthcheck?detailed").json()["reasons"]
            assert detail[0]["class"] == "DatabaseCheck"
            assert detail[0]["details"] == "no answer within 1 s"
            m = client.get("/metrics")
            assert m.status_code == 200
            assert "vmledger_read_models_up 0.0" in m.text

"""What a server action costs over HTTP beside the same command through the engine: the
API adds no statement of its own (the command's load answers the 404 a missing or
another project's server gets)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.sqlite_trace import tracing_connections
from tests.engines import make_engine
from tests.support.server import IMAGE as IMAGE_ID
from vmledger import Engine
from vmledger.api import create_app
from vmledger.api.testing import ApiClient
from vmledger.projections.layouts import REGISTRY

IMAGE = "cirros-0.6.2-x86_64"


@pytest.fixture
def traced(tmp_path: Path) -> Iterator[tuple[Engine, list[str]]]:
    statements: list[str] = []
    with tracing_connections(lambda _kwargs: statements.append):
        engine = make_engine(f"sqlite:///{tmp_path / 'cost.db'}")
    try:
        yield engine, statements
    finally:
        engine.close()


def test_an_action_over_http_runs_the_statements_of_its_command_alone(
        traced: tuple[Engine, list[str]]) -> None:
    engine, statements = traced
    client = ApiClient(create_app(engine))
    ids = [engine.create_server(f"cost-{i}", "1", IMAGE).id for i in range(6)]
    engine.run_until_idle()
    for server_id in ids:  # what a first use prepares
        engine.lock(server_id)
        assert client.post(f"/v2.1/servers/{server_id}/action",
                           json={"unlock": None}).status_code == 202
    statements.clear()
    for server_id in ids:
        engine.lock(server_id)
        engine.unlock(server_id)
    through_engine = _ours(statements)
    statements.clear()
    for server_id in ids:
        for action in ("lock", "unlock"):
            assert client.post(f"/v2.1/servers/{server_id}/action",
                               json={action: None}).status_code == 202
    over_http = _ours(statements)
    assert len(over_http) == len(through_engine), sorted(set(over_http) - set(through_engine))


def _ours(statements: list[str]) -> list[str]:
    """Without the read of which read-model layout serves (made at most once a second,
    so in either loop or none)."""
    return [s for s in statements if not s.startswith(f"SELECT name FROM {REGISTRY}")]


@pytest.mark.parametrize("body", [{"lock": None}, {"pause": None}, {"os-start": None}])
def test_an_action_on_a_missing_or_hidden_server_is_still_404(
        traced: tuple[Engine, list[str]], body: dict[str, None]) -> None:
    engine, _ = traced
    client = ApiClient(create_app(engine, auth="token", tokens=[
        "t1:u1:p1:member", "t2:u2:p2:member"]))
    mine = client.post("/v2.1/servers", headers={"X-Auth-Token": "t1"}, json={"server": {
        "name": "vm", "flavorRef": "1", "imageRef": IMAGE_ID}}).json()["server"]["id"]
    engine.run_until_idle()
    engine.act(gone := engine.create_server("gone", "1", IMAGE).id, "delete")
    engine.run_until_idle()
    for server_id, token in ((mine, "t2"), (gone, "t1"), ("nope", "t1"),
                             ("00000000-0000-0000-0000-000000000000", "t1")):
        answer = client.post(f"/v2.1/servers/{server_id}/action",
                             headers={"X-Auth-Token": token}, json=body)
        assert answer.status_code == 404, answer.text
        assert answer.json() == {"itemNotFound": {
            "code": 404, "message": f"Instance {server_id} could not be found."}}

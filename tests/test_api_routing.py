"""The API's router tries only the routes a path can match, and answers every request as
Starlette's own scan of the whole route table does: the same status for each route's
path (with and without a project id) under each method, wrong methods (405), unknown
paths (404) and slashes (redirects) included."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, Router

from tests.support.server import IMAGE
from vmledger import Engine
from vmledger.api import create_app
from vmledger.api.testing import ApiClient

#: a value for each path parameter (the first server's id replaces ``server_id``)
SAMPLES = {"project_id": "0abc", "image_id": IMAGE, "flavor_id": "1", "key": "k",
           "tag": "t", "name": "kp", "quota_project_id": "admin", "quota_class": "default",
           "group_id": "g", "aggregate_id": "1", "id": "1", "pattern": "compute",
           "tenant_id": "admin", "network": "private", "request_id": "req-x",
           "migration_id": "1", "service_id": "s"}
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH")
#: never answers in full (a server-sent event stream)
ENDLESS = re.compile(r".*/stream$")
EXTRA_PATHS = ("/", "/v2.1", "/v2.1/", "/v2.1/servers/", "/v2.1/ports", "/v2.1/0abc",
               "/v2.1/0abc/", "/v2.1/not-hex/servers", "/nothing", "/v2.1/servers/detail/x",
               "/identity", "/identity/", "/image", "/network", "/network/v2.0/",
               "/ledger/v1", "/healthcheck/", "/metrics/")


@pytest.fixture
def clients() -> Iterator[tuple[ApiClient, ApiClient]]:
    """The API as served, and the same app on Starlette's own router (each on an engine
    of its own with one server)."""
    engines = [Engine("memory"), Engine("memory")]
    try:
        apps = [create_app(engine) for engine in engines]
        apps[1].router = Router(apps[1].router.routes)
        for engine in engines:
            engine.create_server("s", flavor="1", image=IMAGE,
                                 ctx=engine.context(project_id="admin"))
        yield ApiClient(apps[0]), ApiClient(apps[1])
    finally:
        for engine in engines:
            engine.close()


def _paths(client: ApiClient) -> list[str]:
    """A path for each route of the table (its parameters filled in, ``SID`` for the
    server's id), and a few that are no route."""
    template = re.compile(r"\{(\w+)(?::\w+)?\}")
    paths = {template.sub(lambda m: "SID" if m[1] == "server_id" else SAMPLES.get(m[1], "x"),
                          route.path)
             for route in client.app.router.routes  # type: ignore[attr-defined]
             if isinstance(route, Route) and not ENDLESS.match(route.path)}
    return sorted(paths) + list(EXTRA_PATHS)


def test_every_request_is_answered_as_starlettes_router_answers_it(
        clients: tuple[ApiClient, ApiClient]) -> None:
    answers: list[list[tuple[str, str, int]]] = []
    for client in clients:
        server_id = client.get("/v2.1/servers").json()["servers"][0]["id"]
        answers.append([(method, path, client.request(
            method, path.replace("SID", server_id)).status_code)
            for path in _paths(client) for method in METHODS])
    served, stock = answers
    assert len(served) > 1000
    assert served == stock
    assert {200, 307, 400, 404, 405} <= {status for _, _, status in served}


def _count_tried(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of the routes the router tries from now on, in order."""
    tried: list[str] = []
    matches = Route.matches

    def counting(self: Route, scope: dict[str, object]) -> object:
        tried.append(self.path)
        return matches(self, scope)

    monkeypatch.setattr(Route, "matches", counting)
    return tried


def test_a_route_at_the_end_of_the_table_is_reached_without_trying_the_others(
        clients: tuple[ApiClient, ApiClient], monkeypatch: pytest.MonkeyPatch) -> None:
    served, _ = clients
    tried = _count_tried(monkeypatch)
    assert served.get("/ledger/v1/verify").status_code == 200
    routes = len(served.app.router.routes)  # type: ignore[attr-defined]
    assert routes > 200 and len(tried) <= 10, tried


def test_an_action_is_routed_without_trying_the_shorter_paths_before_it(
        clients: tuple[ApiClient, ApiClient], monkeypatch: pytest.MonkeyPatch) -> None:
    served, _ = clients
    server_id = served.get("/v2.1/servers").json()["servers"][0]["id"]
    tried = _count_tried(monkeypatch)
    assert served.post(f"/v2.1/servers/{server_id}/action",
                       json={"lock": None}).status_code == 202
    assert tried == ["/v2.1/servers/{server_id}/action"]
    tried.clear()
    assert served.get(f"/v2.1/servers/{server_id}").status_code == 200
    assert tried == ["/v2.1/servers/{server_id}"]


def test_a_route_spanning_segments_is_tried_for_paths_of_any_length(
        clients: tuple[ApiClient, ApiClient]) -> None:
    served, stock = clients
    for client in clients:
        async def files(request: Request) -> Response:
            return PlainTextResponse(request.path_params["rest"])

        client.app.router.routes.insert(  # type: ignore[attr-defined]
            0, Route("/v2.1/files/{rest:path}", files, methods=["GET"]))
    for path in ("/v2.1/files/a", "/v2.1/files/a/b/c", "/v2.1/files/" + "x/" * 40 + "y"):
        answer = served.get(path)
        assert (answer.status_code, answer.text) == (200, path.removeprefix("/v2.1/files/"))
        assert stock.get(path).text == answer.text

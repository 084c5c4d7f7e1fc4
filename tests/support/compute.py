"""Small helpers for tests that call the Compute API in process (``ApiClient``)."""

from __future__ import annotations

from typing import Any

import httpx

from vmledger.api.testing import ApiClient
from vmledger.domain.catalog import image_id_for
from vmledger.engine import Engine

IMAGE_ID = image_id_for("cirros-0.6.2-x86_64")


def built(engine: Engine, name: str = "web", ctx: Any = None) -> str:
    """A new server (m1.small, cirros) created through the engine and built; its id."""
    server = engine.create_server(name, flavor="m1.small", image="cirros-0.6.2-x86_64",
                                  ctx=ctx)
    engine.run_until_idle()
    return server.id


def action(client: ApiClient, server_id: str, body: Any, version: str = "2.1",
           headers: dict[str, str] | None = None) -> httpx.Response:
    """``POST /v2.1/servers/{id}/action`` at ``version``."""
    return client.post(f"/v2.1/servers/{server_id}/action", json=body,
                       headers={"X-OpenStack-Nova-API-Version": version, **(headers or {})})


def active_server(engine: Engine, client: ApiClient, name: str = "vm",
                  headers: dict[str, str] | None = None) -> str:
    """A new server (flavor 2, cirros) created over the API and built; its id."""
    r = client.post("/v2.1/servers", headers=headers or {}, json={"server": {
        "name": name, "flavorRef": "2", "imageRef": IMAGE_ID}})
    assert r.status_code == 202, r.text
    engine.run_until_idle()
    return str(r.json()["server"]["id"])


def assert_bad_request(response: httpx.Response) -> None:
    """A 400 with Nova's ``badRequest`` fault body."""
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"badRequest"}

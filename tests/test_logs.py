"""Structured logs carry the request id of the API call they belong to."""

from __future__ import annotations

import json
import logging

import pytest

from vmledger import Engine, FakeClock
from vmledger.api.app import create_app
from vmledger.api.testing import ApiClient
from vmledger.logs import JsonFormatter, RequestIdFilter


def test_access_log_lines_carry_the_request_id(caplog: pytest.LogCaptureFixture) -> None:
    engine = Engine("memory", clock=FakeClock())
    client = ApiClient(create_app(engine))
    caplog.set_level(logging.INFO, logger="vmledger.api.access")
    response = client.get("/v2.1/servers", headers={"X-OpenStack-Nova-API-Version": "2.96"})
    assert response.status_code == 200
    records = [r for r in caplog.records if r.name == "vmledger.api.access"]
    assert records, "one access line per call"
    record = records[-1]
    RequestIdFilter().filter(record)
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == response.headers["x-openstack-request-id"]
    assert (line["method"], line["path"], line["status"]) == ("GET", "/v2.1/servers", 200)
    assert line["microversion"] == "2.96" and line["duration_ms"] >= 0
    engine.close()

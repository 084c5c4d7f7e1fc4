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


def test_uvicorn_lines_come_out_plain_and_under_vmledger(
        capsys: pytest.CaptureFixture[str]) -> None:
    from vmledger import logs

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        for fmt in ("text", "json"):
            logs.configure("info", fmt)
            logging.getLogger("uvicorn.error").info(
                "Started server process [%d]", 42,
                extra={"color_message": "Started server process [\x1b[36m%d\x1b[0m]"})
            logging.getLogger("uvicorn.error").info("\x1b[1mbold\x1b[0m")
            err = capsys.readouterr().err
            assert "\x1b" not in err and "color_message" not in err
            assert "uvicorn" not in err and err.count("vmledger.http") == 2
            if fmt == "json":
                first = json.loads(err.splitlines()[0])
                assert first["logger"] == "vmledger.http"
                assert first["message"] == "Started server process [42]"
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)

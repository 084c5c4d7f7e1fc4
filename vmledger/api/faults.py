"""Nova fault bodies: ``{"<faultName>": {"code": N, "message": "..."}}``.

The fault name follows the status code as in ``nova/api/openstack/wsgi.py``. The
engine's typed refusals (:class:`vmledger.domain.errors.VmledgerError`) carry their own
status code and Nova's message; :class:`ApiError` is the HTTP layer's own refusal
(validation, unknown routes, body limits). Anything else is a bug: it is logged with its
traceback and answered with 500 ``computeFault``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse

from vmledger.domain.errors import VmledgerError

log = logging.getLogger("vmledger.api")

FAULT_NAMES: dict[int, str] = {
    400: "badRequest",
    401: "unauthorized",
    403: "forbidden",
    404: "itemNotFound",
    405: "badMethod",
    409: "conflictingRequest",
    413: "overLimit",
    415: "badMediaType",
    429: "overLimit",
    501: "notImplemented",
    503: "serviceUnavailable",
}

MALFORMED_BODY = "Malformed request body"
UNEXPECTED_ERROR = ("Unexpected API Error. Please report this to the vmledger maintainers and "
                    "attach the API log if possible.")


class ApiError(Exception):
    """A refusal decided by the HTTP layer, with Nova's status code and message."""

    def __init__(self, code: int, message: str, headers: Mapping[str, str] | None = None
                 ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def not_found(message: str) -> ApiError:
    return ApiError(404, message)


def fault_name(code: int) -> str:
    return FAULT_NAMES.get(code, "computeFault")


def printable(text: str) -> str:
    """``text`` with anything UTF-8 cannot encode (a lone surrogate) written as a
    backslash escape, so a message that echoes the caller's input always encodes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def fault_body(code: int, message: str) -> dict[str, Any]:
    return {fault_name(code): {"code": code, "message": printable(message)}}


def fault_response(code: int, message: str, headers: Mapping[str, str] | None = None
                   ) -> JSONResponse:
    return JSONResponse(fault_body(code, message), status_code=code,
                        headers=dict(headers or {}))


def response_for(exc: BaseException, *, request_id: str | None = None) -> JSONResponse:
    """The fault response for an exception raised while serving a request."""
    if isinstance(exc, ApiError):
        return fault_response(exc.code, exc.message, exc.headers)
    if isinstance(exc, VmledgerError) and 400 <= exc.code < 500:
        return fault_response(exc.code, exc.message)
    log.error("unexpected error serving request %s", request_id or "-",
              exc_info=(type(exc), exc, exc.__traceback__))
    return fault_response(500, f"{UNEXPECTED_ERROR}\n{type(exc)}")

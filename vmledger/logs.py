"""Structured logs: every record carries the request id of the API call it belongs to.

``configure(level, fmt="json")`` sets up the root logger; with ``json`` each line is one
JSON object (time, level, logger, message, request_id, and any ``extra`` fields), ready
for a log shipper; ``text`` is the same with the request id in brackets. The API sets
:data:`request_id` for each call, and log records made while handling it (also in the
thread pool, which copies the context) carry it.

Every line names a logger under ``vmledger``: the HTTP server's own lines (uvicorn's
``uvicorn.error``) come out as ``vmledger.http``, without uvicorn's coloured copy of
the message (``color_message``) or any terminal escape.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

#: the request id of the API call being handled (None outside one)
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "vmledger_request_id", default=None)

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message",
                                                                             "asctime"}


#: terminal colour and cursor escapes, never wanted in a log file
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
#: loggers of the libraries serving us, and the name their lines go out under
_REHOMED = {"uvicorn": "vmledger.http", "uvicorn.error": "vmledger.http",
            "uvicorn.access": "vmledger.http.access"}


def plain(text: str) -> str:
    """``text`` without terminal escapes."""
    return _ANSI.sub("", text)


class VmledgerNames(logging.Filter):
    """Re-homes uvicorn's records under ``vmledger.http`` and drops their coloured
    copy of the message."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.name = _REHOMED.get(record.name, record.name)
        record.__dict__.pop("color_message", None)
        return True


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": plain(record.getMessage()),
            "request_id": getattr(record, "request_id", None),
        }
        entry.update({k: v for k, v in vars(record).items()
                      if k not in _STANDARD and k not in entry and k != "color_message"})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return plain(super().format(record))


def configure(level: str = "info", fmt: str = "text") -> None:
    """Configure the root logger for a vmledger process."""
    handler = logging.StreamHandler()
    handler.addFilter(VmledgerNames())
    handler.addFilter(RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter(
            "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's own logging configuration (when one ran before in this process) gives its
    # loggers handlers of their own and stops them propagating: they go through ours
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.disabled = False
        logger.setLevel(logging.NOTSET)
    if level.lower() != "debug":  # transitions logs every state change at info
        logging.getLogger("transitions").setLevel(logging.WARNING)

"""``/healthcheck`` as oslo.middleware's healthcheck answers it, for load balancers.

``GET /healthcheck``: 200 ``OK`` (text/plain) when healthy, else 503 with the reasons,
one per line; ``HEAD``: 204 or 503 without a body; ``Accept: application/json``:
``{"detailed": false, "reasons": [...]}``; ``?detailed`` (a JSON answer, as oslo's
``detailed`` option): each check's ``reason``, ``details`` and ``class``, with ``now``,
``python_version``, ``platform`` and ``gc``. No authentication.

Unhealthy when the database does not answer (within :attr:`HealthCheck.timeout`: the
database client's own retries would take minutes), when the read models lag behind the
log by more than :attr:`HealthCheck.max_lag` events (their follower is stuck), or when no
host agent has reported within the engine's service down time (nothing would enact a
command).
"""

from __future__ import annotations

import gc
import json
import platform
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from vmledger.engine import Engine
from vmledger.projections.hosts import host_reports, is_up

PATH = "/healthcheck"
#: events the read models may be behind the log before the service counts as unhealthy
#: (a live follower folds a page of 1,000 within milliseconds)
DEFAULT_MAX_LAG = 10_000
#: seconds the database may take to answer a health check or a scrape
DEFAULT_TIMEOUT = 5.0
T = TypeVar("T")


class BoundedRead(Generic[T]):
    """A blocking read run on a daemon thread of its own, one at a time, waited for
    at most a timeout: a database that does not answer makes a check fail in seconds,
    and repeated checks meanwhile wait for the same read instead of piling up threads."""

    def __init__(self, read: Callable[[], T], name: str) -> None:
        self.read = read
        self.name = name
        self._lock = threading.Lock()
        self._running: Future[T] | None = None

    def __call__(self, timeout: float) -> T:
        """The read's result; TimeoutError when it takes longer than ``timeout``."""
        with self._lock:
            if self._running is None or self._running.done():
                future: Future[T] = Future()

                def run() -> None:
                    try:
                        future.set_result(self.read())
                    except BaseException as exc:  # handed to the waiting caller
                        future.set_exception(exc)

                threading.Thread(target=run, name=self.name, daemon=True).start()
                self._running = future
            running = self._running
        return running.result(timeout)


@dataclass(frozen=True)
class Result:
    """One check's outcome (oslo's ``HealthcheckResult``)."""

    available: bool
    reason: str
    details: str
    #: the check's name (oslo shows its plugin class)
    check: str


class HealthCheck:
    """The checks over one engine."""

    def __init__(self, engine: Engine, *, max_lag: int = DEFAULT_MAX_LAG,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        if max_lag < 0:
            raise ValueError("the read models' largest lag cannot be negative")
        self.engine = engine
        self.max_lag = max_lag
        #: seconds the database may take to answer
        self.timeout = timeout
        self._read = BoundedRead(self._read_state, "vmledger-healthcheck")

    def _read_state(self) -> tuple[int, int, dict[str, dict[str, Any]]]:
        view = self.engine.view
        head = int(self.engine.service.recorder.max_notification_id() or 0)
        return head, view.position(), host_reports(view)

    def results(self) -> list[Result]:
        """Every check's result (blocking: run it in the thread pool)."""
        engine = self.engine
        try:
            head, position, reports = self._read(self.timeout)
        except TimeoutError:
            return [Result(False, "database unreachable",
                           f"no answer within {self.timeout:g} s", "DatabaseCheck")]
        except Exception as exc:  # any failure to read is the database's
            return [Result(False, "database unreachable", f"{type(exc).__name__}: {exc}",
                           "DatabaseCheck")]
        results = [Result(True, "OK", f"database answered (log head {head})",
                          "DatabaseCheck")]
        lag = max(head - position, 0)
        if lag > self.max_lag:
            results.append(Result(
                False, f"read models lag behind the log by {lag} events",
                f"position {position}, log head {head}, at most {self.max_lag} allowed",
                "ReadModelLagCheck"))
        else:
            results.append(Result(True, "OK", f"read models at {position} of {head}",
                                  "ReadModelLagCheck"))
        now = engine.clock.now()
        down_time = engine.service_down_time
        alive = sorted(h for h, r in reports.items() if is_up(r, now, down_time))
        seconds = f"{down_time.total_seconds():g}"
        if alive:
            results.append(Result(True, "OK", f"host agents up: {', '.join(alive)}",
                                  "HostAgentCheck"))
        else:
            heard = ", ".join(f"{h} at {r['reported_at'].isoformat()}"
                              for h, r in sorted(reports.items())) or "none ever"
            results.append(Result(
                False, f"no host agent has reported within {seconds} s",
                f"last reports: {heard}", "HostAgentCheck"))
        return results

    async def endpoint(self, request: Request) -> Response:
        results = await run_in_threadpool(self.results)
        healthy = all(r.available for r in results)
        failing = [r for r in results if not r.available]
        shown = failing if failing else [Result(True, "OK", "", "")]
        if request.method == "HEAD":
            return Response(status_code=204 if healthy else 503, media_type="text/plain")
        status = 200 if healthy else 503
        if "detailed" in request.query_params:
            return _json(status, {
                "detailed": True, "now": str(datetime.now(UTC)),
                "python_version": sys.version, "platform": platform.platform(),
                "gc": {"counts": list(gc.get_count()), "threshold": list(gc.get_threshold())},
                "reasons": [{"reason": r.reason, "details": r.details, "class": r.check}
                            for r in results]})
        if _wants_json(request.headers.get("accept", "")):
            return _json(status, {"detailed": False, "reasons": [r.reason for r in shown]})
        return Response("\n".join(r.reason for r in shown), status_code=status,
                        media_type="text/plain")


def _wants_json(accept: str) -> bool:
    """Whether JSON is preferred over plain text (oslo: text/plain unless asked)."""
    types = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    return "application/json" in types and "text/plain" not in types[
        :types.index("application/json")]


def _json(status: int, body: dict[str, Any]) -> Response:
    return Response(json.dumps(body, indent=4, sort_keys=True), status_code=status,
                    media_type="application/json")


def health_routes(check: HealthCheck) -> list[BaseRoute]:
    return [Route(PATH, check.endpoint, methods=["GET", "HEAD"])]

"""Prometheus metrics of an engine and of the HTTP API over it (``GET /metrics``).

Each :class:`EngineMetrics` has a registry of its own (several engines and apps may live
in one process; the library's global registry is never used):

- ``vmledger_command_retries_total``: lost optimistic-concurrency races decided again
  (the command pipeline calls :meth:`EngineMetrics.command_retried` through
  ``Pipeline.retry_observers``, from ``Pipeline.back_off``:
  :mod:`vmledger.domain.commands.pipeline`);
- ``vmledger_hypervisor_calls_total{call,result}`` and
  ``vmledger_hypervisor_call_duration_seconds{call}``: every hypervisor call the host
  agent makes (``result`` ``ok`` or ``error``);
- ``vmledger_agent_pass_duration_seconds{kind}``: the agent's passes (``reconcile``,
  ``power_sync``);
- read at scrape time from the read models, one query each:
  ``vmledger_read_model_position``, ``vmledger_log_head``,
  ``vmledger_read_model_lag_events``, ``vmledger_hosts{state}``,
  ``vmledger_host_up{host}``, ``vmledger_servers{status}`` and
  ``vmledger_read_models_up`` (0 when the database did not answer).

:class:`ApiMetrics` adds the HTTP API's, measured by :class:`vmledger.api.http.ApiLayer`:

- ``vmledger_http_requests_total{method,route,status}`` and
  ``vmledger_http_request_duration_seconds{method,route}`` (``route`` is the route
  template, ``/v2.1/servers/{server_id}``; ``unmatched`` for unknown paths);
- ``vmledger_commands_total{action,result}``: the requests that change something
  (``POST``, ``PUT``, ``PATCH``, ``DELETE`` under ``/v2.1`` and ``/image``) by action
  (the server action's name, ``reboot``, ``os-start``…, or the handler's,
  ``create_server``, ``delete_server``…) and result: ``accepted`` (2xx), ``conflict``
  (409), ``refused`` (any other 4xx) or ``error`` (5xx).
"""

from __future__ import annotations

import bisect
import functools
import logging
import math
import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from vmledger.api.health import DEFAULT_TIMEOUT, BoundedRead
from vmledger.engine import Engine
from vmledger.projections.stats import servers_by_status

log = logging.getLogger(__name__)

#: the exposition format's content type (text, version 0.0.4)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: seconds: API calls answer in milliseconds, commands wait for the read models
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0)
#: seconds: a simulator answers at once, libvirt's spawns and snapshots take a while
HYPERVISOR_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)
PASS_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)
#: the methods of requests that are commands
COMMAND_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: methods counted by name; any other is ``other`` (a label per made-up method would
#: let a caller grow the registry without bound)
KNOWN_METHODS = COMMAND_METHODS | {"GET", "HEAD", "OPTIONS"}
#: the route prefixes under which such requests are commands (not the Keystone logins)
COMMAND_PREFIXES = ("/v2.1", "/image")
#: the key in the request's state a handler names its command under (see :func:`note_command`)
COMMAND_KEY = "vmledger_command"
#: the key in the request's state the route template matched is noted under
ROUTE_KEY = "vmledger_route"


def note_command(request: Request, action: str) -> None:
    """Name the command this request is (a server action's name), for the metrics."""
    request.scope.setdefault("state", {})[COMMAND_KEY] = action


class _ReadModelCollector(Collector):
    """What the read models say at scrape time (read within :attr:`timeout` seconds:
    a scrape answers even when the database does not)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.timeout = DEFAULT_TIMEOUT
        self._read = BoundedRead(lambda: list(self._families()), "vmledger-metrics")

    def describe(self) -> Iterable[Metric]:
        return []  # nothing is read when the collector is registered

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("vmledger_read_models_up",
                               "1 when the read models could be read for this scrape")
        try:
            families = self._read(self.timeout)
        except Exception:  # the scrape still answers, saying the database did not
            log.warning("metrics: the read models could not be read", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self) -> Iterator[Metric]:
        engine = self.engine
        head = int(engine.service.recorder.max_notification_id() or 0)
        position = engine.view.position()
        yield GaugeMetricFamily("vmledger_log_head",
                                "The position of the last event in the log", value=head)
        yield GaugeMetricFamily("vmledger_read_model_position",
                                "The log position the read models reflect", value=position)
        yield GaugeMetricFamily("vmledger_read_model_lag_events",
                                "Events in the log the read models do not reflect yet",
                                value=max(head - position, 0))
        services = engine.compute_services()
        hosts = GaugeMetricFamily("vmledger_hosts", "Compute hosts by state (as os-services)",
                                  labels=["state"])
        host_up = GaugeMetricFamily("vmledger_host_up",
                                    "1 while a compute host is up (heard from, not forced "
                                    "down)", labels=["host"])
        alive = {s["host"]: bool(s["up"]) and not s["forced_down"] for s in services}
        hosts.add_metric(["up"], sum(alive.values()))
        hosts.add_metric(["down"], len(alive) - sum(alive.values()))
        for host, is_up in sorted(alive.items()):
            host_up.add_metric([host], int(is_up))
        yield hosts
        yield host_up
        servers = GaugeMetricFamily("vmledger_servers", "Servers (not deleted) by status",
                                    labels=["status"])
        for status, count in sorted(servers_by_status(engine.view).items()):
            servers.add_metric([status], count)
        yield servers


class EngineMetrics:
    """An engine's metrics, in a registry of their own (see the module's description).

    Created over an engine, it listens to its host agent and its command pipeline."""

    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry()
        self.retries = Counter(
            "vmledger_command_retries", "Commands decided again after losing an "
            "optimistic-concurrency race", registry=self.registry)
        self.hypervisor_calls = Counter(
            "vmledger_hypervisor_calls", "Hypervisor calls by call and result",
            ["call", "result"], registry=self.registry)
        self.hypervisor_seconds = Histogram(
            "vmledger_hypervisor_call_duration_seconds", "How long hypervisor calls took",
            ["call"], buckets=HYPERVISOR_BUCKETS, registry=self.registry)
        self.agent_passes = Histogram(
            "vmledger_agent_pass_duration_seconds", "How long the host agent's passes took",
            ["kind"], buckets=PASS_BUCKETS, registry=self.registry)
        self.read_models = _ReadModelCollector(engine)
        self.registry.register(self.read_models)
        engine.agent.observers.append(self)
        engine.commands.deps.pipeline.retry_observers.append(self.command_retried)

    def command_retried(self) -> None:
        self.retries.inc()

    def hypervisor_call(self, call: str, error: str | None, seconds: float) -> None:
        self.hypervisor_calls.labels(call, "ok" if error is None else "error").inc()
        self.hypervisor_seconds.labels(call).observe(max(seconds, 0.0))

    def agent_pass(self, kind: str, seconds: float, handled: int) -> None:
        self.agent_passes.labels(kind).observe(seconds)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


def _created_series() -> bool:
    """Whether ``_created`` series are exported (prometheus_client's switch:
    ``PROMETHEUS_DISABLE_CREATED_SERIES``, ``disable_created_metrics()``)."""
    return bool(getattr(prometheus_metrics, "_use_created", True))


class _HttpSeries(Collector):
    """The HTTP API's three metrics (``vmledger_http_requests``,
    ``vmledger_http_request_duration_seconds``, ``vmledger_commands``) exposed as
    prometheus_client's own Counter and Histogram expose them (the same families,
    samples, labels, order and ``_created`` series), but recorded with one lock and a few
    list updates a request: the library's objects cost about 25,000 instructions a
    request (a counter's ``inc`` 5,000, a histogram's ``observe`` 9,400), some 5 % of a
    ``GET /servers/{id}`` in process."""

    REQUESTS = ("vmledger_http_requests",
                "HTTP requests by route template, method and status")
    DURATIONS = ("vmledger_http_request_duration_seconds", "How long HTTP requests took")
    COMMANDS = ("vmledger_commands",
                "Commands by action and result (accepted, conflict, refused, error)")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bounds = (*(float(b) for b in HTTP_BUCKETS), math.inf)
        # the bucket labels as the library writes them
        self._le = tuple(str(floatToGoString(b))  # type: ignore[no-untyped-call]
                         for b in self._bounds)
        # by label values: [value, created]
        self._requests: dict[tuple[str, str, str], list[float]] = {}
        self._commands: dict[tuple[str, str], list[float]] = {}
        # by label values: [each bucket's own count..., sum, created]
        self._durations: dict[tuple[str, str], list[float]] = {}
        # each request's three series, by (method, route, status, command)
        self._series: dict[tuple[str, str, int, str | None],
                           tuple[list[float], list[float], list[float] | None]] = {}

    def record(self, method: str, route: str, status: int, seconds: float,
               command: str | None) -> None:
        key = (method, route, status, command)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                now = time.time()  # a series' _created: when it is first counted
                series = self._series[key] = (
                    self._requests.setdefault((method, route, str(status)), [0.0, now]),
                    self._durations.setdefault((method, route),
                                               [0.0] * len(self._bounds) + [0.0, now]),
                    None if command is None else self._commands.setdefault(
                        (command, command_result(status)), [0.0, now]))
            counted, timed, done = series
            counted[0] += 1
            timed[bisect.bisect_left(self._bounds, seconds)] += 1  # the first bound >= it
            timed[-2] += seconds
            if done is not None:
                done[0] += 1

    def describe(self) -> Iterable[Metric]:
        return [Metric(*self.REQUESTS, "counter"), Metric(*self.DURATIONS, "histogram"),
                Metric(*self.COMMANDS, "counter")]

    def collect(self) -> Iterator[Metric]:
        created = _created_series()
        with self._lock:
            requests = [(k, list(v)) for k, v in self._requests.items()]
            durations = [(k, list(v)) for k, v in self._durations.items()]
            commands = [(k, list(v)) for k, v in self._commands.items()]
        yield _counter(self.REQUESTS, ("method", "route", "status"), requests, created)
        name = self.DURATIONS[0]
        histogram = Metric(*self.DURATIONS, "histogram")
        for (method, route), values in durations:
            labels = {"method": method, "route": route}
            total = 0.0
            for le, count in zip(self._le, values, strict=False):
                total += count
                histogram.add_sample(name + "_bucket", {**labels, "le": le}, total)
            histogram.add_sample(name + "_count", labels, total)
            histogram.add_sample(name + "_sum", labels, values[-2])
            if created:
                histogram.add_sample(name + "_created", labels, values[-1])
        yield histogram
        yield _counter(self.COMMANDS, ("action", "result"), commands, created)


def _counter(family: tuple[str, str], names: tuple[str, ...],
             series: Sequence[tuple[tuple[str, ...], list[float]]], created: bool
             ) -> Metric:
    metric = Metric(*family, "counter")
    for values, (value, since) in series:
        labels = dict(zip(names, values, strict=True))
        metric.add_sample(family[0] + "_total", labels, value)
        if created:
            metric.add_sample(family[0] + "_created", labels, since)
    return metric


class ApiMetrics(EngineMetrics):
    """:class:`EngineMetrics` and the HTTP API's requests and commands."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.http = _HttpSeries()
        self.registry.register(self.http)

    def request_done(self, method: str, route: str, status: int, seconds: float,
                     command: str | None) -> None:
        self.http.record(method, route, status, seconds, command)

    def finished(self, method: str, state: dict[str, Any], status: int,
                 seconds: float) -> None:
        """Count and time a request once it is answered (or failed: ``status`` 500),
        by the route template noted in ``state`` (``unmatched`` when none was)."""
        route = str(state.get(ROUTE_KEY) or "unmatched")
        if method not in KNOWN_METHODS:
            method = "other"
        command = None
        if method in COMMAND_METHODS and route.startswith(COMMAND_PREFIXES):
            command = str(state.get(COMMAND_KEY) or state.get("vmledger_handler") or route)
        self.request_done(method, route, status, seconds, command)

    async def endpoint(self, request: Request) -> Response:
        """``GET /metrics``: the registry (no auth, as Prometheus scrapes)."""
        return Response(await run_in_threadpool(self.exposition), media_type=CONTENT_TYPE)


def command_result(status: int) -> str:
    if status < 400:
        return "accepted"
    if status == 409:
        return "conflict"
    return "refused" if status < 500 else "error"


_CONVERTOR = re.compile(r"\{(\w+):\w+\}")


@functools.lru_cache(maxsize=1024)
def route_template(path: str) -> str:
    """A route's path as a label: its parameters without their convertors
    (``/v2.1/{project_id}/servers``, not ``{project_id:nova_project_id}``)."""
    return _CONVERTOR.sub(r"{\1}", path)

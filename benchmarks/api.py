"""The Compute API over HTTP: command round trips and list throughput.

What is measured
----------------
The app (``create_app(engine)``, noauth) is served by uvicorn on 127.0.0.1 in a child
process, as ``vmledger serve`` runs it (uvloop's event loop, httptools' parser), with the
host agent and the view follower in the background (``engine.run_in_background(0.01)``)
and the simulator without latency, on a SQLite database holding ~500 ACTIVE servers.
The client (httpx) runs in this process.

*Round trip*: POST a server action (pause and unpause, alternating) and poll
``GET /v2.1/servers/{id}`` every few milliseconds until the action is done (the status
it leads to, task_state null). Reference from the same run: the same round trip on the
embedding facade in one process, without HTTP (``engine.pause`` and
``engine.get_server``, agent in the background), on the same SQLite database and on a
throwaway PostgreSQL cluster (50 servers; skipped, saying why, without PostgreSQL's
binaries).

*What a round trip must wait for*: the commits on its path, counted on a second
engine of the same database whose connections are traced (apart from the timed round
trips: tracing every statement costs time), by whether each waited for the disk
(``synchronous=FULL``) or not, per round trip, all threads; and what one flushed commit
costs alone on the same disk in the same run (raw ``sqlite3``, WAL, ``synchronous=FULL``,
one-row insert). The flushed commits times that figure is the round trip's floor before
any CPU is spent.

*List throughput*: ``GET /v2.1/servers/detail?limit=100`` from a few concurrent
keep-alive connections, against a bare ASGI callable mounted in the same server that
SELECTs the 100 newest rows of ``vmledger_servers`` (same project, not deleted) and
returns their stored JSON documents, and a static response of the same size (the
ceiling of uvicorn + the client on this machine). The same app without its
rendered-server cache (every server rendered and encoded on every request) runs too,
and is checked to return the API's exact body. The windows of all of them alternate,
in a shuffled order, so outside load hits them alike; medians are reported. Then the
API's list path is timed stage by stage inside the same in-process requests (no HTTP),
and the handler's work is profiled, to show what costs what.

*CPU per request in process*: the app called directly on one event loop (no HTTP, same
database): ``GET /v2.1/servers/{id}``, and ``POST /v2.1/servers/{id}/action`` lock /
unlock beside the same commands through the engine (``engine.act``) — the difference is
what the API's layers, its thread-pool hop and its checks cost a command. Process CPU
(all threads, ``time.process_time``), the best of three batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import math
import os
import pstats
import random
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx

from benchmarks import commands
from benchmarks.projections import percentile, populate
from benchmarks.sqlite_trace import tracing_connections
from vmledger.adapters.hypervisor import GuestSpec
from vmledger.adapters.simulator import Simulator
from vmledger.engine import Engine
from vmledger.persistence import environment

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGET_LIST_RATIO = 0.7
LIST_PATH = "/v2.1/servers/detail?limit=100"
BARE_PATH = "/bare/servers/detail?limit=100"
STATIC_PATH = "/bare/static"
PROJECT = "admin"  # noauth callers act in the project "admin"

# ---------------------------------------------------------------------------------------
# The server (child process): the app, plus the bare endpoints, under uvicorn
# ---------------------------------------------------------------------------------------

BARE_SQL = ("SELECT doc FROM vmledger_servers WHERE project_id = ? AND deleted = 0 "
            "ORDER BY created_at DESC, id DESC LIMIT ?")


class BareList:
    """A raw ASGI callable: the newest rows' stored documents, straight from SQLite."""

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.conn.execute("PRAGMA query_only = 1")
        self.static = self.body(100)

    def body(self, limit: int) -> bytes:
        docs = [row[0] for row in self.conn.execute(BARE_SQL, (PROJECT, limit))]
        return ('{"servers":[' + ",".join(docs) + "]}").encode()

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any],
                       send: Callable[..., Any]) -> None:
        if scope["path"] == STATIC_PATH:
            body = self.static
        else:
            query = parse_qs(scope.get("query_string", b"").decode())
            body = self.body(int(query.get("limit", ["1000"])[-1]))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


NOCACHE_PREFIX = "/nocache"


def dispatcher(engine: Engine, url: str) -> Callable[..., Any]:
    """The app, a second app over the same engine without the rendered-server cache
    (under ``/nocache``: every request renders every server) and the bare endpoints
    (``/bare/...``), in one ASGI callable."""
    from vmledger.api.app import create_app
    from vmledger.api.rendering import RenderCache

    app = create_app(engine)
    uncached = create_app(engine)
    uncached.state.renders = RenderCache(capacity=0)
    bare = BareList(environment(url)["SQLITE_DBNAME"])

    async def dispatch(scope: dict[str, Any], receive: Callable[..., Any],
                       send: Callable[..., Any]) -> None:
        path: str = scope.get("path", "")
        if scope["type"] == "http" and path.startswith("/bare/"):
            await bare(scope, receive, send)
            return
        if scope["type"] == "http" and path.startswith(NOCACHE_PREFIX + "/"):
            rest = path[len(NOCACHE_PREFIX):]
            await uncached({**scope, "path": rest, "raw_path": rest.encode()},
                           receive, send)
            return
        await app(scope, receive, send)

    return dispatch


def _with_guests(url: str) -> Engine:
    """An engine whose simulator already runs a guest for every server in the view
    (the benchmark's servers were written straight into the log)."""
    simulator = Simulator(seed=0)
    engine = Engine(url, hypervisor=simulator, allocation_ratios=commands.UNLIMITED)
    for doc in engine.view.servers():
        flavor = doc["flavor"]
        simulator.spawn(GuestSpec(server_id=doc["id"], name=doc["name"],
                                  flavor_id=str(flavor["id"]), vcpus=int(flavor["vcpus"]),
                                  ram_mb=int(flavor["ram"]), disk_gb=int(flavor["disk"]),
                                  image_id=str(doc["image"]["id"])))
    return engine


def serve(url: str, port: int) -> None:
    """The child process: the engine in the background, the app under uvicorn."""
    from vmledger.cli_http import http_server

    engine = _with_guests(url)
    try:
        engine.run_in_background(0.01)
        # the server ``vmledger serve`` runs (uvicorn on uvloop and httptools)
        http_server(dispatcher(engine, url), host="127.0.0.1", port=port,
                    log_level="warning", lifespan="off").run()
    finally:
        engine.close()


def server_stack() -> str:
    """The HTTP parser and event loop the child serves on (``vmledger serve``'s choice:
    httptools and uvloop, h11 and asyncio where those cannot be imported)."""
    import importlib.util

    parser = "httptools" if importlib.util.find_spec("httptools") else "h11"
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return f"{parser}, {loop}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def server_process(url: str, directory: Path) -> Iterator[str]:
    """Run :func:`serve` in a child process; yield its base URL."""
    port = _free_port()
    log_path = directory / "server.log"
    with open(log_path, "wb") as output:
        child = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.api", "--serve", url, str(port)],
            cwd=REPO_ROOT, stdout=output, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if child.poll() is not None:
                raise RuntimeError(f"the server exited: {log_path.read_text()[-2000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(base + "/", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not answer within 60 s")
            time.sleep(0.1)
        yield base
    finally:
        child.terminate()
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


# ---------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------

POLL_INTERVAL = 0.002  # seconds between GETs while waiting for the action to finish
POLL_TIMEOUT = 30.0
_ACTIONS = (("pause", "PAUSED"), ("unpause", "ACTIVE"))


@dataclass
class RoundTrips:
    label: str
    total_ms: list[float] = field(default_factory=list)
    request_ms: list[float] = field(default_factory=list)  # the POST (the call) alone
    polls: list[int] = field(default_factory=list)
    poll_ms: list[float] = field(default_factory=list)  # each GET (poll) alone
    sleep_ms: list[float] = field(default_factory=list)  # each wait between two polls


def _time_round_trips(result: RoundTrips, server_id: str, count: int, warmup: int,
                      act: Callable[[str], None], done: Callable[[str], bool]) -> RoundTrips:
    """Alternate pause and unpause: ``act(action)`` asks, ``done(status)`` polls."""
    for i in range(warmup + count):
        action, status = _ACTIONS[i % 2]
        started = time.perf_counter()
        act(action)
        accepted = time.perf_counter()
        polls = 0
        deadline = started + POLL_TIMEOUT
        poll_ms: list[float] = []
        sleep_ms: list[float] = []
        while True:
            polls += 1
            asked = time.perf_counter()
            if asked > deadline:
                raise RuntimeError(f"{action} of {server_id} not done in {POLL_TIMEOUT} s")
            finished = done(status)
            answered = time.perf_counter()
            poll_ms.append((answered - asked) * 1000)
            if finished:
                break
            time.sleep(POLL_INTERVAL)
            sleep_ms.append((time.perf_counter() - answered) * 1000)
        finished_at = time.perf_counter()
        if i >= warmup:
            result.total_ms.append((finished_at - started) * 1000)
            result.request_ms.append((accepted - started) * 1000)
            result.polls.append(polls)
            result.poll_ms.extend(poll_ms)
            result.sleep_ms.extend(sleep_ms)
    return result


def http_round_trips(base: str, server_id: str, count: int, warmup: int) -> RoundTrips:
    result = RoundTrips("HTTP: POST action, poll GET /servers/{id} (httpx, keep-alive)")
    with httpx.Client(base_url=base, timeout=30) as client:

        def act(action: str) -> None:
            response = client.post(f"/v2.1/servers/{server_id}/action", json={action: None})
            if response.status_code != 202:
                raise RuntimeError(f"{action}: {response.status_code} {response.text}")

        def done(status: str) -> bool:
            server = client.get(f"/v2.1/servers/{server_id}").json()["server"]
            return bool(server["status"] == status
                        and server["OS-EXT-STS:task_state"] is None)

        return _time_round_trips(result, server_id, count, warmup, act, done)


def engine_round_trips(url: str, count: int, warmup: int) -> RoundTrips:
    """The same round trips on the embedding facade: no HTTP, one process."""
    result = RoundTrips("in-process: engine.pause/unpause, poll engine.get_server")
    engine = _with_guests(url)
    try:
        engine.run_in_background(0.01)
        server_id = engine.list_servers()[-2].id  # not the one the HTTP run used

        def act(action: str) -> None:
            engine.act(server_id, action)

        def done(status: str) -> bool:
            info = engine.get_server(server_id)
            return info.status == status and info.task_state is None

        return _time_round_trips(result, server_id, count, warmup, act, done)
    finally:
        engine.close()


def postgres_round_trips(count: int, warmup: int, log: Callable[[str], None]
                         ) -> RoundTrips | str:
    """The in-process round trip on a throwaway PostgreSQL cluster (50 servers), or
    why it was skipped."""
    with commands.throwaway_postgres(log) as (backend, why):
        if backend is None:
            return why or "unavailable"
        with backend.database() as url:
            engine = Engine(url, allocation_ratios=commands.UNLIMITED)
            try:
                populate(engine.service, 50, project_id=PROJECT, full=False, group=50)
                engine.updater.catch_up()
            finally:
                engine.close()
            result = engine_round_trips(url, count, warmup)
            result.label = "in-process, PostgreSQL: the same"
            return result


@dataclass
class Commits:
    """The commits of a run of round trips, by whether they waited for the disk."""

    round_trips: int = 0
    flushed: int = 0
    unflushed: int = 0


_SYNC_LEVELS = {"OFF": 0, "NORMAL": 1, "FULL": 2, "EXTRA": 3}


def traced_commits(commits: Commits) -> contextlib.AbstractContextManager[None]:
    """Every sqlite3 connection made meanwhile counts its commits into ``commits``, as
    flushed (``synchronous`` FULL or above, SQLite's default) or not."""

    def trace_for(_opened: dict[str, Any]) -> Callable[[str], None]:
        level = [2]  # the connection's own setting

        def trace(statement: str) -> None:
            text = statement.lstrip().upper()
            if text.startswith("PRAGMA SYNCHRONOUS") and "=" in text:
                value = text.split("=", 1)[1].strip().rstrip(";")
                level[0] = int(value) if value.isdigit() else _SYNC_LEVELS.get(value, 2)
            elif text.startswith("COMMIT"):
                if level[0] >= 2:
                    commits.flushed += 1
                else:
                    commits.unflushed += 1
        return trace

    return tracing_connections(trace_for)


def commits_per_round_trip(url: str, count: int) -> Commits:
    """The commits of ``count`` round trips on the embedding facade (agent in the
    background, as the timed ones), every connection traced."""
    counted = Commits()
    with traced_commits(counted):  # connections are made on demand: traced throughout
        _count_commits(url, count, counted)
    counted.round_trips = count
    return counted


def _count_commits(url: str, count: int, counted: Commits) -> None:
    engine = _with_guests(url)
    try:
        engine.run_in_background(0.01)
        server_id = engine.list_servers()[-3].id  # one no other run used
        for i in range(count + 1):
            if i == 1:  # the first round trip (and the first passes) warm up
                counted.flushed = counted.unflushed = 0
            action, status = _ACTIONS[i % 2]
            engine.act(server_id, action)
            deadline = time.perf_counter() + POLL_TIMEOUT
            while True:
                info = engine.get_server(server_id)
                if info.status == status and info.task_state is None:
                    break
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"{action} of {server_id} not done in "
                                       f"{POLL_TIMEOUT} s")
                time.sleep(POLL_INTERVAL)
            time.sleep(0.05)  # the pass after the outcome is done, and counted
    finally:
        engine.close()


def flushed_commit_ms(directory: Path, count: int = 200) -> list[float]:
    """ms per commit of a one-row insert with the raw driver, WAL, ``synchronous=FULL``
    (what vmledger's commands use), in ``directory``."""
    path = directory / "flush-probe.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE probe (n INTEGER)")
        times = []
        for n in range(count):
            started = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO probe VALUES (?)", (n,))
            conn.execute("COMMIT")
            times.append((time.perf_counter() - started) * 1000)
        return times
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------
# List throughput
# ---------------------------------------------------------------------------------------


async def _window(client: httpx.AsyncClient, path: str, connections: int, warmup: float,
                  seconds: float) -> float:
    """Requests per second over ``seconds``, after ``warmup``, ``connections`` workers."""
    loop = asyncio.get_running_loop()
    begin = loop.time() + warmup
    end = begin + seconds
    done = 0

    async def worker() -> None:
        nonlocal done
        while True:
            response = await client.get(path)
            if response.status_code != 200:
                raise RuntimeError(f"{path}: {response.status_code} {response.text[:200]}")
            now = loop.time()
            if now >= end:
                return
            if now >= begin:
                done += 1

    await asyncio.gather(*(worker() for _ in range(connections)))
    return done / seconds


@dataclass
class ListSeries:
    label: str
    path: str
    rates: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)


async def _list_throughput(base: str, series: dict[str, ListSeries], repetitions: int,
                           connections: int, seconds: float,
                           log: Callable[[str], None]) -> None:
    limits = httpx.Limits(max_connections=connections,
                          max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        for rep in range(repetitions):
            order = list(series.values())
            random.Random(rep).shuffle(order)
            for s in order:
                s.rates.append(await _window(client, s.path, connections, 0.3, seconds))
            log(f"  list repetition {rep + 1}/{repetitions} (req/s): "
                + ", ".join(f"{name} {s.rates[-1]:,.0f}" for name, s in series.items()))


def same_rows(base: str) -> tuple[bool, bool]:
    """(the bare rows are the API page's servers, in order; the uncached app's body
    equals the API's: the cache changes nothing a client sees)."""
    api = httpx.get(base + LIST_PATH, timeout=30).json()
    bare = httpx.get(base + BARE_PATH, timeout=30).json()["servers"]
    ids = [s["id"] for s in api["servers"]]
    rows = ids == [d["id"] for d in bare] and len(ids) == 100
    bodies = httpx.get(base + NOCACHE_PREFIX + LIST_PATH, timeout=30).json() == api
    return rows, bodies


# ---------------------------------------------------------------------------------------
# What the list costs, stage by stage (in process, no HTTP)
# ---------------------------------------------------------------------------------------


@dataclass
class Stage:
    label: str
    us: float  # µs per request
    note: str = ""


def _per_call(fn: Callable[[], Any], seconds: float = 0.6) -> float:
    """µs per call of ``fn``: the best of three timed batches (least disturbed)."""
    fn()
    n, elapsed = 0, 0.0
    started = time.perf_counter()
    while elapsed < seconds / 3:
        fn()
        n += 1
        elapsed = time.perf_counter() - started
    best = math.inf
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - started) / n)
    return best * 1e6



def _asgi_call(app: Any, path: str, query: bytes) -> Callable[[], None]:
    """A synchronous call of the ASGI app for one GET (one event loop, reused)."""
    loop = asyncio.new_event_loop()
    scope_base: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query,
        "root_path": "", "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8774)}

    async def once() -> None:
        status: list[int] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await app(dict(scope_base), receive, send)
        if status != [200]:
            raise RuntimeError(f"{path}: {status}")

    return lambda: loop.run_until_complete(once())


def _cpu_per_call(fn: Callable[[int], Any], count: int = 200) -> float:
    """CPU µs (this process, all threads) per call of ``fn(i)``: the best of three
    batches of ``count``."""
    for i in range(count // 4):
        fn(i)
    best = math.inf
    for _ in range(3):
        started = time.process_time()
        for i in range(count):
            fn(i)
        best = min(best, (time.process_time() - started) / count)
    return best * 1e6


def requester(app: Any, loop: asyncio.AbstractEventLoop
              ) -> Callable[[str, str, bytes, int], None]:
    """``request(method, path, body, expected status)``: one request through ``app``
    called in process on ``loop`` (no HTTP), failing on another status."""
    def request(method: str, path: str, body: bytes, expected: int) -> None:
        scope: dict[str, Any] = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": method, "scheme": "http", "path": path,
            "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")],
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8774)}
        status: list[int] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        loop.run_until_complete(app(scope, receive, send))
        if status != [expected]:
            raise RuntimeError(f"{method} {path}: {status}")
    return request


def request_cpu(url: str, server_id: str) -> list[tuple[str, float]]:
    """CPU per request of the app called in process (see the module), µs."""
    from vmledger.api import create_app

    engine = Engine(url, allocation_ratios=commands.UNLIMITED)
    loop = asyncio.new_event_loop()
    try:
        request = requester(create_app(engine), loop)

        show = f"/v2.1/servers/{server_id}"
        action = f"{show}/action"
        bodies = (b'{"lock": null}', b'{"unlock": null}')
        get = _cpu_per_call(lambda i: request("GET", show, b"", 200))
        post = _cpu_per_call(lambda i: request("POST", action, bodies[i % 2], 202))
        alone = _cpu_per_call(lambda i: engine.act(
            server_id, ("lock", "unlock")[i % 2], ctx=engine.context(
                request_id=f"req-bench-{i}")))
        return [("GET /v2.1/servers/{id}", get),
                ("POST /v2.1/servers/{id}/action lock / unlock", post),
                ("  the same commands through engine.act", alone),
                ("  the API's share of a command", post - alone)]
    finally:
        loop.close()
        engine.close()


def _call_for(engine: Engine) -> Any:
    """A :class:`vmledger.api.http.Call` for ``GET /v2.1/servers/detail?limit=100``."""
    from starlette.requests import Request

    from vmledger.api import microversions as mv
    from vmledger.api.auth import noauth
    from vmledger.api.http import Call

    scope: dict[str, Any] = {
        "type": "http", "method": "GET", "path": "/v2.1/servers/detail",
        "query_string": b"limit=100", "headers": [(b"host", b"127.0.0.1")],
        "scheme": "http", "server": ("127.0.0.1", 8774), "root_path": "",
        "path_params": {}, "state": {}}
    request = Request(scope)
    return Call(request=request, engine=engine, request_id="req-bench",
                version=mv.DEFAULT_VERSION, principal=noauth(request))


def list_stages(url: str, requests: int = 40
                ) -> tuple[list[Stage], list[tuple[str, float, float]]]:
    """What ``GET /servers/detail?limit=100`` costs, stage by stage: the stages are
    timed inside the same in-process requests (wrapped), so they add up to the total;
    then the handler's work is profiled (µs/request)."""
    from benchmarks.projections import _Split
    from vmledger.api import listing
    from vmledger.api import servers as api_servers
    from vmledger.api.rendering import RenderCache

    engine = Engine(url, hypervisor=Simulator(seed=0),
                    allocation_ratios=commands.UNLIMITED)
    try:
        dispatch = dispatcher(engine, url)
        calls = {
            "api": _asgi_call(dispatch, "/v2.1/servers/detail", b"limit=100"),
            "nocache": _asgi_call(dispatch, NOCACHE_PREFIX + "/v2.1/servers/detail",
                                  b"limit=100"),
            "bare": _asgi_call(dispatch, "/bare/servers/detail", b"limit=100"),
        }
        totals = {name: _per_call(fn) for name, fn in calls.items()}

        split = _Split()
        view = engine.view
        split.wrap(listing, "select", "select")
        split.wrap(view, "query", "sql")
        split.wrap(listing, "sort_keys", "options")
        split.wrap(listing, "build_search", "options")
        split.wrap(api_servers, "render_page", "render")
        split.wrap(api_servers, "server_view", "server_view")
        sec = split.seconds
        try:
            calls["api"]()
            for key in sec:
                sec[key] = 0.0
            started = time.perf_counter()
            for _ in range(requests):
                calls["api"]()
            total = (time.perf_counter() - started) / requests
        finally:
            split.restore()
        us = {k: v / requests * 1e6 for k, v in sec.items()}

        call = _call_for(engine)
        cache = RenderCache()

        def handler_work() -> None:
            page, _ = listing.select(call)
            rendering = cache.renderer(call.viewer, api_servers._detail)
            missing = [row for row in page if not row.loaded and not rendering.cached(row)]
            if missing:
                engine.fill_server_docs(missing)
            api_servers.render_page(rendering, page, None)

        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(requests // 2):
            handler_work()
        profiler.disable()
        raw: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = (
            pstats.Stats(profiler).stats)  # type: ignore[attr-defined]
        top = sorted(((tottime, ncalls, commands._short(*key))
                      for key, (_cc, ncalls, tottime, _ct, _callers) in raw.items()),
                     reverse=True)[:14]
        profile = [(name, t / (requests // 2) * 1e6, n / (requests // 2))
                   for t, n, name in top]
    finally:
        engine.close()
    total_us = total * 1e6
    inside = us["select"] + us["render"]
    stages = [
        Stage("API, in process (no HTTP), warm cache: total per request", total_us),
        Stage("  listing.select (in the thread pool)", us["select"]),
        Stage("    SQL: the page's ids and versions (LIMIT 100)", us["sql"]),
        Stage("    sort_keys + build_search", us["options"]),
        Stage("  render_page: cache lookups, join into the body", us["render"],
              "100 hits"),
        Stage("    of which server_view (cache misses)", us["server_view"]),
        Stage("  rest: Starlette, middleware, auth, thread-pool hop, links",
              total_us - inside),
        Stage("the same app without the cache (render all 100): total", totals["nocache"],
              "same body"),
        Stage("bare ASGI callable: total", totals["bare"]),
    ]
    return stages, profile


# ---------------------------------------------------------------------------------------
# The whole benchmark
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    servers: int
    round_trips: int
    warmup: int
    repetitions: int  # list windows per endpoint
    window: float  # seconds
    connections: int
    profile: bool


FULL = Sizes(servers=500, round_trips=300, warmup=10, repetitions=3, window=2.0,
             connections=4, profile=True)
QUICK = Sizes(servers=500, round_trips=60, warmup=5, repetitions=2, window=0.8,
              connections=4, profile=True)


@dataclass
class ApiReport:
    servers: int
    events: int
    round_trips: list[RoundTrips]
    lists: dict[str, ListSeries]
    connections: int
    window: float
    same_rows: bool
    same_bodies: bool
    stages: list[Stage]
    profile: list[tuple[str, float, float]]
    seconds: float
    contention: dict[str, float]
    commits: Commits = field(default_factory=Commits)
    flush_ms: list[float] = field(default_factory=list)
    #: (label, CPU µs per request) of :func:`request_cpu`
    request_cpu: list[tuple[str, float]] = field(default_factory=list)
    #: why the round trip on PostgreSQL was not measured (None: it was)
    postgres_skipped: str | None = None

    def ratios(self, name: str, baseline: str = "bare") -> list[float]:
        return [a / b for a, b in zip(self.lists[name].rates, self.lists[baseline].rates,
                                      strict=True)]


def run(sizes: Sizes, *, log: Callable[[str], None] = print) -> str:
    began = time.perf_counter()
    stalls = commands.pressure_totals()
    directory = Path(tempfile.mkdtemp(prefix="vmledger-bench-api-"))
    try:
        url = f"sqlite:///{directory / 'api.db'}"
        engine = Engine(url, allocation_ratios=commands.UNLIMITED)
        try:
            events = populate(engine.service, sizes.servers, project_id=PROJECT, full=False,
                              group=250)
            engine.updater.catch_up()
            server_id = engine.list_servers()[-1].id
        finally:
            engine.close()
        log(f"api: {sizes.servers} ACTIVE servers ({events:,} events) in {directory}")
        series = {
            "api": ListSeries("API: GET /v2.1/servers/detail?limit=100", LIST_PATH),
            "bare": ListSeries("bare ASGI: SELECT the 100 newest docs, return them",
                               BARE_PATH),
            "static": ListSeries("static response of the same size (stack ceiling)",
                                 STATIC_PATH),
            "nocache": ListSeries("the API without its rendered-server cache",
                                  NOCACHE_PREFIX + LIST_PATH),
        }
        with server_process(url, directory) as base:
            http = http_round_trips(base, server_id, sizes.round_trips, sizes.warmup)
            log(f"  HTTP round trip p50 {percentile(http.total_ms, 50):.1f} ms, "
                f"p99 {percentile(http.total_ms, 99):.1f} ms")
            rows, bodies = same_rows(base)
            asyncio.run(_list_throughput(base, series, sizes.repetitions,
                                         sizes.connections, sizes.window, log))
        local = engine_round_trips(url, sizes.round_trips, sizes.warmup)
        on_postgres = postgres_round_trips(sizes.round_trips, sizes.warmup, log)
        commits = commits_per_round_trip(url, max(2, min(10, sizes.round_trips)))
        flush_ms = flushed_commit_ms(directory)
        cpu = request_cpu(url, server_id)
        stages: list[Stage] = []
        profile: list[tuple[str, float, float]] = []
        if sizes.profile:
            stages, profile = list_stages(url)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    seconds = time.perf_counter() - began
    trips = [http, local] + ([on_postgres] if isinstance(on_postgres, RoundTrips) else [])
    report = ApiReport(sizes.servers, events, trips, series, sizes.connections,
                       sizes.window, rows, bodies, stages, profile, seconds,
                       commands.contention(stalls, commands.pressure_totals(), seconds),
                       commits, flush_ms, cpu,
                       None if isinstance(on_postgres, RoundTrips) else on_postgres)
    return format_report(report)


def format_report(r: ApiReport) -> str:
    out: list[str] = []
    w = out.append
    stall = ", ".join(f"{k} {v:.0f} %" for k, v in r.contention.items()) or "unknown"
    w("")
    w(f"Compute API over HTTP: uvicorn ({server_stack()}) on 127.0.0.1 in a child process, "
      "agent and view follower")
    w(f"in the background (run_in_background(0.01)), simulator without latency, SQLite, "
      f"{r.servers} ACTIVE servers")
    w(f"({r.events:,} events). Client: httpx in this process. {r.seconds:.0f} s; stalls "
      f"(PSI 'some'): {stall}")
    w("")
    w(f"Command round trip: POST pause/unpause (alternating), then GET the server every "
      f"{POLL_INTERVAL * 1000:.0f} ms until done")
    w("(status PAUSED/ACTIVE and task_state null). Reference from the same run: the same "
      "round trip on the")
    w("embedding facade in one process, no HTTP. ms; 'call' = the POST (or engine.act) "
      "alone; 'poll' = one GET")
    w("(or engine.get_server) alone; 'wait' = one wait between two polls (the interval and the "
      "client's")
    w("oversleep). A round trip of n polls is about call + n x poll + (n - 1) x wait.")
    w(f"  {'':<62} {'n':>4} {'p50':>6} {'p90':>6} {'p99':>6} {'call p50':>8} {'polls':>5} "
      f"{'poll p50':>8} {'wait p50':>8}")
    for rt in r.round_trips:
        w(f"  {rt.label:<62} {len(rt.total_ms):>4} {percentile(rt.total_ms, 50):>6.1f} "
          f"{percentile(rt.total_ms, 90):>6.1f} {percentile(rt.total_ms, 99):>6.1f} "
          f"{percentile(rt.request_ms, 50):>8.1f} {statistics.median(rt.polls):>5.0f} "
          f"{percentile(rt.poll_ms, 50):>8.2f} "
          f"{percentile(rt.sleep_ms, 50):>8.2f}")
    if r.postgres_skipped is not None:
        w(f"  in-process, PostgreSQL: postgres  skipped ({r.postgres_skipped})")
    if r.commits.round_trips and r.flush_ms:
        c = r.commits
        flushed, unflushed = c.flushed / c.round_trips, c.unflushed / c.round_trips
        p50 = percentile(r.flush_ms, 50)
        w(f"  commits per round trip (in process, all threads, {c.round_trips} traced apart): "
          f"{flushed:.1f} flushed, {unflushed:.1f} not")
        w(f"  one flushed commit alone (raw sqlite3, WAL, synchronous=FULL, same disk, this "
          f"run): p50 {p50:.2f} ms, p90 {percentile(r.flush_ms, 90):.2f} ms")
        w(f"  floor of a round trip before any CPU: {flushed:.1f} x {p50:.2f} = "
          f"{flushed * p50:.1f} ms (p50)")
    if r.request_cpu:
        w("  CPU per request, the app called in process (no HTTP, all threads, best of 3 "
          "batches of 200):")
        for label, us in r.request_cpu:
            w(f"    {label:<60} {us:>7,.0f} µs")
    w("")
    w(f"List throughput: {r.connections} concurrent keep-alive connections (httpx async), "
      f"windows of {r.window:.1f} s after 0.3 s")
    w("of warm-up, interleaved in a shuffled order; requests/s = medians, (min-max). The "
      "bare rows are the")
    w(f"API page's 100 servers in the same order: {'yes' if r.same_rows else 'NO'}; the "
      f"uncached app's body equals the API's: {'yes' if r.same_bodies else 'NO'}.")
    for s in r.lists.values():
        w(f"  {s.label:<52} {s.rate:>8,.0f} req/s  ({min(s.rates):>5,.0f}-{max(s.rates):>5,.0f})"
          f" {1e3 / s.rate:>7.2f} ms/req")
    ratios = r.ratios("api")
    ratio = statistics.median(ratios)
    w(f"  ratio API/bare {ratio:.2f} (per window pair {min(ratios):.2f}-{max(ratios):.2f}); "
      f"target >= {TARGET_LIST_RATIO}: {'met' if ratio >= TARGET_LIST_RATIO else 'NOT met'}")
    values = r.ratios("nocache")
    w(f"  ratio API without the cache / bare: {statistics.median(values):.2f} "
      f"({min(values):.2f}-{max(values):.2f}): every server rendered and encoded")
    w(f"  bare/static {statistics.median(r.ratios('bare', 'static')):.2f} (near 1: the bare "
      "endpoint is bound by uvicorn + the client, not by its query)")
    if r.stages:
        w("")
        w("Where the API's list time goes (in process, no HTTP, same database): the stages "
          "are timed inside")
        w("the same requests, so indented rows add up to the row above; µs per request.")
        for stage in r.stages:
            w(f"  {stage.label:<66} {stage.us:>8,.0f} µs  {stage.note}")
    if r.profile:
        w("cProfile of the handler's work (select, cached render, join) in this "
          "thread: top self time")
        w("(µs/request, inflated by the profiler)")
        for name, us, calls in r.profile:
            w(f"  {us:>8,.0f} µs {calls:>7,.0f} calls  {name}")
    return "\n".join(out)


def main(argv: Sequence[str]) -> int:
    if len(argv) == 3 and argv[0] == "--serve":
        serve(argv[1], int(argv[2]))
        return 0
    print("usage: python -m benchmarks --suite api (this module's --serve is internal)",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main(sys.argv[1:]))

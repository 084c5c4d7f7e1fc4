"""Concurrent writers on PostgreSQL: commands per second with 8 and 32 writers at once,
in one process and over HTTP, beside the raw driver's figure at the same concurrency.

What is measured
----------------
*Command service* (in process): W writer threads, each on its own server, each sending
lock, unlock, lock… (commands decided in the request: one event each, no host agent
work) for a timed window, through the command modules over the event store
(``Commands.build(ServerService)``: load → decide → save, durable on return), the
store's connection pool sized to W. Twice: the store alone, and the engine's graph as
an API process builds it (``bootstrap.build``: the read models folded in each
command's own transaction).

*Raw driver*: the same W threads, each on its own connection, each doing per command
one transaction: SELECT the aggregate's rows, INSERT one row, COMMIT (psycopg 3, a
table laid out like eventsourcing's stored events, the same cluster and durability).
Its figure is the database's own ceiling for this concurrency on this machine.

*HTTP*: ``vmledger serve`` twice (two API processes on one database, each with its
host agent — hosts compute-1 and compute-2 — and view follower, the simulator); C
servers created through the API and built by the agents; then C clients sending ``POST
/servers/{id}/action`` lock / unlock (202 once durable), client k on process k mod 2
and on its own server, keep-alive. The client is a small asyncio HTTP/1.1 loop (no
client library), so that it takes little of the machine's two CPUs from the servers.
Then the same clients against one API process (the other one idle) for comparison.

Every configuration runs on a fresh database of one throwaway cluster (``fsync=on``,
``synchronous_commit=on``). Windows of the configurations alternate in a shuffled
order per repetition; medians are reported.

*CPU per command and the ceiling it implies*: over each timed window, the CPU (user +
system) of the client side — this process (``time.process_time``), or over HTTP the API
processes and their children (``/proc/<pid>/stat``), the load generator shown apart —
and of the PostgreSQL server (the postmaster, all its children, and the children it
reaped in the window: ``/proc/<pid>/stat`` utime + stime + cutime + cstime), divided by
the commands of the window. ``cores / (client + server CPU per command)`` is then the
most commands per second this machine's cores could run at that cost, however the waits
were arranged. The client's Python runs on one core at a time in each interpreter (its
lock), so ``interpreters / client CPU per command`` bounds it too — one interpreter in
process, one per API process over HTTP; the in-process client measured at 0.84 cores
of its one with 8 writers and 0.93 with 32. The lower of the two is the ceiling,
printed beside the measured figure and the target, with the CPU per command a target
leaves (``cores / target``, and ``1 / target`` of it for one interpreter). Commands per
commit — the window's events over the distinct ``xmin`` among them (the rows one
transaction wrote share it; 1.00 for the raw driver) — is the group commit's average
group size. And the cores the measured
processes kept busy beside those the whole machine did (``/proc/stat``): a measured figure
well below its ceiling with the machine's cores not all busy is bounded by waits, not CPU.

Reproduce: ``python -m benchmarks --suite writers [--quick]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from benchmarks import commands

REPO_ROOT = Path(__file__).resolve().parents[1]
#: the issue's targets: commands/s with 8 and 32 writers in process, and over HTTP
TARGET_IN_PROCESS = 3000.0
TARGET_HTTP = 1000.0
#: the figure over HTTP before this benchmark existed (2 API processes, 32 clients)
PREVIOUS_HTTP = 142.0
FLAVOR = "2"
IMAGE = "cirros-0.6.2-x86_64"
#: the CPUs this process may run on: the ceiling's numerator
CORES = len(os.sched_getaffinity(0))
#: /proc/<pid>/stat counts CPU time in clock ticks
TICK = 1.0 / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sizes:
    writers: tuple[int, ...]
    seconds: float  # one timed window
    repetitions: int
    http_clients: int
    http_processes: int
    http_seconds: float


FULL = Sizes(writers=(8, 32), seconds=4.0, repetitions=3, http_clients=32,
             http_processes=2, http_seconds=5.0)
QUICK = Sizes(writers=(8, 32), seconds=1.5, repetitions=1, http_clients=32,
              http_processes=2, http_seconds=2.0)


# ---------------------------------------------------------------------------------------
# CPU per command: this process or the API processes, and the PostgreSQL server
# ---------------------------------------------------------------------------------------


def _processes() -> dict[int, tuple[int, float]]:
    """Every process: pid -> (parent pid, CPU seconds of it and of its reaped children)."""
    table: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        # after "pid (comm) ": state ppid ... utime(14) stime cutime cstime(17)
        fields = text[text.rindex(")") + 2:].split()
        table[int(entry.name)] = (int(fields[1]),
                                  sum(int(f) for f in fields[11:15]) * TICK)
    return table


def tree_cpu(roots: Sequence[int], table: dict[int, tuple[int, float]] | None = None
             ) -> float:
    """CPU seconds used so far by ``roots`` and all their descendants, living or reaped
    (a reaped child's time is in its parent's cutime/cstime)."""
    table = _processes() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, stack, seen = 0.0, [r for r in roots if r in table], set[int]()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += table[pid][1]
        stack.extend(children.get(pid, ()))
    return total


def _machine_cpu() -> float:
    """CPU seconds the whole machine spent busy (not idle, not waiting for I/O)."""
    try:
        fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    # user nice system idle iowait irq softirq steal (guest time is within user)
    return (sum(fields[:8]) - fields[3] - fields[4]) * TICK


@dataclass(frozen=True)
class Sample:
    at: float
    client: float  # CPU seconds: this process, or the API processes
    server: float  # CPU seconds: the PostgreSQL cluster
    generator: float  # CPU seconds: this process when it only generates load (HTTP)
    position: int  # the log's last notification id
    machine: float  # CPU seconds: every process of the machine (``/proc/stat``)


@dataclass(frozen=True)
class Cost:
    """What one timed window's commands cost, per command."""

    commands: int
    seconds: float
    client: float  # CPU ms per command
    server: float
    generator: float
    per_commit: float  # events (one per command) per transaction that wrote them
    busy: float  # cores kept busy by the client, the server and the load generator
    machine: float  # cores kept busy by every process of the machine
    #: the Python processes the client CPU is spread over (each runs its Python on one
    #: core at a time: the interpreter lock)
    interpreters: int = 1

    @property
    def cores_ceiling(self) -> float:
        """Commands/s this machine's cores allow at this CPU per command."""
        spent = self.client + self.server
        return CORES * 1000 / spent if spent > 0 else float("inf")

    @property
    def interpreter_ceiling(self) -> float:
        """Commands/s the client's interpreters allow at its CPU per command: each one
        runs Python on one core at a time, however many cores are free."""
        return self.interpreters * 1000 / self.client if self.client > 0 else float("inf")

    @property
    def ceiling(self) -> float:
        """The lower of the two."""
        return min(self.cores_ceiling, self.interpreter_ceiling)

    @property
    def ceiling_with_generator(self) -> float:
        spent = self.client + self.server + self.generator
        return min(CORES * 1000 / spent if spent > 0 else float("inf"),
                   self.interpreter_ceiling)


class Meter:
    """Samples the CPU of the client side and of the PostgreSQL cluster, and the log's
    position, at the edges of a timed window on one database (:meth:`watching`)."""

    def __init__(self, api_pids: Sequence[int] = ()) -> None:
        self.api_pids = list(api_pids)
        self._conn: psycopg.Connection[Any] | None = None
        self._table = sql.Identifier("stored_events")

    @contextlib.contextmanager
    def watching(self, url: str, table: str) -> Iterator[None]:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
            assert row is not None
            # this connection's backend is a child of the postmaster
            self.postmaster = _processes()[int(row[0])][0]
            self._conn, self._table = conn, sql.Identifier(*table.split("."))
            try:
                yield
            finally:
                self._conn = None

    def _one(self, query: sql.Composable, *args: object) -> int:
        assert self._conn is not None, "sample inside watching()"
        row = self._conn.execute(query, args).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def sample(self) -> Sample:
        position = self._one(sql.SQL("SELECT max(notification_id) FROM {}").format(
            self._table))
        table = _processes()
        mine = time.process_time()
        if self.api_pids:
            client, generator = tree_cpu(self.api_pids, table), mine
        else:
            client, generator = mine, 0.0
        return Sample(time.perf_counter(), client, tree_cpu([self.postmaster], table),
                      generator, position, _machine_cpu())

    def cost(self, before: Sample, after: Sample, commands: int, interpreters: int = 1
             ) -> Cost:
        """The window's cost per command (``interpreters``: the Python processes its
        client CPU was spread over). Its transactions: the rows of one transaction
        share their ``xmin`` (the events are written before the read models' savepoint),
        so distinct ``xmin`` among the window's events count the commits."""
        events, commits = (
            self._one(sql.SQL("SELECT count(*) FROM {} WHERE notification_id > %s AND "
                              "notification_id <= %s").format(self._table),
                      before.position, after.position),
            self._one(sql.SQL("SELECT count(DISTINCT xmin::text) FROM {} WHERE "
                              "notification_id > %s AND notification_id <= %s"
                              ).format(self._table), before.position, after.position))
        n, seconds = max(commands, 1), after.at - before.at
        spent = [after.client - before.client, after.server - before.server,
                 after.generator - before.generator]
        return Cost(commands, seconds, *(1000 * x / n for x in spent),
                    events / commits if commits else float("nan"),
                    sum(spent) / seconds, (after.machine - before.machine) / seconds,
                    interpreters)


# ---------------------------------------------------------------------------------------
# In process: the command service and the raw driver, W threads
# ---------------------------------------------------------------------------------------


class WorkloadError(RuntimeError):
    """A command of the workload was refused or ignored: the benchmark is wrong."""


def _timed(workers: Sequence[Callable[[threading.Event], int]], seconds: float,
           meter: Meter) -> tuple[float, Cost]:
    """Start the workers together, stop them after ``seconds``; commands per second
    (each worker returns how many it completed before it saw the stop) and their cost."""
    stop = threading.Event()
    start = threading.Barrier(len(workers) + 1)
    counts = [0] * len(workers)
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            start.wait()
            counts[k] = workers[k](stop)
        except BaseException as e:  # reported below
            errors.append(e)
            stop.set()

    threads = [threading.Thread(target=run, args=(k,), daemon=True)
               for k in range(len(workers))]
    for t in threads:
        t.start()
    commands.settle()
    start.wait()
    before = meter.sample()
    began = time.perf_counter()
    stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    after = meter.sample()
    if errors:
        raise errors[0]
    return sum(counts) / elapsed, meter.cost(before, after, sum(counts))


def engine_rate(url: str, writers: int, seconds: float, *, graph: bool, meter: Meter
                ) -> tuple[float, Cost]:
    """Lock/unlock commands per second from ``writers`` threads, each on its own server:
    the command modules over the store alone, or the API's graph (``graph``)."""
    from vmledger.bootstrap import Settings, build
    from vmledger.domain.commands import Commands
    from vmledger.domain.service import ServerService
    from vmledger.persistence import environment

    if graph:
        built = build(f"{url}?pool_size={writers}",
                      Settings(allocation_ratios=commands.UNLIMITED))
        store, modules = built.store, built.commands
    else:
        store = ServerService(env={**environment(url), "POSTGRES_POOL_SIZE": str(writers)})
        modules = Commands.build(store)
    try:
        store.recorder.datastore.pool.wait(timeout=60)  # type: ignore[attr-defined]

        def ctx() -> Any:
            return store.context(user_id="bench-user", project_id="bench-project",
                                 is_admin=False)

        ids = [modules.servers.create(ctx(), name=f"w-{k}", flavor=FLAVOR,
                                      image=IMAGE).server_id for k in range(writers)]

        def worker(server_id: str) -> Callable[[threading.Event], int]:
            def loop(stop: threading.Event) -> int:
                n = 0
                while not stop.is_set():
                    result = modules.actions.act(ctx(), server_id,
                                                 "unlock" if n % 2 else "lock")
                    if not result.accepted:
                        raise WorkloadError(f"not accepted: {result}")
                    n += 1
                return n
            return loop

        table: str = store.recorder.events_table_name  # type: ignore[attr-defined]
        with meter.watching(url, table):
            return _timed([worker(i) for i in ids], seconds, meter)
    finally:
        store.close()


RAW_TABLE = commands.PostgresBackend.TABLE
RAW_INDEX = commands.PostgresBackend.INDEX
RAW_SELECT = commands.PostgresBackend.SELECT
RAW_INSERT = commands.PostgresBackend.INSERT


def raw_rate(url: str, writers: int, seconds: float, payload: bytes, meter: Meter
             ) -> tuple[float, Cost]:
    """SELECT + INSERT + COMMIT per second from ``writers`` threads, a connection each."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(RAW_TABLE)
        conn.execute(RAW_INDEX)
    connections = [psycopg.connect(url) for _ in range(writers)]
    try:
        def worker(conn: psycopg.Connection[Any]) -> Callable[[threading.Event], int]:
            oid = uuid.uuid4()
            with conn.cursor() as cur:
                cur.execute(RAW_INSERT, (oid, 1, commands.RAW_TOPIC, payload))
            conn.commit()

            def loop(stop: threading.Event) -> int:
                n = 0
                with conn.cursor() as cur:
                    while not stop.is_set():
                        cur.execute(RAW_SELECT, (oid,), prepare=True)
                        version = cur.fetchall()[-1][1] + 1
                        cur.execute(RAW_INSERT, (oid, version, commands.RAW_TOPIC, payload),
                                    prepare=True)
                        cur.fetchone()
                        conn.commit()
                        n += 1
                return n
            return loop

        with meter.watching(url, "stored_events"):
            return _timed([worker(c) for c in connections], seconds, meter)
    finally:
        for c in connections:
            c.close()


@dataclass
class Series:
    label: str
    writers: int
    rates: list[float] = field(default_factory=list)
    costs: list[Cost] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)

    @property
    def cost(self) -> Cost:
        return median_cost(self.costs)


def median_cost(costs: Sequence[Cost]) -> Cost:
    """Each figure's median over the repetitions."""
    return Cost(round(statistics.median(c.commands for c in costs)),
                statistics.median(c.seconds for c in costs),
                statistics.median(c.client for c in costs),
                statistics.median(c.server for c in costs),
                statistics.median(c.generator for c in costs),
                statistics.median(c.per_commit for c in costs),
                statistics.median(c.busy for c in costs),
                statistics.median(c.machine for c in costs),
                max(c.interpreters for c in costs))


STORE = "command service (store + commands)"
GRAPH = "engine graph (read models folded in the command)"
RAW = "raw driver: SELECT + INSERT + COMMIT"


def in_process(backend: commands.PostgresBackend, sizes: Sizes,
               log: Callable[[str], None]) -> list[Series]:
    payload = commands.raw_payload(200)
    series: list[Series] = []
    meter = Meter()
    for writers in sizes.writers:
        group = {name: Series(name, writers) for name in (STORE, GRAPH, RAW)}
        series.extend(group.values())
        for rep in range(sizes.repetitions):
            order = list(group)
            random.Random(rep * 100 + writers).shuffle(order)
            for name in order:
                with backend.database() as url:
                    if name == RAW:
                        rate, spent = raw_rate(url, writers, sizes.seconds, payload, meter)
                    else:
                        rate, spent = engine_rate(url, writers, sizes.seconds,
                                                  graph=name == GRAPH, meter=meter)
                group[name].rates.append(rate)
                group[name].costs.append(spent)
            log(f"  writers {writers} repetition {rep + 1}/{sizes.repetitions}: "
                + ", ".join(f"{s.label.split(' (')[0].split(':')[0]} {s.rates[-1]:,.0f}/s"
                            for s in group.values()))
    return series


# ---------------------------------------------------------------------------------------
# HTTP: vmledger serve x N on one database, C clients
# ---------------------------------------------------------------------------------------


def _serve_command(url: str, port: int, host: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from vmledger.cli import main; "
            "sys.exit(main())", "serve", "--db", url, "--port", str(port),
            "--host-name", host, "--log-level", "warning"]


@contextlib.contextmanager
def api_processes(url: str, count: int, directory: Path
                  ) -> Iterator[list[tuple[int, int]]]:
    """``count`` ``vmledger serve`` processes on ``url``; yield their ports and pids."""
    from benchmarks.api import _free_port

    children: list[tuple[subprocess.Popen[bytes], int, Path]] = []
    # this checkout's code, whatever is installed; the simulators' state files in
    # ``directory``
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    try:
        for k in range(count):
            port = _free_port()
            log_path = directory / f"serve-{k}.log"
            with open(log_path, "wb") as output:
                child = subprocess.Popen(_serve_command(url, port, f"compute-{k + 1}"),
                                         cwd=directory, env=env, stdout=output,
                                         stderr=subprocess.STDOUT)
            children.append((child, port, log_path))
        for child, port, log_path in children:
            deadline = time.monotonic() + 60
            while not _answers(port):
                if child.poll() is not None:
                    raise RuntimeError(f"vmledger serve exited: "
                                       f"{log_path.read_text()[-2000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError("vmledger serve did not answer within 60 s")
                time.sleep(0.1)
        yield [(port, child.pid) for child, port, _ in children]
    finally:
        for child, _, _ in children:
            child.terminate()
        for child, _, _ in children:
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def _answers(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   request: bytes) -> tuple[int, bytes]:
    """One request on a keep-alive connection: (status, body)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b""
    return status, body


def _action(server_id: str, action: str) -> bytes:
    body = f'{{"{action}": null}}'.encode()
    return (f"POST /v2.1/servers/{server_id}/action HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body


@dataclass
class HttpWindow:
    rate: float
    p50_ms: float
    p99_ms: float
    accepted: int
    cost: Cost


async def _http_window(ports: Sequence[int], server_ids: Sequence[str], warmup: float,
                       seconds: float, meter: Meter, interpreters: int) -> HttpWindow:
    from benchmarks.projections import percentile

    loop = asyncio.get_running_loop()
    begin = loop.time() + warmup
    end = begin + seconds
    latencies: list[float] = []
    done = 0
    accepted = 0

    async def client(k: int, server_id: str) -> None:
        nonlocal done, accepted
        reader, writer = await asyncio.open_connection("127.0.0.1", ports[k % len(ports)])
        requests = (_action(server_id, "lock"), _action(server_id, "unlock"))
        n = 0
        try:
            while True:
                started = loop.time()
                status, body = await _request(reader, writer, requests[n % 2])
                n += 1
                now = loop.time()
                if status != 202:
                    raise WorkloadError(f"{status}: {body[:300]!r}")
                accepted += 1
                if now >= end:
                    return
                if now >= begin:
                    done += 1
                    latencies.append((now - started) * 1000)
        finally:
            writer.close()

    samples: list[Sample] = []

    async def sampler() -> None:
        # at the counted window's edges (a sample takes a few ms of this loop)
        await asyncio.sleep(begin - loop.time())
        samples.append(meter.sample())
        await asyncio.sleep(end - loop.time())
        samples.append(meter.sample())

    await asyncio.gather(sampler(), *(client(k, s) for k, s in enumerate(server_ids)))
    return HttpWindow(done / seconds, percentile(latencies, 50), percentile(latencies, 99),
                      accepted, meter.cost(samples[0], samples[1], done, interpreters))


def _events(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM vmledger_events").fetchone()
    return int(row[0]) if row else 0


def create_servers(ports: Sequence[int], count: int, timeout: float = 120.0) -> list[str]:
    """``count`` servers created through the API (each process's agent builds those
    scheduled on its host, on its own simulator); their ids once all are ACTIVE."""
    import httpx

    from vmledger.domain.catalog import image_id_for

    ids: list[str] = []
    for k in range(count):
        response = httpx.post(
            f"http://127.0.0.1:{ports[k % len(ports)]}/v2.1/servers", timeout=30,
            json={"server": {"name": f"http-{k}", "flavorRef": "1",
                             "imageRef": image_id_for(IMAGE), "networks": "none"}})
        if response.status_code != 202:
            raise WorkloadError(f"create: {response.status_code} {response.text[:300]}")
        ids.append(response.json()["server"]["id"])
    deadline = time.monotonic() + timeout
    while True:
        listed = httpx.get(f"http://127.0.0.1:{ports[0]}/v2.1/servers/detail",
                           timeout=30).json()["servers"]
        states = {s["id"]: s["status"] for s in listed}
        if all(states.get(i) == "ACTIVE" for i in ids):
            return ids
        if any(states.get(i) == "ERROR" for i in ids) or time.monotonic() > deadline:
            raise WorkloadError(f"servers not ACTIVE: {sorted(set(states.values()))}")
        time.sleep(0.2)


@dataclass
class HttpReport:
    clients: int
    processes: int
    rates: dict[str, list[float]]
    p50: dict[str, list[float]]
    p99: dict[str, list[float]]
    durable: bool
    costs: dict[str, list[Cost]]


def over_http(backend: commands.PostgresBackend, sizes: Sizes,
              log: Callable[[str], None]) -> HttpReport:
    import tempfile

    labels = {"all": f"{sizes.http_processes} API processes",
              "one": "1 API process (the other idle)"}
    rates: dict[str, list[float]] = {k: [] for k in labels}
    p50: dict[str, list[float]] = {k: [] for k in labels}
    p99: dict[str, list[float]] = {k: [] for k in labels}
    costs: dict[str, list[Cost]] = {k: [] for k in labels}
    directory = Path(tempfile.mkdtemp(prefix="vmledger-bench-writers-"))
    durable = True
    try:
        with (backend.database() as url,
              api_processes(url, sizes.http_processes, directory) as served):
            ports = [port for port, _ in served]
            ids = create_servers(ports, sizes.http_clients)
            for rep in range(sizes.repetitions):
                order = list(labels)
                random.Random(rep).shuffle(order)
                for key in order:
                    before = _events(url)
                    chosen = ports if key == "all" else ports[:1]
                    # both API processes' CPU: the idle one's agent and follower run too
                    meter = Meter([pid for _, pid in served])
                    with meter.watching(url, "vmledger_events"):
                        window = asyncio.run(_http_window(chosen, ids, 0.5,
                                                          sizes.http_seconds, meter,
                                                          len(chosen)))
                    # every 202 is durable: its event is in the log
                    durable = durable and _events(url) - before >= window.accepted
                    rates[key].append(window.rate)
                    p50[key].append(window.p50_ms)
                    p99[key].append(window.p99_ms)
                    costs[key].append(window.cost)
                log(f"  HTTP repetition {rep + 1}/{sizes.repetitions}: "
                    + ", ".join(f"{labels[k]} {rates[k][-1]:,.0f}/s" for k in labels))
    finally:
        import shutil

        shutil.rmtree(directory, ignore_errors=True)
    return HttpReport(sizes.http_clients, sizes.http_processes,
                      {labels[k]: v for k, v in rates.items()},
                      {labels[k]: v for k, v in p50.items()},
                      {labels[k]: v for k, v in p99.items()}, durable,
                      {labels[k]: v for k, v in costs.items()})


# ---------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------


def _met(value: float, target: float) -> str:
    return "met" if value >= target else "NOT met"


def _budget(spent: Cost, target: float) -> str:
    """Whether ``target`` commands/s fit on this machine's cores at ``spent``'s CPU per
    command, or how much of it would have to go."""
    # the cores' share, and the client's interpreters' (each runs on one core at a time)
    share = min(CORES * 1000 / target / (spent.client + spent.server),
                spent.interpreters * 1000 / target / spent.client)
    if share >= 1:
        return f"{target:,.0f}/s fits"
    return f"{target:,.0f}/s needs -{100 * (1 - share):.0f} % CPU/cmd"


def _cpu_table(series: Sequence[Series]) -> list[str]:
    out = ["", f"CPU per command over the timed windows (ms, user + system; client = this "
               f"process, server = the PostgreSQL cluster) and the ceilings it implies: on "
               f"{CORES} cores, cores / (client + server); in one interpreter, which runs "
               f"Python on one core at a time, 1 / client; {TARGET_IN_PROCESS:,.0f}/s "
               f"leaves {CORES * 1000 / TARGET_IN_PROCESS:.2f} ms per command, "
               f"{1000 / TARGET_IN_PROCESS:.2f} of it the client's; busy: cores this "
               f"process and the server kept busy / the whole machine did."]
    head = (f"  {'writers':>7}  {'configuration':<50} {'client':>6} {'server':>6} "
            f"{'cmd/commit':>10} {'cores/s':>7} {'interp/s':>8} {'cmd/s':>7} {'busy':>9}")
    out += [head, "  " + "-" * (len(head) - 2)]
    for s in series:
        c = s.cost
        out.append(f"  {s.writers:>7}  {s.label:<50} {c.client:>6.2f} {c.server:>6.2f} "
                   f"{c.per_commit:>10.2f} {c.cores_ceiling:>7,.0f} "
                   f"{c.interpreter_ceiling:>8,.0f} {s.rate:>7,.0f} "
                   f"{f'{c.busy:.2f}/{c.machine:.2f}':>9}"
                   f"  {_budget(c, TARGET_IN_PROCESS)}")
    return out


def format_report(series: Sequence[Series], http: HttpReport | None, seconds: float,
                  stalls: dict[str, float], skipped: str | None) -> str:
    out: list[str] = []
    w = out.append
    w("")
    if skipped is not None:
        w(f"postgres  skipped: {skipped}")
        return "\n".join(out)
    stall = ", ".join(f"{k} {v:.0f} %" for k, v in stalls.items()) or "unknown"
    w(f"Concurrent writers on PostgreSQL (throwaway cluster, fsync=on, synchronous_commit=on),"
      f" {seconds:.0f} s; stalls (PSI 'some'): {stall}")
    w("Commands decided in the request (lock / unlock), each writer on its own server; "
      "medians of the repetitions.")
    w(f"CPU per command (client + PostgreSQL server) bounds what {CORES} cores can run "
      "(cores / CPU per command), and the client's alone what its interpreters can (one "
      "core each at a time: interpreters / client CPU): the ceiling is the lower, below "
      "each table beside the measured figure.")
    w("")
    head = (f"  {'writers':>7}  {'configuration':<50} {'cmd/s':>7} {'raw/s':>7} {'ratio':>5}"
            f"  target {TARGET_IN_PROCESS:,.0f}/s")
    w(head)
    w("  " + "-" * (len(head) - 2))
    raw = {s.writers: s for s in series if s.label == RAW}
    for s in series:
        base = raw[s.writers].rate
        verdict = "" if s.label == RAW else _met(s.rate, TARGET_IN_PROCESS)
        w(f"  {s.writers:>7}  {s.label:<50} {s.rate:>7,.0f} {base:>7,.0f} "
          f"{s.rate / base:>5.2f}  {verdict}")
    out.extend(_cpu_table(series))
    engine = [s for s in series if s.label != RAW]
    if http is not None:
        w("")
        w(f"HTTP: vmledger serve x {http.processes} on one database, {http.clients} clients "
          f"(POST action lock / unlock, 202 = durable), keep-alive; previous figure "
          f"{PREVIOUS_HTTP:.0f}/s")
        raw_all = max(raw) if raw else None
        for label, values in http.rates.items():
            rate = statistics.median(values)
            w(f"  {label:<34} {rate:>7,.0f} cmd/s  p50 {statistics.median(http.p50[label]):.1f}"
              f" ms  p99 {statistics.median(http.p99[label]):.1f} ms"
              + (f"  target {TARGET_HTTP:,.0f}/s: {_met(rate, TARGET_HTTP)}"
                 if label.startswith(str(http.processes)) else ""))
        if raw_all is not None:
            w(f"  (raw driver with {raw_all} writers, same cluster: "
              f"{raw[raw_all].rate:,.0f}/s)")
        w(f"  every acknowledged command's event is in the log: "
          f"{'yes' if http.durable else 'NO'}")
        w(f"  CPU per command (ms, user + system; API = the API processes and their "
          f"children, server = the PostgreSQL cluster) and the ceiling, the lower of "
          f"{CORES} cores / (API + server) and API processes / API; {TARGET_HTTP:,.0f}/s "
          f"leaves "
          f"{CORES * 1000 / TARGET_HTTP:.2f} ms per command; busy: cores these processes "
          f"kept busy / the whole machine did:")
        for label, costs in http.costs.items():
            c = median_cost(costs)
            w(f"  {label:<34} API {c.client:.2f}  server {c.server:.2f}  load generator "
              f"{c.generator:.2f}  cmd/commit {c.per_commit:.2f}  ceiling "
              f"{c.ceiling:,.0f}/s ({c.ceiling_with_generator:,.0f}/s with the load "
              f"generator)  busy {c.busy:.2f}/{c.machine:.2f} cores  "
              f"{_budget(c, TARGET_HTTP)}")
    if engine:
        best = max(engine, key=lambda s: s.cost.ceiling)
        w("")
        w(f"Ceiling at this CPU per command, in process: {best.cost.ceiling:,.0f}/s "
          f"({best.label.split(' (')[0]}, {best.writers} writers) against the target "
          f"{TARGET_IN_PROCESS:,.0f}/s: {_met(best.cost.ceiling, TARGET_IN_PROCESS)}"
          + ("" if http is None else
             f"; over HTTP ({http.processes} API processes): "
             f"{_http_ceiling(http):,.0f}/s against {TARGET_HTTP:,.0f}/s: "
             f"{_met(_http_ceiling(http), TARGET_HTTP)}"))
    return "\n".join(out)


def _http_ceiling(http: HttpReport) -> float:
    label = next(k for k in http.costs if k.startswith(str(http.processes)))
    return median_cost(http.costs[label]).ceiling


def run(sizes: Sizes, *, log: Callable[[str], None] = print, http: bool = True) -> str:
    began = time.perf_counter()
    stalls = commands.pressure_totals()
    with commands.throwaway_postgres(log) as (backend, reason):
        if backend is None:
            return format_report([], None, 0, {}, reason or "unavailable")
        series = in_process(backend, sizes, log)
        report = over_http(backend, sizes, log) if http else None
    seconds = time.perf_counter() - began
    return format_report(series, report, seconds,
                         commands.contention(stalls, commands.pressure_totals(), seconds),
                         None)

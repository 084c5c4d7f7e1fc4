"""Fleet scale: what a request, a command, a power-state sync pass and the API process's
memory cost at 1k, 10k and 100k servers, and the ratio of each to its 1k value.

What is measured
----------------
One SQLite database (and one PostgreSQL database with ``--backend postgres``) grows
in steps: the servers are written with :func:`benchmarks.projections.populate` (the
events the API and the host agent write for a create and its build, many servers per
save), all on the engine's one simulated host with unlimited allocation ratios, then
the read models are caught up. At each size a fresh child process opens the database
as ``vmledger serve`` would (its simulator given a guest for every server) and
measures, in process (the ASGI app through :class:`vmledger.api.testing.ApiClient`,
no sockets):

* ``GET /servers/detail?limit=100``: the first page, and a page deep in the list
  (``marker`` = the 150th oldest server);
* ``GET /servers?name=^bench-N$`` (an anchored regex: one server),
  ``GET /servers?name=ench-12&limit=100`` (unanchored, its matches sparse and, for
  most of them, old: the scan reads far down the list; 11 servers match at 1,000, so
  the page is full from 10,000 on), the same with ``limit=10`` (full at every size) and
  ``GET /servers?name=ench-&limit=100`` (unanchored, every server matches);
* ``GET /os-hypervisors/detail``;
* a create and its build, end to end (``commands.servers.create`` and the agent's
  passes until ACTIVE);
* one power-state sync pass of the host (every server compared with the hypervisor);
* the first page in blocks alternating between quiet and while sync passes run in
  another thread (the median of each side's block medians; their ratio is issue 18's
  target for background work);
* the process's resident memory once opened, its simulator holding a guest per server
  (``VmRSS``), after all that, and its peak (``VmHWM``);
* in another child, a read-model layout upgrade (:func:`upgrade_probe`: a new layout
  name, so every read model is folded again beside the serving one): the time from its
  start to the switch, while a client lists servers and renames one throughout (their
  latencies, a rename's without an upgrade, the requests made, and how many failed:
  the target is none).

Each latency is the median of several calls after a warm-up. Target (issue 18): every
latency and the memory within 1.5x of the 1k value at 100k.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import commands
from benchmarks.projections import _cluster, populate

#: a project id of Nova's pattern (hexadecimal digits and dashes), as URLs take them
PROJECT = "5ca1e"
REPO_ROOT = Path(__file__).resolve().parent.parent

#: (key, label, unit) of each figure, in the report's order
FIGURES: tuple[tuple[str, str, str], ...] = (
    ("list_first", "GET /servers/detail?limit=100, first page", "ms"),
    ("list_deep", "the same, a page deep in the list (marker)", "ms"),
    ("name_anchored", "GET /servers?name=^bench-N$ (one match)", "ms"),
    ("name_page", "GET /servers?name=ench-12&limit=100 (sparse)", "ms"),
    ("name_page_full", "the same, limit=10 (a full page at every size)", "ms"),
    ("name_dense", "GET /servers?name=ench-&limit=100 (every one)", "ms"),
    ("hypervisors", "GET /os-hypervisors/detail", "ms"),
    ("create_build", "create one server + build, end to end", "ms"),
    ("sync_pass", "one power-state sync pass of the host", "ms"),
    ("list_quiet", "first page, quiet (blocks alternating with the next)", "ms"),
    ("list_during_sync", "first page while sync passes run", "ms"),
    ("rss_open", "API process memory, opened, guests spawned (RSS)", "MB"),
    ("rss", "API process memory after the requests (RSS)", "MB"),
    ("peak", "API process peak memory (VmHWM)", "MB"),
    ("upgrade_to_switch", "read-model layout upgrade, start to switch", "s"),
    ("upgrade_list", "first page during the upgrade", "ms"),
    ("quiet_update", "PUT /servers/{id} (rename), no upgrade", "ms"),
    ("upgrade_update", "the same during the upgrade (median)", "ms"),
    ("upgrade_update_max", "the same during the upgrade (slowest)", "ms"),
    ("upgrade_requests", "requests answered during the upgrade", "n"),
    ("upgrade_failed", "... of which failed (target: 0)", "n"),
)


@dataclass(frozen=True)
class Sizes:
    fleets: tuple[int, ...]
    repetitions: int  # calls per latency figure (median)
    sync_passes: int


#: blocks of the first page, quiet and while sync passes run, alternating
BLOCKS = 3

FULL = Sizes(fleets=(1_000, 10_000), repetitions=21, sync_passes=3)
LARGE = Sizes(fleets=(1_000, 10_000, 100_000), repetitions=21, sync_passes=3)
QUICK = Sizes(fleets=(200, 2_000), repetitions=5, sync_passes=2)


# ---------------------------------------------------------------------------------------
# The child process: one size, measured
# ---------------------------------------------------------------------------------------


def _median_ms(call: Callable[[], Any], repetitions: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repetitions):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _memory_mb() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process, in MB."""
    fields: dict[str, float] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields.get("VmRSS", 0.0), fields.get("VmHWM", 0.0)


def probe(url: str, servers: int, sizes: Sizes) -> dict[str, float]:
    """Measure every figure on the database at ``url`` (``servers`` in it)."""
    from vmledger.adapters.hypervisor import GuestSpec
    from vmledger.adapters.simulator import Simulator
    from vmledger.api.app import create_app
    from vmledger.api.testing import ApiClient
    from vmledger.engine import Engine

    simulator = Simulator(seed=0)
    engine = Engine(url, hypervisor=simulator, allocation_ratios=commands.UNLIMITED)
    try:
        # a guest per server, as a restarted simulator reads them from its state file:
        # from the view's columns in pages (decoding every document would weigh on the
        # memory measured, and no serving process does it)
        flavor = engine.service.catalog.flavor(commands.FLAVOR)
        last = ""
        while True:
            page = engine.view.query("SELECT id, name FROM vmledger_servers WHERE id > ?"
                                     " ORDER BY id LIMIT 1000", [last])
            for row in page:
                simulator.spawn(GuestSpec(
                    server_id=str(row["id"]), name=str(row["name"]), flavor_id=flavor.id,
                    vcpus=flavor.vcpus, ram_mb=flavor.ram, disk_gb=flavor.disk,
                    image_id=commands.IMAGE))
            if len(page) < 1000:
                break
            last = str(page[-1]["id"])
        out: dict[str, float] = {}
        out["rss_open"] = _memory_mb()[0]
        client = ApiClient(create_app(engine))
        base = f"/v2.1/{PROJECT}"
        deep = engine.view.query(
            "SELECT id FROM vmledger_servers ORDER BY created_at, id LIMIT 1 OFFSET ?",
            [min(150, servers // 2)])
        marker = str(deep[0]["id"])

        def get(path: str) -> Callable[[], None]:
            def call() -> None:
                response = client.get(base + path)
                if response.status_code != 200:
                    raise RuntimeError(f"GET {path}: {response.status_code} "
                                       f"{response.text[:300]}")
            return call

        reps = sizes.repetitions
        out["list_first"] = _median_ms(get("/servers/detail?limit=100"), reps)
        out["list_deep"] = _median_ms(get(f"/servers/detail?limit=100&marker={marker}"),
                                      reps)
        out["name_anchored"] = _median_ms(get(f"/servers?name=^bench-{servers // 2}$"),
                                          reps)
        out["name_page"] = _median_ms(get("/servers?name=ench-12&limit=100"), reps)
        # 11 servers match at 1,000, 111 at 10,000: a page of 100 is full from 10,000
        # on, a page of 10 at every size (the same answer's size to compare)
        out["name_page_full"] = _median_ms(get("/servers?name=ench-12&limit=10"), reps)
        out["name_dense"] = _median_ms(get("/servers?name=ench-&limit=100"), reps)
        out["hypervisors"] = _median_ms(get("/os-hypervisors/detail"), max(3, reps // 3),
                                        warmup=1)
        ctx = engine.service.context(user_id="scale", project_id=PROJECT, is_admin=False)
        count = [0]

        def create_build() -> None:
            count[0] += 1
            result = engine.commands.servers.create(ctx, name=f"scale-{count[0]}",
                                                    flavor="2", image=commands.IMAGE)
            engine.run_until_idle()
            doc = engine.view.get(str(result.server_id))
            if doc is None or doc["vm_state"] != "active":
                raise RuntimeError(f"the created server did not build: {doc}")
        out["create_build"] = _median_ms(create_build, reps)
        out["sync_pass"] = _median_ms(engine.sync_power_states, sizes.sync_passes, warmup=1)
        # the first page quiet and while sync passes run, in alternating blocks (the
        # machine's load changes over seconds: both sides see the same)
        first_page = get("/servers/detail?limit=100")
        quiet: list[float] = []
        during: list[float] = []
        per_block = max(3, reps // BLOCKS)
        for _ in range(BLOCKS):
            quiet.append(_median_ms(first_page, per_block, warmup=1))
            stop = threading.Event()

            def syncing(stop: threading.Event = stop) -> None:
                while not stop.is_set():
                    engine.sync_power_states()

            thread = threading.Thread(target=syncing, daemon=True)
            thread.start()
            try:
                during.append(_median_ms(first_page, per_block, warmup=1))
            finally:
                stop.set()
                thread.join()
        out["list_quiet"] = statistics.median(quiet)
        out["list_during_sync"] = statistics.median(during)
        out["rss"], out["peak"] = _memory_mb()
        out["simulator_calls"] = float(len(simulator.calls))
        return out
    finally:
        engine.close()


def upgrade_probe(url: str, layout: str) -> dict[str, float]:
    """Upgrade the read models at ``url`` to a layout called ``layout`` (this process
    stands for a release that defines it), as ``vmledger serve`` does in the background,
    while a client lists servers and renames one, in turns: the seconds from the start
    to the switch, and the client's latencies then and before."""
    from vmledger.api.app import create_app
    from vmledger.api.testing import ApiClient
    from vmledger.engine import Engine
    from vmledger.projections import store
    from vmledger.projections.runner import BACKGROUND_PACE

    store.TRACKING_NAME = layout
    engine = Engine(url, allocation_ratios=commands.UNLIMITED)
    try:
        client = ApiClient(create_app(engine))
        server = str(engine.view.query("SELECT id FROM vmledger_servers LIMIT 1")[0]["id"])
        timings: dict[str, list[float]] = {"list": [], "update": []}
        failed = [0]

        def turn(n: int) -> None:
            for kind, call in (
                    ("list", lambda: client.get(f"/v2.1/{PROJECT}/servers/detail?limit=100")),
                    ("update", lambda: client.put(f"/v2.1/{PROJECT}/servers/{server}",
                                                  json={"server": {"name": f"up-{n}"}}))):
                began = time.perf_counter()
                response = call()
                timings[kind].append((time.perf_counter() - began) * 1000)
                failed[0] += response.status_code != 200

        for n in range(15):
            turn(n)
        quiet = {k: statistics.median(v) for k, v in timings.items()}
        timings = {"list": [], "update": []}
        stop = threading.Event()

        def load() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                turn(n)

        thread = threading.Thread(target=load, daemon=True)
        thread.start()
        try:
            # paced as in the background of ``vmledger serve``
            report = engine.updater.upgrade(grace=0, pace=BACKGROUND_PACE)
        finally:
            stop.set()
            thread.join()
        if report.to_switch is None or engine.view.serving.name != layout:
            raise RuntimeError(f"the upgrade to {layout} did not switch: {report}")
        return {"upgrade_to_switch": report.to_switch,
                "upgrade_list": statistics.median(timings["list"] or [0.0]),
                "upgrade_update": statistics.median(timings["update"] or [0.0]),
                "upgrade_update_max": max(timings["update"] or [0.0]),
                "quiet_update": quiet["update"],
                "upgrade_requests": len(timings["list"]) + len(timings["update"]),
                "upgrade_failed": failed[0]}
    finally:
        engine.close()


def _measure_upgrade(url: str, servers: int) -> dict[str, float]:
    """Run :func:`upgrade_probe` in a child process, to a layout named for the size (the
    database then serves it: the next sizes are measured on it, the same code)."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.scale", "--upgrade", url,
         f"vmledger.views.scale{servers}"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the upgrade of {servers} servers failed:\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------------------------------
# The parent: build the fleets, run a child per size, report
# ---------------------------------------------------------------------------------------


def _measure(url: str, servers: int, sizes: Sizes) -> dict[str, float]:
    """Run :func:`probe` in a fresh child process (its memory is the figure)."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.scale", "--probe", url, str(servers),
         json.dumps([sizes.repetitions, sizes.sync_passes])],
        cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the probe of {servers} servers failed:\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def bench(url: str, sizes: Sizes, log: Callable[[str], None]) -> dict[int, dict[str, float]]:
    from vmledger.engine import Engine

    results: dict[int, dict[str, float]] = {}
    written = 0
    for fleet in sizes.fleets:
        engine = Engine(url, allocation_ratios=commands.UNLIMITED)
        try:
            began = time.perf_counter()
            populate(engine.service, fleet - written, project_id=PROJECT, full=False,
                     group=500, first=written)
            engine.updater.catch_up()
            log(f"  {fleet:,} servers written and folded "
                f"({time.perf_counter() - began:.0f} s)")
        finally:
            engine.close()
        written = fleet
        results[fleet] = _measure(url, fleet, sizes)
        results[fleet].update(_measure_upgrade(url, fleet))
        log("  " + ", ".join(f"{k} {v:.1f}" for k, v in results[fleet].items()))
    return results


def format_report(backend: str, results: dict[int, dict[str, float]]) -> str:
    fleets = sorted(results)
    out = [f"\n[{backend}] fleet scale: median of each figure per fleet size; the ratio is "
           f"to the {fleets[0]:,} value (target: <= 1.5x)"]
    head = f"{'figure':<48}" + "".join(f"{f:>10,}" for f in fleets) + "".join(
        f"{'x' + (f'{f // 1000:,}k' if f % 1000 == 0 else str(f)):>8}" for f in fleets[1:])
    out += [head, "-" * len(head)]
    for key, label, unit in FIGURES:
        values = [results[f].get(key) for f in fleets]
        if any(v is None for v in values):
            continue
        first = values[0] or 1e-9
        row = f"{label + ' (' + unit + ')':<48}" + "".join(
            f"{v:>10.1f}" for v in values if v is not None)
        row += "".join(f"{(v or 0) / first:>8.2f}" for v in values[1:])
        out.append(row)
    # what issue 18 asks of the background work and of memory, per size
    busy = []
    for f in fleets:
        quiet = results[f].get("list_quiet", results[f].get("list_first"))
        during = results[f].get("list_during_sync")
        if quiet and during is not None:
            busy.append(f"{f:,}: {during:.1f} / {quiet:.1f} ms = {during / quiet:.2f}x")
    if busy:
        out.append("first page during a sync pass / quiet (target <= 1.5x): "
                   + "; ".join(busy))
    rss = [(f, results[f]["rss"]) for f in fleets if results[f].get("rss")]
    if rss:
        out.append(f"API process RSS after the requests, ratio to {fleets[0]:,} (target <= "
                   "1.5x): " + "; ".join(f"{f:,}: {v:.1f} MB = {v / rss[0][1]:.2f}x"
                                         for f, v in rss))
    calls = [int(results[f].get("simulator_calls", 0)) for f in fleets]
    out.append(f"simulator call record after the probe: {', '.join(map(str, calls))} entries")
    return "\n".join(out)


def run(backends: Sequence[str], sizes: Sizes, *, log: Callable[[str], None] = print
        ) -> str:
    reports: list[str] = []
    skipped: dict[str, str] = {}
    if "sqlite" in backends:
        directory = Path(tempfile.mkdtemp(prefix="vmledger-bench-scale-"))
        try:
            log(f"scale: sqlite in {directory}")
            results = bench(f"sqlite:///{directory / 'scale.db'}", sizes, log)
            reports.append(format_report("sqlite", results))
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    if "postgres" in backends:
        with _cluster(skipped, log) as cluster:
            if cluster is not None:
                with _database(cluster) as url:
                    log("scale: postgres")
                    reports.append(format_report("postgres", bench(url, sizes, log)))
    reports += [f"[{b}] skipped: {reason}" for b, reason in skipped.items()]
    return "\n".join(reports)


@contextlib.contextmanager
def _database(cluster: Any) -> Iterator[str]:
    with commands.PostgresBackend(cluster).database() as url:
        yield url


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale")
    parser.add_argument("--probe", nargs=3, metavar=("URL", "SERVERS", "SIZES"))
    parser.add_argument("--upgrade", nargs=2, metavar=("URL", "LAYOUT"))
    args = parser.parse_args(argv)
    if args.upgrade:
        print(json.dumps(upgrade_probe(*args.upgrade)), flush=True)
    if args.probe:
        url, servers, raw = args.probe
        repetitions, passes = json.loads(raw)
        result = probe(url, int(servers), Sizes((), int(repetitions), int(passes)))
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""What moving a server between hosts costs: a cold migration with its confirm, and a
live migration, between two hosts' agents (each an engine with its own simulator) on
one SQLite database, against a resize and confirm on the server's own host measured in
the same run (the same VERIFY_RESIZE flow on one host: the baseline).

Printed per kind: moves per second (request to outcome, the agents' passes included),
ms per move, and the commits and SQL statements per move, each with its ratio to the
same-host resize. A move costs more commits than a same-host action by design: each
host records its half, and the hand-over between them is a commit of its own.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.actions import Counts, traced_sqlite
from tests.engines import counter_ids, counter_request_ids
from vmledger import Engine, FakeClock
from vmledger.adapters.simulator import Simulator

IMAGE = "cirros-0.6.2-x86_64"
HOSTS = ("compute-1", "compute-2")


@dataclass(frozen=True)
class Sizes:
    servers: int
    repetitions: int


QUICK = Sizes(servers=5, repetitions=1)
FULL = Sizes(servers=30, repetitions=3)


@dataclass
class Figure:
    seconds: list[float]
    commits: float
    statements: float


def _cloud(url: str, tag: str, sims: dict[str, Simulator] | None = None
           ) -> dict[str, Engine]:
    clock = FakeClock()
    ids = counter_ids(3 if tag == "setup" else 4)
    sims = sims or {host: Simulator(seed=n) for n, host in enumerate(HOSTS, start=1)}
    return {host: Engine(url, clock=clock, hypervisor=sims[host], host=host,
                         id_factory=ids, request_id_factory=counter_request_ids(f"{tag}{n}"))
            for n, host in enumerate(HOSTS, start=1)}


def _settle(engines: dict[str, Engine]) -> None:
    for _ in range(4):
        for engine in engines.values():
            engine.run_until_idle()


def _servers(engines: dict[str, Engine], count: int) -> list[str]:
    api = engines["compute-1"]
    _settle(engines)  # each host's agent reports its host
    api.set_compute_service("compute-2", disabled=True)
    try:
        ids = [s.id for s in api.create_servers("b", flavor="m1.small", image=IMAGE,
                                                count=count)]
    finally:
        api.set_compute_service("compute-2", disabled=False)
    _settle(engines)
    return ids


def _measure(job: Callable[[dict[str, Engine], str], None], sizes: Sizes) -> Figure:
    seconds: list[float] = []
    counts = Counts()
    moved = 0
    for _ in range(sizes.repetitions):
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{Path(tmp) / 'moves.db'}"
            engines = _cloud(url, "setup")
            try:
                ids = _servers(engines, sizes.servers)
                with traced_sqlite(counts):
                    # new connections only: the engines' own are traced from here on
                    sims = {h: e.hypervisor for h, e in engines.items()}
                    for engine in engines.values():
                        engine.close()
                    engines = _cloud(url, "run", sims)  # type: ignore[arg-type]
                    _settle(engines)
                    before = Counts(counts.statements, counts.commits)
                    started = time.perf_counter()
                    for sid in ids:
                        job(engines, sid)
                    seconds.append((time.perf_counter() - started) / len(ids))
                    counts.statements -= before.statements
                    counts.commits -= before.commits
                moved += len(ids)
            finally:
                for engine in engines.values():
                    engine.close()
    return Figure(seconds, counts.commits / moved, counts.statements / moved)


def _resize_here(engines: dict[str, Engine], sid: str) -> None:
    api = engines["compute-1"]
    flavor = "m1.medium" if api.get_server(sid).doc["flavor"]["name"] == "m1.small" \
        else "m1.small"
    api.resize(sid, flavor)
    _settle(engines)
    api.act(sid, "confirm_resize")
    _settle(engines)


def _cold(engines: dict[str, Engine], sid: str) -> None:
    api = engines["compute-1"]
    api.act(sid, "migrate")
    _settle(engines)
    api.act(sid, "confirm_resize")
    _settle(engines)


def _live(engines: dict[str, Engine], sid: str) -> None:
    api = engines["compute-1"]
    api.act(sid, "live_migrate", block_migration="auto")
    _settle(engines)


def run(sizes: Sizes = FULL, *, log: Callable[[str], None] = print,
        backends: Sequence[str] = ("sqlite",)) -> str:
    log(f"moves: {sizes.servers} servers x {sizes.repetitions} repetitions on SQLite")
    base = _measure(_resize_here, sizes)
    rows = [("resize + confirm on its own host (baseline)", base)]
    for label, job in (("cold migration + confirm (two hosts)", _cold),
                       ("live migration (two hosts)", _live)):
        log(f"moves: {label}")
        rows.append((label, _measure(job, sizes)))
    base_ms = statistics.median(base.seconds) * 1000
    lines = [
        __doc__.strip().splitlines()[0],
        "",
        f"[sqlite] {sizes.servers} servers x {sizes.repetitions} repetitions; medians",
        f"{'move':<46} {'moves/s':>8} {'ms/move':>8} {'ratio':>6} {'commits':>8}"
        f" {'stmts':>7}",
    ]
    for label, figure in rows:
        ms = statistics.median(figure.seconds) * 1000
        lines.append(f"{label:<46} {1000 / ms:>8.0f} {ms:>8.2f} {ms / base_ms:>5.2f}x"
                     f" {figure.commits:>8.1f} {figure.statements:>7.1f}")
    lines.append("")
    lines.append("ratio: ms per move against the baseline's, in the same run (higher is"
                 " slower); commits and statements: per move, SQLite's traced connections")
    return "\n".join(lines)

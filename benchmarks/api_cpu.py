"""The CPU of one API request in this process, to compare two versions of the API code on a
shared machine: ``python -m benchmarks.api_cpu show|action|act [N]``.

An engine on a fresh SQLite database with a few ACTIVE servers, the app
(``create_app(engine)``, noauth) called directly with raw ASGI messages on one event loop
(no HTTP, as ``--suite api``'s "CPU per request in process" drives it), after 50 requests
of warm-up; then N requests of one kind:

- ``show``: ``GET /v2.1/servers/{id}``;
- ``action``: ``POST /v2.1/servers/{id}/action``, lock and unlock in turn;
- ``act``: the same commands through the engine (``engine.act``): ``action`` minus
  ``act`` is what the API's layers, its thread-pool hop and its checks cost a command.

Prints this process's CPU time (all threads) per request. Instructions do not move with
the machine's load: ``--instructions`` runs each kind under ``valgrind --tool=cachegrind
--cache-sim=no`` with N and 2N requests (N = 150 unless given) and prints the difference
of the two totals divided by N (the start-up and the warm-up cancel out), all threads,
user space: ``action`` minus ``act`` is the API's share of a command.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks import commands
from benchmarks.api import requester
from vmledger.adapters.simulator import Simulator
from vmledger.engine import Engine

SERVERS = 5
WARM_UP = 50
KINDS = ("show", "action", "act")


def run(kind: str, count: int, directory: Path) -> None:
    from vmledger.api import create_app

    engine = Engine(f"sqlite:///{directory / 'api.db'}", hypervisor=Simulator(seed=0),
                    allocation_ratios=commands.UNLIMITED)
    loop = asyncio.new_event_loop()
    try:
        ids = [engine.create_server(f"bench-{i}", commands.FLAVOR, commands.IMAGE).id
               for i in range(SERVERS)]
        engine.run_until_idle()
        server_id = ids[-1]
        request = requester(create_app(engine), loop)
        show = f"/v2.1/servers/{server_id}"
        bodies = (b'{"lock": null}', b'{"unlock": null}')
        calls: dict[str, Callable[[int], object]] = {
            "show": lambda i: request("GET", show, b"", 200),
            "action": lambda i: request("POST", show + "/action", bodies[i % 2], 202),
            "act": lambda i: engine.act(server_id, ("lock", "unlock")[i % 2],
                                        ctx=engine.context(request_id=f"req-bench-{i}")),
        }
        call = calls[kind]
        for i in range(WARM_UP):
            call(i)
        started = time.process_time()
        for i in range(WARM_UP, WARM_UP + count):
            call(i)
        cpu = time.process_time() - started
        print(f"{count} x {kind}: CPU {cpu * 1e6 / max(count, 1):.0f} µs/request")
    finally:
        loop.close()
        engine.close()


def _instructions(kind: str, count: int, directory: Path) -> int:
    """Instructions of a whole run of ``count`` requests of ``kind`` under cachegrind."""
    out = directory / f"cachegrind.{kind}.{count}"
    subprocess.run(["valgrind", "--tool=cachegrind", "--cache-sim=no",
                    f"--cachegrind-out-file={out}", sys.executable, "-m",
                    "benchmarks.api_cpu", kind, str(count)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=os.environ.copy())
    found = re.search(r"^summary:\s+(\d+)", out.read_text(), re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no summary in {out}")
    return int(found.group(1))


def instructions(count: int) -> None:
    """Instructions per request of each kind (see the module)."""
    per: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as directory:
        for kind in KINDS:
            once = _instructions(kind, count, Path(directory))
            twice = _instructions(kind, 2 * count, Path(directory))
            per[kind] = (twice - once) // count
            print(f"{kind:<7} {per[kind]:>10,} instructions/request")
    print(f"API's share of a command (action - act): {per['action'] - per['act']:,}")


def main(argv: list[str]) -> None:
    if argv and argv[0] == "--instructions":
        instructions(int(argv[1]) if len(argv) > 1 else 150)
        return
    if not argv or argv[0] not in KINDS:
        raise SystemExit(f"usage: python -m benchmarks.api_cpu {'|'.join(KINDS)} [N]")
    with tempfile.TemporaryDirectory() as directory:
        run(argv[0], int(argv[1]) if len(argv) > 1 else 300, Path(directory))


if __name__ == "__main__":
    main(sys.argv[1:])

"""The CPU of the command path in this process, to compare two versions of the code on
a shared machine: ``python -m benchmarks.cpu commands|actions [N [SERVERS]]``.

``commands``: the lifecycle of N servers (35 durable commands each) through the command
service, as ``--suite commands`` drives it, on a fresh SQLite database, after 10 servers
of warm-up. ``actions``: N rounds of a hard reboot of 50 servers through the engine
(request, host agent, outcome, read models caught up), after 2 rounds of warm-up;
``SERVERS`` other than 50 (1: every pass of the agent has one action, as a client's
reboot over HTTP has) shows what the agent's and the timer's passes cost when their
reads are not shared.
Prints this process's CPU time (user + system) per command or per action.

CPU time still moves with the machine's load (caches, frequency). Instructions do not:
run it under ``valgrind --tool=cachegrind --cache-sim=no`` at two sizes (commands 10
and 50, actions 1 and 5) and divide the difference of the two totals by the difference
in commands (1,400) or actions (200); the start-up and the warm-up cancel out.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks import commands
from vmledger.adapters.simulator import Simulator
from vmledger.engine import Engine

WARM_UP_SERVERS = 10
ACTION_SERVERS = 50
WARM_UP_ROUNDS = 2


def _measured(run: Callable[[], int], what: str) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.process_time()
    count = run()
    cpu = time.process_time() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(f"{count} {what}: CPU {cpu * 1e6 / count:.0f} µs/{what[:-1]} (user "
          f"{(after.ru_utime - before.ru_utime) * 1e6 / count:.0f}, system "
          f"{(after.ru_stime - before.ru_stime) * 1e6 / count:.0f})")


def durable_commands(directory: Path, servers: int) -> None:
    service = commands.make_service(f"sqlite:///{directory / 'c.db'}", commands.SHIPPED)
    commands.drive(service, WARM_UP_SERVERS)
    _measured(lambda: commands.drive(service, servers), "commands")


def complete_actions(directory: Path, rounds: int, servers: int = ACTION_SERVERS) -> None:
    engine = Engine(f"sqlite:///{directory / 'a.db'}", hypervisor=Simulator(seed=0),
                    allocation_ratios=commands.UNLIMITED)
    ids = [engine.create_server(f"bench-{i}", commands.FLAVOR, commands.IMAGE).id
           for i in range(servers)]
    engine.run_until_idle()

    def reboots(count: int) -> int:
        for _ in range(count):
            for server_id in ids:
                engine.act(server_id, "reboot", type="HARD")
            engine.run_until_idle()
        return count * len(ids)
    reboots(WARM_UP_ROUNDS)
    _measured(lambda: reboots(rounds), "actions")
    engine.close()


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in ("commands", "actions"):
        raise SystemExit("usage: python -m benchmarks.cpu commands|actions [N [SERVERS]]")
    with tempfile.TemporaryDirectory() as directory:
        if argv[0] == "commands":
            durable_commands(Path(directory), int(argv[1]) if len(argv) > 1 else 40)
        else:
            complete_actions(Path(directory), int(argv[1]) if len(argv) > 1 else 6,
                             int(argv[2]) if len(argv) > 2 else ACTION_SERVERS)


if __name__ == "__main__":
    main(sys.argv[1:])

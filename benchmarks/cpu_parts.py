"""Where a complete action's instructions go, part by part, measured with callgrind:
``python -m benchmarks.cpu_parts N [SERVERS]`` runs ``benchmarks.cpu actions N
[SERVERS]`` with each part below called through a C built-in of its own.

To callgrind every Python function is the interpreter's one C function, so a part of
the action cannot be told apart by name. Called through a distinct C built-in
(``functools.reduce``, ``itertools.starmap``…), its cost is that built-in's inclusive
cost, which callgrind reports. Run it at two sizes, then compare::

    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=a.out \\
        python -m benchmarks.cpu_parts 1
    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=b.out \\
        python -m benchmarks.cpu_parts 5
    python -m benchmarks.cpu_parts --report a.out b.out 200

which prints each part's instructions per action (the difference of the two runs over
the 200 actions between them; start-up and warm-up cancel out). ``PYTHONHASHSEED``
fixed: dictionary layouts otherwise move a run by up to 1 %. Wrapping adds a few
hundred instructions per call of a part, so compare parts, not the total, with
``benchmarks.cpu``'s figure. The parts may nest (a command's fold is inside its
command): see :data:`PARTS`.
"""

from __future__ import annotations

import contextvars
import functools
import itertools
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

#: part -> (the C function callgrind names, what is wrapped: (module, owner, names))
PARTS: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "the request (engine.act), with its fold": (
        "functools_reduce", "vmledger.engine.servers", "ServerFacade", ("act",)),
    "the agent's commands (decide, save, fold when not deferred)": (
        "starmap_next", "vmledger.domain.commands.outcomes", "OutcomeCommands",
        ("record",)),
    "folds in a command's transaction": (
        "accumulate_next", "vmledger.projections.command_fold", "CommandFold",
        ("fold_written",)),
    "catch-ups (the timer's folds the agent's deferred commands; idle ones)": (
        "dropwhile_next", "vmledger.projections.runner", "ViewUpdater", ("catch_up",)),
    "the host agent's reconcile of one action (its commands too)": (
        "takewhile_next", "vmledger.workers.agent", "HostAgent", ("reconcile",)),
    "the simulator": (
        "filterfalse_next", "vmledger.adapters.simulator", "Simulator",
        ("observe", "_mutate")),
    "loads of an aggregate": (
        "groupby_next", "vmledger.domain.service", "StoreRepository", ("get",)),
    "audit links": ("sys_call_tracing", "vmledger.audit.sqlite_recorder", "", ("_links",)),
    "events mapped to stored events": (
        "calliter_iternext", "eventsourcing.persistence", "Mapper", ("to_stored_event",)),
    "the passes' reads (actions in flight, due deadlines)": (
        "context_run", "vmledger.projections.server_queries", "ServerQueries",
        ("in_flight", "due_deadlines")),
}

_DONE = object()


def _through(builtin: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` called through the C built-in whose callgrind name is ``builtin``."""

    def call(*args: Any, **kwargs: Any) -> Any:
        box: list[Any] = []

        def run(*_: Any) -> Any:
            box.append(fn(*args, **kwargs))
            return _DONE

        if builtin == "functools_reduce":
            functools.reduce(run, (0, 0))
        elif builtin == "starmap_next":
            next(itertools.starmap(run, ((),)))
        elif builtin == "accumulate_next":
            list(itertools.accumulate((0, 0), run))
        elif builtin in ("dropwhile_next", "takewhile_next", "filterfalse_next"):
            make = {"dropwhile_next": itertools.dropwhile,
                    "takewhile_next": itertools.takewhile,
                    "filterfalse_next": itertools.filterfalse}[builtin]
            list(make(lambda _x: run() is not _DONE, (0,)))
        elif builtin == "groupby_next":
            next(itertools.groupby((0,), run))
        elif builtin == "sys_call_tracing":
            sys.call_tracing(run, ())
        elif builtin == "calliter_iternext":
            for _ in iter(run, _DONE):
                pass
        elif builtin == "context_run":
            contextvars.copy_context().run(run)
        else:
            raise ValueError(builtin)
        return box[0]

    return functools.wraps(fn)(call)


def wrap() -> None:
    """Route every part of :data:`PARTS` through its built-in."""
    for builtin, module_name, owner_name, names in PARTS.values():
        module = __import__(module_name, fromlist=["_"])
        owner = getattr(module, owner_name) if owner_name else module
        for name in names:
            setattr(owner, name, _through(builtin, getattr(owner, name)))


def report(first: str, second: str, actions: int) -> None:
    """Each part's instructions per action between two callgrind outputs."""
    totals = [_inclusive(path) for path in (first, second)]
    print(f"{'instructions per action':>24}  part")
    print(f"{(totals[1]['PROGRAM TOTALS'] - totals[0]['PROGRAM TOTALS']) / actions:>24,.0f}"
          "  all (with the wrapping's own cost)")
    for part, (builtin, *_) in PARTS.items():
        cost = (totals[1].get(builtin, 0) - totals[0].get(builtin, 0)) / actions
        print(f"{cost:>24,.0f}  {part}")


def _inclusive(path: str) -> dict[str, int]:
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", path],
                          check=True, capture_output=True, text=True).stdout
    found: dict[str, int] = {}
    for line in text.splitlines():
        match = re.match(r"\s*([\d,]+) (?:\([^)]*\) )?\s*(.*)$", line)
        if not match:
            continue
        cost, where = int(match.group(1).replace(",", "")), match.group(2)
        name = "PROGRAM TOTALS" if "PROGRAM TOTALS" in where else where.split(":")[-1].split(
            " ")[0].split("'")[0]
        found[name] = max(found.get(name, 0), cost)
    return found


def main(argv: list[str]) -> None:
    if argv[:1] == ["--report"] and len(argv) == 4:
        report(argv[1], argv[2], int(argv[3]))
        return
    wrap()
    from benchmarks import cpu
    cpu.main(["actions", *argv])


if __name__ == "__main__":
    main(sys.argv[1:])

"""``python -m benchmarks [--quick] [--backend sqlite|postgres|all] [--suite SUITE]``."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from benchmarks import commands


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Durable commands per second of vmledger's command service against a "
                    "raw-driver baseline, on SQLite and PostgreSQL.")
    parser.add_argument("--quick", action="store_true",
                        help="fewer servers: a smoke run of about a minute")
    parser.add_argument("--backend", choices=("sqlite", "postgres", "all"), default="all",
                        help="which backend to measure (default: all)")
    parser.add_argument("--servers", type=int, default=None,
                        help="servers per run (overrides the defaults for every backend)")
    parser.add_argument("--repetitions", type=int, default=None,
                        help="interleaved repetitions (default 3; medians are reported)")
    parser.add_argument("--no-variants", action="store_true",
                        help="measure only the shipped configuration")
    parser.add_argument("--no-profile", action="store_true",
                        help="skip the 'where the time goes' section")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument("--suite", choices=("commands", "audit", "hypervisors"),
                        default="commands",
                        help="commands (default); audit: verify throughput over a 1M-event "
                             "log and as-of latency; hypervisors: the engine on libvirt's "
                             "test driver vs the simulator, and real QEMU per operation")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = commands.QUICK if args.quick else commands.FULL
    if args.servers is not None:
        if args.servers < 1:
            raise SystemExit("--servers must be at least 1")
        sizes = commands.Sizes(args.servers, args.servers, sizes.repetitions,
                               min(sizes.profile_servers, args.servers))
    if args.repetitions is not None:
        if args.repetitions < 1:
            raise SystemExit("--repetitions must be at least 1")
        sizes = commands.Sizes(sizes.sqlite_servers, sizes.postgres_servers,
                               args.repetitions, sizes.profile_servers)
    if args.no_profile:
        sizes = commands.Sizes(sizes.sqlite_servers, sizes.postgres_servers,
                               sizes.repetitions, 0)
    backends = ("sqlite", "postgres") if args.backend == "all" else (args.backend,)

    def log(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    if args.suite in ("audit", "hypervisors"):
        from benchmarks import audit, hypervisors

        started = time.perf_counter()
        if args.suite == "audit":
            print(audit.run(backends, audit.QUICK if args.quick else audit.FULL, log=log))
        else:
            print(hypervisors.run(hypervisors.QUICK if args.quick else hypervisors.FULL,
                                  log=log))
        print(f"\ntotal time {time.perf_counter() - started:.0f} s")
        return 0
    print(commands.header_line(), flush=True)
    started = time.perf_counter()
    report = commands.run(backends, sizes, variants=not args.no_variants, log=log)
    print(report)
    print(f"\ntotal time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

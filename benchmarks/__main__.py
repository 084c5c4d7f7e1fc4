"""``python -m benchmarks [--suite commands|actions|api|projections|audit|hypervisors|scale|
moves|writers|all] [--quick] [--large] [--backend ...]``."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from benchmarks import commands

SUITES = ("commands", "actions", "api", "projections", "audit", "hypervisors", "scale",
          "moves", "writers")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="vmledger's benchmarks: durable commands per second against a raw-driver "
                    "baseline (commands), complete lifecycle actions against Nova's row pattern "
                    "(actions), the Compute API over HTTP (api), the read models' rebuild "
                    "throughput and live lag (projections), costs per fleet size (scale), "
                    "servers moving between hosts against a same-host resize (moves), "
                    "concurrent writers on PostgreSQL in process and over HTTP (writers).")
    parser.add_argument("--suite", choices=(*SUITES, "all"), default="all",
                        help="which benchmark to run (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes: a smoke run")
    parser.add_argument("--backend", choices=("sqlite", "postgres", "all"), default="all",
                        help="which backend to measure (commands, actions and projections; the api "
                             "suite runs on SQLite; default: all)")
    parser.add_argument("--servers", type=int, default=None,
                        help="commands suite: servers per run (overrides the defaults)")
    parser.add_argument("--repetitions", type=int, default=None,
                        help="commands suite: interleaved repetitions (default 3)")
    parser.add_argument("--no-variants", action="store_true",
                        help="commands suite: measure only the shipped configuration")
    parser.add_argument("--no-profile", action="store_true",
                        help="skip the 'where the time goes' sections")
    parser.add_argument("--large", action="store_true",
                        help="scale suite: a 100,000-server fleet too (minutes more)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser.parse_args(argv)


def _commands_sizes(args: argparse.Namespace) -> commands.Sizes:
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
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    suites = SUITES if args.suite == "all" else (args.suite,)
    backends = ("sqlite", "postgres") if args.backend == "all" else (args.backend,)

    def log(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    header = commands.header_line()
    if suites != ("commands",):
        header = header.replace("vmledger command benchmark", "vmledger benchmarks ("
                                + ", ".join(suites) + ")")
    print(header, flush=True)
    started = time.perf_counter()
    for suite in suites:
        began = time.perf_counter()
        if suite == "commands":
            report = commands.run(backends, _commands_sizes(args),
                                  variants=not args.no_variants, log=log)
        elif suite == "actions":
            from benchmarks import actions

            report = actions.run(backends, actions.QUICK if args.quick else actions.FULL,
                                 log=log)
        elif suite == "api":
            from benchmarks import api

            api_sizes = api.QUICK if args.quick else api.FULL
            if args.no_profile:
                api_sizes = api.Sizes(**{**vars(api_sizes), "profile": False})
            report = api.run(api_sizes, log=log)
        elif suite == "audit":
            from benchmarks import audit

            report = audit.run(backends, audit.QUICK if args.quick else audit.FULL, log=log)
        elif suite == "scale":
            from benchmarks import scale

            scale_sizes = (scale.QUICK if args.quick else scale.LARGE if args.large
                           else scale.FULL)
            report = scale.run(backends if args.backend != "all" else ("sqlite",),
                               scale_sizes, log=log)
        elif suite == "moves":
            from benchmarks import moves

            report = moves.run(moves.QUICK if args.quick else moves.FULL, log=log)
        elif suite == "writers":
            from benchmarks import writers

            report = writers.run(writers.QUICK if args.quick else writers.FULL, log=log)
        elif suite == "hypervisors":
            from benchmarks import hypervisors

            report = hypervisors.run(hypervisors.QUICK if args.quick else hypervisors.FULL,
                                     log=log)
        else:
            from benchmarks import projections

            sizes = projections.QUICK if args.quick else projections.FULL
            if args.no_profile:
                sizes = projections.Sizes(**{**vars(sizes), "profile": False})
            report = projections.run(backends, sizes, log=log)
        print(f"\n=== {suite} ({time.perf_counter() - began:.0f} s) ===", flush=True)
        print(report, flush=True)
    print(f"\ntotal time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

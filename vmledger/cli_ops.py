"""Operational subcommands of ``vmledger``: the standalone host agent, rebuilding,
upgrading and inspecting the read models, and the audit commands (verify, history, as-of,
request, explain)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from vmledger import cli_support, logs
from vmledger.domain.errors import VmledgerError
from vmledger.persistence import DEFAULT_URL, redact

if TYPE_CHECKING:
    from vmledger.engine import AllocationRatios

log = logging.getLogger("vmledger.agent")


def _above_zero(text: str, what: str, *, finite: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
    if not value > 0 or (finite and value == float("inf")):
        raise argparse.ArgumentTypeError(f"must be above 0: {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    return _above_zero(text, "a number of seconds", finite=True)


def _ratio(text: str) -> float:
    return _above_zero(text, "a ratio", finite=False)


def _megabytes(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of MB: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text!r}")
    return value


def allocation_ratios_from(args: argparse.Namespace) -> AllocationRatios:
    """The hosts' allocation ratios and reserved memory the command line gives."""
    from vmledger.engine import AllocationRatios

    return AllocationRatios(cpu=args.cpu_allocation_ratio, ram=args.ram_allocation_ratio,
                            disk=args.disk_allocation_ratio,
                            reserved_host_memory_mb=args.reserved_host_memory_mb)


def add_log_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="info",
                        choices=("critical", "error", "warning", "info", "debug"),
                        help="log level (default info)")
    parser.add_argument("--log-format", default="text", choices=("text", "json"),
                        help="text, or one JSON object per line; both carry the request "
                             "id of the API call (default text)")


def _metrics_port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}")
    return value


def add_hypervisor_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hypervisor", default=None, metavar="NAME_OR_URI",
                        help="simulator (default: its guests kept beside the database so "
                             "that a restart finds them, in FILE.db.HOST.simulator.json, or "
                             "./vmledger-DBNAME.HOST.simulator.json for PostgreSQL), "
                             "simulator:memory (guests forgotten on exit), "
                             "simulator:///state.json, or a libvirt URI "
                             "(qemu:///system, qemu+ssh://host/system, test:///default)")
    parser.add_argument("--image-dir", metavar="DIR",
                        help="libvirt: base qcow2 files of the catalog's images "
                             "(<image name>.qcow2)")
    parser.add_argument("--disk-dir", metavar="DIR",
                        help="libvirt: where server disks and custom images go "
                             "(default ./vmledger-disks; another host's agent must reach "
                             "it at the same path for a cold migration here)")
    parser.add_argument("--migration-peer-uri", metavar="URI",
                        help="libvirt: how other hosts' libvirtd reach this host's for a"
                             " migration (e.g. qemu+tcp://compute-2/system; default: the"
                             " hypervisor URI, over its unix socket when local)")
    parser.add_argument("--migration-uri", metavar="URI",
                        help="libvirt: where the guest's memory is sent in a live"
                             " migration (e.g. tcp://10.0.0.2; default: libvirt's choice"
                             " from the host name)")
    parser.add_argument("--service-down-time", type=_positive_seconds, default=60.0,
                        metavar="SECONDS",
                        help="a host whose agent has not reported for this long is down: "
                             "it takes no new servers and its servers may be evacuated; "
                             "agents report every 10 s or a quarter of it (default 60, as "
                             "Nova; give every process the same)")
    for name, default, what in (("cpu", 4.0, "vCPUs"), ("ram", 1.0, "memory"),
                                ("disk", 1.0, "disk")):
        parser.add_argument(f"--{name}-allocation-ratio", type=_ratio, default=default,
                            metavar="RATIO",
                            help=f"a host takes new servers while their flavors' {what} "
                                 f"fit in its capacity times this (default {default}, "
                                 "Nova's initial value; 'inf': no limit)")
    parser.add_argument("--reserved-host-memory-mb", type=_megabytes, default=512,
                        metavar="MB", help="memory of each host kept for itself, not for "
                                           "servers (default 512, as Nova)")
    parser.add_argument("--sync-interval", type=float, default=60.0, metavar="SECONDS",
                        help="how often the power-state sync compares guests with the "
                             "record (default 60)")


SERVER_HELP = "the server's id, or its name when no other has it"


def add_subcommands(sub: Any) -> None:
    agent = sub.add_parser("agent", help="run a host agent (and timer) for one hypervisor host")
    agent.add_argument("--host", required=True, metavar="NAME",
                       help="the compute host this agent enacts transitions for")
    agent.add_argument("--db", default=DEFAULT_URL, metavar="URL",
                       help="database shared with the API processes (postgresql://...)")
    agent.add_argument("--confirm-window", type=float, default=86400.0, metavar="SECONDS")
    add_log_options(agent)
    agent.add_argument("--metrics-port", type=_metrics_port, default=None, metavar="PORT",
                       help="serve the agent's Prometheus metrics on http://BIND:PORT/metrics "
                            "(default: none)")
    agent.add_argument("--metrics-bind", default="127.0.0.1", metavar="ADDRESS",
                       help="address the metrics port listens on (default 127.0.0.1)")
    add_hypervisor_options(agent)

    projections = sub.add_parser("projections", help="manage the read models")
    psub = projections.add_subparsers(dest="projections_command", required=True)
    rebuild = psub.add_parser("rebuild", help="drop the read models and fold the log again")
    rebuild.add_argument("--db", default=DEFAULT_URL, metavar="URL")
    upgrade = psub.add_parser(
        "upgrade", help="fold this release's read-model layout beside the serving one, "
                        "switch to it once caught up and drop the old tables")
    upgrade.add_argument("--db", default=DEFAULT_URL, metavar="URL")
    upgrade.add_argument("--grace", type=float, default=5.0, metavar="SECONDS",
                         help="wait this long after the switch before dropping the old "
                              "tables, for other processes to move (default 5)")
    status = psub.add_parser("status", help="the read-model layouts present, which one "
                                            "serves, their positions and lag")
    status.add_argument("--db", default=DEFAULT_URL, metavar="URL")
    status.add_argument("--json", action="store_true")

    audit = sub.add_parser("audit", help="read and verify the audit trail")
    asub = audit.add_subparsers(dest="audit_command", required=True)
    verify = asub.add_parser("verify", help="check the tamper-evidence chain (exit 1 if broken)")
    verify.add_argument("--db", default=DEFAULT_URL, metavar="URL")
    verify.add_argument("--anchor", metavar="NID:HASH",
                        help="a head recorded earlier (detects a truncated log)")
    verify.add_argument("--json", action="store_true")
    hist = asub.add_parser("history", help="a server's events with their log positions")
    hist.add_argument("server_id", metavar="SERVER", help=SERVER_HELP)
    hist.add_argument("--db", default=DEFAULT_URL, metavar="URL")
    hist.add_argument("--after", type=int, default=0, metavar="POSITION")
    hist.add_argument("--limit", type=int, default=100)
    hist.add_argument("--json", action="store_true")
    asof = asub.add_parser("as-of", help="a server's state as of a time or a version")
    asof.add_argument("server_id", metavar="SERVER", help=SERVER_HELP)
    asof.add_argument("--db", default=DEFAULT_URL, metavar="URL")
    when = asof.add_mutually_exclusive_group(required=True)
    when.add_argument("--at", metavar="ISO_TIME")
    when.add_argument("--version", type=int)
    request = asub.add_parser("request", help="the causal chain of one request id")
    request.add_argument("request_id")
    request.add_argument("--db", default=DEFAULT_URL, metavar="URL")
    request.add_argument("--json", action="store_true")
    explain = asub.add_parser("explain", help="why a server is in its current status")
    explain.add_argument("server_id", metavar="SERVER", help=SERVER_HELP)
    explain.add_argument("--db", default=DEFAULT_URL, metavar="URL")


def open_hypervisor_from(args: argparse.Namespace, *, host: str) -> Any:
    """The driver ``--hypervisor`` selects for ``host`` (a one-line error otherwise)."""
    return cli_support.open_hypervisor(args.hypervisor, args.db, host,
                                       image_dir=args.image_dir, disk_dir=args.disk_dir,
                                       peer_uri=getattr(args, "migration_peer_uri", None),
                                       migrate_uri=getattr(args, "migration_uri", None))


def hypervisor_label(args: argparse.Namespace, host: str) -> str:
    """The hypervisor as the start-up line names it (the simulator with its file)."""
    return cli_support.hypervisor_uri(args.hypervisor, args.db, host)


def run(args: argparse.Namespace) -> int:
    """The agent, or a command that reads an existing database (it never creates one)."""
    if args.command == "agent":
        return _agent(args)
    cli_support.require_database(args.db)
    engine = cli_support.open_engine(args.db)
    try:
        if args.command == "projections":
            if args.projections_command == "upgrade":
                return _upgrade(engine, args.grace)
            if args.projections_command == "status":
                return _status(engine, args.json)
            return _rebuild(engine)
        return _audit(engine, args)
    except VmledgerError as e:
        print(f"vmledger: {e.message}", file=sys.stderr)
        return 1
    finally:
        engine.close()


def _agent(args: argparse.Namespace) -> int:
    cli_support.check_database_url(args.db)
    logs.configure(args.log_level, args.log_format)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    engine = cli_support.open_engine(
        args.db, host=args.host, hypervisor=open_hypervisor_from(args, host=args.host),
        confirm_window=timedelta(seconds=args.confirm_window),
        service_down_time=timedelta(seconds=args.service_down_time),
        allocation_ratios=allocation_ratios_from(args))
    log.info("vmledger agent for host %s on %s (database %s)", args.host,
             hypervisor_label(args, args.host), redact(args.db))
    metrics_server = None
    try:
        if args.metrics_port is not None:
            metrics_server = _serve_metrics(engine, args.metrics_bind, args.metrics_port)
        engine.run_in_background(0.2, sync_interval=args.sync_interval)
        stop.wait()
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
        engine.close()
    return 0


def _serve_metrics(engine: Any, bind: str, port: int) -> Any:
    """The agent's metrics (:class:`vmledger.api.metrics.EngineMetrics`) served on
    ``http://BIND:PORT/metrics`` from a thread (its server, to shut down); a one-line
    error when the port cannot be bound."""
    from prometheus_client import start_http_server

    from vmledger.api.metrics import EngineMetrics

    metrics = EngineMetrics(engine)
    try:
        server, _ = start_http_server(port, addr=bind, registry=metrics.registry)
    except OSError as e:
        reason = e.strerror if isinstance(e.strerror, str) else str(e)
        raise cli_support.CliError(f"cannot serve metrics on {bind}:{port}: {reason}") from None
    log.info("metrics on http://%s:%d/metrics", bind, port)
    return server


def _rebuild(engine: Any) -> int:
    total = engine.service.recorder.max_notification_id() or 0
    started = time.perf_counter()
    width = 40

    def progress(read: int, position: int) -> None:
        done = min(1.0, position / total) if total else 1.0
        bar = "#" * int(done * width)
        rate = read / max(time.perf_counter() - started, 1e-9)
        print(f"\r[{bar:<{width}}] {position:>10,}/{total:,} events  {rate:,.0f}/s",
              end="", file=sys.stderr, flush=True)

    read = engine.updater.rebuild(progress)
    seconds = time.perf_counter() - started
    print(file=sys.stderr)
    print(f"rebuilt the read models from {read:,} events in {seconds:.2f} s "
          f"({read / max(seconds, 1e-9):,.0f} events/s); {engine.view.count():,} servers")
    return 0


def _upgrade(engine: Any, grace: float) -> int:
    target = engine.view.target.name
    serving = engine.view.serving.name
    if serving == target and not engine.updater.upgrade_needed():
        print(f"the read models' layout {target} serves already; nothing to do")
        return 0
    total = engine.service.recorder.max_notification_id() or 0
    started = time.perf_counter()

    def progress(read: int, position: int) -> None:
        print(f"\r{target}: {position:>10,}/{total:,} events "
              f"({read / max(time.perf_counter() - started, 1e-9):,.0f}/s)",
              end="", file=sys.stderr, flush=True)

    report = engine.updater.upgrade(progress, grace=grace)
    print(file=sys.stderr)
    if report.to_switch is not None:
        print(f"folded {report.folded:,} events into {target} beside {serving}; switched "
              f"after {report.to_switch:.2f} s")
    for name in report.dropped:
        print(f"dropped the tables of {name}")
    return 0


def _status(engine: Any, as_json: bool) -> int:
    from vmledger.projections import layouts

    head = engine.service.recorder.max_notification_id() or 0
    found = [{"name": s.name, "state": s.state, "serving": s.state == layouts.SERVING,
              "position": s.position, "lag": max(head - s.position, 0),
              "started_at": s.started_at, "switched_at": s.switched_at}
             for s in layouts.states(engine.view)]
    if as_json:
        print(json.dumps({"release": engine.view.target.name, "head": head,
                          "layouts": found}))
        return 0
    print(f"log head: {head:,}; this release's layout: {engine.view.target.name}")
    for item in found:
        print(f"{item['name']:<24} {item['state']:<9} position {item['position']:>12,}"
              f"  lag {item['lag']:>10,}")
    return 0


def _audit(engine: Any, args: argparse.Namespace) -> int:
    command = args.audit_command
    if command == "verify":
        anchor = None
        if args.anchor:
            nid, _, digest = args.anchor.partition(":")
            if not nid.isdigit() or not digest:
                print("vmledger: --anchor is NOTIFICATION_ID:HASH", file=sys.stderr)
                return 2
            anchor = (int(nid), digest)
        report = engine.verify(anchor=anchor)
        if args.json:
            print(json.dumps({"ok": report.ok, "events_checked": report.events_checked,
                              "head": [report.head_notification_id, report.head_hash],
                              "breaks": [vars(b) for b in report.breaks]}, default=str))
        else:
            print("\n".join(report.lines()))
        return 0 if report.ok else 1
    if command == "request":
        entries = engine.causal_chain(args.request_id)
        if not entries:
            print(f"vmledger: no events for request {args.request_id}", file=sys.stderr)
            return 1
        for entry in entries:
            print(json.dumps(entry.as_dict(), default=str) if args.json else entry)
        return 0
    server_id = cli_support.resolve_server(engine, args.server_id)
    if command == "history":
        page = engine.history_page(server_id, after=args.after, limit=args.limit)
        for entry in page.entries:
            print(json.dumps(entry.as_dict(), default=str) if args.json else entry)
        if page.next_after is not None and not args.json:
            print(f"(more: --after {page.next_after})")
        return 0
    if command == "as-of":
        at = None
        if args.at:
            try:
                at = datetime.fromisoformat(args.at.replace("Z", "+00:00"))
            except ValueError:
                print(f"vmledger: not an ISO 8601 time: {args.at}", file=sys.stderr)
                return 2
        server = engine.server_as_of(server_id, at=at, version=args.version)
        state = {k: v for k, v in vars(server).items() if not k.startswith("_")}
        state.update(id=str(server.id), version=server.version, status=server.status)
        print(json.dumps(state, default=str, indent=2, sort_keys=True))
        return 0
    for line in engine.explain(server_id):
        print(line)
    return 0

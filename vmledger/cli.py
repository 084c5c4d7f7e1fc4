"""The ``vmledger`` command: serve the Compute API, or print a server's history.

``vmledger serve`` runs the engine (host agent and timer in a background thread, unless
``--no-agent``) behind the OpenStack Compute API v2.1 on ``http://BIND:PORT/v2.1``, with
callers identified by ``--auth noauth|token|keystone`` (``--token
TOKEN:USER:PROJECT:ROLES`` and ``--user NAME:PASSWORD:PROJECT:ROLES``, both repeatable);
``vmledger history SERVER`` prints every event of one server (named by id or name),
oldest first. Start-up failures are one line on stderr with an exit code
(:mod:`vmledger.cli_support`). Every flag of ``serve`` and ``agent`` may also come from a
``VMLEDGER_*`` variable or a TOML file, and ``vmledger config show`` prints what is in
effect (:mod:`vmledger.cli_config`).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import vmledger
from vmledger import cli_config, cli_ops, cli_support, logs
from vmledger.cli_support import CliError
from vmledger.domain.errors import VmledgerError
from vmledger.persistence import DEFAULT_URL, redact

if TYPE_CHECKING:
    from vmledger.api.auth import AuthSettings

log = logging.getLogger("vmledger")

#: the values of ``serve --auth`` (as :data:`vmledger.api.auth.AUTH_MODES`)
AUTH_MODES = ("noauth", "token", "keystone")


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None


def _non_negative_seconds(text: str) -> float:
    value = _seconds(text)
    if value < 0:
        raise argparse.ArgumentTypeError("a number of seconds cannot be negative (0 turns "
                                         "the feature off)")
    return value


def _offload_time(text: str) -> float:
    value = _seconds(text)
    if value < 0 and value != -1:
        raise argparse.ArgumentTypeError("the shelved offload time is -1 (never), 0 (at "
                                         "once) or a number of seconds")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmledger",
        description="Event-sourced VM lifecycle engine speaking the OpenStack Compute API.")
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {vmledger.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="serve the Compute API v2.1 over HTTP")
    serve.add_argument("--db", default=DEFAULT_URL, metavar="URL",
                       help="database: sqlite:///file.db, memory or postgresql://... "
                            f"(default {DEFAULT_URL})")
    serve.add_argument("--host-name", default="compute-1", metavar="NAME",
                       help="the compute host servers run on (default compute-1)")
    serve.add_argument("--no-agent", action="store_true",
                       help="serve the API only: no host agent or timer in this process "
                            "(run a `vmledger agent --host NAME` for each host); "
                            "--host-name and the hypervisor flags are then unused")
    serve.add_argument("--bind", default="127.0.0.1", metavar="ADDRESS",
                       help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8774,
                       help="port to listen on (default 8774)")
    serve.add_argument("--confirm-window", type=_non_negative_seconds, default=86400.0,
                       metavar="SECONDS",
                       help="auto-confirm resizes after this long; 0 disables "
                            "(default 86400)")
    serve.add_argument("--shelved-offload-time", type=_offload_time, default=0.0,
                       metavar="SECONDS",
                       help="remove a shelved server's guest from the hypervisor this long "
                            "after the shelve; 0 at once (default, as Nova), -1 never "
                            "(only shelveOffload)")
    serve.add_argument("--reclaim-instance-interval", type=_non_negative_seconds,
                       default=0.0, metavar="SECONDS",
                       help="above 0, a delete only powers the server off (SOFT_DELETED: "
                            "restore or forceDelete) and it is deleted after this long; "
                            "0 (default, as Nova) deletes at once")
    serve.add_argument("--no-resize-to-same-host", dest="allow_resize_to_same_host",
                       action="store_false", default=True,
                       help="a resize always goes to another host (Nova's"
                            " allow_resize_to_same_host = false); by default it stays on"
                            " the server's own host when that host has room")
    serve.add_argument("--auth", choices=AUTH_MODES, default="noauth",
                       help="how callers are identified: noauth (default: anyone, as "
                            "admin), token (fixed --token values) or keystone (also a "
                            "minimal Keystone v3 at /identity/v3 for --user logins)")
    serve.add_argument("--token", action="append", default=[],
                       metavar="TOKEN:USER:PROJECT:ROLES",
                       help="a fixed token and who it stands for (roles comma-separated; "
                            "'admin' makes an administrator); repeatable")
    serve.add_argument("--user", action="append", default=[],
                       metavar="NAME:PASSWORD:PROJECT:ROLES",
                       help="a user who can log in at /identity/v3 (--auth keystone); "
                            "repeatable")
    serve.add_argument("--token-file", action="append", default=[], metavar="FILE",
                       help="--token values read from a file, one per line ('#' starts "
                            "a comment): kept out of the process list; repeatable")
    serve.add_argument("--user-file", action="append", default=[], metavar="FILE",
                       help="--user values read from a file, one per line: passwords "
                            "kept out of the process list; repeatable")
    cli_ops.add_log_options(serve)
    cli_ops.add_hypervisor_options(serve)

    history = sub.add_parser("history", help="print every event of one server")
    history.add_argument("server_id", metavar="SERVER",
                         help="the server's id, or its name when no other has it")
    history.add_argument("--db", default=DEFAULT_URL, metavar="URL",
                         help=f"database URL (default {DEFAULT_URL})")
    cli_ops.add_subcommands(sub)
    cli_config.install(parser)  # settings from the environment and a file too
    return parser


def _auth_settings(parser: argparse.ArgumentParser, args: argparse.Namespace
                   ) -> AuthSettings:
    """The serve command's auth settings; a usage error (exit 2) when they do not fit."""
    from vmledger.api.auth import AuthSettings

    try:
        tokens = [*args.token, *_specs_from(args.token_file)]
        users = [*args.user, *_specs_from(args.user_file)]
        return AuthSettings.build(args.auth, tokens=tokens, users=users)
    except (OSError, ValueError) as exc:
        parser.error(str(exc))


def _specs_from(paths: list[str]) -> list[str]:
    """The non-empty, non-comment lines of each file, stripped."""
    specs: list[str] = []
    for path in paths:
        with open(path, encoding="utf-8") as lines:
            specs += [text for text in (line.strip() for line in lines)
                      if text and not text.startswith("#")]
        mode = os.stat(path).st_mode
        if mode & 0o077:
            print(f"vmledger: warning: {path} holds secrets and other users may read it "
                  f"(mode {mode & 0o777:o}; chmod 600 it)", file=sys.stderr)
    return specs


def listen(address: str, port: int) -> socket.socket:
    """The API's listening socket (a one-line error when the port is taken)."""
    return cli_support.bind(address, port)


def run_http(app: Any, sock: socket.socket, *, host: str, port: int, log_level: str) -> None:
    """Serve ``app`` on the socket bound already, until SIGINT or SIGTERM."""
    from vmledger.cli_http import http_server  # here: other commands serve nothing

    http_server(app, host=host, port=port, log_level=log_level).run(sockets=[sock])


def serve(args: argparse.Namespace, auth: AuthSettings | str = "noauth") -> int:
    from vmledger.api.app import create_app

    cli_support.check_database_url(args.db)
    logs.configure(args.log_level, args.log_format)
    sock = listen(args.bind, args.port)  # before anything says it serves there
    try:
        hypervisor = (None if args.no_agent  # no guest of its own: none is opened
                      else cli_ops.open_hypervisor_from(args, host=args.host_name))
        engine = cli_support.open_engine(
            args.db, host=args.host_name,
            confirm_window=timedelta(seconds=args.confirm_window),
            shelved_offload_time=(None if args.shelved_offload_time == -1 else
                                  timedelta(seconds=args.shelved_offload_time)),
            reclaim_interval=timedelta(seconds=args.reclaim_instance_interval),
            allow_resize_to_same_host=args.allow_resize_to_same_host,
            hypervisor=hypervisor,
            service_down_time=timedelta(seconds=args.service_down_time),
            allocation_ratios=cli_ops.allocation_ratios_from(args),
            agent=not args.no_agent)
    except BaseException:
        sock.close()
        raise
    try:
        engine.run_in_background(0.2, sync_interval=args.sync_interval)
        app = create_app(engine, auth=auth)
        if args.no_agent:
            log.info("serving the Compute API on http://%s:%d/v2.1 (database %s, no host "
                     "agent, auth %s)", args.bind, sock.getsockname()[1], redact(args.db),
                     args.auth)
        else:
            log.info("serving the Compute API on http://%s:%d/v2.1 (database %s, host %s, "
                     "hypervisor %s, auth %s)", args.bind, sock.getsockname()[1],
                     redact(args.db), args.host_name,
                     cli_ops.hypervisor_label(args, args.host_name), args.auth)
        run_http(app, sock, host=args.bind, port=args.port, log_level=args.log_level)
    finally:
        sock.close()
        engine.close()
    return 0


def history(args: argparse.Namespace) -> int:
    cli_support.require_database(args.db)
    engine = cli_support.open_engine(args.db)
    try:
        entries = engine.history(cli_support.resolve_server(engine, args.server_id))
    except VmledgerError as exc:
        print(f"vmledger: {exc.message}", file=sys.stderr)
        return 1
    finally:
        engine.close()
    for entry in entries:
        print(entry)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:  # a bare ``vmledger``: what it can do, not only a usage line
        parser.print_help(sys.stderr)
        raise SystemExit(cli_support.USAGE)
    args = parser.parse_args(argv)
    try:
        cli_config.apply(parser, args)
        if args.command == "config":
            return cli_config.show(parser, args)
        if args.command == "serve":
            return serve(args, _auth_settings(parser, args))
        if args.command == "history":
            return history(args)
        return cli_ops.run(args)
    except CliError as exc:
        return cli_support.fail(exc)


if __name__ == "__main__":  # pragma: no cover - python -m vmledger.cli
    sys.exit(main())

"""What the ``vmledger`` commands share at start-up: one-line errors with exit codes,
opening a database without creating one, the default simulator beside the database,
binding the API port before anything says it is served, and naming a server by name
or id.

Exit codes: 2 for what the command line got wrong (a bad ``--db``, a database without
a vmledger log for a command that only reads, a server name that is ambiguous), 1 for
what failed while starting (a database that cannot be opened, a port taken).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from vmledger.domain.lifecycle import DELETED
from vmledger.persistence import environment, redact

if TYPE_CHECKING:
    from vmledger.engine import Engine

log = logging.getLogger("vmledger.cli")

T = TypeVar("T")

#: the exit code of a usage error (as argparse's)
USAGE = 2
#: the exit code of a failure to start
FAILED = 1

#: ``--hypervisor`` values meaning the simulator with its guests in a file beside the
#: database (the default), and the one meaning a simulator that forgets them on exit
SIMULATOR_NAMES = ("simulator", "sim")
SIMULATOR_MEMORY = "simulator:memory"


class CliError(Exception):
    """A failure the command reports as one line on stderr, exiting with ``code``."""

    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def fail(error: CliError) -> int:
    """Print the error's line and return its exit code."""
    print(f"vmledger: {error.message}", file=sys.stderr)
    return error.code


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].strip()


def check_database_url(url: str) -> None:
    """A usage error (exit 2) unless ``url`` names a database vmledger can use."""
    try:
        environment(url)
    except ValueError as exc:
        hint = ""
        if "://" not in url:
            hint = f" (a file? --db sqlite:///{url})"
        raise CliError(f"bad --db: {exc}{hint}", USAGE) from None


def sqlite_path(url: str) -> str | None:
    """The file of a SQLite database URL; None for ``memory`` and other databases."""
    env = environment(url)
    if env.get("PERSISTENCE_MODULE") != "eventsourcing.sqlite":
        return None
    name = env["SQLITE_DBNAME"]
    return None if name.startswith("file:") else name


def require_database(url: str) -> None:
    """For the commands that only read: a usage error (exit 2) when ``url`` holds no
    vmledger event log (a SQLite file that does not exist, a PostgreSQL database without
    the tables, ``memory``), so that nothing is created and a verify never passes on an
    empty log it made itself."""
    check_database_url(url)
    env = environment(url)
    if env.get("PERSISTENCE_MODULE") == "eventsourcing.postgres":
        _require_postgres_log(url, env)
        return
    path = sqlite_path(url)
    if path is None:  # a new, empty in-process database
        raise CliError("a memory database holds nothing to read: give the --db of a "
                       "running or stopped vmledger", USAGE)
    if not Path(path).is_file():
        raise CliError(f"no database at {path}", USAGE)
    try:
        conn = sqlite3.connect(f"file:{quote(os.path.abspath(path))}?mode=ro", uri=True)
        try:
            found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                                 "name = 'stored_events'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise CliError(f"cannot read {path}: {_first_line(exc)}", USAGE) from None
    if found is None:
        raise CliError(f"{path} is not a vmledger database (no event log)", USAGE)


def _require_postgres_log(url: str, env: dict[str, str]) -> None:
    """A usage error when the PostgreSQL database holds no vmledger event log."""
    import psycopg

    table = f"{env.get('POSTGRES_SCHEMA') or 'public'}.vmledger_events"
    try:
        with psycopg.connect(
                dbname=env["POSTGRES_DBNAME"], host=env["POSTGRES_HOST"],
                port=int(env["POSTGRES_PORT"]), user=env["POSTGRES_USER"],
                password=env.get("POSTGRES_PASSWORD") or None,
                connect_timeout=int(float(env.get("POSTGRES_CONNECT_TIMEOUT", "10")))
        ) as conn:
            row = conn.execute("SELECT to_regclass(%s)", [table]).fetchone()
    except psycopg.Error as exc:
        raise CliError(f"cannot open the database {redact(url)}: {_first_line(exc)}"
                       ) from None
    if row is None or row[0] is None:
        raise CliError(f"{redact(url)} is not a vmledger database (no event log)", USAGE)


def starting(what: str, url: str, action: Callable[[], T]) -> T:
    """``action()``, any exception from it a one-line :class:`CliError` (the traceback
    only in the debug log): the start-up failures of a database or a hypervisor."""
    try:
        return action()
    except CliError:
        raise
    except Exception as exc:
        log.debug("%s failed", what, exc_info=True)
        raise CliError(f"cannot open {what} {redact(url)}: {_first_line(exc)}") from None


def open_engine(url: str, **options: Any) -> Engine:
    """An engine on ``url``; a failure to open the database is one line (exit 1)."""
    from vmledger.engine import Engine

    check_database_url(url)
    return starting("the database", url, lambda: Engine(url, **options))


def simulator_state_path(db_url: str, host: str) -> str | None:
    """Where the default simulator keeps the guests of ``host``: beside a SQLite
    database (``vmledger.db`` → ``vmledger.db.compute-1.simulator.json``), in the working
    directory for PostgreSQL, named for the database (``vmledger-DBNAME.compute-1
    .simulator.json``), and nowhere for a ``memory`` database (which forgets its records
    too)."""
    env = environment(db_url)
    if env.get("PERSISTENCE_MODULE") == "eventsourcing.sqlite":
        path = sqlite_path(db_url)
        if path is None:
            return None
        return os.path.abspath(f"{path}.{_file_part(host)}.simulator.json")
    database = _file_part(env["POSTGRES_DBNAME"])
    return os.path.abspath(f"vmledger-{database}.{_file_part(host)}.simulator.json")


def _file_part(name: str) -> str:
    """``name`` as a piece of a file name (no directory separators)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def hypervisor_uri(name: str | None, db_url: str, host: str) -> str:
    """What ``--hypervisor`` selects, with the default simulator made explicit: its
    state file (:func:`simulator_state_path`) or ``simulator:memory``."""
    if name is not None and name not in SIMULATOR_NAMES:
        return name
    path = simulator_state_path(db_url, host)
    return SIMULATOR_MEMORY if path is None else f"simulator://{path}"


def open_hypervisor(name: str | None, db_url: str, host: str, *,
                    image_dir: str | None = None, disk_dir: str | None = None,
                    peer_uri: str | None = None, migrate_uri: str | None = None) -> Any:
    """The hypervisor driver for ``--hypervisor``; a failure is one line (exit 1, or 2
    for a name that is not a driver)."""
    from vmledger.adapters.drivers import open_hypervisor as open_driver

    uri = hypervisor_uri(name, db_url, host)
    try:
        return starting("the hypervisor", uri,
                        lambda: open_driver(uri, image_dir=image_dir, disk_dir=disk_dir,
                                            peer_uri=peer_uri, migrate_uri=migrate_uri))
    except CliError as exc:
        if "unknown hypervisor" in exc.message:
            exc.code = USAGE
        raise


def bind(address: str, port: int) -> socket.socket:
    """A listening socket on ``address:port``, made as uvicorn makes its own, or a
    one-line error when the port is taken or the address is not this machine's."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets that say so, and without
    # it every answer on a keep-alive connection waits 40 ms for a delayed ACK (Nagle)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        reason = exc.strerror if isinstance(exc.strerror, str) else _first_line(exc)
        raise CliError(f"cannot listen on {address}:{port}: {reason}") from None
    sock.set_inheritable(True)
    return sock


def resolve_server(engine: Engine, name_or_id: str) -> str:
    """The id of the server named ``name_or_id`` (an id, or a unique name), as the
    openstack CLI finds one: an id first, then the servers of that exact name — the
    live ones, else the deleted ones. Several of the same name is a usage error."""
    engine.updater.catch_up()
    if engine.view.get(name_or_id) is not None:
        return name_or_id
    # the view's columns, not its documents: no server is decoded to find a name
    named = [row for row in engine.server_sort_columns(deleted="both")
             if row["name"] == name_or_id]
    live = [row for row in named if row["vm_state"] != DELETED]
    candidates = live or named
    if len(candidates) > 1:
        ids = ", ".join(str(row["id"]) for row in candidates)
        raise CliError(f"more than one server is named {name_or_id!r} ({ids}): give an id",
                       USAGE)
    # none: the command's own lookup says the server could not be found
    return str(candidates[0]["id"]) if candidates else name_or_id

"""A throwaway PostgreSQL cluster for tests, started from the machine's binaries.

Usage::

    reason = postgres_skip_reason()
    if reason is None:
        with PostgresCluster() as cluster:
            url = cluster.create_database("example")

The binaries (``initdb``, ``pg_ctl``, ``postgres``) are looked up on ``PATH`` first,
then under ``/usr/lib/postgresql/<version>/bin`` (highest version wins), which is
where Debian's ``postgresql`` package puts them.

PostgreSQL refuses to run as root. When the current process is root (as on CI), the
binaries are run as the unprivileged system user ``vmledger-pg`` (created with
``useradd --system --no-create-home`` when missing) via ``runuser`` or ``setpriv``.
"""

from __future__ import annotations

import functools
import os
import pwd
import re
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote

import psycopg
from psycopg import sql

__all__ = [
    "MISSING_BINARIES_REASON",
    "PG_SYSTEM_USER",
    "PostgresBinaries",
    "PostgresCluster",
    "PostgresClusterError",
    "find_postgres_binaries",
    "postgres_skip_reason",
]

MISSING_BINARIES_REASON = (
    "PostgreSQL binaries (initdb, pg_ctl) not found: install postgresql to run these tests"
)
PG_SYSTEM_USER = "vmledger-pg"
DEBIAN_PG_ROOT = Path("/usr/lib/postgresql")
_BINARY_NAMES = ("initdb", "pg_ctl", "postgres")
_COMMAND_TIMEOUT = 120.0
_START_ATTEMPTS = 5


class PostgresClusterError(RuntimeError):
    """The throwaway cluster could not be created, started or used."""


@dataclass(frozen=True)
class PostgresBinaries:
    initdb: Path
    pg_ctl: Path
    postgres: Path


def _binaries_in(directory: Path) -> PostgresBinaries | None:
    paths = [directory / name for name in _BINARY_NAMES]
    if all(p.is_file() and os.access(p, os.X_OK) for p in paths):
        return PostgresBinaries(*paths)
    return None


def _version_key(directory: Path) -> tuple[int, ...]:
    # "15" -> (15,), "9.6" -> (9, 6); anything unparsable sorts last.
    parts = re.findall(r"\d+", directory.name)
    return tuple(int(p) for p in parts) if parts else (-1,)


@functools.cache
def find_postgres_binaries() -> PostgresBinaries | None:
    """Locate initdb, pg_ctl and postgres, or return None when they are missing."""
    found = [shutil.which(name) for name in _BINARY_NAMES]
    if all(found):
        return PostgresBinaries(*(Path(p) for p in found if p is not None))
    if DEBIAN_PG_ROOT.is_dir():
        versions = sorted(
            (d for d in DEBIAN_PG_ROOT.iterdir() if d.is_dir()), key=_version_key, reverse=True
        )
        for version_dir in versions:
            binaries = _binaries_in(version_dir / "bin")
            if binaries is not None:
                return binaries
    return None


def postgres_skip_reason() -> str | None:
    """Why PostgreSQL tests cannot run here, or None when they can."""
    return MISSING_BINARIES_REASON if find_postgres_binaries() is None else None


def _is_root() -> bool:
    return os.geteuid() == 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _subprocess_env() -> dict[str, str]:
    # Drop PG* variables (PGDATA, PGPORT, PGOPTIONS, ...) so the caller's environment
    # cannot redirect or reconfigure the throwaway cluster.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    return env


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    useradd = shutil.which("useradd") or shutil.which("useradd", path="/usr/sbin:/sbin")
    if useradd is None:
        raise PostgresClusterError(
            f"running as root, and useradd is not available to create system user {name!r}"
        )
    result = subprocess.run(
        [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        capture_output=True,
        text=True,
        check=False,
        timeout=_COMMAND_TIMEOUT,
    )
    try:
        # Exit status 9 means another process created the user concurrently.
        return pwd.getpwnam(name)
    except KeyError:
        raise PostgresClusterError(
            f"running as root, and could not create system user {name!r} for PostgreSQL "
            f"(useradd exit status {result.returncode}): {result.stderr.strip()}"
        ) from None


def _privilege_drop_prefix(user: pwd.struct_passwd) -> list[str]:
    # runuser lives in /usr/sbin, which may be missing from a root PATH.
    runuser = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin")
    if runuser:
        return [runuser, "-u", user.pw_name, "--"]
    setpriv = shutil.which("setpriv")
    if setpriv:
        return [
            setpriv,
            f"--reuid={user.pw_uid}",
            f"--regid={user.pw_gid}",
            "--init-groups",
            "--",
        ]
    raise PostgresClusterError(
        "running as root, and neither runuser nor setpriv is available to run PostgreSQL "
        f"as the unprivileged user {user.pw_name!r}"
    )


def _traversable_by_others(path: Path) -> bool:
    """True when every directory from / down to ``path`` has the o+x bit."""
    return all(directory.stat().st_mode & stat.S_IXOTH for directory in (path, *path.parents))


def _make_temp_dir(as_root: bool) -> Path:
    base = Path(tempfile.gettempdir()).resolve()
    if as_root and not _traversable_by_others(base):
        # The unprivileged user must be able to reach its data directory.
        base = Path("/tmp")
    return Path(tempfile.mkdtemp(prefix="vmledger-pg-", dir=base))


class PostgresCluster:
    """A PostgreSQL cluster in a temporary directory, listening on 127.0.0.1.

    Use as a context manager: entering runs ``initdb`` and starts the server; leaving
    (also on exceptions) stops it with ``pg_ctl -m immediate stop`` and deletes the
    directory. Authentication is ``trust``; the superuser is ``postgres``.
    """

    user = "postgres"
    host = "127.0.0.1"

    def __init__(self, binaries: PostgresBinaries | None = None) -> None:
        found = binaries or find_postgres_binaries()
        if found is None:
            raise PostgresClusterError(MISSING_BINARIES_REASON)
        self.binaries: PostgresBinaries = found
        self._base_dir: Path | None = None
        self._port: int | None = None
        self._started = False
        self._command_prefix: list[str] = []

    # -- paths and connection details ------------------------------------------------

    @property
    def base_dir(self) -> Path:
        if self._base_dir is None:
            raise PostgresClusterError("the cluster is not running (use it as a context manager)")
        return self._base_dir

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir

    @property
    def port(self) -> int:
        if self._port is None or not self._started:
            raise PostgresClusterError("the cluster is not running (use it as a context manager)")
        return self._port

    @property
    def url(self) -> str:
        """URL of the cluster's ``postgres`` maintenance database."""
        return self.database_url("postgres")

    def database_url(self, dbname: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    def env(self, dbname: str) -> dict[str, str]:
        """eventsourcing 9.5 environment selecting PostgreSQL persistence for ``dbname``."""
        return {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": dbname,
            "POSTGRES_HOST": self.host,
            "POSTGRES_PORT": str(self.port),
            "POSTGRES_USER": self.user,
            "POSTGRES_PASSWORD": "",
        }

    # -- databases ---------------------------------------------------------------------

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its URL."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.database_url(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name``, terminating any connections still open to it."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            self._setup()
        except BaseException:
            self._teardown()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._teardown()

    def _setup(self) -> None:
        as_root = _is_root()
        self._base_dir = _make_temp_dir(as_root)
        if as_root:
            user = _ensure_system_user(PG_SYSTEM_USER)
            os.chown(self._base_dir, user.pw_uid, user.pw_gid)
            self._command_prefix = _privilege_drop_prefix(user)
        self._run(
            [
                str(self.binaries.initdb),
                "-D",
                str(self.data_dir),
                "-U",
                self.user,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            what="initdb",
        )
        self._start()

    def _start(self) -> None:
        last_error = ""
        for _attempt in range(_START_ATTEMPTS):
            port = _free_port()
            options = " ".join(
                [
                    "-c listen_addresses=127.0.0.1",
                    f"-p {port}",
                    f"-k {shlex.quote(str(self.socket_dir))}",
                    "-c fsync=on",
                    "-c max_connections=200",
                ]
            )
            result = self._run(
                [
                    str(self.binaries.pg_ctl),
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_path),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    options,
                    "start",
                ],
                what="pg_ctl start",
                check=False,
            )
            if result.returncode == 0:
                self._port = port
                self._started = True
                return
            log = self._read_log()
            last_error = f"{result.stdout}{result.stderr}\n--- {self.log_path} ---\n{log}"
            if "could not bind" not in log and "already in use" not in log:
                break  # not a port race: retrying will not help
            self._stop()
        raise PostgresClusterError(f"could not start PostgreSQL:\n{last_error}")

    def _teardown(self) -> None:
        try:
            if self._base_dir is not None and self.data_dir.is_dir():
                self._stop()
        finally:
            self._started = False
            if self._base_dir is not None:
                shutil.rmtree(self._base_dir, ignore_errors=True)
                self._base_dir = None

    def _stop(self) -> None:
        # Exits non-zero when no server is running: nothing to do then.
        self._run(
            [str(self.binaries.pg_ctl), "-D", str(self.data_dir), "-m", "immediate", "-w", "stop"],
            what="pg_ctl stop",
            check=False,
        )

    def _read_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log file)"

    def _run(
        self, command: list[str], *, what: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self._command_prefix, *command],
            cwd=self.base_dir,  # the caller's cwd may be unreadable to the postgres user
            env=_subprocess_env(),
            capture_output=True,
            text=True,
            check=False,
            timeout=_COMMAND_TIMEOUT,
        )
        if check and result.returncode != 0:
            raise PostgresClusterError(
                f"{what} failed with exit status {result.returncode}: "
                f"{shlex.join(result.args)}\n{result.stdout}{result.stderr}"
            )
        return result

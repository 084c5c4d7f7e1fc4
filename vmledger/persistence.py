"""Persistence wiring: a database URL → the eventsourcing environment and the views.

``sqlite:///path/to/file.db`` (the embedded default), ``memory`` (an in-process SQLite
database that disappears with the process), ``postgresql://user:pass@host:port/db``
(psycopg 3; several processes may share it). The application recorder is the
library's, extended by :mod:`vmledger.audit.chain` to write the tamper-evidence chain and
the request index in the same transaction as the events (``APPLICATION_RECORDER_TOPIC``);
``POSTGRES_ENABLE_DB_FUNCTIONS`` is never set (it drops tracking records and the table
lock in eventsourcing 9.5, and the chain relies on that lock).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from eventsourcing.postgres import PostgresDatastore
from eventsourcing.sqlite import SQLiteDatastore

from vmledger.audit.postgres_recorder import POSTGRES_RECORDER_TOPIC
from vmledger.audit.sqlite_recorder import SQLITE_RECORDER_TOPIC
from vmledger.projections.extensions import ViewExtension
from vmledger.projections.server_backends import PostgresServersView, SQLiteServersView
from vmledger.projections.servers import ServersView

DEFAULT_URL = "sqlite:///vmledger.db"

#: the library's JSON format, decoded with msgspec (see :mod:`vmledger.adapters.transcoding`)
TRANSCODER_TOPIC = "vmledger.adapters.transcoding:FastJSONTranscoder"


def environment(url: str) -> dict[str, str]:
    """The eventsourcing environment for a database URL."""
    env = _environment(url)
    env["TRANSCODER_TOPIC"] = TRANSCODER_TOPIC
    return env


def _environment(url: str) -> dict[str, str]:
    if url in ("memory", "memory://", "sqlite://", "sqlite:///:memory:"):
        name = f"file:vmledger-{uuid.uuid4().hex}?mode=memory&cache=shared"
        return {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": name,
                "APPLICATION_RECORDER_TOPIC": SQLITE_RECORDER_TOPIC}
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
        if parts.netloc:
            raise ValueError(f"a SQLite URL has no host: use sqlite:///relative/path or "
                             f"sqlite:////absolute/path, not {url!r}")
        if not path:
            raise ValueError(f"no database file in {url!r}")
        return {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": path,
                "SQLITE_LOCK_TIMEOUT": "30", "APPLICATION_RECORDER_TOPIC": SQLITE_RECORDER_TOPIC}
    if parts.scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        dbname = unquote(parts.path.lstrip("/")) or "postgres"
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": dbname,
            "POSTGRES_HOST": parts.hostname or "127.0.0.1",
            "POSTGRES_PORT": str(parts.port or 5432),
            "POSTGRES_USER": unquote(parts.username or "postgres"),
            "POSTGRES_PASSWORD": unquote(parts.password or ""),
            "POSTGRES_POOL_SIZE": query.get("pool_size", "10"),
            "POSTGRES_MAX_OVERFLOW": query.get("max_overflow", "10"),
            "POSTGRES_LOCK_TIMEOUT": query.get("lock_timeout", "10"),
            "POSTGRES_CONNECT_TIMEOUT": query.get("connect_timeout", "10"),
            # the pool drops broken connections and the library retries on connection
            # errors; a ping per checkout costs two round trips per command
            "POSTGRES_PRE_PING": query.get("pre_ping", "n"),
            "APPLICATION_RECORDER_TOPIC": POSTGRES_RECORDER_TOPIC,
        }
        if "schema" in query:
            env["POSTGRES_SCHEMA"] = query["schema"]
        return env
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:///file.db, memory or "
                     "postgresql://user:password@host:port/dbname")


#: the PostgreSQL advisory lock processes take turns on while they create their tables
_SCHEMA_LOCK = 0x766D6C6564676572  # "vmledger"


@contextmanager
def schema_lock(env: dict[str, str]) -> Iterator[None]:
    """Held while a process creates the tables it needs. PostgreSQL's ``CREATE TABLE IF
    NOT EXISTS`` fails (a unique violation in its catalog) when another process creates
    the same table at that moment, so processes starting together on a new database —
    an API process and a host agent — take turns, on an advisory lock held by a
    connection of its own. SQLite serialises its schema changes itself."""
    if env.get("PERSISTENCE_MODULE") != "eventsourcing.postgres":
        yield
        return
    import psycopg

    with psycopg.connect(
            dbname=env["POSTGRES_DBNAME"], host=env["POSTGRES_HOST"],
            port=int(env["POSTGRES_PORT"]), user=env["POSTGRES_USER"],
            password=env.get("POSTGRES_PASSWORD") or None,
            connect_timeout=int(float(env.get("POSTGRES_CONNECT_TIMEOUT", "10"))),
            autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", [_SCHEMA_LOCK])
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", [_SCHEMA_LOCK])


def servers_view(datastore: Any, extensions: Sequence[ViewExtension] = ()) -> ServersView:
    """The read models stored beside the events, sharing the application's datastore."""
    view: ServersView
    if isinstance(datastore, SQLiteDatastore):
        view = SQLiteServersView(datastore, extensions)
    elif isinstance(datastore, PostgresDatastore):
        view = PostgresServersView(datastore, extensions)
    else:
        raise TypeError(f"no servers view for {type(datastore).__name__}")
    view.create_table()
    return view


def redact(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url

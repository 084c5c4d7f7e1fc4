"""Tamper evidence: every stored event is chained to its predecessor by an HMAC.

Two chains are written by the application recorders
(:mod:`vmledger.audit.sqlite_recorder`, :mod:`vmledger.audit.postgres_recorder`), **in the
same database transaction as the events themselves** (so an event is never stored without
its link, nor a link without its event):

* the **server chain** links each event of one aggregate (a server, or an idempotency
  record) to the previous version of the same aggregate;
* the **global chain** links each event to the previous event of the whole log, in
  notification-id order.

Each link is ``HMAC-SHA256(key, domain ‖ canonical(event) ‖ previous hash)`` where
``canonical(event)`` is the length-prefixed encoding of (notification id, originator
id, originator version, topic, state bytes). The links are stored in the table
``vmledger_chain``. Beside it, ``vmledger_requests`` indexes every event that carries a
``request_id`` by request id and by (server, event time), so a causal chain or an
"as of" lookup does not scan the log.

Serial order of the global chain: on PostgreSQL the event insert already takes an
``EXCLUSIVE`` lock on the events table and holds it until commit, and the chain's head
is read under that lock (queued in the same pipeline right after it); on SQLite it is
read after the insert, which holds the database's single write lock. So the head read
by one transaction is always the head written by the previous one.

Both recorders also run their ``in_transaction`` callbacks (:data:`InTransaction`) inside
the same transaction, after the links are written, with the new rows: this is how the
process's own read models are folded in the command's transaction (see
:meth:`vmledger.projections.runner.ViewUpdater.attach`).

The key is read from the environment variable ``VMLEDGER_AUDIT_KEY``. Without it a
fixed, public development key is used, and :func:`vmledger.audit.verify.verify` says
so: a chain made with a public key only detects accidents and careless edits, not an
attacker who can write to the database (they can recompute every link).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable
from uuid import UUID

import msgspec
from eventsourcing.persistence import StoredEvent

__all__ = [
    "CHAIN_TABLE",
    "DEVELOPMENT_KEY",
    "GENESIS",
    "KEY_ENV",
    "REQUESTS_TABLE",
    "AuditKey",
    "AuditedRecorder",
    "ChainError",
    "ChainRow",
    "InTransaction",
    "IndexRow",
    "WrittenRow",
    "canonical",
    "global_link",
    "oid_text",
    "request_fields",
    "server_link",
]

#: the environment variable holding the secret HMAC key
KEY_ENV = "VMLEDGER_AUDIT_KEY"
#: the environment variable naming a file that holds it (when ``KEY_ENV`` is unset)
KEY_FILE_ENV = "VMLEDGER_AUDIT_KEY_FILE"
#: used when ``VMLEDGER_AUDIT_KEY`` is unset: public, so it proves nothing to an attacker
DEVELOPMENT_KEY = b"vmledger-development-audit-key/not-a-secret/set-VMLEDGER_AUDIT_KEY"
#: the "previous hash" of the first link of every chain
GENESIS = bytes(32)
CHAIN_TABLE = "vmledger_chain"
REQUESTS_TABLE = "vmledger_requests"

_SERVER_DOMAIN = b"vmledger/chain/v1/server\x00"
_GLOBAL_DOMAIN = b"vmledger/chain/v1/global\x00"


class ChainError(RuntimeError):
    """The chain cannot be extended: the stored log was changed behind vmledger's back.

    Raised inside the insert transaction (which is then rolled back) when the chain's
    head is at or beyond the notification id just issued — which only happens when
    events were deleted from the end of a SQLite log and their ids issued again.
    """


#: a stored event as the insert wrote it: (notification id, originator id, originator
#: version, topic, state), the form the read models' updater reads the log in
WrittenRow = tuple[int, Any, int, str, bytes]
#: called inside the insert's transaction with its cursor and the new rows (in
#: notification-id order); an exception rolls the whole insert back. Returns the name of
#: the read-model layout it folded the rows into (None: not folded), which PostgreSQL's
#: NOTIFY tells the other processes
InTransaction = Callable[[Any, list[WrittenRow]], str | None]


def _written(events: Sequence[StoredEvent], ids: Sequence[int]) -> list[WrittenRow]:
    return sorted(((nid, e.originator_id, e.originator_version, e.topic, e.state)
                   for nid, e in zip(ids, events, strict=True)), key=lambda row: row[0])


@dataclass(frozen=True)
class AuditKey:
    """The HMAC key and where it came from (``environment``, ``development``, ``explicit``)."""

    secret: bytes
    source: str

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> AuditKey:
        """``VMLEDGER_AUDIT_KEY``, else the first line of the file
        ``VMLEDGER_AUDIT_KEY_FILE`` names (so the key itself is in no process's
        environment), else the development key."""
        env = os.environ if environ is None else environ
        value = env.get(KEY_ENV, "")
        if value:
            return cls(value.encode("utf-8"), "environment")
        path = env.get(KEY_FILE_ENV, "")
        if path:
            with open(path, encoding="utf-8") as f:
                secret = f.readline().rstrip("\r\n")
            if not secret:
                raise ValueError(f"the audit key file {path} is empty")
            return cls(secret.encode("utf-8"), "file")
        return cls(DEVELOPMENT_KEY, "development")

    @classmethod
    def explicit(cls, secret: bytes | str) -> AuditKey:
        return cls(secret.encode("utf-8") if isinstance(secret, str) else secret, "explicit")

    @property
    def is_development(self) -> bool:
        return hmac.compare_digest(self.secret, DEVELOPMENT_KEY)

    @property
    def key_id(self) -> str:
        """A public fingerprint of the key (to tell keys apart without revealing them)."""
        return hmac.new(self.secret, b"vmledger/key-id", hashlib.sha256).hexdigest()[:16]

    def __repr__(self) -> str:  # never print the secret
        return f"AuditKey(source={self.source!r}, key_id={self.key_id!r})"


def oid_text(originator_id: UUID | str) -> str:
    """The canonical text of an originator id (a UUID in its hyphenated form)."""
    return str(originator_id)


def _as_bytes(state: object) -> bytes:
    # a row edited by hand may come back as text rather than a blob: still compare it
    if isinstance(state, str):
        return state.encode("utf-8")
    return bytes(state)  # type: ignore[call-overload,no-any-return]


_LENGTH = struct.Struct(">Q").pack


def canonical(notification_id: int, originator_id: UUID | str, version: int, topic: str,
              state: bytes) -> bytes:
    """The unambiguous bytes of one stored event that a link covers: each field
    (decimal notification id, originator id text, decimal version, UTF-8 topic, state
    bytes) preceded by its length as 8 big-endian bytes."""
    nid = str(int(notification_id)).encode()
    oid = oid_text(originator_id).encode()
    ver = str(int(version)).encode()
    top = topic.encode("utf-8")
    body = _as_bytes(state)
    return b"".join((_LENGTH(len(nid)), nid, _LENGTH(len(oid)), oid, _LENGTH(len(ver)), ver,
                     _LENGTH(len(top)), top, _LENGTH(len(body)), body))


@functools.lru_cache(maxsize=16)
def _keyed(key: bytes, domain: bytes) -> hmac.HMAC:
    """The HMAC with ``key`` that has read ``domain``: each link copies it and reads
    the rest, instead of setting the key up and reading the domain again (two of the
    hash's blocks of every link)."""
    return hmac.new(key, domain, "sha256")


def _link(key: bytes, domain: bytes, event: bytes, previous: bytes) -> bytes:
    mac = _keyed(key, domain).copy()
    mac.update(event)
    mac.update(previous)
    return mac.digest()


def server_link(key: bytes, event: bytes, previous: bytes) -> bytes:
    """The server-chain hash of a canonical event following ``previous``:
    ``HMAC-SHA256(key, server domain ‖ event ‖ previous)``."""
    return _link(key, _SERVER_DOMAIN, event, previous)


def global_link(key: bytes, event: bytes, previous: bytes) -> bytes:
    """The global-chain hash of a canonical event following ``previous``:
    ``HMAC-SHA256(key, global domain ‖ event ‖ previous)``."""
    return _link(key, _GLOBAL_DOMAIN, event, previous)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class _Indexed(msgspec.Struct):
    """The two fields of a stored event's state the request index needs (the others
    are checked to be JSON but not built)."""

    request_id: Any = None
    timestamp: Any = None


_INDEXED = msgspec.json.Decoder(_Indexed)


def request_fields(state: bytes) -> tuple[str, datetime] | None:
    """The ``request_id`` and timestamp of a stored event's state, if it has them.

    The state is the eventsourcing JSON transcoding (no compression or cipher is
    configured by vmledger); anything else is not indexed. Read with msgspec, which
    builds only these two fields; what it refuses (not an object, not UTF-8, ``NaN``,
    lone surrogates…) is read as the standard library reads it, so the answer is the
    same for every input (a repeated key: the last one, in both).
    """
    data = _as_bytes(state)
    try:
        found = _INDEXED.decode(data)
    except msgspec.DecodeError:
        try:
            parsed = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(parsed, dict):
            return None
        return _request_fields(parsed.get("request_id"), parsed.get("timestamp"))
    return _request_fields(found.request_id, found.timestamp)


def _request_fields(request_id: Any, stamp: Any) -> tuple[str, datetime] | None:
    if not isinstance(request_id, str) or not isinstance(stamp, dict):
        return None
    raw = stamp.get("_data_")
    if not isinstance(raw, str):
        return None
    try:
        return request_id, _utc(datetime.fromisoformat(raw))
    except ValueError:
        return None


@dataclass(frozen=True)
class ChainRow:
    """One stored link, joined with the request-index row of the same event (if any)."""

    notification_id: int
    originator_id: str
    originator_version: int
    server_hash: bytes
    global_hash: bytes
    request_id: str | None = None
    index_originator_id: str | None = None
    index_version: int | None = None
    event_time: datetime | None = None


@dataclass(frozen=True)
class IndexRow:
    """Where an event with a given request id is in the log."""

    notification_id: int
    request_id: str
    originator_id: str
    originator_version: int
    event_time: datetime


@runtime_checkable
class AuditedRecorder(Protocol):
    """What the audit readers need from an application recorder."""

    audit_key: AuditKey

    def select_chain(self, gt: int, limit: int) -> list[ChainRow]:
        """Links with notification id > ``gt``, in order, joined with the index."""
        ...

    def orphan_index_rows(self) -> list[IndexRow]:
        """Request-index rows with no chain row (forged or left behind)."""
        ...

    def max_chain_id(self) -> int | None:
        """The highest notification id in the chain (None: the chain is empty)."""
        ...

    def chain_positions(self, originator_id: UUID | str, low: int, high: int
                        ) -> dict[int, int]:
        """version → notification id for one aggregate's versions in [low, high]."""
        ...

    def request_rows(self, request_id: str) -> list[IndexRow]:
        """Every indexed event with this request id, in log order."""
        ...

    def version_at(self, originator_id: UUID | str, at: datetime) -> int | None:
        """The highest indexed version of an aggregate whose event time is <= ``at``."""
        ...

    def indexed_versions(self, originator_id: UUID | str) -> int:
        """How many events of the aggregate are in the request index."""
        ...


# --------------------------------------------------------------------------------------
# Computing the links of one insert
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _NewLink:
    notification_id: int
    originator_id: str
    version: int
    server_hash: bytes
    global_hash: bytes
    indexed: tuple[str, datetime] | None


def _links(key: bytes, events: Sequence[StoredEvent], ids: Sequence[int],
           head: tuple[int, bytes] | None, previous: dict[str, bytes]) -> list[_NewLink]:
    if len(ids) != len(events):
        raise ChainError(f"got {len(ids)} notification ids for {len(events)} events")
    if head is not None and ids and head[0] >= min(ids):
        raise ChainError(
            f"the audit chain's head (notification id {head[0]}) is not before the new "
            f"event's id {min(ids)}: events were removed from the log; run verify")
    global_prev = head[1] if head is not None else GENESIS
    server_prev = dict(previous)
    links: list[_NewLink] = []
    ordered = zip(ids, events, strict=True) if len(ids) == 1 else sorted(
        zip(ids, events, strict=True), key=lambda pair: pair[0])
    for nid, event in ordered:
        oid = oid_text(event.originator_id)
        body = canonical(nid, oid, event.originator_version, event.topic, event.state)
        server_hash = _link(key, _SERVER_DOMAIN, body, server_prev.get(oid, GENESIS))
        global_hash = _link(key, _GLOBAL_DOMAIN, body, global_prev)
        server_prev[oid] = server_hash
        global_prev = global_hash
        links.append(_NewLink(nid, oid, event.originator_version, server_hash, global_hash,
                              request_fields(event.state)))
    return links

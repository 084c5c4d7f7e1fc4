"""Verification: walk the whole event log and the chain, and name the first broken link.

:func:`verify` reads the events (``select_notifications``) and the chain rows
(``vmledger_chain`` joined with ``vmledger_requests``) in pages, merges them by
notification id, recomputes both HMAC links of every event and compares:

* an event whose link does not match: its payload, topic, version, server or position
  was edited, or two events were swapped or reordered, or the link was forged;
* a chain row without its event: the event was **deleted**;
* an event without a chain row: it was **inserted** behind vmledger's back (or written
  before auditing was switched on);
* a link that matches its own server chain but not the global one: an event *and* its
  chain row were removed (or inserted) before it;
* a version that does not follow its predecessor: a version of the server is missing;
* an event whose request-index row is missing or says something else (the causal-chain
  lookups would miss it or show another event), and index rows with no chain row.

After a break the walk carries on from the stored hashes, so every independent break
is reported; later breaks may be consequences of the first.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import takewhile
from typing import Any, TypeVar

from eventsourcing.application import Application
from eventsourcing.persistence import Notification

from vmledger.audit.chain import (
    GENESIS,
    KEY_ENV,
    AuditedRecorder,
    AuditKey,
    ChainRow,
    canonical,
    global_link,
    oid_text,
    request_fields,
    server_link,
)

__all__ = ["DEFAULT_PAGE_SIZE", "Break", "VerifyReport", "verify"]

DEFAULT_PAGE_SIZE = 5000
MIN_PAGE_SIZE = 1000

#: kinds of break
CONTENT = "content"      # the event differs from what its link covers
MOVED = "moved"          # the event and its chain row disagree on server or version
DELETED = "deleted"      # a chain row without its event
FORGED = "forged"        # an event without a chain row
LINK = "link"            # a predecessor (event + chain row) was removed or inserted
VERSION = "version"      # a version of the server is missing
INDEX = "index"          # the request index disagrees with the log
ANCHOR = "anchor"        # an externally kept head does not match (truncation)


@dataclass(frozen=True)
class Break:
    """One broken link: where it is and what is wrong."""

    notification_id: int
    server_id: str | None
    version: int | None
    kind: str
    message: str

    def __str__(self) -> str:
        where = f"notification id {self.notification_id}"
        if self.server_id is not None:
            where += f", server {self.server_id} version {self.version}"
        return f"{where}: [{self.kind}] {self.message}"


@dataclass
class VerifyReport:
    """What :func:`verify` checked and found."""

    events_checked: int = 0
    chain_rows_checked: int = 0
    servers: int = 0
    seconds: float = 0.0
    key_source: str = ""
    key_id: str = ""
    development_key: bool = False
    head_notification_id: int | None = None
    head_hash: str | None = None
    breaks: list[Break] = field(default_factory=list)
    breaks_truncated: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.breaks

    @property
    def first_break(self) -> Break | None:
        return min(self.breaks, key=lambda b: b.notification_id) if self.breaks else None

    @property
    def events_per_second(self) -> float:
        return self.events_checked / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        verdict = "OK"
        if not self.ok:
            count = f"{len(self.breaks)}{'+' if self.breaks_truncated else ''}"
            verdict = f"BROKEN ({count} problem{'' if count == '1' else 's'})"
        out = [f"audit chain: {verdict}",
               f"checked {self.events_checked} events and {self.chain_rows_checked} chain "
               f"rows of {self.servers} aggregates in {self.seconds:.3f} s "
               f"({self.events_per_second:,.0f} events/s)",
               f"key: {self.key_source} (key id {self.key_id})"]
        if self.head_notification_id is not None:
            out.append(f"head: notification id {self.head_notification_id}, "
                       f"hash {self.head_hash} (keep it elsewhere to detect truncation)")
        first = self.first_break
        if first is not None:
            out.append(f"first broken link: {first}")
            out += [f"  also: {b}" for b in self.breaks if b is not first][:20]
        out += [f"warning: {w}" for w in self.warnings]
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


T = TypeVar("T")


def _paged(fetch: Callable[[int], Sequence[T]], key: Callable[[T], int]) -> Iterator[T]:
    after = 0
    while True:
        page = fetch(after)
        if not page:
            return
        yield from page
        after = key(page[-1])


@dataclass
class _Walk:
    key: bytes
    check_index: bool
    max_breaks: int
    report: VerifyReport
    global_prev: bytes = GENESIS
    previous_id: int = 0
    servers: dict[str, tuple[int, bytes]] = field(default_factory=dict)

    def add(self, nid: int, server: str | None, version: int | None, kind: str,
            message: str) -> None:
        if len(self.report.breaks) >= self.max_breaks:
            self.report.breaks_truncated = True
            return
        self.report.breaks.append(Break(nid, server, version, kind, message))

    def pair(self, event: Notification, row: ChainRow) -> None:
        nid = event.id
        oid = oid_text(event.originator_id)
        version = event.originator_version
        body = canonical(nid, oid, version, event.topic, event.state)
        last = self.servers.get(oid)
        server_ok = hmac.compare_digest(
            server_link(self.key, body, last[1] if last else GENESIS), row.server_hash)
        global_ok = hmac.compare_digest(global_link(self.key, body, self.global_prev),
                                        row.global_hash)
        expected = last[0] + 1 if last else 1
        if (oid, version) != (row.originator_id, row.originator_version):
            self.add(nid, oid, version, MOVED,
                     f"the stored event is {oid} version {version} but its chain row "
                     f"covers {row.originator_id} version {row.originator_version}: the "
                     "event was renumbered or rows were moved")
        elif version != expected:
            self.add(nid, oid, version, VERSION,
                     f"version {version} follows version {expected - 1} of this server: "
                     "the versions in between were removed with their chain rows"
                     if last else f"the first stored event of this server is version "
                                  f"{version}, not 1: earlier versions were removed")
        elif not server_ok and not global_ok:
            self.add(nid, oid, version, CONTENT,
                     f"the stored event ({event.topic.rsplit('.', 1)[-1]}) does not match "
                     "its chain link: its payload, topic or version was edited, it was "
                     "swapped with another event, or the link was forged")
        elif not global_ok:
            self.add(nid, oid, version, LINK,
                     "the event is intact but the global chain is broken before it: an "
                     "event and its chain row were removed or inserted after notification "
                     f"id {self.previous_id}")
        elif not server_ok:
            self.add(nid, oid, version, LINK,
                     "the event is intact but its server chain is broken: the server's "
                     "previous event and chain row were removed, inserted or reordered")
        if self.check_index:
            self._index(event, row, oid)
        self.servers[oid] = (version, row.server_hash)
        self._advance(nid, row)

    def _index(self, event: Notification, row: ChainRow, oid: str) -> None:
        fields = request_fields(event.state)
        if fields is None:
            if row.request_id is not None:
                self.add(event.id, oid, event.originator_version, INDEX,
                         f"the request index lists this event under {row.request_id!r} "
                         "but it has no request id")
            return
        request_id, at = fields
        if row.request_id is None:
            self.add(event.id, oid, event.originator_version, INDEX,
                     f"the request index has no row for this event of {request_id!r}: "
                     "causal-chain lookups would miss it")
        elif (row.request_id, row.index_originator_id, row.index_version, row.event_time
              ) != (request_id, oid, event.originator_version, at):
            self.add(event.id, oid, event.originator_version, INDEX,
                     f"the request index row ({row.request_id!r}, {row.index_originator_id} "
                     f"v{row.index_version}, {row.event_time}) differs from the event "
                     f"({request_id!r}, {oid} v{event.originator_version}, {at})")

    def event_only(self, event: Notification) -> None:
        oid = oid_text(event.originator_id)
        self.add(event.id, oid, event.originator_version, FORGED,
                 "an event with no chain row: it was inserted outside vmledger (forged), "
                 "or written before auditing was enabled")
        self.previous_id = event.id

    def row_only(self, row: ChainRow) -> None:
        self.add(row.notification_id, row.originator_id, row.originator_version, DELETED,
                 "the chain records an event here but the log has none: the event was "
                 "deleted (or its notification id changed)")
        self.servers[row.originator_id] = (row.originator_version, row.server_hash)
        self._advance(row.notification_id, row)

    def _advance(self, nid: int, row: ChainRow) -> None:
        self.global_prev = row.global_hash
        self.previous_id = nid
        self.report.head_notification_id = nid
        self.report.head_hash = row.global_hash.hex()


def verify(app: Application[Any], *, key: AuditKey | bytes | str | None = None,
           page_size: int = DEFAULT_PAGE_SIZE, check_index: bool = True,
           anchor: tuple[int, str] | None = None, max_breaks: int = 100) -> VerifyReport:
    """Check the whole log of ``app`` (a :class:`~vmledger.domain.service.ServerService`)
    against its chain; the report names the first broken link.

    ``key`` defaults to the key the recorder was built with (``VMLEDGER_AUDIT_KEY``).
    ``anchor`` is a (notification id, head hash in hex) pair kept outside the database
    from an earlier report: it detects the removal of events from the end of the log,
    which the chain alone cannot.
    """
    recorder = app.recorder
    if not isinstance(recorder, AuditedRecorder):
        raise TypeError(f"{type(recorder).__name__} does not write the audit chain: build "
                        "the application with vmledger.persistence.environment()")
    if isinstance(key, AuditKey):
        audit_key = key
    elif key is not None:
        audit_key = AuditKey.explicit(key)
    else:
        audit_key = recorder.audit_key
    page_size = max(page_size, MIN_PAGE_SIZE)
    report = VerifyReport(key_source=audit_key.source, key_id=audit_key.key_id,
                          development_key=audit_key.is_development)
    if audit_key.is_development:
        report.warnings.append(
            f"{KEY_ENV} is not set: the chain uses the public development key, so it only "
            "shows accidental or careless edits; anyone who can write to the database "
            "can recompute it. Set a secret key kept outside the database.")
    walk = _Walk(audit_key.secret, check_index, max_breaks, report)
    started = time.perf_counter()
    # Check the log as it is now: events committed while we read come after ``stop``
    # (PostgreSQL commits inserts in notification-id order under the table lock, and
    # SQLite has one writer), and their chain rows are committed with them.
    stop = max(recorder.max_notification_id() or 0, recorder.max_chain_id() or 0)

    def fetch_events(after: int) -> Sequence[Notification]:
        return recorder.select_notifications(start=after, limit=page_size, stop=stop,
                                             inclusive_of_start=False)

    events = _paged(fetch_events, lambda n: n.id)
    rows = takewhile(lambda r: r.notification_id <= stop,
                     _paged(lambda after: recorder.select_chain(after, page_size),
                            lambda r: r.notification_id))
    event, row = next(events, None), next(rows, None)
    anchor_seen = anchor is None
    while event is not None or row is not None:
        nid = min(x for x in (event.id if event is not None else None,
                              row.notification_id if row is not None else None)
                  if x is not None)
        if anchor is not None and not anchor_seen and nid >= anchor[0]:
            anchor_seen = True
            if row is None or row.notification_id != anchor[0]:
                walk.add(anchor[0], None, None, ANCHOR,
                         "the anchored head is no longer in the chain")
            elif row.global_hash.hex() != anchor[1].lower():
                walk.add(anchor[0], row.originator_id, row.originator_version, ANCHOR,
                         "the chain row at the anchored head has another hash: the chain "
                         "was rewritten")
        if event is not None and row is not None and event.id == row.notification_id:
            walk.pair(event, row)
            report.events_checked += 1
            report.chain_rows_checked += 1
            event, row = next(events, None), next(rows, None)
        elif event is not None and (row is None or event.id < row.notification_id):
            walk.event_only(event)
            report.events_checked += 1
            event = next(events, None)
        elif row is not None:
            walk.row_only(row)
            report.chain_rows_checked += 1
            row = next(rows, None)
    if anchor is not None and not anchor_seen:
        walk.add(anchor[0], None, None, ANCHOR,
                 f"the log ends at notification id {walk.previous_id}, before the anchored "
                 f"head {anchor[0]}: events were removed from its end")
    if check_index:
        for orphan in recorder.orphan_index_rows():
            walk.add(orphan.notification_id, orphan.originator_id, orphan.originator_version,
                     INDEX, f"a request-index row for {orphan.request_id!r} points at no "
                            "chained event (forged or left behind)")
    report.seconds = time.perf_counter() - started
    report.servers = len(walk.servers)
    report.breaks.sort(key=lambda b: b.notification_id)
    return report

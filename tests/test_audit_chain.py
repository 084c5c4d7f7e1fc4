"""Tamper evidence on both backends: real scenarios are driven through the engine, then
the stored events are edited, deleted, swapped and forged directly in the database, and
:func:`vmledger.audit.verify` must catch every case and name the position."""

from __future__ import annotations

import hmac
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.engines import make_engine
from vmledger import Engine, FakeClock, ServerInfo
from vmledger.audit import KEY_ENV, AuditKey, VerifyReport, verify
from vmledger.audit.chain import (
    CHAIN_TABLE,
    GENESIS,
    REQUESTS_TABLE,
    AuditedRecorder,
    ChainError,
    canonical,
    global_link,
    server_link,
)
from vmledger.domain.errors import ServerNotFound

IMAGE = "cirros-0.6.2-x86_64"
IMAGE2 = "debian-12-genericcloud-amd64"


# --------------------------------------------------------------------------------------
# A scenario: users, the agent, a hypervisor failure, the timer, an admin, a delete
# --------------------------------------------------------------------------------------

@dataclass
class Snapshot:
    """What ``engine.get_server`` showed at a moment (None: not found)."""

    at: datetime
    server_id: str
    info: ServerInfo | None


@dataclass
class Scenario:
    web: str = ""
    db: str = ""
    tmp: str = ""
    resize_request: str = ""
    rebuild_request: str = ""
    delete_request: str = ""
    snapshots: list[Snapshot] = field(default_factory=list)


def scenario(engine: Engine, clock: FakeClock) -> Scenario:
    """Drive a realistic life through the engine, recording what it showed after each
    step (then moving the clock on, so every snapshot has its own moment)."""
    s = Scenario()
    alice = engine.context(user_id="alice", project_id="p1", is_admin=False)
    ops = engine.context(user_id="ops", project_id="admin", is_admin=True)

    def snap(*ids: str) -> None:
        for sid in ids:
            try:
                info: ServerInfo | None = engine.get_server(sid)
            except ServerNotFound:
                info = None
            s.snapshots.append(Snapshot(clock.now(), sid, info))
        clock.tick()

    s.web = engine.create_server("web-1", flavor="m1.small", image=IMAGE, ctx=alice).id
    snap(s.web)
    engine.run_until_idle()
    snap(s.web)
    s.db = engine.create_server("db-1", flavor="m1.small", image=IMAGE, ctx=alice).id
    engine.run_until_idle()
    snap(s.web, s.db)
    s.resize_request = engine.resize(s.web, "m1.medium", ctx=alice).request_id
    snap(s.web)
    engine.run_until_idle()
    snap(s.web)
    clock.advance(hours=25)  # the timer confirms the resize
    engine.run_until_idle()
    snap(s.web)
    engine.hypervisor.inject("rebuild", "fail", server_id=s.db)  # type: ignore[attr-defined]
    s.rebuild_request = engine.rebuild(s.db, IMAGE2, ctx=alice).request_id
    engine.run_until_idle()
    snap(s.db)
    engine.reset_state(s.db, "active", ctx=ops)
    snap(s.db)
    engine.stop(s.web, ctx=alice)
    engine.run_until_idle()
    engine.lock(s.web, "maintenance", ctx=alice)
    snap(s.web)
    engine.update_server(s.web, name="web-one", ctx=alice)
    snap(s.web)
    s.tmp = engine.create_server("tmp-1", flavor="m1.small", image=IMAGE, ctx=alice).id
    engine.run_until_idle()
    snap(s.tmp)
    s.delete_request = engine.delete(s.tmp, ctx=alice).request_id
    engine.run_until_idle()
    snap(s.tmp, s.web, s.db)
    return s


# --------------------------------------------------------------------------------------
# Raw access to the stored log, to tamper with it as someone with database access would
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    nid: int
    originator_id: Any  # as stored: hex text (SQLite) or uuid (PostgreSQL)
    version: int
    topic: str
    state: bytes


class RawLog:
    """Direct SQL on the events, chain and request-index tables."""

    def __init__(self, url: str) -> None:
        self.sqlite = url.startswith("sqlite")
        if self.sqlite:
            self.conn: Any = sqlite3.connect(url.removeprefix("sqlite:///"),
                                             isolation_level=None)
            self.table, self.nid, self.p = "stored_events", "rowid", "?"
        else:
            self.conn = psycopg.connect(url, autocommit=True)
            self.table, self.nid, self.p = "vmledger_events", "notification_id", "%s"

    def close(self) -> None:
        self.conn.close()

    def run(self, sql: str, *params: Any) -> list[Any]:
        cur = self.conn.execute(sql.replace("?", self.p), params)
        return list(cur.fetchall()) if cur.description else []

    def rows(self) -> list[Row]:
        return [Row(r[0], r[1], r[2], r[3], bytes(r[4])) for r in self.run(
            f"SELECT {self.nid}, originator_id, originator_version, topic, state "
            f"FROM {self.table} ORDER BY {self.nid}")]

    def row(self, nid: int) -> Row:
        return next(r for r in self.rows() if r.nid == nid)

    def set(self, nid: int, **values: Any) -> None:
        for column, value in values.items():
            self.run(f"UPDATE {self.table} SET {column}=? WHERE {self.nid}=?", value, nid)

    def delete(self, nid: int) -> None:
        self.run(f"DELETE FROM {self.table} WHERE {self.nid}=?", nid)

    def insert(self, row: Row, *, keep_id: bool = True) -> int:
        if keep_id:
            self.run(f"INSERT INTO {self.table} (originator_id, originator_version, topic, "
                     f"state, {self.nid}) VALUES (?,?,?,?,?)",
                     row.originator_id, row.version, row.topic, row.state, row.nid)
            return row.nid
        self.run(f"INSERT INTO {self.table} (originator_id, originator_version, topic, "
                 "state) VALUES (?,?,?,?)", row.originator_id, row.version, row.topic,
                 row.state)
        return int(self.run(f"SELECT MAX({self.nid}) FROM {self.table}")[0][0])

    def chain_row(self, nid: int) -> tuple[Any, ...]:
        return tuple(self.run(f"SELECT * FROM {CHAIN_TABLE} WHERE notification_id=?", nid)[0])

    def insert_chain(self, values: Sequence[Any]) -> None:
        self.run(f"INSERT INTO {CHAIN_TABLE} VALUES (?,?,?,?,?)", *values)

    def delete_chain(self, nid: int) -> None:
        self.run(f"DELETE FROM {CHAIN_TABLE} WHERE notification_id=?", nid)

    def remove_everywhere(self, row: Row) -> Callable[[], None]:
        """Delete an event with its chain and index rows, as a thorough attacker would;
        return the undo."""
        link = self.chain_row(row.nid)
        index = self.run(f"SELECT * FROM {REQUESTS_TABLE} WHERE notification_id=?", row.nid)
        self.delete(row.nid)
        self.delete_chain(row.nid)
        self.run(f"DELETE FROM {REQUESTS_TABLE} WHERE notification_id=?", row.nid)

        def undo() -> None:
            self.insert(row)
            self.insert_chain(link)
            for values in index:
                self.run(f"INSERT INTO {REQUESTS_TABLE} VALUES (?,?,?,?,?)", *values)
        return undo

    def head(self) -> tuple[int, bytes]:
        nid, h = self.run(f"SELECT notification_id, global_hash FROM {CHAIN_TABLE} "
                          "ORDER BY notification_id DESC LIMIT 1")[0]
        return int(nid), bytes(h)

    def server_head(self, oid: str) -> bytes:
        return bytes(self.run(f"SELECT server_hash FROM {CHAIN_TABLE} WHERE originator_id=? "
                              "ORDER BY originator_version DESC LIMIT 1", oid)[0][0])


@pytest.fixture
def raw(url: str) -> Iterator[RawLog]:
    log = RawLog(url)
    yield log
    log.close()


def hex_id(server_id: str) -> str:
    return server_id.replace("-", "")


def stored_id(raw: RawLog, server_id: str) -> Any:
    return hex_id(server_id) if raw.sqlite else uuid.UUID(server_id)


# --------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------

def assert_first(report: VerifyReport, nid: int, server_id: str | None, version: int | None,
                 kind: str) -> None:
    first = report.first_break
    assert first is not None, f"tampering at {nid} went unnoticed:\n{report}"
    assert (first.notification_id, first.server_id, first.version, first.kind) == (
        nid, server_id, version, kind), str(report)
    assert str(nid) in str(report).split("first broken link:")[1]


def test_untouched_log_verifies_and_every_event_is_chained(
        engine: Engine, clock: FakeClock, raw: RawLog) -> None:
    s = scenario(engine, clock)
    report = verify(engine.service)
    rows = raw.rows()
    assert report.ok, str(report)
    assert report.events_checked == report.chain_rows_checked == len(rows) > 40
    assert report.head_notification_id == rows[-1].nid
    assert report.development_key and report.key_source == "development"
    assert any(KEY_ENV in w for w in report.warnings)
    assert report.events_per_second > 0
    assert "audit chain: OK" in str(report)
    # every event carrying a request id is indexed (the servers', not the idempotency's)
    indexed = raw.run(f"SELECT COUNT(*) FROM {REQUESTS_TABLE}")[0][0]
    assert indexed == len(rows)
    assert isinstance(engine.service.recorder, AuditedRecorder)
    # still fine after the view is rebuilt and the engine restarted
    engine.updater.rebuild()
    assert verify(engine.service, page_size=1000).ok
    assert engine.get_server(s.web).name == "web-one"


def test_every_stored_link_is_the_documented_hmac_of_its_event(
        engine: Engine, clock: FakeClock, raw: RawLog) -> None:
    # recomputed from the module's documented formula with the standard library alone
    # (not with the module's own functions, which verify uses): a faster way of making
    # the links must still make these bytes, or every chain written before stops
    # verifying
    scenario(engine, clock)
    key = AuditKey.from_environment().secret
    server_prev: dict[str, bytes] = {}
    global_prev = bytes(32)
    for row in raw.rows():
        oid = str(uuid.UUID(str(row.originator_id)))
        fields = (str(row.nid).encode(), oid.encode(), str(row.version).encode(),
                  row.topic.encode(), row.state)
        body = b"".join(len(f).to_bytes(8, "big") + f for f in fields)
        server_hash = hmac.digest(key, b"vmledger/chain/v1/server\x00" + body
                                  + server_prev.get(oid, bytes(32)), "sha256")
        global_hash = hmac.digest(key, b"vmledger/chain/v1/global\x00" + body + global_prev,
                                  "sha256")
        link = raw.chain_row(row.nid)
        assert (str(uuid.UUID(str(link[1]))), link[2], bytes(link[3]), bytes(link[4])) == (
            oid, row.version, server_hash, global_hash), row
        server_prev[oid], global_prev = server_hash, global_hash


def test_every_kind_of_tampering_is_caught_and_located(
        engine: Engine, clock: FakeClock, raw: RawLog) -> None:
    s = scenario(engine, clock)
    assert verify(engine.service).ok
    rows = raw.rows()
    web = stored_id(raw, s.web)
    db = stored_id(raw, s.db)
    web_rows = [r for r in rows if r.originator_id == web]
    db_rows = [r for r in rows if r.originator_id == db]
    failed = next(r for r in db_rows if r.topic.endswith("ActionFailed"))

    def check(tamper: Callable[[], Callable[[], object]],
              expect: Callable[[VerifyReport], None]) -> None:
        undo = tamper()
        try:
            expect(verify(engine.service))
        finally:
            undo()
        assert verify(engine.service).ok, "restoring the log makes it verify again"

    # 1. edit a payload: hide the failure (vm_state error → active)
    def edit() -> Callable[[], None]:
        assert b'"vm_state":"error"' in failed.state
        raw.set(failed.nid, state=failed.state.replace(b'"vm_state":"error"',
                                                       b'"vm_state":"active"'))
        return lambda: raw.set(failed.nid, state=failed.state)
    check(edit, lambda r: assert_first(r, failed.nid, s.db, failed.version, "content"))

    # 2. edit a topic (make the failure a completion)
    def retopic() -> Callable[[], None]:
        raw.set(failed.nid, topic=failed.topic.replace("ActionFailed", "ActionCompleted"))
        return lambda: raw.set(failed.nid, topic=failed.topic)
    check(retopic, lambda r: assert_first(r, failed.nid, s.db, failed.version, "content"))

    # 3. renumber the last event of a server
    last = db_rows[-1]
    def renumber() -> Callable[[], None]:
        raw.set(last.nid, originator_version=last.version + 5)
        return lambda: raw.set(last.nid, originator_version=last.version)
    check(renumber, lambda r: assert_first(r, last.nid, s.db, last.version + 5, "moved"))

    # 4. delete an event from the middle of the log
    victim = web_rows[len(web_rows) // 2]
    def delete() -> Callable[[], object]:
        raw.delete(victim.nid)
        return lambda: raw.insert(victim)
    def deleted(r: VerifyReport) -> None:
        assert_first(r, victim.nid, s.web, victim.version, "deleted")
        assert r.events_checked == len(rows) - 1
    check(delete, deleted)

    # 5. delete an event and its chain row: the next event's global link breaks
    nxt = next(r for r in rows if r.nid > victim.nid)
    def delete_both() -> Callable[[], None]:
        return raw.remove_everywhere(victim)
    def relinked(r: VerifyReport) -> None:
        later = next(e for e in web_rows if e.version == victim.version + 1)
        if nxt.originator_id == web:  # the server's next version follows a gap
            assert_first(r, later.nid, s.web, later.version, "version")
        else:  # another server's event is intact, but the global chain broke before it
            assert_first(r, nxt.nid, s.db, nxt.version, "link")
            assert any(b.kind == "version" and b.notification_id == later.nid
                       for b in r.breaks)
    check(delete_both, relinked)

    # 6. swap the payloads of two events
    a, b = web_rows[2], db_rows[-2]
    assert a.nid < b.nid
    def swap() -> Callable[[], None]:
        raw.set(a.nid, state=b.state)
        raw.set(b.nid, state=a.state)
        def undo() -> None:
            raw.set(a.nid, state=a.state)
            raw.set(b.nid, state=b.state)
        return undo
    def swapped(r: VerifyReport) -> None:
        assert_first(r, a.nid, s.web, a.version, "content")
        assert any(x.notification_id == b.nid for x in r.breaks)
    check(swap, swapped)

    # 7. insert a forged event with the next version, without a chain row
    top = web_rows[-1]
    forged = Row(0, top.originator_id, top.version + 1, top.topic, top.state)
    at: dict[str, int] = {}
    def forge() -> Callable[[], None]:
        nid = at["nid"] = raw.insert(forged, keep_id=False)
        return lambda: raw.delete(nid)
    check(forge, lambda r: assert_first(r, at["nid"], s.web, top.version + 1, "forged"))

    # 8. ... and with a chain row made up without the key
    def forge_with_link() -> Callable[[], None]:
        nid = at["nid"] = raw.insert(forged, keep_id=False)
        raw.insert_chain((nid, s.web, forged.version, os.urandom(32), os.urandom(32)))
        def undo() -> None:
            raw.delete_chain(nid)
            raw.delete(nid)
        return undo
    check(forge_with_link,
          lambda r: assert_first(r, at["nid"], s.web, top.version + 1, "content"))

    # 9. tamper with the request index: a causal chain would miss the event
    def unindex() -> Callable[[], object]:
        row = raw.run(f"SELECT * FROM {REQUESTS_TABLE} WHERE notification_id=?", failed.nid)[0]
        raw.run(f"DELETE FROM {REQUESTS_TABLE} WHERE notification_id=?", failed.nid)
        return lambda: raw.run(f"INSERT INTO {REQUESTS_TABLE} VALUES (?,?,?,?,?)", *row)
    check(unindex, lambda r: assert_first(r, failed.nid, s.db, failed.version, "index"))


def test_truncation_needs_an_anchor(engine: Engine, clock: FakeClock, raw: RawLog) -> None:
    scenario(engine, clock)
    report = verify(engine.service)
    anchor = (report.head_notification_id or 0, report.head_hash or "")
    assert verify(engine.service, anchor=anchor).ok
    last = raw.rows()[-1]
    undo = raw.remove_everywhere(last)
    assert verify(engine.service).ok  # the chain alone cannot see a cut end...
    cut = verify(engine.service, anchor=anchor)  # ...an anchor kept elsewhere can
    assert cut.first_break is not None and cut.first_break.kind == "anchor"
    assert cut.first_break.notification_id == last.nid
    undo()
    assert verify(engine.service, anchor=anchor).ok


def test_a_secret_key_defeats_a_forger_who_only_knows_the_public_key(
        url: str, clock: FakeClock, raw: RawLog, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "s3cret-" + "k" * 40)
    with make_engine(url, clock=clock) as engine:
        s = scenario(engine, clock)
        report = verify(engine.service)
        assert report.ok and report.key_source == "environment"
        assert not report.development_key and not report.warnings
        # the wrong key fails from the very first link
        wrong = verify(engine.service, key=AuditKey.explicit("another key"))
        assert wrong.first_break is not None and wrong.first_break.notification_id == 1
        # a forger appends a well-formed event and computes its links with the public key
        top = [r for r in raw.rows() if r.originator_id == stored_id(raw, s.web)][-1]
        forged = Row(0, top.originator_id, top.version + 1, top.topic, top.state)
        nid = raw.insert(forged, keep_id=False)
        body = canonical(nid, s.web, forged.version, forged.topic, forged.state)
        dev = AuditKey.from_environment({}).secret
        raw.insert_chain((nid, s.web, forged.version,
                          server_link(dev, body, raw.server_head(s.web)),
                          global_link(dev, body, raw.head()[1])))
        assert_first(verify(engine.service), nid, s.web, forged.version, "content")


def test_with_the_public_key_a_forger_can_recompute_the_chain(
        engine: Engine, clock: FakeClock, raw: RawLog) -> None:
    """The threat model, stated as a test: without a secret key the chain proves only
    that nobody edited the log carelessly."""
    s = scenario(engine, clock)
    top = [r for r in raw.rows() if r.originator_id == stored_id(raw, s.web)][-1]
    forged = Row(0, top.originator_id, top.version + 1, top.topic, top.state)
    nid = raw.insert(forged, keep_id=False)
    body = canonical(nid, s.web, forged.version, forged.topic, forged.state)
    dev = AuditKey.from_environment({}).secret
    raw.insert_chain((nid, s.web, forged.version,
                      server_link(dev, body, raw.server_head(s.web)),
                      global_link(dev, body, raw.head()[1])))
    raw.run(f"INSERT INTO {REQUESTS_TABLE} SELECT ?, request_id, originator_id, ?, "
            f"event_time FROM {REQUESTS_TABLE} WHERE notification_id=?",
            nid, forged.version, top.nid)
    report = verify(engine.service)
    assert report.ok and report.development_key and report.warnings


def test_concurrent_writers_keep_one_serial_chain(url: str) -> None:
    clock = FakeClock()
    engines = [make_engine(url, clock=clock, seed=i) for i in range(4)]
    try:
        errors: list[BaseException] = []
        barrier = threading.Barrier(len(engines))

        def work(engine: Engine, n: int) -> None:
            try:
                barrier.wait()
                for i in range(6):
                    engine.create_server(f"c{n}-{i}", flavor="m1.small", image=IMAGE)
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(e, n)) for n, e in enumerate(engines)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        engines[0].run_until_idle()  # one agent builds them all: more writes to chain
        report = verify(engines[0].service)
        assert report.ok, str(report)
        # 24 servers and the host's claims (each create recorded its placement there)
        assert report.servers == 24 + 1 and report.events_checked >= 24 * 5
    finally:
        for e in engines:
            e.close()


def test_crashes_restarts_and_retries_keep_the_chain_whole(tmp_path: Path) -> None:
    from tests.test_simulation import simulate

    sim = simulate(f"sqlite:///{tmp_path / 'sim.db'}", seed=5, steps=400)
    try:
        assert sim.counts["restart"] > 0
        report = verify(sim.engine.service)
        assert report.ok, str(report)
        assert report.events_checked == len(sim.log())
    finally:
        sim.engine.close()


def test_verify_refuses_an_unaudited_recorder() -> None:
    from eventsourcing.application import Application

    app: Application[Any] = Application(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    with pytest.raises(TypeError, match="audit chain"):
        verify(app)


def test_topics_named_before_the_recorders_moved_still_select_them(tmp_path: Path) -> None:
    """Operators may have written ``vmledger.audit.recorders:...`` (the recorders' home
    before each backend got its own module) into ``APPLICATION_RECORDER_TOPIC``."""
    from eventsourcing.utils import resolve_topic

    from vmledger.audit.postgres_recorder import AuditedPostgresApplicationRecorder
    from vmledger.audit.sqlite_recorder import AuditedSQLiteApplicationRecorder
    from vmledger.domain.commands import Commands
    from vmledger.domain.service import ServerService
    from vmledger.persistence import environment

    old_sqlite = "vmledger.audit.recorders:AuditedSQLiteApplicationRecorder"
    old_postgres = "vmledger.audit.recorders:AuditedPostgresApplicationRecorder"
    assert resolve_topic(old_sqlite) is AuditedSQLiteApplicationRecorder
    assert resolve_topic(old_postgres) is AuditedPostgresApplicationRecorder
    url = f"sqlite:///{tmp_path / 'old-topic.db'}"
    assert resolve_topic(environment(url)["APPLICATION_RECORDER_TOPIC"]) is (
        AuditedSQLiteApplicationRecorder)
    # an environment naming the old topic writes the chain: the log verifies
    store = ServerService({**environment(url), "APPLICATION_RECORDER_TOPIC": old_sqlite})
    try:
        assert type(store.recorder) is AuditedSQLiteApplicationRecorder
        Commands.build(store).servers.create(
            store.context(), name="old", flavor="m1.small", image=IMAGE)
        report = verify(store)
        assert report.ok and report.events_checked > 0, str(report)
    finally:
        store.close()


def test_key_comes_from_the_environment() -> None:
    assert AuditKey.from_environment({}).is_development
    key = AuditKey.from_environment({KEY_ENV: "abc"})
    assert key.source == "environment" and key.secret == b"abc" and not key.is_development
    assert "abc" not in repr(key) and key.key_id in repr(key)
    assert bytes(32) == GENESIS


def test_verify_while_others_write(url: str) -> None:
    """A verify racing live writers checks the log as of its start: no false breaks."""
    clock = FakeClock()
    with make_engine(url, clock=clock) as writer, make_engine(url, clock=clock,
                                                              seed=1) as reader:
        writer.create_server("first", flavor="m1.small", image=IMAGE)
        done = threading.Event()

        def write() -> None:
            for i in range(30):
                writer.create_server(f"w{i}", flavor="m1.small", image=IMAGE)
            done.set()

        thread = threading.Thread(target=write)
        thread.start()
        reports = []
        while not done.is_set():
            reports.append(verify(reader.service, page_size=1000))
        thread.join()
        reports.append(verify(reader.service))
        assert all(r.ok for r in reports), next(str(r) for r in reports if not r.ok)
        # each create: the server's request and its claim on the host (which started once)
        assert reports[-1].events_checked == 31 * 2 + 1


def test_sqlite_refuses_to_chain_over_a_deleted_tail(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cut.db'}"
    with make_engine(url) as engine:
        engine.create_server("a", flavor="m1.small", image=IMAGE)
        raw = RawLog(url)
        try:
            last = raw.rows()[-1]
            raw.delete(last.nid)  # the event only: its chain row stays
            report = verify(engine.service)
            assert_first(report, last.nid, report.breaks[0].server_id, last.version,
                         "deleted")
            with pytest.raises(ChainError, match="events were removed"):
                engine.create_server("b", flavor="m1.small", image=IMAGE)
            raw.insert(last)
            assert verify(engine.service).ok
        finally:
            raw.close()

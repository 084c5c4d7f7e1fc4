"""A rebuild gives exactly the read models that following the log page by page gave.

The log is the projections benchmark's: full server lives (every action, failures and
rollbacks, drift, resets, locks, renames, custom images, deletes), many servers
interleaved.
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.persistence import Notification

from benchmarks.projections import Ids, StepClock, populate
from vmledger import Engine
from vmledger.domain.server import Server
from vmledger.projections import allocations, log_reading, moves, project_usage, rebuilding, runner
from vmledger.projections.actions import TABLE as ACTIONS
from vmledger.projections.actions import ActionsBatch
from vmledger.projections.images import TABLE as IMAGES
from vmledger.projections.migrations import TABLE as MIGRATIONS
from vmledger.projections.store import dumps, dumps_stored, loads, loads_stored

TABLES = (("vmledger_servers", "id"), (ACTIONS, "server_id, request_id"), (IMAGES, "id"),
          (MIGRATIONS, "id"), (allocations.TABLE, "server_id"),
          (allocations.HOSTS_TABLE, "host"), (project_usage.TABLE, "project_id"),
          (moves.TABLE, "server_id"))
SUMS = (allocations.HOSTS_TABLE, project_usage.TABLE)


def snapshot(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    """Every row of every read model, documents decoded (so text forms may differ)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for table, key in TABLES:
        rows = engine.view.query(f"SELECT * FROM {table} ORDER BY {key}")
        out[table] = [{k: (loads(v) if k == "doc" else v) for k, v in dict(row).items()}
                      for row in rows]
        if table in SUMS:  # a sum of zero reads as no row (a fold writes only changes)
            out[table] = [row for row in out[table]
                          if any(v for k, v in row.items() if k not in ("host", "project_id"))]
    return out


def index_names(engine: Engine) -> set[str]:
    if engine.view.dialect == "sqlite":
        rows = engine.view.query("SELECT name FROM sqlite_master WHERE type = 'index' "
                                 "AND name LIKE ? AND name NOT LIKE ?",
                                 ["vmledger%", "sqlite_autoindex%"])
        return {r["name"] for r in rows}
    rows = engine.view.query("SELECT indexname AS name FROM pg_indexes "
                             "WHERE indexname LIKE ? AND indexname NOT LIKE ?",
                             ["vmledger%", "%_pkey"])
    return {r["name"] for r in rows}


def _seeded(url: str) -> Engine:
    ids = Ids(seed=7)
    return Engine(url, clock=StepClock(), id_factory=ids.uuid,
                  request_id_factory=ids.request_id)


@pytest.fixture
def seeded_engine(url: str) -> Any:
    e = _seeded(url)
    yield e
    e.close()


@pytest.fixture
def seeded_sqlite(tmp_path: Path) -> Any:
    """:func:`seeded_engine` on SQLite alone (a test of what only SQLite has)."""
    e = _seeded(f"sqlite:///{tmp_path / 'vmledger.db'}")
    yield e
    e.close()


@pytest.fixture
def seeded_postgres(postgres_url: str) -> Any:
    """:func:`seeded_engine` on PostgreSQL alone."""
    e = _seeded(postgres_url)
    yield e
    e.close()


def test_rebuild_equals_following_the_log_in_small_pages(seeded_engine: Engine) -> None:
    populate(seeded_engine.service, 24, group=8)
    # follow the log as a live follower would, in small pages and transactions: rows
    # are loaded, folded further and written again many times
    seeded_engine.view.clear()
    follower = runner.ViewUpdater(seeded_engine.service, seeded_engine.view, page_size=7,
                                  batch_events=7)
    assert follower.catch_up() > 0
    followed = snapshot(seeded_engine)
    indexes = index_names(seeded_engine)
    assert len(followed[ACTIONS]) > 100 and followed[IMAGES]

    assert seeded_engine.updater.rebuild() > 0
    assert snapshot(seeded_engine) == followed
    assert index_names(seeded_engine) == indexes and len(indexes) >= 4


def test_servers_left_running_fold_the_same_allocations_and_usage(
        seeded_engine: Engine) -> None:
    # full lives (deleted at the end), then servers left active: what each host and
    # project holds is summed by difference, transaction after transaction
    populate(seeded_engine.service, 12, group=6)
    populate(seeded_engine.service, 9, group=3, full=False, first=100)
    seeded_engine.view.clear()
    follower = runner.ViewUpdater(seeded_engine.service, seeded_engine.view, page_size=5,
                                  batch_events=5)
    assert follower.catch_up() > 0
    followed = snapshot(seeded_engine)
    assert len(followed[allocations.TABLE]) == 9
    assert [row["instances"] for row in followed[project_usage.TABLE]] == [9]

    assert seeded_engine.updater.rebuild() > 0
    assert snapshot(seeded_engine) == followed


def test_a_rebuild_leaves_the_connections_settings_as_they_were(
        seeded_sqlite: Engine) -> None:
    # a rebuild's transactions do not overwrite deleted rows with zeros (SQLite's
    # secure_delete, on in Debian's build): the connections it used get their setting
    # back, and every other transaction keeps it
    seeded_engine = seeded_sqlite
    populate(seeded_engine.service, 4, group=4)
    view = seeded_engine.view

    def secure_delete() -> int:
        with view.transaction(commit=True) as curs:
            curs.execute("PRAGMA secure_delete")
            return int(curs.fetchone()[0])

    before = secure_delete()
    with view.bulk():
        assert secure_delete() == 0
    assert secure_delete() == before
    assert seeded_engine.updater.rebuild() > 0
    assert secure_delete() == before


def test_folding_each_command_in_its_transaction_equals_a_rebuild(
        seeded_engine: Engine) -> None:
    # every command of the populated log folds its events in its own transaction
    populate(seeded_engine.service, 24, group=8)
    rows = log_reading.read_page(seeded_engine.service.recorder, 0, 1_000_000)
    assert seeded_engine.view.position() == rows[-1][0]
    folded = snapshot(seeded_engine)
    assert len(folded[ACTIONS]) > 100 and folded[IMAGES]

    assert seeded_engine.updater.rebuild() > 0
    assert snapshot(seeded_engine) == folded


def raw_rows(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every read model as stored: documents as their text (sums of
    zero left out, as in :func:`snapshot`)."""
    return {table: [tuple(row) for row in
                    (tuple(dict(r).values()) for r in
                     engine.view.query(f"SELECT * FROM {table} ORDER BY {key}"))
                    if table not in SUMS or any(v for v in row[1:])]
            for table, key in TABLES}


def test_a_rebuild_stores_the_same_text_as_each_commands_fold(
        seeded_engine: Engine) -> None:
    # the documents' text byte for byte (compact JSON, every dict's keys sorted):
    # a rebuild writes the documents it makes without sorting them again
    populate(seeded_engine.service, 16, group=8)
    folded = raw_rows(seeded_engine)
    docs = [row[-1] for row in folded[ACTIONS]]
    assert len(docs) > 50
    assert all(doc == dumps_stored(loads_stored(doc)) for doc in docs)

    assert seeded_engine.updater.rebuild() > 0
    assert raw_rows(seeded_engine) == folded


def test_an_action_holding_an_unordered_dict_is_stored_sorted() -> None:
    # a value taken from an event that is a dict (an old history's fault message, or
    # cause) keeps its keys sorted in the stored text, as every document's
    written: list[Any] = []

    class Writer:
        curs = sql = None

        def upsert(self, table: str, columns: Any, key: Any, rows: list[Any]) -> None:
            written.extend(rows)

    server_id = uuid.uuid4()
    at = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)

    def event(cls: type, **fields: Any) -> Any:
        made = object.__new__(cls)
        object.__setattr__(made, "__dict__", {
            "originator_id": server_id, "originator_version": 1, "timestamp": at,
            "request_id": "req-1", "user_id": "u", "project_id": "p", "cause": "user",
            **fields})
        return made

    batch = ActionsBatch(Writer(), empty=True)  # type: ignore[arg-type]
    batch.fold([event(Server.ActionRequested, action="reboot_soft", vm_state="active",
                      task_state="rebooting", params={}, changes={}, supersedes=None,
                      cause={"z": 1, "a": 2}),
                event(Server.ActionFailed, action="reboot_soft", vm_state="active",
                      power_state=1, rollback=False, changes={},
                      fault={"message": {"z": 1, "a": {"y": 2, "b": 3}}})])
    batch.write()
    (row,) = written
    assert row[-1] == dumps_stored(loads_stored(row[-1]))
    assert '"cause":{"a":2,"z":1}' in row[-1]
    assert '"details":{"a":{"b":3,"y":2},"z":1}' in row[-1]


def test_a_document_changed_from_its_row_stores_the_text_of_the_whole_document() -> None:
    # a server's document folded from its row as loaded (times kept in stored form) is
    # written without walking the values it kept: its text is the whole document's,
    # the datetimes an event put in it (replacing a value, in a new key, nested) too
    east = timezone(timedelta(hours=2))
    row = dumps({"created_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=east),
                 "fault": {"at": datetime(2026, 1, 2, tzinfo=UTC), "code": 500},
                 "flavor": {"vcpus": 1}, "id": "s", "pending": None, "version": 3})
    base = loads_stored(row)
    at = datetime(2026, 5, 6, 7, 8, 9, 10, tzinfo=UTC)
    doc = dict(base)
    doc.update(version=4, updated_at=at, pending={"calling": [{"since": at}]},
               flavor={"vcpus": 2}, launched_at=at)
    assert dumps(doc, base) == dumps(doc)
    assert loads(dumps(doc, base)) == {**loads(row), "version": 4, "updated_at": at,
                                       "pending": {"calling": [{"since": at}]},
                                       "flavor": {"vcpus": 2}, "launched_at": at}
    assert dumps(base, base) == row


def test_a_rebuild_in_several_transactions_equals_one(seeded_engine: Engine) -> None:
    populate(seeded_engine.service, 10, group=5)
    seeded_engine.updater.rebuild()
    whole = snapshot(seeded_engine)
    small = runner.ViewUpdater(seeded_engine.service, seeded_engine.view, page_size=50,
                               batch_events=100)
    small.rebuild()
    assert snapshot(seeded_engine) == whole


def test_times_of_another_zone_keep_their_text_in_a_rebuild(url: str) -> None:
    # the instance actions keep each event's time as it was recorded (a clock two hours
    # east of UTC here), whether the command's own transaction folded it, a catch-up in
    # small pages, or a rebuild (which formats the times only when it writes the rows)
    ids = Ids(seed=5)
    zone = timezone(timedelta(hours=2))
    clock = StepClock(start=datetime(2026, 3, 1, 23, 59, 59, tzinfo=zone),
                      step=timedelta(microseconds=250_000))
    with Engine(url, clock=clock, id_factory=ids.uuid,
                request_id_factory=ids.request_id) as engine:
        populate(engine.service, 6, group=3)

        def texts() -> list[tuple[Any, ...]]:
            rows = engine.view.query(f"SELECT start_time, updated_at, doc FROM {ACTIONS}"
                                     " ORDER BY server_id, request_id")
            return [(r["start_time"], r["updated_at"], r["doc"]) for r in rows]

        folded = texts()
        first = loads(folded[0][2])
        assert first["start_time"].utcoffset() == timedelta(hours=2)
        assert folded[0][0] == first["start_time"].astimezone(UTC).isoformat()[:26]
        assert '+02:00"' in folded[0][2] and "+00:00" not in folded[0][2]
        assert engine.updater.rebuild() > 0
        assert texts() == folded
        engine.view.clear()
        assert runner.ViewUpdater(engine.service, engine.view, page_size=7,
                                  batch_events=7).catch_up() > 0
        assert texts() == folded


def test_the_decoder_makes_the_events_the_mapper_makes(seeded_engine: Engine) -> None:
    populate(seeded_engine.service, 6, group=3)
    rows = log_reading.read_page(seeded_engine.service.recorder, 0, 100_000)
    decoded = runner.EventDecoder(seeded_engine.service.mapper)(rows)
    assert len(decoded) == len(rows)
    for (nid, oid, version, topic, state), event in zip(rows, decoded, strict=True):
        expected = seeded_engine.service.mapper.to_domain_event(Notification(
            id=nid, originator_id=oid, originator_version=version, topic=topic, state=state))
        assert type(event) is type(expected)
        assert event.__dict__ == expected.__dict__
    wanted = runner.EventDecoder(seeded_engine.service.mapper,
                                 lambda topic: "Server." in topic)(rows)
    assert 0 < len(wanted) < len(rows)


def test_an_older_layout_is_folded_again_on_open(tmp_path: Any) -> None:
    """A database whose read models predate the current layout (the old actions table,
    the old position) gets them folded again from the log when an engine opens it."""
    from vmledger.projections.actions import OLD_TABLE
    from vmledger.projections.store import TRACKING_NAME

    url = f"sqlite:///{tmp_path / 'old.db'}"
    ids = Ids(seed=11)
    with Engine(url, clock=StepClock(), id_factory=ids.uuid,
                request_id_factory=ids.request_id) as engine:
        populate(engine.service, 4, group=4)
        engine.updater.catch_up()
        current = snapshot(engine)
        view = engine.view
        view.execute(f"CREATE TABLE {OLD_TABLE} (request_id TEXT PRIMARY KEY, doc TEXT)")
        view.execute(f"DELETE FROM {ACTIONS}")
        view.execute("UPDATE tracking SET application_name = 'vmledger.servers' "
                     "WHERE application_name = ?", [TRACKING_NAME])
        assert view.position() == 0
    with Engine(url) as reopened:
        reopened.updater.catch_up()
        assert snapshot(reopened) == current
        assert not reopened.view.query("SELECT name FROM sqlite_master WHERE name = ?",
                                       [OLD_TABLE])


def test_rebuilds_on_postgres_leave_no_dead_rows_behind(seeded_postgres: Engine) -> None:
    # a rebuild empties the larger tables with TRUNCATE: the rows the live folds and an
    # earlier rebuild wrote are gone, not left dead for the next fold and index builds
    seeded_engine = seeded_postgres
    populate(seeded_engine.service, 40, group=20)
    folded = snapshot(seeded_engine)

    def size() -> int:
        rows = seeded_engine.view.query("SELECT pg_relation_size(?) AS n", [ACTIONS])
        return int(rows[0]["n"])

    live = size()
    assert seeded_engine.updater.rebuild() > 0
    once = size()
    assert seeded_engine.updater.rebuild() > 0
    assert snapshot(seeded_engine) == folded
    assert size() == once < live


def test_a_rebuild_on_postgres_copies_rows_straight_into_the_tables_it_emptied(
        seeded_postgres: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    # the tables a rebuild emptied get their rows by COPY, with no staging table and
    # no conflict to look for, and hold what each command's own fold wrote
    import psycopg

    seeded_engine = seeded_postgres
    populate(seeded_engine.service, 24, group=8)
    folded = snapshot(seeded_engine)
    assert len(folded[ACTIONS]) >= runner_copy_rows()
    statements: list[str] = []
    execute, copy = psycopg.Cursor.execute, psycopg.Cursor.copy

    def text(statement: Any, cursor: Any) -> str:
        if isinstance(statement, psycopg.sql.Composable):
            return statement.as_string(cursor.connection)
        return str(statement)

    def recorded_execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        statements.append(text(args[0] if args else kwargs["query"], self))
        return execute(self, *args, **kwargs)

    def recorded_copy(self: Any, *args: Any, **kwargs: Any) -> Any:
        statements.append(text(args[0] if args else kwargs["statement"], self))
        return copy(self, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", recorded_execute)
    monkeypatch.setattr(psycopg.Cursor, "copy", recorded_copy)
    assert seeded_engine.updater.rebuild() > 0
    monkeypatch.undo()
    assert snapshot(seeded_engine) == folded
    assert any(s.startswith("COPY") and ACTIONS in s for s in statements)
    assert not [s for s in statements if "_stage" in s]
    # a second rebuild of a view folded further by commands: the same
    populate(seeded_engine.service, 6, group=6, first=100)
    folded = snapshot(seeded_engine)
    assert seeded_engine.updater.rebuild() > 0
    assert snapshot(seeded_engine) == folded


def runner_copy_rows() -> int:
    from vmledger.projections.store import RowWriter

    return RowWriter.COPY_ROWS


def test_a_rebuild_overtaken_by_another_fold_folds_every_event_once(
        seeded_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    # another process folds the first pages while the rebuild (reading ahead on
    # PostgreSQL) is about to: the rebuild's transaction finds the position moved,
    # writes nothing, and goes on from there
    populate(seeded_engine.service, 12, group=6)
    folded = snapshot(seeded_engine)
    view = seeded_engine.view
    other = runner.ViewUpdater(seeded_engine.service, view, page_size=100,
                               batch_events=100)
    apply_pages = type(view).apply_pages
    overtaken: list[int] = []

    def overtaking(self: Any, pages: Any, *args: Any, **kwargs: Any) -> int:
        if not overtaken:
            if kwargs.get("cleared") is not None:
                kwargs["cleared"]()  # the other folds once the rebuild's clear committed
            with monkeypatch.context() as undo:
                undo.setattr(type(view), "apply_pages", apply_pages)
                start = view.position()
                # one page of the other's, in its own transaction
                rows = log_reading.read_page(seeded_engine.service.recorder, start, 100)
                view.apply_pages([(rows, rows[-1][0])], runner.EventDecoder(
                    seeded_engine.service.mapper, view.wants), after=start)
                overtaken.append(rows[-1][0])
        return apply_pages(self, pages, *args, **kwargs)

    monkeypatch.setattr(type(view), "apply_pages", overtaking)
    rebuilder = runner.ViewUpdater(seeded_engine.service, view, page_size=50,
                                   batch_events=200)
    assert rebuilder.rebuild() > 0
    monkeypatch.undo()
    assert overtaken and view.position() > overtaken[0]
    assert other.catch_up() == 0
    assert snapshot(seeded_engine) == folded


def test_a_rebuild_folds_its_first_pages_while_the_tables_are_emptied(
        seeded_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    # the clear runs in a thread beside the first pages' read and fold: it sees a page
    # decoded before it commits, and the read models come out the same (on SQLite too,
    # where a rebuild clears first by default)
    monkeypatch.setattr(rebuilding, "CLEAR_BESIDE", frozenset({"postgres", "sqlite"}))
    populate(seeded_engine.service, 12, group=6)
    folded = snapshot(seeded_engine)
    view = seeded_engine.view
    decoded = threading.Event()
    seen: list[bool] = []
    decode, delete_tracking = runner.EventDecoder.__call__, type(view).delete_tracking

    def decoding(self: Any, rows: Any) -> list[Any]:
        decoded.set()
        return decode(self, rows)

    def waiting(self: Any, curs: Any) -> None:
        seen.append(decoded.wait(5))
        delete_tracking(self, curs)

    monkeypatch.setattr(runner.EventDecoder, "__call__", decoding)
    monkeypatch.setattr(type(view), "delete_tracking", waiting)
    assert seeded_engine.updater.rebuild() > 0
    monkeypatch.undo()
    assert seen == [True]
    assert snapshot(seeded_engine) == folded
    assert view.position() == seeded_engine.service.recorder.max_notification_id()


def test_a_failing_clear_or_first_write_fails_the_rebuild_and_nothing_is_lost(
        seeded_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    # (the clear in a thread on both databases: see the test above)
    monkeypatch.setattr(rebuilding, "CLEAR_BESIDE", frozenset({"postgres", "sqlite"}))
    populate(seeded_engine.service, 8, group=4)
    folded = snapshot(seeded_engine)
    view = seeded_engine.view
    position = view.position()

    def failing(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the disk is full")

    # the clear fails (in its thread): the rebuild raises it, the view is untouched
    with monkeypatch.context() as patched:
        patched.setattr(type(view), "delete_tracking", failing)
        with pytest.raises(RuntimeError, match="the disk is full"):
            seeded_engine.updater.rebuild()
    assert view.position() == position
    assert snapshot(seeded_engine) == folded
    # the first transaction's writes fail: nothing of it is written, the position stays
    # where the clear left it, and a catch-up folds it all again
    with monkeypatch.context() as patched:
        patched.setattr(ActionsBatch, "write", failing)
        with pytest.raises(RuntimeError, match="the disk is full"):
            seeded_engine.updater.rebuild()
    assert view.position() == 0
    assert view.query(f"SELECT COUNT(*) AS n FROM {ACTIONS}")[0]["n"] == 0
    assert seeded_engine.updater.catch_up() > 0
    assert snapshot(seeded_engine) == folded
    # the fold fails while the tables are being emptied: its error is the one raised,
    # and the clear's thread is joined
    with monkeypatch.context() as patched:
        patched.setattr(runner.EventDecoder, "__call__", failing)
        with pytest.raises(RuntimeError, match="the disk is full"):
            seeded_engine.updater.rebuild()
    assert not [t for t in threading.enumerate() if t.name == "vmledger-clear"]
    assert view.position() == 0
    assert seeded_engine.updater.catch_up() > 0
    assert snapshot(seeded_engine) == folded

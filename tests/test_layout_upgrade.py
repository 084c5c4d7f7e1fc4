"""Read-model layout upgrades without downtime: a release with a new layout folds it
beside the serving one while the API keeps answering from the old, switches atomically
once the new one has caught up with the log, then drops the old tables.

The new release is simulated: a new layout name and an index more on the servers view
(:func:`new_release`), on a database the current release filled.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from tests.test_projection_rebuild import snapshot
from vmledger import Engine, Simulator, bootstrap
from vmledger.api import create_app
from vmledger.api.testing import ApiClient
from vmledger.cli import main
from vmledger.domain.catalog import image_id_for
from vmledger.domain.server import Server
from vmledger.persistence import servers_view as open_view
from vmledger.projections import folding, layouts, runner, store
from vmledger.projections.servers import ServersView
from vmledger.projections.store import LEGACY_LAYOUT, Layout, RowWriter

IMAGE = image_id_for("cirros-0.6.2-x86_64")
OLD = LEGACY_LAYOUT
NEW = "vmledger.views.99"
ADMIN = {"OpenStack-API-Version": "compute 2.1"}


class EventTally:
    """A read model the new release adds: how many events each server has had."""

    table = "vmledger_event_tally"
    event_types = (Server.Event,)

    def create_statements(self, sql: Callable[[str], str]) -> list[str]:
        return [sql(f"CREATE TABLE IF NOT EXISTS {self.table} (server_id TEXT PRIMARY KEY,"
                    " events INTEGER NOT NULL, version INTEGER NOT NULL)")]

    def batch(self, writer: RowWriter, *, empty: bool) -> EventTally.Batch:
        return EventTally.Batch(self, writer, empty)

    def clear(self, curs: Any, sql: Callable[[str], str]) -> None:
        curs.execute(sql(f"DELETE FROM {self.table}"))

    class Batch:
        def __init__(self, model: EventTally, writer: RowWriter, empty: bool) -> None:
            self.model, self.writer, self.empty = model, writer, empty
            self.rows: dict[str, list[int]] = {}

        def fold(self, events: Sequence[Any]) -> None:
            for event in events:
                key = str(event.originator_id)
                row = self.rows.get(key)
                if row is None:
                    row = self.rows[key] = self.load(key)
                if event.originator_version > row[1]:
                    row[0] += 1
                    row[1] = event.originator_version

        def load(self, key: str) -> list[int]:
            if not self.empty:
                self.writer.curs.execute(self.writer.sql(
                    f"SELECT events, version FROM {self.model.table} WHERE server_id = ?"),
                    [key])
                found = self.writer.curs.fetchone()
                if found is not None:
                    return [int(found["events"]), int(found["version"])]
            return [0, 0]

        def write(self) -> None:
            self.writer.upsert(self.model.table, ("server_id", "events", "version"),
                               "server_id", [(k, *v) for k, v in self.rows.items()])


def new_release(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on, engines run a release whose read models have another layout: a new
    name, a column more in the servers view (and an index on it), and a new read model
    (:class:`EventTally`)."""
    monkeypatch.setattr(store, "TRACKING_NAME", NEW)
    original = ServersView.layout_statements

    def more(self: ServersView, sql: Any) -> list[str]:
        statements = [s.replace(" version INTEGER, doc TEXT)",
                                " version INTEGER, doc TEXT, label TEXT)")
                      for s in original(self, sql)]
        return [*statements, sql("CREATE INDEX IF NOT EXISTS {t}_label ON {t} (label)")]

    monkeypatch.setattr(ServersView, "layout_statements", more)
    monkeypatch.setattr(folding, "COLUMNS", (*folding.COLUMNS, "label"))
    row_of = folding.row_of
    monkeypatch.setattr(folding, "row_of", lambda doc, *base: (
        *row_of(doc, *base), f"{doc.get('host') or ''}/{doc.get('name')}"))
    monkeypatch.setattr(bootstrap, "servers_view", lambda datastore, extensions: open_view(
        datastore, [*extensions, EventTally()]))  # what bootstrap opens the view with


def tally(engine: Engine) -> dict[str, int]:
    return {r["server_id"]: r["events"]
            for r in engine.view.query("SELECT server_id, events FROM vmledger_event_tally")}


def tables(engine: Engine) -> set[str]:
    if engine.view.dialect == "sqlite":
        rows = engine.view.query("SELECT name FROM sqlite_master WHERE type IN "
                                 "('table', 'index')")
    else:
        rows = engine.view.query(
            "SELECT tablename AS name FROM pg_tables WHERE schemaname = current_schema() "
            "UNION SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")
    return {str(r["name"]) for r in rows}


def create(client: ApiClient, name: str) -> str:
    r = client.post("/v2.1/servers", json={"server": {
        "name": name, "flavorRef": "1", "imageRef": IMAGE, "networks": "none"}})
    assert r.status_code == 202, r.text
    return str(r.json()["server"]["id"])


def fleet(url: str, hypervisor: Simulator, count: int) -> list[str]:
    """``count`` servers built by the current release (the old layout)."""
    with Engine(url, hypervisor=hypervisor) as engine:
        client = ApiClient(create_app(engine))
        ids = [create(client, f"vm-{i}") for i in range(count)]
        engine.run_until_idle()
        assert engine.view.serving.name == OLD
    return ids


def listing(client: ApiClient) -> list[tuple[str, str, str]]:
    r = client.get("/v2.1/servers/detail", headers=ADMIN)
    assert r.status_code == 200, r.text
    return sorted((s["id"], s["name"], s["status"]) for s in r.json()["servers"])


@pytest.fixture
def sim() -> Simulator:
    return Simulator(seed=3)


@pytest.fixture
def slow_fold(monkeypatch: pytest.MonkeyPatch) -> None:
    """The layout folded beside is folded in small, slowed transactions, so that the
    load meets the upgrade half-way."""
    monkeypatch.setattr(runner, "UPGRADE_BATCH_EVENTS", {"sqlite": 50, "postgres": 50})
    monkeypatch.setattr(runner, "DROP_GRACE", 0.5)
    apply_pages = ServersView.apply_pages

    def slowly(self: ServersView, *args: Any, **kwargs: Any) -> int:
        if self._fixed is not None:
            time.sleep(0.03)
        return apply_pages(self, *args, **kwargs)

    monkeypatch.setattr(ServersView, "apply_pages", slowly)


class Load:
    """Clients listing, showing and acting on their own servers throughout: each
    renames its server and must read the new name back at once, stops and starts it,
    and every answer must be a success."""

    def __init__(self, engine: Engine, servers: list[str]) -> None:
        self.engine = engine
        self.client = ApiClient(create_app(engine))
        self.servers = servers
        self.stop = threading.Event()
        self.failures: list[str] = []
        #: requests answered while each layout served (the old one: before, and while
        #: the new one was folded)
        self.served: dict[str, int] = {}
        self.threads = [threading.Thread(target=self.run, args=(i, sid), daemon=True)
                        for i, sid in enumerate(servers)]
        self.threads.append(threading.Thread(target=self.creates, daemon=True))

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        layout = self.engine.view.serving.name
        if layout == OLD and self.engine.view.at(Layout(NEW)).position():
            layout = "while folding"
        r = self.client.request(method, path, headers=ADMIN,
                                **({} if body is None else {"json": body}))
        self.served[layout] = self.served.get(layout, 0) + 1
        if r.status_code >= 400:
            self.failures.append(f"{method} {path}: {r.status_code} {r.text[:200]}")
            return None
        return r.json() if r.content else {}

    def run(self, index: int, sid: str) -> None:
        n = 0
        while not self.stop.wait(0.01):
            n += 1
            self.call("GET", "/v2.1/servers/detail?limit=5")
            name = f"c{index}-{n}"
            self.call("PUT", f"/v2.1/servers/{sid}", {"server": {"name": name}})
            shown = self.call("GET", f"/v2.1/servers/{sid}")
            if shown is None:
                continue
            server = shown["server"]
            if server["name"] != name:
                self.failures.append(f"stale: {sid} shows {server['name']}, not {name}")
            if server["OS-EXT-STS:task_state"] is None:
                action = {"ACTIVE": "os-stop", "SHUTOFF": "os-start"}.get(server["status"])
                if action is not None:
                    self.call("POST", f"/v2.1/servers/{sid}/action", {action: None})

    def creates(self) -> None:
        # within the host's room: a server that finds none ends in ERROR, and the host
        # its failed create's action names depends on where the log's pages split
        # (in any fold, upgrade or not)
        n = 0
        while not self.stop.wait(0.1) and n < 24:
            n += 1
            self.call("POST", "/v2.1/servers", {"server": {
                "name": f"new-{n}", "flavorRef": "1", "imageRef": IMAGE,
                "networks": "none"}})


def test_an_upgrade_under_http_load_fails_no_request_and_leaves_nothing_stale(
        url: str, sim: Simulator, monkeypatch: pytest.MonkeyPatch, slow_fold: None) -> None:
    servers = fleet(url, sim, 16)
    new_release(monkeypatch)
    with Engine(url, hypervisor=sim) as engine:
        # started at once on the old layout; the new one is only registered
        assert engine.view.serving.name == OLD and engine.view.target.name == NEW
        assert engine.view.at(Layout(NEW)).position() == 0
        assert engine.updater.upgrade_needed()
        client = ApiClient(create_app(engine))
        before = listing(client)
        assert len(before) == 16
        with Load(engine, servers[:4]) as load:
            # the load runs before the upgrade starts (a number of requests, not a
            # time: a busy machine answered only 10 in the 0.3 s this once waited)
            started = time.monotonic() + 60
            while load.served.get(OLD, 0) <= 20 and time.monotonic() < started:
                time.sleep(0.02)
            engine.updater.page_size = 50
            engine.run_in_background(0.05)
            deadline = time.monotonic() + 120
            while engine.view.serving.name != NEW and time.monotonic() < deadline:
                time.sleep(0.02)
            assert engine.view.serving.name == NEW
            time.sleep(0.5)  # and after the switch
            while OLD in {s.name for s in layouts.states(engine.view)}:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            time.sleep(0.3)  # and after the old tables are gone
        assert load.failures == []
        assert min(load.served.get(OLD, 0), load.served.get("while folding", 0),
                   load.served.get(NEW, 0)) > 20, load.served
    with Engine(url, hypervisor=sim) as engine:
        # the new layout serves, alone: its tables (and its new index) are there and the
        # old ones are gone
        assert [(s.name, s.state) for s in layouts.states(engine.view)] == [(NEW, "serving")]
        assert not engine.updater.upgrade_needed()
        present = tables(engine)
        assert {"vmledger_servers_v99", "vmledger_servers_label_v99",
                "vmledger_server_actions_v99", "vmledger_event_tally_v99"} <= present
        assert not {"vmledger_servers", "vmledger_server_actions",
                    "vmledger_event_tally"} & present
        # the new layout's column and read model are complete
        assert not engine.view.query("SELECT id FROM vmledger_servers WHERE label IS NULL")
        # nothing stale: what the API answers is what a fold of the whole log gives
        client = ApiClient(create_app(engine))
        answered, rows, counts = listing(client), snapshot(engine), tally(engine)
        assert len(answered) > 16 and len(counts) == len(answered)
        engine.updater.rebuild()
        assert listing(client) == answered and snapshot(engine) == rows
        assert tally(engine) == counts


def test_the_name_filter_reads_the_new_layouts_grams_after_an_upgrade(
        url: str, sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    fleet(url, sim, 3)
    new_release(monkeypatch)
    with Engine(url, hypervisor=sim) as engine:
        client = ApiClient(create_app(engine))
        report = engine.updater.upgrade(grace=0)
        assert report.to_switch is not None and engine.view.serving.name == NEW
        renamed = create(client, "alpha-omega")
        engine.run_until_idle()
        # the grams of the names folded beside, and of those written since the switch
        # (the triggers are on the new layout's table): the name filter reads them
        # (without them it would scan the list in its order, answering the same)
        assert engine.view.query("SELECT COUNT(*) AS n FROM vmledger_name_grams_ready_v99"
                                 )[0]["n"] == 1
        grams = {(str(r["gram"]), str(r["sid"])) for r in engine.view.query(
            "SELECT gram, sid FROM vmledger_name_grams_v99")}
        for sid, name, _ in listing(client):
            assert {(name[i:i + 3], sid) for i in range(len(name) - 2)} <= grams, name
        r = client.get("/v2.1/servers", params={"name": "pha-om"}, headers=ADMIN)
        assert [s["id"] for s in r.json()["servers"]] == [renamed]


def test_a_write_folded_into_the_old_layout_after_the_switch_is_read_after_the_drop(
        url: str, sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    # a request that began before the switch folds its command into the old layout it
    # pinned; once it ends the old tables may go: the new layout must have that write
    servers = fleet(url, sim, 2)
    new_release(monkeypatch)
    with Engine(url, hypervisor=sim) as engine:
        client = ApiClient(create_app(engine))
        done: list[Any] = []
        with engine.updater.request() as pinned:
            assert pinned.name == OLD
            upgrading = threading.Thread(
                target=lambda: done.append(engine.updater.upgrade(grace=0)), daemon=True)
            upgrading.start()
            deadline = time.monotonic() + 60
            while layouts.serving_name(engine.view) != NEW:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            engine.update_server(servers[0], name="renamed-late")
        upgrading.join(timeout=60)  # the old layout's tables are dropped
        assert done and done[0].to_switch is not None
        assert OLD not in {s.name for s in layouts.states(engine.view)}
        r = client.get(f"/v2.1/servers/{servers[0]}", headers=ADMIN)
        assert r.status_code == 200, r.text
        assert r.json()["server"]["name"] == "renamed-late"


def test_an_interrupted_upgrade_resumes_and_never_serves_a_partial_layout(
        url: str, sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    fleet(url, sim, 8)
    new_release(monkeypatch)
    monkeypatch.setattr(runner, "UPGRADE_BATCH_EVENTS", {"sqlite": 10, "postgres": 10})
    with Engine(url, hypervisor=sim) as first:
        served = listing(ApiClient(create_app(first)))
        head = first.service.recorder.max_notification_id() or 0
        stop = threading.Event()
        first.updater.page_size = 10
        report = first.updater.upgrade(lambda *_: stop.set(), stop=stop)  # killed
        assert report.to_switch is None
        partial = first.view.at(Layout(NEW)).position()
        assert 0 < partial < head
        assert first.view.serving.name == OLD
    with Engine(url, hypervisor=sim) as second:
        # the restarted process serves the complete old layout, not the partial new one
        assert second.view.serving.name == OLD
        client = ApiClient(create_app(second))
        assert listing(client) == served
        report = second.updater.upgrade(grace=0)
        assert report.folded == head - partial  # resumed where it stopped
        assert report.to_switch is not None and report.dropped == (OLD,)
        assert second.view.serving.name == NEW
        assert listing(client) == served
        rows = snapshot(second)
        second.updater.rebuild()
        assert snapshot(second) == rows


def test_another_process_follows_the_switch(
        url: str, sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process still serving the old layout when another switches moves to the new one
    by its next request, with what it wrote meanwhile."""
    servers = fleet(url, sim, 3)
    new_release(monkeypatch)
    monkeypatch.setattr(runner, "REFRESH_EVERY", 0.0)
    with Engine(url, hypervisor=sim) as api, Engine(url, hypervisor=sim) as upgrader:
        client = ApiClient(create_app(api))
        assert api.view.serving.name == OLD
        upgrader.updater.upgrade(drop=False)  # switched; the old tables are kept
        assert upgrader.view.serving.name == NEW and api.view.serving.name == OLD
        r = client.put(f"/v2.1/servers/{servers[0]}", json={"server": {"name": "moved"}})
        assert r.status_code == 200
        assert api.view.serving.name == NEW
        assert client.get(f"/v2.1/servers/{servers[0]}").json()["server"]["name"] == "moved"
        assert len(listing(client)) == 3


def test_a_layout_the_old_tables_cannot_take_is_folded_before_serving(
        url: str, sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """A column whose type changes: the new release cannot write the old tables, so it
    folds its layout at start-up (beside them) and serves it from the start."""
    fleet(url, sim, 4)
    monkeypatch.setattr(store, "TRACKING_NAME", NEW)
    original = ServersView.layout_statements
    monkeypatch.setattr(ServersView, "layout_statements", lambda self, sql: [
        s.replace(" deleted INTEGER,", " deleted SMALLINT,") for s in original(self, sql)])
    with Engine(url, hypervisor=sim) as engine:
        assert engine.view.serving.name == NEW
        assert [(s.name, s.state) for s in layouts.states(engine.view)] == [
            (NEW, "serving"), (OLD, "retired")]
        client = ApiClient(create_app(engine))
        assert len(listing(client)) == 4
        assert engine.updater.upgrade(grace=0).dropped == (OLD,)
        assert "vmledger_servers" not in tables(engine)
        assert len(listing(client)) == 4


def test_a_database_without_read_models_folds_the_new_layout_at_once(
        url: str, sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    new_release(monkeypatch)
    with Engine(url, hypervisor=sim) as engine:
        assert engine.view.serving.name == NEW and not engine.updater.upgrade_needed()
        client = ApiClient(create_app(engine))
        sid = create(client, "first")
        assert client.get(f"/v2.1/servers/{sid}").json()["server"]["name"] == "first"
        present = tables(engine)
        assert "vmledger_servers_v99" in present and "vmledger_servers" not in present


def test_projections_status_and_upgrade_commands(
        tmp_path: Any, sim: Simulator, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    db = f"sqlite:///{tmp_path / 'ops.db'}"
    fleet(db, sim, 2)
    new_release(monkeypatch)
    assert main(["projections", "status", "--db", db, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    head = status["head"]
    assert status["release"] == NEW and head > 0
    assert [(s["name"], s["state"], s["serving"], s["position"], s["lag"])
            for s in status["layouts"]] == [(OLD, "serving", True, head, 0),
                                           (NEW, "building", False, 0, head)]
    assert main(["projections", "status", "--db", db]) == 0
    text = capsys.readouterr().out
    assert f"this release's layout: {NEW}" in text and "building" in text

    assert main(["projections", "upgrade", "--db", db, "--grace", "0"]) == 0
    out = capsys.readouterr().out
    assert f"into {NEW} beside {OLD}; switched after" in out
    assert f"dropped the tables of {OLD}" in out
    assert main(["projections", "status", "--db", db, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert [(s["name"], s["state"], s["lag"]) for s in status["layouts"]] == [
        (NEW, "serving", 0)]
    assert main(["projections", "upgrade", "--db", db]) == 0
    assert "serves already; nothing to do" in capsys.readouterr().out


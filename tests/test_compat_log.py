"""Old logs replay forever: a log written by an earlier release, committed as a fixture,
folds into today's read models, verifies, reads back and takes new actions.

The fixture (``tests/fixtures/compat-0.1.0.db``) holds only the log, its audit chain and
a snapshot; it was written by ``python -m tests.fixtures.make_compat_log`` and must never
be regenerated to make this test pass — a change that breaks it breaks every deployed
database. Add a new fixture beside it when a release adds event classes.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic

import vmledger.domain
from tests.engines import counter_ids, counter_request_ids
from tests.fixtures.make_compat_log import AUDIT_KEY, guests_file
from vmledger import Engine, FakeClock, Simulator
from vmledger.api import create_app
from vmledger.api.testing import ApiClient
from vmledger.audit import KEY_ENV
from vmledger.domain.server import Server

FIXTURES = Path(__file__).parent / "fixtures"
#: the newest fixture; older ones stay and are replayed too
FIXTURE_FILES = sorted(FIXTURES.glob("compat-*.db"))
REGENERATE = ("write a new fixture with `python -m tests.fixtures.make_compat_log "
              "tests/fixtures/compat-<version>.db` (after making the script cover the new "
              "class) and commit it beside the old ones")
#: what the fixture's servers look like (the deleted one is gone)
EXPECTED = {"main-renamed": "ACTIVE", "web-1": "ACTIVE", "web-2": "ACTIVE",
            "evacuee": "ACTIVE"}
#: the servers each fixture adds to those of :data:`EXPECTED` (0.2.0: one moved between
#: the hosts, cold and live)
ADDED = {"compat-0.2.0.db": {"mover": "ACTIVE"}}


def expected(engine: Engine) -> dict[str, str]:
    """What the servers of the fixture ``engine`` opened look like."""
    name = Path(engine.url.removeprefix("sqlite:///")).name
    return {**EXPECTED, **{k: v for fixture, added in ADDED.items()
                           if fixture <= name for k, v in added.items()}}


def event_topics() -> set[str]:
    """Every event class of every aggregate under vmledger.domain, as stored topics."""
    topics: set[str] = set()
    for info in pkgutil.walk_packages(vmledger.domain.__path__, "vmledger.domain."):
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if not (issubclass(cls, Aggregate) and cls.__module__ == info.name):
                continue
            events = {name: nested for name, nested in vars(cls).items()
                      if inspect.isclass(nested) and issubclass(nested, Aggregate.Event)}
            events.pop("Event", None)  # each aggregate's base class, never stored
            created = [e for e in events.values() if issubclass(e, Aggregate.Created)]
            if len(created) > 1:  # the library's default ``Created``, which a named one replaced
                events.pop("Created", None)
            topics.update(get_topic(e) for e in events.values())
    return topics


def stored_topics(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT DISTINCT topic FROM stored_events")}


@pytest.fixture(params=FIXTURE_FILES, ids=lambda p: p.name)
def copy(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A copy of a fixture (the committed file is never written)."""
    target = tmp_path / request.param.name
    shutil.copyfile(request.param, target)
    # compute-1's guests, as the fixture left them
    shutil.copyfile(guests_file(request.param), guests_file(target))
    return target


@pytest.fixture
def old_log_engine(copy: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    monkeypatch.setenv(KEY_ENV, AUDIT_KEY)  # the deployment's key, which wrote the log
    # ids and request ids far from the fixture's, so new ones cannot collide
    hypervisor = Simulator(seed=9, state_path=str(guests_file(copy)))
    with Engine(f"sqlite:///{copy}", clock=FakeClock(), hypervisor=hypervisor, seed=9,
                id_factory=counter_ids(9), request_id_factory=counter_request_ids("new")
                ) as e:
        yield e


def test_the_newest_fixture_covers_every_event_class_of_today() -> None:
    assert FIXTURE_FILES, "no compat fixture: " + REGENERATE
    missing = event_topics() - stored_topics(FIXTURE_FILES[-1])
    assert not missing, (f"the compat fixture has no event of {sorted(missing)}: "
                         + REGENERATE)


def test_the_fixture_holds_only_the_log(copy: Path) -> None:
    with sqlite3.connect(copy) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert not any(t in tables for t in ("vmledger_servers", "tracking"))


def test_an_old_log_folds_verifies_and_reads_back(old_log_engine: Engine) -> None:
    servers = {s.name: s for s in old_log_engine.list_servers()}
    assert {name: s.status for name, s in servers.items()} == expected(old_log_engine)
    report = old_log_engine.verify(key=AUDIT_KEY)
    assert report.ok, report
    assert not report.development_key
    # the wrong key does not verify: the chain really is the fixture's
    assert not old_log_engine.verify(key="another-key-" + "x" * 30).ok
    everyone = {s.name: s for s in old_log_engine.list_servers(include_deleted=True)}
    assert set(everyone) == set(expected(old_log_engine)) | {"spare"}
    for info in everyone.values():
        history = old_log_engine.history(info.id)
        assert history and history[0].event == "Requested"
        last = old_log_engine.server_as_of(info.id, version=history[-1].version)
        assert last.name == info.name
        # the snapshot the old release took (of "main") agrees with a replay of the events
        replayed = old_log_engine.ledger.as_of(info.id, version=history[-1].version,
                                       use_snapshots=False)
        assert (replayed.name, replayed.vm_state) == (last.name, last.vm_state)
        first = old_log_engine.server_as_of(info.id, version=1)
        assert first.vm_state == "building"
    main = servers["main-renamed"]
    events = {e.event for e in old_log_engine.history(main.id)}
    assert {"ActionFailed", "StateReset", "LockChanged", "Updated"} <= events
    assert old_log_engine.get_server(main.id).doc["metadata"] == {"role": "web"}
    if "mover" in everyone:  # moved between the hosts: its records and its last place
        mover = everyone["mover"]
        assert mover.host == "compute-1"
        events = [e.event for e in old_log_engine.history(mover.id)]
        assert events.count("StepReached") >= 8 and "MigrationSteered" in events
        kinds = sorted((m["migration_type"], m["status"])
                       for m in old_log_engine.migrations(server_id=mover.id))
        assert kinds == [("live-migration", "cancelled"), ("live-migration", "completed"),
                         ("migration", "confirmed"), ("migration", "reverted")]


def test_an_old_log_answers_over_the_api(old_log_engine: Engine) -> None:
    client = ApiClient(create_app(old_log_engine))
    listed = client.get("/v2.1/servers/detail")
    assert listed.status_code == 200, listed.text
    shown: dict[str, Any] = {s["name"]: s for s in listed.json()["servers"]}
    assert {name: s["status"] for name, s in shown.items()} == expected(old_log_engine)
    for server in shown.values():
        r = client.get(f"/v2.1/servers/{server['id']}")
        assert r.status_code == 200, r.text
        r = client.get(f"/v2.1/servers/{server['id']}/os-instance-actions")
        assert r.status_code == 200, r.text
    for path in ("/v2.1/flavors/detail", "/v2.1/os-keypairs", "/v2.1/os-server-groups",
                 "/v2.1/os-services", "/v2.1/images", "/v2.1/limits"):
        r = client.get(path)
        assert r.status_code == 200, (path, r.text)


def test_a_new_action_on_an_old_server(old_log_engine: Engine) -> None:
    main = next(s for s in old_log_engine.list_servers() if s.name == "main-renamed")
    assert main.host == old_log_engine.host  # this engine's agent is compute-1's, as before
    old_log_engine.run_until_idle()
    old_log_engine.reboot(main.id, hard=True)
    old_log_engine.run_until_idle()
    assert old_log_engine.get_server(main.id).status == "ACTIVE"
    last = old_log_engine.history(main.id)[-1]
    assert (last.event, last.details.get("action")) == ("ActionCompleted", "reboot_hard")
    assert old_log_engine.verify(key=AUDIT_KEY).ok  # the new events extend the old chain


class UpdatedV2(Server.Updated):
    """``Server.Updated`` as a later release might change it: a new field, with an
    upcaster that gives the events the fixture stored (version 1) its default."""

    class_version = 2
    source: str

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        state["source"] = "api"


def test_an_upcaster_reads_the_fixtures_events_into_a_changed_class(old_log_engine: Engine) -> None:
    main = next(s for s in old_log_engine.list_servers() if s.name == "main-renamed")
    app = old_log_engine.service
    stored_updates = [e for e in app.recorder.select_events(uuid.UUID(main.id))
                      if e.topic == get_topic(Server.Updated)]
    assert stored_updates
    stored = stored_updates[-1]  # the rename
    old = app.mapper.to_domain_event(stored)
    # the same stored record, read by the changed class: upcast on the way in
    new = app.mapper.to_domain_event(StoredEvent(
        originator_id=stored.originator_id, originator_version=stored.originator_version,
        topic=get_topic(UpdatedV2), state=stored.state))
    assert isinstance(new, UpdatedV2)
    assert new.source == "api"
    assert new.changes == old.changes == {"name": "main-renamed", "description": "renamed"}
    # and a new event of the changed class is stored with its version, read back as is
    again = app.mapper.to_stored_event(new)
    assert app.mapper.transcoder.decode(again.state)["class_version"] == 2
    assert app.mapper.to_domain_event(again).source == "api"

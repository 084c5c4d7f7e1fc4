"""The ledger over HTTP (``/ledger/v1``): history pages, state as of a time or a version,
causal chains, explanations, verification, the change feed (long-poll and server-sent
events, resumed after a disconnect) and the timeline page; answers equal the embedding
API's; auth modes and project isolation as the Compute API's; bad input is a 400 Nova
fault.

The routes are mounted onto ``create_app``'s application here, so these tests do not
depend on ``vmledger/api/app.py`` mounting them.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from tests.support.server import served
from vmledger import Engine, FakeClock, Simulator
from vmledger.api import create_app
from vmledger.api.auth import AuthSettings, noauth, token_authenticator
from vmledger.api.ledger import MAX_LIMIT, PREFIX, ledger_routes, server_state
from vmledger.api.testing import ApiClient
from vmledger.domain.server import Context

TOKENS = ["admin-secret:root:ops:admin,member", "alice-secret:alice:p1:member",
          "bob-secret:bob:p2:"]
ADMIN = {"X-Auth-Token": "admin-secret"}
ALICE = {"X-Auth-Token": "alice-secret"}
BOB = {"X-Auth-Token": "bob-secret"}
MISSING = "6b0e4b3c-0000-4000-8000-000000000000"
ENTRY_FIELDS = {"position", "server_id", "version", "timestamp", "request_id", "actor",
                "user_id", "project_id", "cause", "event", "payload", "aggregate"}
#: the feeds poll fast and idle streams beat often, so the tests run quickly
POLL = 0.02
HEARTBEAT = 0.3


# --- building the app ------------------------------------------------------------------

def ledger_app(engine: Engine, auth: str = "token") -> Starlette:
    """``create_app`` with the ledger routes mounted first, with short poll and heartbeat
    intervals for the tests (app.py mounts them with the production defaults)."""
    if auth == "noauth":
        app = create_app(engine)
        app.router.routes[0:0] = ledger_routes(engine, noauth, poll_interval=POLL,
                                               heartbeat=HEARTBEAT)
        return app
    settings = AuthSettings.build("token", tokens=TOKENS)
    app = create_app(engine, auth=settings)
    app.router.routes[0:0] = (ledger_routes(
        engine, token_authenticator(settings.registry()), poll_interval=POLL,
        heartbeat=HEARTBEAT))
    return app


# --- a lived-in log --------------------------------------------------------------------

@dataclass
class Lived:
    web: str          # alice's (p1): create, resize, auto-confirm, pause failure, reboot
    tmp: str          # alice's, deleted
    other: str        # bob's (p2)
    create: str       # request ids of web's create, resize, auto-confirm, pause, reboot
    resize: str
    confirm: str
    pause: str
    reboot: str
    verify_resize_at: datetime  # a moment while web awaited the resize confirmation
    before: datetime            # a moment before anything existed


def user(engine: Engine, name: str, project: str) -> Context:
    return engine.context(user_id=name, project_id=project, is_admin=False)


def live(engine: Engine, clock: FakeClock, sim: Simulator) -> Lived:
    alice, bob = user(engine, "alice", "p1"), user(engine, "bob", "p2")
    before = clock.now()
    clock.advance(seconds=1)
    web = engine.create_server("web-1", "m1.small", "cirros-0.6.2-x86_64", ctx=alice).id
    engine.run_until_idle()
    create = engine.history(web)[0].request_id
    clock.advance(minutes=30)
    resize = engine.resize(web, "m1.medium", ctx=alice).request_id
    engine.run_until_idle()
    clock.advance(minutes=10)
    verify_resize_at = clock.now()
    clock.advance(hours=2)  # past the one-hour confirm window: the timer confirms
    engine.run_until_idle()
    confirm = next(h.request_id for h in reversed(engine.history(web))
                   if h.cause == "timer")
    clock.advance(minutes=5)
    sim.inject("pause", "fail")
    pause = engine.pause(web, ctx=alice).request_id
    engine.run_until_idle()
    clock.advance(minutes=5)
    reboot = engine.reboot(web, ctx=alice).request_id
    engine.run_until_idle()
    clock.advance(minutes=1)
    tmp = engine.create_server("tmp", "m1.tiny", "cirros-0.6.2-x86_64", ctx=alice).id
    engine.run_until_idle()
    engine.delete(tmp, ctx=alice)
    engine.run_until_idle()
    other = engine.create_server("bobs", "m1.tiny", "cirros-0.6.2-x86_64", ctx=bob).id
    engine.run_until_idle()
    return Lived(web, tmp, other, create, resize, confirm, pause, reboot,
                 verify_resize_at, before)


@pytest.fixture
def sim() -> Simulator:
    return Simulator(seed=3)


@pytest.fixture
def ledger_engine(clock: FakeClock, sim: Simulator) -> Iterator[Engine]:
    """An in-memory engine on ``sim`` whose resizes wait an hour for confirmation."""
    e = Engine("memory", clock=clock, hypervisor=sim, confirm_window=timedelta(hours=1))
    yield e
    e.close()


@pytest.fixture
def lived(ledger_engine: Engine, clock: FakeClock, sim: Simulator) -> Lived:
    return live(ledger_engine, clock, sim)


@pytest.fixture
def client(ledger_engine: Engine) -> ApiClient:
    return ApiClient(ledger_app(ledger_engine))


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def fault(response: httpx.Response, code: int) -> str:
    """The message of a Nova fault body with ``code``."""
    assert response.status_code == code, response.text
    names = {400: "badRequest", 401: "unauthorized", 403: "forbidden", 404: "itemNotFound",
             405: "badMethod"}
    body = response.json()
    assert list(body) == [names[code]], body
    assert body[names[code]]["code"] == code
    return str(body[names[code]]["message"])


def dicts(entries: Any) -> list[dict[str, Any]]:
    return [e.as_dict() for e in entries]


# --- history ---------------------------------------------------------------------------

def test_history_pages_follow_next_links_and_equal_the_embedding_api(
        client: ApiClient, ledger_engine: Engine, lived: Lived) -> None:
    everything = dicts(ledger_engine.ledger.iter_history(lived.web))
    assert len(everything) > 20
    seen: list[dict[str, Any]] = []
    url: str | None = f"{PREFIX}/servers/{lived.web}/history?limit=7"
    after = 0
    while url is not None:
        body = ok(client.get(url, headers=ALICE))
        assert body["server_id"] == lived.web
        page = ledger_engine.history_page(lived.web, after=after, limit=7)
        assert body["entries"] == dicts(page.entries)
        assert body["next_after"] == page.next_after
        for entry in body["entries"]:
            assert set(entry) == ENTRY_FIELDS
        seen += body["entries"]
        links = body["links"]
        if page.next_after is None:
            assert links == []
            url = None
        else:
            assert links[0]["rel"] == "next"
            href = links[0]["href"]
            assert href.startswith(f"http://testserver{PREFIX}/servers/{lived.web}/history?")
            assert f"after={page.next_after}" in href and "limit=7" in href
            url = href.removeprefix("http://testserver")
            after = page.next_after
    assert seen == everything
    # the fields say who did what: alice asked, the agent acted, the timer confirmed
    first = seen[0]
    assert (first["version"], first["event"], first["actor"], first["user_id"],
            first["project_id"], first["cause"], first["request_id"]) == (
        1, "Requested", "alice", "alice", "p1", "user", lived.create)
    assert first["payload"]["name"] == "web-1"
    assert {e["cause"] for e in seen} == {"user", "agent", "timer"}
    positions = [e["position"] for e in seen]
    assert positions == sorted(positions) and None not in positions
    # default page and an after past the end
    assert ok(client.get(f"{PREFIX}/servers/{lived.web}/history",
                         headers=ALICE))["entries"] == everything
    assert ok(client.get(f"{PREFIX}/servers/{lived.web}/history?after=999",
                         headers=ALICE)) == {"server_id": lived.web, "entries": [],
                                             "next_after": None, "links": []}


def test_history_of_a_deleted_server_and_unknown_servers(
        client: ApiClient, ledger_engine: Engine, lived: Lived) -> None:
    assert client.get(f"/v2.1/servers/{lived.tmp}", headers=ALICE).status_code == 404
    body = ok(client.get(f"{PREFIX}/servers/{lived.tmp}/history", headers=ALICE))
    assert body["entries"][-1]["event"] == "ActionCompleted"
    assert body["entries"][-1]["payload"]["vm_state"] == "deleted"
    for bad in (MISSING, "not-a-uuid"):
        message = fault(client.get(f"{PREFIX}/servers/{bad}/history", headers=ADMIN), 404)
        assert message == f"Instance {bad} could not be found."


@pytest.mark.parametrize("query", ["limit=0", "limit=-3", "limit=abc", "limit=1.5",
                                   "limit=", "after=-1", "after=x", "limit=1&limit=2",
                                   "before=3"])
def test_history_bad_input_is_a_400(client: ApiClient, lived: Lived, query: str) -> None:
    message = fault(client.get(f"{PREFIX}/servers/{lived.web}/history?{query}",
                               headers=ALICE), 400)
    name = query.split("=", 1)[0]
    assert name in message


def test_a_limit_above_the_maximum_is_lowered(client: ApiClient, lived: Lived) -> None:
    body = ok(client.get(f"{PREFIX}/servers/{lived.web}/history?limit={MAX_LIMIT * 5}",
                         headers=ALICE))
    assert body["next_after"] is None and len(body["entries"]) > 20


# --- state -----------------------------------------------------------------------------

def test_state_at_every_version_equals_the_embedding_api(
        client: ApiClient, ledger_engine: Engine, lived: Lived) -> None:
    latest = ledger_engine.get_server(lived.web, ctx=user(ledger_engine, "alice", "p1")).version
    statuses = []
    for version in range(1, latest + 1):
        body = ok(client.get(f"{PREFIX}/servers/{lived.web}/state?version={version}",
                             headers=ALICE))
        assert body["server"] == server_state(ledger_engine.server_as_of(lived.web,
                                                                   version=version))
        assert body["server"]["version"] == version and body["version"] == version
        statuses.append(body["server"]["status"])
    assert statuses[0] == "BUILD" and statuses[-1] == "ACTIVE"
    assert {"RESIZE", "VERIFY_RESIZE", "REBOOT"} <= set(statuses)
    # the latest state is what the servers view shows now
    now = ok(client.get(f"{PREFIX}/servers/{lived.web}/state?version={latest}",
                        headers=ALICE))["server"]
    info = ledger_engine.get_server(lived.web)
    assert (now["status"], now["vm_state"], now["flavor"]["name"], now["version"]) == (
        info.status, info.vm_state, info.flavor["name"], info.version)
    assert set(now) >= {"id", "name", "project_id", "user_id", "flavor", "image", "vm_state",
                        "task_state", "power_state", "fault", "created_at", "updated_at",
                        "launched_at", "confirm_deadline", "locked"}


def test_state_as_of_a_time(client: ApiClient, ledger_engine: Engine, lived: Lived) -> None:
    at = lived.verify_resize_at
    for text in (at.isoformat(), at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                 at.replace(tzinfo=None).isoformat(),
                 (at + timedelta(hours=2)).isoformat().replace("+00:00", "+02:00")):
        body = ok(client.get(f"{PREFIX}/servers/{lived.web}/state",
                             params={"as_of": text}, headers=ALICE))
        assert body["server"] == server_state(ledger_engine.server_as_of(lived.web, at=at))
        assert body["server"]["status"] == "VERIFY_RESIZE"
        assert body["server"]["flavor"]["name"] == "m1.medium"
        assert body["as_of"] == at.isoformat()
    # both: the earlier of the two
    body = ok(client.get(f"{PREFIX}/servers/{lived.web}/state",
                         params={"as_of": at.isoformat(), "version": "2"}, headers=ALICE))
    assert body["server"]["version"] == 2
    # before the server existed
    message = fault(client.get(f"{PREFIX}/servers/{lived.web}/state",
                               params={"as_of": lived.before.isoformat()}, headers=ALICE),
                    404)
    assert lived.web in message
    # a deleted server, after its deletion
    gone = ok(client.get(f"{PREFIX}/servers/{lived.tmp}/state",
                         params={"as_of": "2999-01-01T00:00:00Z"}, headers=ALICE))["server"]
    assert (gone["vm_state"], gone["status"]) == ("deleted", "DELETED")
    assert gone["terminated_at"] is not None


@pytest.mark.parametrize(("query", "word"), [
    ("", "as_of"),
    ("as_of=yesterday", "as_of"),
    ("as_of=2026-13-01T00:00:00", "as_of"),
    ("as_of=", "as_of"),
    ("version=0", "version"),
    ("version=-2", "version"),
    ("version=two", "version"),
    ("version=1.0", "version"),
    ("version=1&version=2", "version"),
    ("at=2026-01-01T00:00:00", "at"),
])
def test_state_bad_input_is_a_400(client: ApiClient, lived: Lived, query: str,
                                  word: str) -> None:
    message = fault(client.get(f"{PREFIX}/servers/{lived.web}/state?{query}",
                               headers=ALICE), 400)
    assert word in message


def test_state_of_a_version_that_does_not_exist_is_a_404(client: ApiClient,
                                                         lived: Lived) -> None:
    message = fault(client.get(f"{PREFIX}/servers/{lived.web}/state?version=9999",
                               headers=ALICE), 404)
    assert "no version 9999" in message
    fault(client.get(f"{PREFIX}/servers/{MISSING}/state?version=1", headers=ADMIN), 404)


# --- requests, explanations -------------------------------------------------------------

def test_causal_chains_equal_the_embedding_api(client: ApiClient, ledger_engine: Engine,
                                               lived: Lived) -> None:
    for request_id in (lived.create, lived.resize, lived.confirm, lived.pause, lived.reboot):
        body = ok(client.get(f"{PREFIX}/requests/{request_id}", headers=ALICE))
        assert body["entries"] == dicts(ledger_engine.causal_chain(request_id))
        assert body["servers"] == [lived.web] and body["request_id"] == request_id
    chain = ok(client.get(f"{PREFIX}/requests/{lived.pause}", headers=ALICE))["entries"]
    assert chain[0]["event"] == "ActionRequested"
    assert chain[-1]["event"] == "ActionFailed"
    assert chain[-1]["payload"]["fault"]["message"] == "Injected failure in pause"
    failed_call = next(e for e in chain if e["event"] == "HypervisorCalled"
                       and e["payload"]["error"])
    assert failed_call["payload"]["call"] == "pause"
    assert "duration_ms" in failed_call["payload"]
    timer = ok(client.get(f"{PREFIX}/requests/{lived.confirm}", headers=ALICE))["entries"]
    assert timer[0]["cause"] == "timer" and timer[0]["actor"] == "timer"
    message = fault(client.get(f"{PREFIX}/requests/req-unknown", headers=ADMIN), 404)
    assert message == "Request req-unknown could not be found."


def test_explain_equals_the_embedding_api(client: ApiClient, ledger_engine: Engine,
                                          lived: Lived) -> None:
    body = ok(client.get(f"{PREFIX}/servers/{lived.web}/explain", headers=ALICE))
    assert body == {"server_id": lived.web, "lines": ledger_engine.explain(lived.web)}
    assert any("Injected failure in pause" in line for line in body["lines"])
    assert body["lines"][-2].startswith("Now: ACTIVE")
    short = ok(client.get(f"{PREFIX}/servers/{lived.web}/explain?last_requests=1",
                          headers=ALICE))["lines"]
    assert short == ledger_engine.ledger.explain(lived.web, last_requests=1)
    assert len(short) < len(body["lines"])
    deleted = ok(client.get(f"{PREFIX}/servers/{lived.tmp}/explain", headers=ALICE))
    assert deleted["lines"][-2].startswith("Now: DELETED")
    fault(client.get(f"{PREFIX}/servers/{lived.web}/explain?last_requests=0",
                     headers=ALICE), 400)
    fault(client.get(f"{PREFIX}/servers/{MISSING}/explain", headers=ADMIN), 404)


# --- verify ----------------------------------------------------------------------------

def test_verify_is_for_administrators(client: ApiClient, ledger_engine: Engine,
                                      lived: Lived) -> None:
    body = ok(client.get(f"{PREFIX}/verify", headers=ADMIN))
    report = ledger_engine.verify()
    assert body["ok"] is True and body["breaks"] == [] and body["first_break"] is None
    assert (body["events_checked"], body["servers"], body["head_notification_id"],
            body["head_hash"], body["key_id"], body["development_key"]) == (
        report.events_checked, report.servers, report.head_notification_id,
        report.head_hash, report.key_id, report.development_key)
    assert body["lines"][0] == "audit chain: OK"
    # an anchor from that report still matches; check_index can be switched off
    anchor = f"{body['head_notification_id']}:{body['head_hash']}"
    assert ok(client.get(f"{PREFIX}/verify", params={"anchor": anchor,
                                                     "check_index": "false"},
                         headers=ADMIN))["ok"] is True
    for query in ("anchor=12", "anchor=x:abc", "anchor=0:abc", "check_index=maybe",
                  "deep=1"):
        fault(client.get(f"{PREFIX}/verify?{query}", headers=ADMIN), 400)
    for caller in (ALICE, BOB):
        message = fault(client.get(f"{PREFIX}/verify", headers=caller), 403)
        assert message == "Policy doesn't allow ledger:verify to be performed."
    fault(client.get(f"{PREFIX}/verify"), 401)


def test_verify_reports_a_tampered_log_with_200_and_ok_false(tmp_path: Path) -> None:
    clock, sim = FakeClock(), Simulator(seed=3)
    url = f"sqlite:///{tmp_path / 'vmledger.db'}"
    with Engine(url, clock=clock, hypervisor=sim, confirm_window=timedelta(hours=1)) as e:
        lived = live(e, clock, sim)
        failed = next(x for x in e.causal_chain(lived.pause) if x.event == "ActionFailed")
        assert failed.position is not None
        conn = sqlite3.connect(tmp_path / "vmledger.db", isolation_level=None)
        try:
            (state,) = conn.execute("SELECT state FROM stored_events WHERE rowid = ?",
                                    (failed.position,)).fetchone()
            assert b"Injected failure in pause" in state
            conn.execute("UPDATE stored_events SET state = ? WHERE rowid = ?",
                         (bytes(state).replace(b"Injected failure in pause",
                                               b"all is well, really"), failed.position))
        finally:
            conn.close()
        body = ok(ApiClient(ledger_app(e)).get(f"{PREFIX}/verify", headers=ADMIN))
        assert body["ok"] is False
        assert body["first_break"]["notification_id"] == failed.position
        assert body["first_break"]["server_id"] == lived.web
        assert body["first_break"]["kind"] == "content"
        assert body["lines"][0].startswith("audit chain: BROKEN")


# --- auth and isolation ----------------------------------------------------------------

def test_other_projects_servers_and_requests_are_not_found(client: ApiClient,
                                                           lived: Lived) -> None:
    for path in ("history", "state?version=1", "explain", "timeline"):
        url = f"{PREFIX}/servers/{lived.web}/{path}"
        message = fault(client.get(url, headers=BOB), 404)
        assert message == f"Instance {lived.web} could not be found."
        assert client.get(url, headers=ALICE).status_code == 200
        assert client.get(url, headers=ADMIN).status_code == 200
        fault(client.get(url), 401)
        fault(client.get(url, headers={"X-Auth-Token": "forged"}), 401)
    fault(client.get(f"{PREFIX}/servers/{lived.other}/history", headers=ALICE), 404)
    assert ok(client.get(f"{PREFIX}/servers/{lived.other}/history", headers=BOB))
    fault(client.get(f"{PREFIX}/requests/{lived.pause}", headers=BOB), 404)
    fault(client.get(f"{PREFIX}/events?server_id={lived.web}", headers=BOB), 404)


def test_noauth_mode_and_unknown_routes(ledger_engine: Engine, lived: Lived) -> None:
    client = ApiClient(ledger_app(ledger_engine, auth="noauth"))
    assert ok(client.get(f"{PREFIX}/verify"))["ok"] is True
    assert ok(client.get(f"{PREFIX}/servers/{lived.other}/history"))["entries"]
    fault(client.get(f"{PREFIX}/servers/{lived.web}/nothing"), 404)
    fault(client.post(f"{PREFIX}/servers/{lived.web}/history", json={}), 405)


# --- the change feed: long-poll --------------------------------------------------------

def log_entries(engine: Engine) -> list[dict[str, Any]]:
    """Every server event of the log with its position, from the embedding API."""
    out: list[dict[str, Any]] = []
    for server in engine.list_servers(include_deleted=True):
        out += dicts(engine.ledger.iter_history(server.id))
    return sorted(out, key=lambda e: e["position"])


def test_events_long_poll_pages_through_the_whole_log(client: ApiClient, ledger_engine: Engine,
                                                      lived: Lived) -> None:
    expected = log_entries(ledger_engine)
    got: list[dict[str, Any]] = []
    after = 0
    while True:
        body = ok(client.get(f"{PREFIX}/events", params={"after": after, "limit": 9},
                             headers=ADMIN))
        assert len(body["events"]) <= 9
        got += body["events"]
        assert body["head"] == ledger_engine.service.recorder.max_notification_id()
        assert f"after={body['next_after']}" in body["links"][0]["href"]
        if not body["events"]:
            assert body["next_after"] == after
            break
        after = body["next_after"]
    assert got == expected
    assert after == expected[-1]["position"]


def test_events_are_filtered_to_the_callers_project(client: ApiClient, ledger_engine: Engine,
                                                    lived: Lived) -> None:
    everything = log_entries(ledger_engine)
    alice = ok(client.get(f"{PREFIX}/events?limit=1000", headers=ALICE))
    assert alice["events"] == [e for e in everything if e["server_id"] in
                               (lived.web, lived.tmp)]
    # the agent's and the timer's events carry no project but belong to alice's servers
    assert {e["cause"] for e in alice["events"]} == {"user", "agent", "timer"}
    bob = ok(client.get(f"{PREFIX}/events?limit=1000", headers=BOB))
    assert bob["events"] == [e for e in everything if e["server_id"] == lived.other]
    assert bob["next_after"] == alice["next_after"] == everything[-1]["position"]
    one = ok(client.get(f"{PREFIX}/events", params={"server_id": lived.tmp, "limit": 1000},
                        headers=ALICE))
    assert one["events"] == [e for e in everything if e["server_id"] == lived.tmp]


def test_long_poll_waits_for_new_events_or_times_out(client: ApiClient, ledger_engine: Engine,
                                                     lived: Lived) -> None:
    head = ok(client.get(f"{PREFIX}/events?limit=1000", headers=ALICE))["next_after"]
    started = time.monotonic()
    body = ok(client.get(f"{PREFIX}/events", params={"after": head, "wait": "0.5"},
                         headers=ALICE))
    assert time.monotonic() - started >= 0.45
    assert body["events"] == [] and body["next_after"] == head

    def later() -> None:
        time.sleep(0.4)
        ledger_engine.lock(lived.web, ctx=user(ledger_engine, "alice", "p1"))

    thread = threading.Thread(target=later)
    thread.start()
    started = time.monotonic()
    body = ok(client.get(f"{PREFIX}/events", params={"after": head, "wait": "99"},
                         headers=ALICE))  # above the maximum: lowered to 30 s
    thread.join()
    assert time.monotonic() - started < 10
    assert [(e["event"], e["server_id"]) for e in body["events"]] == [
        ("LockChanged", lived.web)]
    assert body["next_after"] == body["events"][0]["position"] > head
    # bob's wait ends empty: alice's new events are not his, but he skips past them
    body = ok(client.get(f"{PREFIX}/events", params={"after": head, "wait": "0.2"},
                         headers=BOB))
    assert body["events"] == [] and body["next_after"] > head


@pytest.mark.parametrize("query", ["wait=abc", "wait=-1", "wait=nan", "wait=inf",
                                   "limit=0", "limit=x", "after=-5", "after=1e3",
                                   "since=3"])
def test_events_bad_input_is_a_400(client: ApiClient, lived: Lived, query: str) -> None:
    fault(client.get(f"{PREFIX}/events?{query}", headers=ALICE), 400)


def test_the_ledger_api_on_both_backends(url: str) -> None:
    clock, sim = FakeClock(), Simulator(seed=3)
    with Engine(url, clock=clock, hypervisor=sim, confirm_window=timedelta(hours=1)) as e:
        lived = live(e, clock, sim)
        client = ApiClient(ledger_app(e))
        expected = log_entries(e)
        got: list[dict[str, Any]] = []
        after = 0
        while body := ok(client.get(f"{PREFIX}/events", params={"after": after, "limit": 8},
                                    headers=ADMIN))["events"]:
            got += body
            after = body[-1]["position"]
        assert got == expected
        mine = ok(client.get(f"{PREFIX}/events?limit=1000", headers=ALICE))["events"]
        assert mine == [x for x in expected if x["server_id"] != lived.other]
        assert ok(client.get(f"{PREFIX}/servers/{lived.web}/history?limit=1000",
                             headers=ALICE))["entries"] == dicts(e.ledger.iter_history(lived.web))
        at = lived.verify_resize_at.isoformat()
        state = ok(client.get(f"{PREFIX}/servers/{lived.web}/state", params={"as_of": at},
                              headers=ALICE))["server"]
        assert state == server_state(e.server_as_of(lived.web, at=lived.verify_resize_at))
        assert state["status"] == "VERIFY_RESIZE"
        assert ok(client.get(f"{PREFIX}/requests/{lived.pause}", headers=ALICE))[
            "entries"] == dicts(e.causal_chain(lived.pause))
        assert ok(client.get(f"{PREFIX}/verify", headers=ADMIN))["ok"] is True


# --- the change feed: server-sent events -------------------------------------------------

@dataclass
class Frame:
    id: str | None
    data: str | None
    comment: bool


def parse(lines: Iterator[str]) -> Iterator[Frame]:
    """A text/event-stream's frames (a blank line ends each)."""
    fid: str | None = None
    data: list[str] = []
    comment = seen = False
    for line in lines:
        if line == "":
            if seen:
                yield Frame(fid, "\n".join(data) if data else None, comment)
            fid, data, comment, seen = None, [], False, False
            continue
        seen = True
        if line.startswith(":"):
            comment = True
        elif line.startswith("id:"):
            fid = line[3:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))


class EventStream:
    """Reads an open ``/events/stream`` response (one line iterator for its life)."""

    def __init__(self, response: httpx.Response, timeout: float = 15.0) -> None:
        assert response.status_code == 200
        self._frames = parse(response.iter_lines())
        self.timeout = timeout

    def frames(self) -> Iterator[Frame]:
        deadline = time.monotonic() + self.timeout
        for frame in self._frames:
            yield frame
            assert time.monotonic() < deadline, "the stream said nothing useful in time"

    def events(self, count: int) -> list[dict[str, Any]]:
        """The next ``count`` events (the id of each must be its position)."""
        events: list[dict[str, Any]] = []
        for frame in self.frames():
            if frame.data is None:
                continue
            event = json.loads(frame.data)
            assert frame.id == str(event["position"])
            events.append(event)
            if len(events) == count:
                break
        return events


@contextmanager
def stream(http: httpx.Client, headers: dict[str, str], **params: Any
           ) -> Iterator[EventStream]:
    with http.stream("GET", f"{PREFIX}/events/stream", params=params,
                     headers=headers) as response:
        yield EventStream(response)


def test_stream_sends_the_whole_log_and_resumes_with_last_event_id(
        ledger_engine: Engine, lived: Lived) -> None:
    expected = log_entries(ledger_engine)
    alice = user(ledger_engine, "alice", "p1")
    with served(ledger_app(ledger_engine)) as base, httpx.Client(base_url=base, timeout=10) as http:
        with http.stream("GET", f"{PREFIX}/events/stream", headers=ADMIN) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            first = EventStream(response).events(10)
        assert first == expected[:10]  # from the very beginning: unlimited in age
        # disconnected; more happens meanwhile
        ledger_engine.lock(lived.web, ctx=alice)
        ledger_engine.unlock(lived.web, ctx=alice)
        expected = log_entries(ledger_engine)
        last_id = str(first[-1]["position"])
        with stream(http, {**ADMIN, "Last-Event-ID": last_id}) as events:
            rest = events.events(len(expected) - 10)
        assert rest == expected[10:]  # no gap, no repeat
        assert [e["event"] for e in rest[-2:]] == ["LockChanged", "LockChanged"]
        # ?after= does the same; Last-Event-ID wins over it (a reconnecting EventSource
        # sends both)
        with stream(http, ADMIN, after=last_id) as events:
            assert events.events(3) == expected[10:13]
        with stream(http, {**ADMIN, "Last-Event-ID": last_id}, after=0) as events:
            assert events.events(1) == expected[10:11]
        # a live client sees new events as they happen
        with stream(http, {**ADMIN, "Last-Event-ID": str(expected[-1]["position"])}
                    ) as events:
            threading.Timer(0.3, lambda: ledger_engine.lock(lived.web, ctx=alice)).start()
            (live_event,) = events.events(1)
        assert (live_event["event"], live_event["server_id"]) == ("LockChanged", lived.web)
        assert live_event["position"] > expected[-1]["position"]


def test_stream_is_filtered_and_moves_a_quiet_clients_position_on(
        ledger_engine: Engine, lived: Lived) -> None:
    alice = user(ledger_engine, "alice", "p1")
    with served(ledger_app(ledger_engine)) as base, httpx.Client(base_url=base, timeout=10) as http:
        expected = [e for e in log_entries(ledger_engine) if e["server_id"] == lived.other]
        with stream(http, BOB) as events:
            assert events.events(len(expected)) == expected
            # alice's server changes: bob is sent no event, but (once idle) an id-only
            # frame that moves his Last-Event-ID past her events
            ledger_engine.lock(lived.web, ctx=alice)
            head = ledger_engine.service.recorder.max_notification_id()
            moved = None
            for frame in events.frames():
                assert frame.data is None, frame
                if frame.id is not None:
                    moved = frame.id
                    break
        assert moved == str(head)
        assert moved is not None
        with stream(http, {**BOB, "Last-Event-ID": moved}) as events:
            ledger_engine.lock(lived.other, ctx=user(ledger_engine, "bob", "p2"))
            (event,) = events.events(1)
        assert (event["server_id"], event["event"]) == (lived.other, "LockChanged")
        # one server only
        with stream(http, ALICE, server_id=lived.tmp) as events:
            tmp_events = events.events(3)
        assert {e["server_id"] for e in tmp_events} == {lived.tmp}


@pytest.mark.parametrize(("headers", "query"), [
    ({"Last-Event-ID": "abc"}, ""),
    ({"Last-Event-ID": "-4"}, ""),
    ({}, "after=x"),
    ({}, "limit=3"),
    ({}, f"server_id={MISSING}"),
])
def test_stream_bad_input_is_refused_before_streaming(
        client: ApiClient, lived: Lived, headers: dict[str, str], query: str) -> None:
    response = client.get(f"{PREFIX}/events/stream?{query}", headers={**ALICE, **headers})
    assert response.status_code in (400, 404)
    message = fault(response, response.status_code)
    if headers:
        assert message.startswith("Invalid Last-Event-ID header")


# --- the timeline page (the browser test is tests/test_timeline_browser.py) -------------

def test_timeline_is_one_self_contained_escaped_page(client: ApiClient, ledger_engine: Engine,
                                                     lived: Lived) -> None:
    response = client.get(f"{PREFIX}/servers/{lived.web}/timeline", headers=ALICE)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in response.headers["content-security-policy"]
    page = response.text
    for text in ("web-1", "create", "resize", "confirm_resize", "pause", "reboot_soft",
                 "timer (automatic)", "alice (p1)", "Injected failure in pause", "<svg",
                 "VERIFY_RESIZE", "spawn", lived.pause):
        assert text in page, text
    for loader in ("<script", "<link", "src=", "@import", "url("):
        assert loader not in page
    assert page.count("http") == page.count('xmlns="http://www.w3.org/2000/svg"')
    # a name is data, not markup
    ledger_engine.update_server(lived.web, ctx=user(ledger_engine, "alice", "p1"),
                         name="<script>alert(1)</script>")
    page = client.get(f"{PREFIX}/servers/{lived.web}/timeline", headers=ALICE).text
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    deleted = client.get(f"{PREFIX}/servers/{lived.tmp}/timeline", headers=ALICE)
    assert deleted.status_code == 200 and "DELETED" in deleted.text
    fault(client.get(f"{PREFIX}/servers/{lived.web}/timeline?x=1", headers=ALICE), 400)

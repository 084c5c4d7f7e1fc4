"""Fleet scale: the reads whose cost must not grow with the fleet take the indexed path
(a keyset marker, a name prefix, a host's sums), answer exactly what reading every
server would, and the long-running parts keep bounded memory (the simulator's call
record, the power-state sync's batches). Timings live in ``benchmarks/scale.py``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.compute import built
from vmledger import Engine
from vmledger.adapters.hypervisor import PowerState
from vmledger.adapters.simulator import Simulator
from vmledger.api import create_app
from vmledger.api.testing import ApiClient
from vmledger.domain.clock import FakeClock
from vmledger.projections import server_filters, server_queries
from vmledger.projections.server_queries import ServerQueries
from vmledger.workers import agent as agent_module

NAMES = ["web-1", "web-10", "web-2", "db-1", "web-1 a", "Web-1", "wébé", "web", "x-web-1",
         "web-1x", "we", "web-11", "cache-web-1", "w"]


@pytest.fixture
def fleet(tmp_path: Path, clock: FakeClock) -> Iterator[tuple[Engine, ApiClient, list[str]]]:
    """An SQLite engine with a server per name in :data:`NAMES` (created a tick apart),
    its API, and the servers' ids."""
    with Engine(f"sqlite:///{tmp_path / 'scale.db'}", clock=clock) as engine:
        ids = []
        for name in NAMES:
            ids.append(built(engine, name))
            clock.advance(seconds=1)
        yield engine, ApiClient(create_app(engine)), ids


def _names(client: ApiClient, **params: Any) -> list[str]:
    response = client.get("/v2.1/servers", params=params)
    assert response.status_code == 200, response.text
    return [s["name"] for s in response.json()["servers"]]


def _plans(engine: Engine, run: Any) -> list[str]:
    """SQLite's query plan of every statement the servers view runs during ``run()``."""
    statements: list[tuple[str, list[Any]]] = []
    view = engine.view
    query = view.query

    def recording(sql: str, params: Any = ()) -> Any:
        statements.append((sql, list(params)))
        return query(sql, params)

    view.query = recording  # type: ignore[method-assign]
    try:
        run()
    finally:
        view.query = query  # type: ignore[method-assign]
    plans = []
    for sql, params in statements:
        if sql.lstrip().upper().startswith("SELECT"):
            rows = query("EXPLAIN QUERY PLAN " + sql, params)
            plans.append(sql + "\n  " + "\n  ".join(str(r[3]) for r in rows))
    return plans


@pytest.mark.parametrize("regex", [
    "^web-1$", "^web-1", "^web", "^we", "^wé", "^Web", "^web-1[0-9]", "^web-1*$", "^web-1+",
    "^web-1?$", "^(web)-1", "^web|^db", "web-1", "eb-1", "^$", "é", "^x-web", "1$", "[",
    # no literal prefix: narrowed by the name grams (SQLite), the same answers
    "eb-1$", "(?i)WEB-1", "(?i:W)eb-1", "web-1|db", "we.-1", r"\bweb-1\b", "ébé",
    "(?:we)b-", "(web){1,2}-1", "(?x) w e b - 1", "web(?=-1)", "web-1?", "a{0}web",
    "che-w", "eb-1+ ", "web-[12]", "(web)-1\\1", "web-1*x", "[w]eb-1", "eb-1{2}",
])
def test_the_name_filter_finds_what_the_regex_finds(
        fleet: tuple[Engine, ApiClient, list[str]], regex: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    _, client, _ = fleet
    pattern = re.compile(regex) if regex != "[" else re.compile(re.escape(regex))
    expected = [n for n in reversed(NAMES) if pattern.search(n)]
    assert _names(client, name=regex) == expected
    # in pages of two, each after the last one's marker, read in chunks of three rows
    monkeypatch.setattr(ServerQueries, "SCAN_CHUNK", 3)
    paged: list[str] = []
    marker = None
    while True:
        params: dict[str, Any] = {"name": regex, "limit": 2}
        if marker is not None:
            params["marker"] = marker
        response = client.get("/v2.1/servers", params=params)
        page = response.json()["servers"]
        paged += [s["name"] for s in page]
        if len(page) < 2:
            break
        marker = page[-1]["id"]
    assert paged == expected


def test_literal_prefixes_of_regular_expressions() -> None:
    prefix = server_filters.literal_prefix
    assert prefix(re.compile("^web-1$")) == "web-1"
    assert prefix(re.compile("^web-1*")) == "web-"  # the 1 may be left out
    assert prefix(re.compile("^web-1?x")) == "web-"
    assert prefix(re.compile("^web-1{0,2}")) == "web-"
    assert prefix(re.compile("^web-1+")) == "web-1"
    assert prefix(re.compile("^web\\d")) == "web"
    assert prefix(re.compile("^web|^db")) == ""  # an alternation
    assert prefix(re.compile("web")) == ""  # not anchored
    assert prefix(re.compile("^web", re.IGNORECASE)) == ""
    assert server_filters.prefix_range(re.compile("^a\ud7ff")) == ("a\ud7ff", "a\ue000")
    assert server_filters.prefix_range(re.compile("^a\U0010ffff")) is None


def test_a_name_prefix_is_read_through_the_name_index(
        fleet: tuple[Engine, ApiClient, list[str]]) -> None:
    engine, client, _ = fleet
    plans = _plans(engine, lambda: _names(client, name="^web-1$"))
    scans = [p for p in plans if "p_name" in p]
    assert scans and all("USING INDEX vmledger_servers_name (name>? AND name<?)" in p
                         for p in scans), plans


def test_a_deep_marker_seeks_the_page_index(
        fleet: tuple[Engine, ApiClient, list[str]]) -> None:
    engine, client, ids = fleet
    plans = _plans(engine, lambda: client.get(
        "/v2.1/servers/detail", params={"limit": 2, "marker": ids[2]}))
    pages = [p for p in plans if "ORDER BY created_at DESC" in p]
    assert pages and all("(created_at,id)<(?,?)" in p for p in pages), plans
    listed = client.get("/v2.1/servers", params={"limit": 2, "marker": ids[2]}).json()
    assert [s["id"] for s in listed["servers"]] == [ids[1], ids[0]]


def test_os_hypervisors_decodes_no_server(fleet: tuple[Engine, ApiClient, list[str]],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _, client, ids = fleet
    decoded: list[str] = []
    loads = server_queries.loads

    def counting(text: Any) -> Any:
        decoded.append(text)
        return loads(text)

    monkeypatch.setattr(server_queries, "loads", counting)
    [node] = client.get("/v2.1/os-hypervisors/detail").json()["hypervisors"]
    assert node["running_vms"] == len(NAMES)
    assert node["vcpus_used"] == len(NAMES)  # m1.small: one vCPU each
    assert decoded == []
    # the servers, when asked for, from the view's columns too
    listed = client.get("/v2.1/os-hypervisors/detail", params={"with_servers": "true"},
                        headers={"X-OpenStack-Nova-API-Version": "2.53"}).json()
    assert sorted(s["uuid"] for s in listed["hypervisors"][0]["servers"]) == sorted(ids)
    assert decoded == []


def test_the_host_sums_follow_every_change_and_a_rebuild(url: str, clock: FakeClock) -> None:
    with Engine(url, clock=clock) as engine:
        def node() -> tuple[int, int, int, int]:
            [found] = engine.hypervisors()
            return (found["running_vms"], found["vcpus_used"], found["memory_mb_used"],
                    found["local_gb_used"])

        a, b = built(engine, "a"), built(engine, "b")
        assert node() == (2, 2, 2 * 2048 + 512, 40)
        engine.act(a, "resize", flavor="m1.medium")  # holds both flavors until confirmed
        engine.run_until_idle()
        assert node() == (2, 1 + 2 + 1, 2048 + 4096 + 2048 + 512, 20 + 40 + 20)
        engine.act(a, "confirm_resize")
        engine.run_until_idle()
        assert node() == (2, 2 + 1, 4096 + 2048 + 512, 40 + 20)
        engine.act(b, "delete")
        engine.run_until_idle()
        assert node() == (1, 2, 4096 + 512, 40)
        engine.updater.rebuild()
        assert node() == (1, 2, 4096 + 512, 40)


def test_the_simulators_call_record_is_bounded() -> None:
    sim = Simulator()
    for i in range(10_050):
        sim.observe(f"srv-{i}")
    assert len(sim.calls) == 10_000
    assert sim.calls[-1] == ("observe", "srv-10049")
    assert sim.calls[0] == ("observe", "srv-50")
    with pytest.raises(ValueError):
        Simulator(calls_kept=-1)


def test_many_sync_passes_keep_the_simulators_memory_bounded(tmp_path: Path) -> None:
    sim = Simulator(calls_kept=50)
    with Engine(f"sqlite:///{tmp_path / 'soak.db'}", hypervisor=sim) as engine:
        servers = [built(engine, f"vm-{i}") for i in range(3)]
        for _ in range(40):  # 120 observations
            engine.sync_power_states()
        assert len(sim.calls) == 50
        assert list(sim.calls)[-3:] == [("observe", s) for s in sorted(servers)]


def test_a_sync_pass_in_batches_compares_every_server(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_module, "SYNC_BATCH", 2)
    sim = Simulator()
    with Engine(f"sqlite:///{tmp_path / 'sync.db'}", hypervisor=sim) as engine:
        servers = sorted(built(engine, f"vm-{i}") for i in range(5))
        for server in (servers[0], servers[3], servers[4]):  # in the first, second, last
            sim.set_power_state(server, PowerState.SHUTDOWN)
        sim.calls.clear()
        assert engine.sync_power_states() == 3
        assert [c for c in sim.calls if c[0] == "observe"][:5] == [
            ("observe", s) for s in servers]
        assert {s: engine.get_server(s).status for s in servers} == {
            s: "SHUTOFF" if s in (servers[0], servers[3], servers[4]) else "ACTIVE"
            for s in servers}


def test_a_projects_usage_follows_every_change_and_a_rebuild(url: str, clock: FakeClock
                                                             ) -> None:
    with Engine(url, clock=clock) as engine:
        project = engine.service.admin_context().project_id

        def usage() -> tuple[int, int, int]:
            found = engine.quota_usage(project)
            return found["instances"], found["cores"], found["ram"]

        a, b = built(engine, "a"), built(engine, "b")
        assert usage() == (2, 2, 2 * 2048)
        engine.act(a, "resize", flavor="m1.medium")  # the larger flavor counts meanwhile
        engine.run_until_idle()
        assert usage() == (2, 2 + 1, 4096 + 2048)
        engine.act(a, "revert_resize")
        engine.run_until_idle()
        assert usage() == (2, 2, 2 * 2048)
        engine.act(b, "delete")
        engine.run_until_idle()
        assert usage() == (1, 1, 2048)
        engine.updater.rebuild()
        assert usage() == (1, 1, 2048)


def test_a_database_folded_before_the_sums_were_kept(tmp_path: Path, clock: FakeClock
                                                     ) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    with Engine(url, clock=clock) as engine:
        project = engine.service.admin_context().project_id
        built(engine, "a"), built(engine, "b")
        # as a database written before the sums were kept: no sums, no marker
        with engine.view.transaction() as curs:
            for table in ("vmledger_project_usage", "vmledger_project_usage_kept",
                          "vmledger_host_usage"):
                curs.execute(f"DROP TABLE {table}")
    with Engine(url, clock=clock) as engine:
        assert engine.quota_usage(project)["instances"] == 2  # summed from the servers
        [node] = engine.hypervisors()
        assert (node["running_vms"], node["vcpus_used"]) == (2, 2)
        built(engine, "c")  # the first write sums them once, then keeps them
        assert engine.quota_usage(project)["instances"] == 3
        assert [r["instances"] for r in engine.view.query(
            "SELECT instances FROM vmledger_project_usage")] == [3]
        [node] = engine.hypervisors()
        assert (node["running_vms"], node["vcpus_used"]) == (3, 3)


def test_required_literals_of_regular_expressions() -> None:
    literals = server_filters.required_literals
    assert literals(re.compile("ench-12")) == ["ench-12"]
    assert literals(re.compile("web-\\d+x")) == ["web-", "x"]
    assert literals(re.compile("(web)-1")) == ["web", "-1"]
    assert literals(re.compile("web(-1)+z")) == ["web", "-1", "z"]
    assert literals(re.compile("web(-1)*z")) == ["web", "z"]  # the group may be absent
    assert literals(re.compile("web-1?")) == ["web-"]
    assert literals(re.compile("web|db")) == []
    assert literals(re.compile("(?i)web")) == []
    assert literals(re.compile("(?i:w)eb")) == ["eb"]
    assert literals(re.compile("web(?=x)")) == ["web"]


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.sampled_from([
    "a", "b", "c", "ab", "abc", "-", ".", "\\d", "[ab]", "a?", "b*", "c+", "(ab)", "(a|bc)",
    "(?:abc)?", "(?i:b)", "x{0,2}", "(bc){2}", "^", "$", "\\b", "(?=a)", "(?!c)"]),
    min_size=1, max_size=6),
    texts=st.lists(st.text(alphabet="abcxAB-1 ", max_size=12), min_size=1, max_size=30))
def test_every_match_holds_the_required_literals(parts: list[str], texts: list[str]) -> None:
    # never a wrong exclusion: whatever the expression finds something in holds every
    # literal said to be required
    pattern = re.compile("".join(parts))
    required = server_filters.required_literals(pattern)
    for text in texts:
        if pattern.search(text):
            assert all(literal in text for literal in required), (pattern, text, required)


def test_a_pattern_without_a_prefix_is_read_through_the_name_grams(
        fleet: tuple[Engine, ApiClient, list[str]]) -> None:
    engine, client, _ = fleet
    plans = _plans(engine, lambda: _names(client, name="eb-1$"))
    scans = [p for p in plans if "p_name" in p]
    assert scans and all("SEARCH g USING PRIMARY KEY (gram=?)" in p for p in scans), plans
    assert _names(client, name="eb-1$") == [
        n for n in reversed(NAMES) if re.search("eb-1$", n)]


def test_the_name_grams_follow_renames_and_index_an_older_database(
        tmp_path: Path, clock: FakeClock) -> None:
    url = f"sqlite:///{tmp_path / 'grams.db'}"
    with Engine(url, clock=clock) as engine:
        client = ApiClient(create_app(engine))
        first = built(engine, "alpha-one")
        built(engine, "beta-two")
        assert _names(client, name="pha-on") == ["alpha-one"]
        renamed = client.put(f"/v2.1/servers/{first}", json={"server": {"name": "gamma-3"}})
        assert renamed.status_code == 200, renamed.text
        assert _names(client, name="pha-on") == []
        assert _names(client, name="mma-3") == ["gamma-3"]
        # a database folded before the grams were kept
        engine.view.execute("DROP TABLE vmledger_name_grams")
        engine.view.execute("DROP TABLE vmledger_name_grams_ready")
        assert _names(client, name="ta-tw") == ["beta-two"]  # scanned, as before
    with Engine(url, clock=clock) as engine:
        client = ApiClient(create_app(engine))
        assert engine.view.query("SELECT COUNT(*) AS n FROM vmledger_name_grams")[0]["n"] > 0
        assert _names(client, name="ta-tw") == ["beta-two"]
        assert _names(client, name="mma-3") == ["gamma-3"]


def test_the_name_grams_answer_as_a_scan_on_both_backends(url: str, clock: FakeClock,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    with Engine(url, clock=clock) as engine:
        for name in NAMES:
            built(engine, name)
            clock.advance(seconds=1)
        client = ApiClient(create_app(engine))
        assert engine.view.query("SELECT COUNT(*) AS n FROM vmledger_name_grams")[0]["n"] > 0
        # each gram counted exactly, weighed by how far back its newest rows reach, or
        # too common (the page's order)
        for sample, sparser in ((64, 2), (1, 1), (1, 1000)):
            monkeypatch.setattr(ServerQueries, "GRAM_SAMPLE", sample)
            monkeypatch.setattr(ServerQueries, "GRAM_SPARSER", sparser)
            for regex in ("eb-1", "eb-1$", "we.-1", "(web)-1", "ébé", "che-w", "web-1|db"):
                expected = [n for n in reversed(NAMES) if re.search(regex, n)]
                assert _names(client, name=regex) == expected, (regex, sample, sparser)
                first = client.get("/v2.1/servers", params={"name": regex, "limit": 1})
                assert [s["name"] for s in first.json()["servers"]] == expected[:1], regex
                # and page by page, each after the last one's marker
                paged: list[str] = []
                marker: str | None = None
                while True:
                    params = {"name": regex, "limit": 2, **({"marker": marker} if marker
                                                             else {})}
                    page = client.get("/v2.1/servers", params=params)
                    assert page.status_code == 200, page.text
                    servers = page.json()["servers"]
                    paged += [s["name"] for s in servers]
                    if len(servers) < 2:
                        break
                    marker = servers[-1]["id"]
                assert paged == expected, (regex, sample, sparser)


def test_a_long_literal_weighs_a_few_of_its_grams(fleet: tuple[Engine, ApiClient, list[str]]
                                                  ) -> None:
    engine, client, _ = fleet
    long_name = "a-rather-long-server-name-" * 8
    built(engine, long_name)
    regex = long_name[5:150]  # no metacharacter: a literal of 145 characters
    plans = _plans(engine, lambda: _names(client, name=regex))
    weighed = [p for p in plans if "vmledger_name_grams WHERE gram = ?" in p]
    assert len(weighed) <= ServerQueries.GRAMS_WEIGHED + 1, plans
    assert _names(client, name=regex) == [long_name]


def test_a_rebuild_keeps_the_name_grams(url: str, clock: FakeClock) -> None:
    with Engine(url, clock=clock) as engine:
        client = ApiClient(create_app(engine))
        built(engine, "alpha-one")
        before = engine.view.query("SELECT gram, at, sid FROM vmledger_name_grams"
                                   " ORDER BY gram, at, sid")
        engine.updater.rebuild()
        after = engine.view.query("SELECT gram, at, sid FROM vmledger_name_grams"
                                  " ORDER BY gram, at, sid")
        assert [tuple(r[k] for k in ("gram", "at", "sid")) for r in after] == [
            tuple(r[k] for k in ("gram", "at", "sid")) for r in before]
        assert engine.view.query("SELECT ready FROM vmledger_name_grams_ready")
        built(engine, "beta-two")  # the triggers are back
        assert _names(client, name="ta-tw") == ["beta-two"]
        assert engine.view.query("SELECT COUNT(*) AS n FROM vmledger_name_grams"
                                 " WHERE gram = 'ta-'")[0]["n"] == 1


def test_postgres_plans_with_statistics_after_a_rebuild_and_an_upgrade(
        postgres_url: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    # a table filled at once has no statistics until autovacuum's analyze: PostgreSQL's
    # planner then takes it for nearly empty and may read a gram scan or a name prefix
    # through the page index, every server of the scope
    def analyzed(engine: Engine, suffix: str) -> set[str]:
        rows = engine.view.query(
            "SELECT DISTINCT tablename FROM pg_stats WHERE tablename IN (?, ?)",
            [f"vmledger_servers{suffix}", f"vmledger_name_grams{suffix}"])
        return {str(r["tablename"]) for r in rows}

    with Engine(postgres_url, clock=clock) as engine:
        for name in NAMES:
            built(engine, name)
        engine.updater.rebuild()
        assert analyzed(engine, "") == {"vmledger_servers", "vmledger_name_grams"}
    from tests.test_layout_upgrade import NEW, new_release  # a release of another layout
    new_release(monkeypatch)
    with Engine(postgres_url, clock=clock) as engine:
        assert engine.updater.upgrade(grace=0).to_switch is not None
        assert analyzed(engine, "_v99") == {"vmledger_servers_v99", "vmledger_name_grams_v99"}
        assert engine.view.serving.name == NEW

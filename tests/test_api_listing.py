"""``GET /servers[/detail]``: changes-since/before, deleted, all_tenants, unknown parameters,
sorting and filters as Nova; ETag and ``If-None-Match`` on ``GET /servers/{id}``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from vmledger import Engine, FakeClock
from vmledger.api import create_app
from vmledger.api.testing import ApiClient
from vmledger.domain.catalog import image_id_for

IMAGE = image_id_for("cirros-0.6.2-x86_64")


@pytest.fixture
def client(memory_engine: Engine) -> ApiClient:
    return ApiClient(create_app(memory_engine))


def mv(version: str) -> dict[str, str]:
    return {"OpenStack-API-Version": f"compute {version}"}


def create(client: ApiClient, engine: Engine, name: str = "vm", project: str = "a1",
           **extra: Any) -> str:
    r = client.post(f"/v2.1/{project}/servers", json={"server": {
        "name": name, "flavorRef": "1", "imageRef": IMAGE, "networks": "none",
        **extra}}, headers=mv("2.52"))
    assert r.status_code == 202, r.text
    engine.run_until_idle()
    return str(r.json()["server"]["id"])


def listing(client: ApiClient, query: str = "", version: str = "2.1", project: str = "a1",
            detail: bool = True, status: int = 200) -> list[dict[str, Any]]:
    path = "servers/detail" if detail else "servers"
    r = client.get(f"/v2.1/{project}/{path}?{query}", headers=mv(version))
    assert r.status_code == status, r.text
    servers: list[dict[str, Any]] = r.json().get("servers", [])
    return servers


def ids(client: ApiClient, query: str = "", version: str = "2.1", project: str = "a1"
        ) -> list[str]:
    return [s["id"] for s in listing(client, query, version, project)]


def error(client: ApiClient, query: str, version: str = "2.1", code: int = 400) -> str:
    r = client.get(f"/v2.1/a1/servers/detail?{query}", headers=mv(version))
    assert r.status_code == code, r.text
    fault = next(iter(r.json().values()))
    assert fault["code"] == code
    return str(fault["message"])


def stamp(clock: FakeClock, delta: timedelta = timedelta(0)) -> str:
    return (clock.now() + delta).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- changes-since / changes-before / deleted ----------------------------------------------
def test_changes_since_includes_deleted_servers(client: ApiClient, memory_engine: Engine,
                                                clock: FakeClock) -> None:
    old = create(client, memory_engine, "old")
    clock.advance(hours=1)
    since = stamp(clock)
    clock.advance(minutes=1)
    doomed = create(client, memory_engine, "doomed")
    fresh = create(client, memory_engine, "fresh")
    assert client.delete(f"/v2.1/a1/servers/{doomed}").status_code == 204
    memory_engine.run_until_idle()

    assert set(ids(client)) == {old, fresh}
    found = listing(client, f"changes-since={since}")
    assert {s["id"]: s["status"] for s in found} == {doomed: "DELETED", fresh: "ACTIVE"}
    assert set(ids(client, f"changes-since={since}&deleted=false")) == {fresh}
    assert ids(client, f"changes-since={stamp(clock, timedelta(days=1))}") == []
    # with an offset and with fractions
    assert set(ids(client, "changes-since=2025-12-31T23:00:00.5%2B00:00")) == {
        old, doomed, fresh}


@pytest.mark.parametrize("value", ["yesterday", "2026-13-01T00:00:00Z", "", "12:00"])
def test_bad_changes_since_is_400(client: ApiClient, value: str) -> None:
    message = error(client, f"changes-since={value}")
    assert message == (f"Invalid input for query parameters changes-since. Value: {value}. "
                       f"'{value}' is not a 'date-time'")


def test_changes_before_from_2_66(client: ApiClient, memory_engine: Engine, clock: FakeClock
                                  ) -> None:
    early = create(client, memory_engine, "early")
    clock.advance(hours=1)
    middle = stamp(clock)
    clock.advance(hours=1)
    late = create(client, memory_engine, "late")
    assert ids(client, f"changes-before={middle}", "2.66") == [early]
    # unknown before 2.66: dropped (2.1-2.74)
    assert set(ids(client, f"changes-before={middle}", "2.65")) == {early, late}
    assert ids(client, f"changes-since={middle}&changes-before={stamp(clock)}", "2.66") == [
        late]
    message = error(client, f"changes-since={stamp(clock)}&changes-before={middle}", "2.66")
    assert message == ("The value of changes-since must be less than or equal to "
                       "changes-before.")
    assert "changes-before" in error(client, "changes-before=nope", "2.66")


def test_deleted_filter_for_admins(client: ApiClient, memory_engine: Engine) -> None:
    kept = create(client, memory_engine, "kept")
    gone = create(client, memory_engine, "gone")
    client.delete(f"/v2.1/a1/servers/{gone}")
    memory_engine.run_until_idle()
    assert ids(client, "deleted=true") == [gone]
    assert ids(client, "deleted=True&status=DELETED") == [gone]
    assert ids(client, "status=DELETED") == [gone]
    assert ids(client, "deleted=false") == [kept]
    assert ids(client, "deleted=junk") == [kept]  # lenient: unknown means false
    [server] = listing(client, "deleted=true")
    assert server["status"] == "DELETED"
    assert server["OS-EXT-STS:vm_state"] == "deleted"
    # a deleted server is still not found by id
    assert client.get(f"/v2.1/a1/servers/{gone}").status_code == 404


# --- all_tenants ------------------------------------------------------------------------------
def test_all_tenants_for_admins(client: ApiClient, memory_engine: Engine) -> None:
    mine = create(client, memory_engine, "mine", project="a1")
    theirs = create(client, memory_engine, "theirs", project="a2")
    assert ids(client) == [mine]
    assert set(ids(client, "all_tenants=1")) == {mine, theirs}
    assert set(ids(client, "all_tenants")) == {mine, theirs}  # the empty string is true
    assert ids(client, "all_tenants=0") == [mine]
    assert ids(client, "all_tenants=1&tenant_id=a2") == [theirs]
    assert ids(client, "all_tenants=1&project_id=a2") == [theirs]
    assert ids(client, "tenant_id=a2") == [mine]  # ignored without all_tenants
    assert error(client, "all_tenants=maybe").startswith(
        "Invalid input received: Unrecognized value 'maybe', acceptable values are:")


# --- unknown and not-permitted parameters -----------------------------------------------------
def test_unknown_parameters_dropped_before_2_75_and_400_from_2_75(
        client: ApiClient, memory_engine: Engine) -> None:
    sid = create(client, memory_engine)
    assert ids(client, "bogus=1", "2.74") == [sid]
    assert ids(client, "bogus=1&name=vm", "2.74") == [sid]
    assert error(client, "bogus=1", "2.75") == (
        "Additional properties are not allowed ('bogus' was unexpected)")
    assert error(client, "b=1&a=2", "2.96") == (
        "Additional properties are not allowed ('a', 'b' were unexpected)")
    # known parameters stay accepted at 2.75+
    assert ids(client, "deleted=False&name=vm&limit=5&sort_key=display_name", "2.96") == [sid]


@pytest.mark.parametrize("key", ["metadata", "security_groups", "_internal"])
def test_joined_table_and_private_filters_are_400_for_admins(client: ApiClient, key: str
                                                             ) -> None:
    assert error(client, f"{key}=x") == f"Invalid filter field: {key}."
    assert error(client, f"{key}=x", "2.96") == f"Invalid filter field: {key}."


def test_sort_keys(client: ApiClient, memory_engine: Engine, clock: FakeClock) -> None:
    b = create(client, memory_engine, "b")
    clock.tick()
    a = create(client, memory_engine, "a")
    assert ids(client) == [a, b]  # created_at desc
    assert ids(client, "sort_key=display_name&sort_dir=asc") == [a, b]
    assert ids(client, "sort_key=display_name&sort_dir=desc") == [b, a]
    assert ids(client, "sort_key=vcpus") == [a, b]  # legacy key, ignored before 2.75
    assert "sort_key" in error(client, "sort_key=vcpus", "2.75")
    assert "sort_key" in error(client, "sort_key=bogus")
    assert "sort_dir" in error(client, "sort_dir=up")
    assert ids(client, "sort_key=locked&sort_key=display_name&sort_dir=asc", "2.73") == [a, b]


# --- filters ------------------------------------------------------------------------------------
def test_filters(client: ApiClient, memory_engine: Engine) -> None:
    tagged = create(client, memory_engine, "web", tags=["red", "blue"])
    plain = create(client, memory_engine, "db")
    assert client.post(f"/v2.1/a1/servers/{plain}/action",
                       json={"lock": None}).status_code == 202
    assert ids(client, "tags=red,blue", "2.26") == [tagged]
    assert ids(client, "tags=red,green", "2.26") == []
    assert ids(client, "tags-any=green,blue", "2.26") == [tagged]
    assert ids(client, "not-tags=red", "2.26") == [plain]
    assert ids(client, "not-tags-any=blue,x", "2.26") == [plain]
    assert ids(client, "locked=true", "2.73") == [plain]
    assert ids(client, "locked=0", "2.73") == [tagged]
    assert "Unrecognized value 'x'" in error(client, "locked=x", "2.73")
    assert set(ids(client, "flavor=1")) == {tagged, plain}
    assert ids(client, "flavor=999") == []
    assert ids(client, "image=" + IMAGE, "2.1") != []
    assert ids(client, "uuid=" + plain) == [plain]
    assert ids(client, "vm_state=active&name=web") == [tagged]
    assert ids(client, f"host={memory_engine.host}&name=db") == [plain]
    addr = listing(client, "name=db")[0]["addresses"]
    first = next(iter(addr.values()))[0]["addr"]
    assert ids(client, f"ip=^{first}$") == [plain]


# --- ETag ---------------------------------------------------------------------------------------
def test_etag_and_if_none_match(client: ApiClient, memory_engine: Engine, clock: FakeClock) -> None:
    sid = create(client, memory_engine)
    r = client.get(f"/v2.1/a1/servers/{sid}")
    tag = r.headers["etag"]
    assert tag.startswith('"') and tag.endswith('"')
    assert client.get(f"/v2.1/a1/servers/{sid}").headers["etag"] == tag  # stable
    r = client.get(f"/v2.1/a1/servers/{sid}", headers={"If-None-Match": tag})
    assert r.status_code == 304
    assert r.content == b""
    assert r.headers["etag"] == tag
    assert r.headers["x-openstack-nova-api-version"] == "2.1"
    assert client.get(f"/v2.1/a1/servers/{sid}",
                      headers={"If-None-Match": f'"nope", W/{tag}'}).status_code == 304
    assert client.get(f"/v2.1/a1/servers/{sid}",
                      headers={"If-None-Match": "*"}).status_code == 304
    # another microversion is another representation
    other = client.get(f"/v2.1/a1/servers/{sid}", headers={**mv("2.96"), "If-None-Match": tag})
    assert other.status_code == 200 and other.headers["etag"] != tag
    # a change makes a new version
    clock.tick()
    assert client.post(f"/v2.1/a1/servers/{sid}/action",
                       json={"os-stop": None}).status_code == 202
    r = client.get(f"/v2.1/a1/servers/{sid}", headers={"If-None-Match": tag})
    assert r.status_code == 200 and r.headers["etag"] != tag
    assert r.json()["server"]["OS-EXT-STS:task_state"] == "powering-off"


# --- the rendered-server cache and paging in SQL -------------------------------------------
def test_a_list_shows_every_change_although_renders_are_cached(
        client: ApiClient, memory_engine: Engine) -> None:
    sid = create(client, memory_engine, "before")
    assert [s["name"] for s in listing(client)] == ["before"]
    r = client.put(f"/v2.1/a1/servers/{sid}", json={"server": {"name": "after"}})
    assert r.status_code == 200
    assert [s["name"] for s in listing(client)] == ["after"]
    client.post(f"/v2.1/a1/servers/{sid}/action", json={"pause": None})
    memory_engine.run_until_idle()
    assert [s["status"] for s in listing(client)] == ["PAUSED"]
    assert [s["name"] for s in listing(client, detail=False)] == ["after"]


def test_cached_renders_are_per_microversion_admin_and_link_base(memory_engine: Engine) -> None:
    """One app, one server: each viewer gets its own shape, and the same as uncached."""
    from vmledger.api.microversions import APIVersion
    from vmledger.api.rendering import RenderCache
    from vmledger.api.views import Links, Viewer, server_view

    app = create_app(memory_engine, auth="token", tokens=["admin-t:alice:a1:admin",
                                                   "user-t:bob:a1:member"])
    client = ApiClient(app)
    r = client.post("/v2.1/servers", json={"server": {
        "name": "vm", "flavorRef": "1", "imageRef": IMAGE, "networks": "none"}},
        headers={"X-Auth-Token": "user-t", **mv("2.52")})
    assert r.status_code == 202
    memory_engine.run_until_idle()
    doc = memory_engine.view.rows(project_id="a1")[0].doc
    for _ in range(2):  # the second round is served from the cache
        for token, admin in (("admin-t", True), ("user-t", False)):
            for version in ("2.1", "2.47", "2.96"):
                for base, prefix in (("http://testserver", "/v2.1"),
                                     ("http://testserver", "/v2.1/a1")):
                    got = client.get(f"{prefix}/servers/detail", headers={
                        "X-Auth-Token": token, **mv(version)}).json()["servers"]
                    major, minor = version.split(".")
                    links = Links(base, "a1" if prefix.endswith("a1") else None)
                    states = tuple(sorted(memory_engine.host_statuses().items()))
                    want = server_view(doc, Viewer(APIVersion(int(major), int(minor)),
                                                   links, is_admin=admin,
                                                   host_states=states if admin else None))
                    assert got == [want], (token, version, prefix)
    cache = app.state.renders
    assert isinstance(cache, RenderCache) and cache.hits >= 12 and len(cache) == 12


def test_the_cache_is_bounded() -> None:
    from vmledger.api.microversions import APIVersion
    from vmledger.api.rendering import RenderCache
    from vmledger.api.views import Links, Viewer
    from vmledger.projections.server_queries import StoredServer

    cache = RenderCache(capacity=3)
    viewer = Viewer(APIVersion(2, 1), Links("http://x"))
    calls: list[str] = []

    def render(doc: dict[str, Any], _: Viewer) -> dict[str, Any]:
        calls.append(doc["id"])
        return {"id": doc["id"]}

    rows = [StoredServer.of({"id": str(i), "version": 1}) for i in range(5)]
    for row in rows:
        assert cache.render(row, viewer, render) == b'{"id":"%s"}' % row.id.encode()
    assert len(cache) == 3
    cache.render(rows[4], viewer, render)  # still cached
    cache.render(rows[0], viewer, render)  # evicted first: rendered again
    assert calls == ["0", "1", "2", "3", "4", "0"]


def test_marker_pages_walk_every_server_once_with_equal_creation_times(
        client: ApiClient, memory_engine: Engine) -> None:
    """Servers created in the same instant are ordered by id; a marker continues after it
    (the page is read in SQL from the marker's place, deleted servers as the query asks)."""
    # the fake clock stands still
    made = [create(client, memory_engine, f"vm-{i}") for i in range(7)]
    client.delete(f"/v2.1/a1/servers/{made[3]}")
    memory_engine.run_until_idle()
    every = ids(client)
    assert sorted(every) == sorted(set(made) - {made[3]}) and every == sorted(every, reverse=True)
    seen: list[str] = []
    marker = ""
    while True:
        page = ids(client, f"limit=2{marker}")
        seen += page
        if len(page) < 2:
            break
        marker = f"&marker={page[-1]}"
    assert seen == every
    # a deleted server is no marker for a list without deleted servers...
    assert "not found" in error(client, f"marker={made[3]}")
    # ...but is for one that includes them (admin: deleted=true lists only the deleted)
    both = ids(client, "deleted=true")
    assert both == [made[3]]
    after = ids(client, f"changes-since=2000-01-01T00:00:00Z&marker={made[3]}", "2.66")
    everything = ids(client, "changes-since=2000-01-01T00:00:00Z", "2.66")
    assert after == everything[everything.index(made[3]) + 1:]


def test_rows_read_without_documents_get_them_as_they_are_now(
        client: ApiClient, memory_engine: Engine) -> None:
    first, second = create(client, memory_engine, "one"), create(client, memory_engine, "two")
    rows = memory_engine.server_rows(docs=False)
    assert {r.id for r in rows} == {first, second} and not any(r.loaded for r in rows)
    with pytest.raises(LookupError):
        _ = rows[0].doc
    before = {r.id: r.version for r in rows}
    client.put(f"/v2.1/a1/servers/{first}", json={"server": {"name": "renamed"}})
    # as a rebuild
    memory_engine.view.execute("DELETE FROM vmledger_servers WHERE id = ?", [second])
    memory_engine.fill_server_docs(rows)
    by_id = {r.id: r for r in rows}
    assert by_id[first].loaded and by_id[first].doc["name"] == "renamed"
    assert by_id[first].version > before[first]
    assert not by_id[second].loaded
    # a list never shows a server that left the view, and renders the others as they are
    assert [s["name"] for s in listing(client)] == ["renamed"]


@pytest.mark.parametrize("keys", [
    [("display_name", "asc")], [("display_name", "desc")], [("vm_state", "asc")],
    [("vm_state", "desc"), ("display_name", "asc")], [("updated_at", "desc")],
    [("created_at", "asc")], [("host", "asc"), ("uuid", "desc")], [("task_state", "asc")],
    [("project_id", "desc"), ("display_name", "desc")],
])
def test_sorting_on_columns_equals_sorting_documents(
        client: ApiClient, memory_engine: Engine, clock: FakeClock,
        keys: list[tuple[str, str]]) -> None:
    """Sorts on the view's columns (no document decoded) give the order the documents
    give: a filter that looks inside documents but keeps everything takes that path."""
    made = []
    for i, name in enumerate(["b", "a", "c", "a", "B", "d"]):
        made.append(create(client, memory_engine, name))
        if i % 2:
            clock.tick()
    client.post(f"/v2.1/a1/servers/{made[0]}/action", json={"pause": None})
    client.post(f"/v2.1/a1/servers/{made[2]}/action", json={"os-stop": None})
    memory_engine.run_until_idle()
    client.post(f"/v2.1/a1/servers/{made[3]}/action", json={"suspend": None})  # in flight
    query = "&".join(f"sort_key={k}&sort_dir={d}" for k, d in keys)
    by_columns = ids(client, query, "2.73")
    by_documents = ids(client, query + "&locked=false", "2.73")
    assert sorted(by_columns) == sorted(made) and by_columns == by_documents
    # paging with a marker walks the same order
    walked: list[str] = []
    marker = ""
    while True:
        page = ids(client, f"{query}&limit=2{marker}", "2.73")
        walked += page
        if len(page) < 2:
            break
        marker = f"&marker={page[-1]}"
    assert walked == by_columns


@pytest.mark.parametrize("query", [
    "status=ACTIVE", "status=PAUSED&status=SHUTOFF", "status=REBOOT", "status=SUSPENDED",
    "changes-since={t1}", "changes-before={t1}", "changes-since={t0}&changes-before={t1}",
    "status=ACTIVE&changes-since={t1}", "status=DELETED", "deleted=true&status=ACTIVE",
    "sort_key=display_name&status=ACTIVE", "sort_key=updated_at&changes-since={t1}",
    "name=vm-[0-3]", "name=^vm-1$&status=ACTIVE", "name=vm&sort_key=display_name",
    "name=(", "host=compute-1", "host=elsewhere", "node=comp", "vm_state=paused",
    "task_state=rebooting", "uuid={made2}", "name=vm-&changes-since={t1}",
    "all_tenants=1&project_id=a1&name=vm-5", "all_tenants=1&name=vm&deleted=true",
])
def test_column_filters_equal_document_filters(client: ApiClient, memory_engine: Engine,
                                               clock: FakeClock, query: str) -> None:
    """Status, update-time, name, host, state, uuid and project filters answered from
    the view's columns select what the documents select (a document filter that keeps
    everything takes the other path)."""
    made = [create(client, memory_engine, f"vm-{i}") for i in range(6)]
    t0 = stamp(clock)
    clock.advance(timedelta(seconds=2))
    client.post(f"/v2.1/a1/servers/{made[0]}/action", json={"pause": None})
    client.post(f"/v2.1/a1/servers/{made[1]}/action", json={"os-stop": None})
    memory_engine.run_until_idle()
    clock.advance(timedelta(seconds=2))
    t1 = stamp(clock)
    clock.advance(timedelta(seconds=2))
    client.post(f"/v2.1/a1/servers/{made[2]}/action", json={"reboot": {"type": "SOFT"}})
    client.post(f"/v2.1/a1/servers/{made[3]}/action", json={"suspend": None})
    memory_engine.run_until_idle()
    client.post(f"/v2.1/a1/servers/{made[4]}/action", json={"reboot": {"type": "HARD"}})
    client.delete(f"/v2.1/a1/servers/{made[5]}")
    memory_engine.run_until_idle()
    client.post(f"/v2.1/a1/servers/{made[4]}/action", json={"reboot": {"type": "SOFT"}})
    q = query.format(t0=t0, t1=t1, made2=made[2])
    by_columns = ids(client, q, "2.73")
    by_documents = ids(client, q + "&locked=false", "2.73")
    assert by_columns == by_documents
    limited = ids(client, q + "&limit=1", "2.73")
    assert limited == by_columns[:1]


def test_name_and_host_filters_on_columns_on_both_backends(url: str) -> None:
    """The column path of name/host filters (patterns applied to the column in Python,
    exact values in SQL) selects, pages and limits as the document path, on SQLite and
    PostgreSQL alike."""
    with Engine(url, clock=FakeClock()) as engine:
        client = ApiClient(create_app(engine))
        made = [create(client, engine, name) for name in
                ("web-1", "web-2", "db-1", "web-10", "Web-3", "cache")]
        for query in ("name=web", "name=^web-1", "name=[", "host=compute-1",
                      "host=compute-1&name=db", "name=web&limit=2", "host="):
            by_columns = ids(client, query)
            assert by_columns == ids(client, query + "&locked=false")
            if "limit" not in query and query not in ("name=[", "host="):
                assert by_columns, query
        assert sorted(ids(client, "name=web")) == sorted(made[i] for i in (0, 1, 3))
        first = ids(client, "name=web&limit=2")
        rest = ids(client, f"name=web&marker={first[-1]}")
        assert first + rest == ids(client, "name=web")

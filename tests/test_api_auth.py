"""Auth modes: fixed tokens (401, 403 for non-admins, projects kept apart), the minimal
Keystone v3 endpoint, the Glance shim, and how non-administrators see servers and
instance actions."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from vmledger import Engine
from vmledger.api import create_app
from vmledger.api.auth import Account, AuthSettings, Identity, parse_token_spec, parse_user_spec
from vmledger.api.testing import ApiClient
from vmledger.domain.catalog import image_id_for

IMAGE = image_id_for("cirros-0.6.2-x86_64")
ADMIN = {"X-Auth-Token": "admin-secret"}
ALICE = {"X-Auth-Token": "alice-secret"}
BOB = {"X-Auth-Token": "bob-secret"}
TOKENS = ["admin-secret:root:ops:admin,member", "alice-secret:alice:a1:member",
          "bob-secret:bob:a2:"]
USERS = ["admin:s3cret:ops:admin", "carol:pa:ss:a1:member"]


@pytest.fixture
def client(system_clock_engine: Engine) -> ApiClient:
    return ApiClient(create_app(system_clock_engine, auth="token", tokens=TOKENS))


@pytest.fixture
def keystone(system_clock_engine: Engine) -> ApiClient:
    return ApiClient(create_app(system_clock_engine, auth="keystone", users=USERS,
                                tokens=["admin-secret:root:ops:admin"]))


def mv(version: str, token: dict[str, str]) -> dict[str, str]:
    return {"X-OpenStack-Nova-API-Version": version, **token}


def create(client: ApiClient, engine: Engine, token: dict[str, str], name: str = "vm") -> str:
    r = client.post("/v2.1/servers", headers=token, json={"server": {
        "name": name, "flavorRef": "1", "imageRef": IMAGE}})
    assert r.status_code == 202, r.text
    engine.run_until_idle()
    return str(r.json()["server"]["id"])


# --- specs and settings --------------------------------------------------------------------
def test_specs() -> None:
    assert parse_token_spec("t:u:p:admin,member") == (
        "t", Identity("u", "p", ("admin", "member")))
    assert parse_token_spec("a:b:u:p:") == ("a:b", Identity("u", "p", ()))
    account = parse_user_spec("carol:pa:ss:a1:member")
    assert (account.name, account.password, account.project_id, account.roles) == (
        "carol", "pa:ss", "a1", ("member",))
    assert "pa:ss" not in repr(account)
    for bad in ("t:u:p", "t::p:r", ":u:p:r"):
        with pytest.raises(ValueError):
            parse_token_spec(bad)
    for bad in ("u::p:r", "u:pw::r", "u:pw:p"):
        with pytest.raises(ValueError):
            parse_user_spec(bad)


@pytest.mark.parametrize(("mode", "kwargs"), [
    ("kerberos", {}),
    ("token", {}),
    ("token", {"tokens": TOKENS, "users": USERS}),
    ("keystone", {}),
    ("noauth", {"tokens": TOKENS}),
])
def test_settings_that_do_not_fit_are_refused(system_clock_engine: Engine, mode: str,
                                              kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        create_app(system_clock_engine, auth=mode, **kwargs)


def test_settings_object_and_mapping(system_clock_engine: Engine) -> None:
    settings = AuthSettings.build("token", tokens={"t": Identity("u", "a1", ("admin",))})
    client = ApiClient(create_app(system_clock_engine, auth=settings))
    assert client.get("/v2.1/servers", headers={"X-Auth-Token": "t"}).status_code == 200
    keystone = AuthSettings.build("keystone", users=[Account("u", "pw", "a1")])
    assert keystone.accounts["u"].check_password("pw")


# --- token mode -------------------------------------------------------------------------------
@pytest.mark.parametrize("headers", [{}, {"X-Auth-Token": "wrong"}, {"X-Auth-Token": ""}])
def test_missing_or_unknown_token_is_401(client: ApiClient, headers: dict[str, str]) -> None:
    for method, path in [("GET", "/v2.1/servers"), ("GET", "/v2.1/servers/detail"),
                         ("POST", "/v2.1/servers"), ("GET", "/v2.1/flavors"),
                         ("GET", "/v2.1/a1/servers/x/os-instance-actions"),
                         ("DELETE", "/v2.1/servers/x")]:
        r = client.request(method, path, headers={**headers, **mv("2.60", {})})
        assert r.status_code == 401, (method, path)
        assert r.json() == {"unauthorized": {
            "code": 401, "message": "The request you have made requires authentication."}}
        assert r.headers["www-authenticate"] == (
            'Keystone uri="http://testserver/identity/v3"')
        assert r.headers["x-openstack-nova-api-version"] == "2.60"
        assert r.headers["x-compute-request-id"].startswith("req-")


def test_version_documents_need_no_token(client: ApiClient) -> None:
    for path in ("/", "/v2.1", "/v2.1/", "/identity", "/identity/v3", "/image"):
        assert client.get(path).status_code in (200, 300), path
    # the Keystone token route exists only in keystone mode
    assert client.post("/identity/v3/auth/tokens", json={}).status_code in (404, 405)


def test_tokens_map_to_user_project_and_roles(client: ApiClient,
                                              system_clock_engine: Engine) -> None:
    sid = create(client, system_clock_engine, ALICE)
    server = client.get(f"/v2.1/servers/{sid}", headers=ALICE).json()["server"]
    assert (server["user_id"], server["tenant_id"]) == ("alice", "a1")
    assert "OS-EXT-SRV-ATTR:host" not in server  # not an administrator
    assert client.get(f"/v2.1/a1/servers/{sid}", headers=ALICE).status_code == 200
    admin_view = client.get("/v2.1/servers/detail?all_tenants=1",
                            headers=ADMIN).json()["servers"]
    assert admin_view[0]["OS-EXT-SRV-ATTR:host"] == system_clock_engine.host


def test_url_project_must_be_the_tokens(client: ApiClient, system_clock_engine: Engine) -> None:
    r = client.get("/v2.1/a2/servers", headers=ALICE)
    assert r.status_code == 400
    assert r.json()["badRequest"]["message"] == (
        "Malformed request URL: URL's project_id 'a2' doesn't match Context's project_id "
        "'a1'")


def test_another_projects_server_is_404_everywhere(client: ApiClient,
                                                   system_clock_engine: Engine) -> None:
    sid = create(client, system_clock_engine, ALICE)
    rid = client.get(f"/v2.1/servers/{sid}/os-instance-actions",
                     headers=ALICE).json()["instanceActions"][0]["request_id"]
    message = f"Instance {sid} could not be found."
    for token in (BOB,):
        for method, path, body in [
                ("GET", f"/v2.1/servers/{sid}", None),
                ("PUT", f"/v2.1/servers/{sid}", {"server": {"name": "x"}}),
                ("POST", f"/v2.1/servers/{sid}/action", {"reboot": {"type": "SOFT"}}),
                ("POST", f"/v2.1/servers/{sid}/action", {"os-resetState": {"state": "error"}}),
                ("DELETE", f"/v2.1/servers/{sid}", None),
                ("GET", f"/v2.1/servers/{sid}/os-instance-actions", None),
                ("GET", f"/v2.1/servers/{sid}/os-instance-actions/{rid}", None)]:
            kwargs: dict[str, Any] = {"headers": token}
            if body is not None:
                kwargs["json"] = body
            r = client.request(method, path, **kwargs)
            assert r.status_code == 404, (token, method, path, r.text)
            assert r.json()["itemNotFound"]["message"] == message
    assert client.get("/v2.1/servers", headers=BOB).json() == {"servers": []}


def test_administrators_reach_every_projects_server(client: ApiClient, system_clock_engine: Engine
                                                    ) -> None:
    """Nova's default policies: a server is its project's members' or an
    administrator's, whatever project the administrator's token is for."""
    sid = create(client, system_clock_engine, ALICE)
    shown = client.get(f"/v2.1/servers/{sid}", headers=ADMIN)
    assert shown.status_code == 200 and shown.json()["server"]["tenant_id"] == "a1"
    r = client.put(f"/v2.1/servers/{sid}", headers=ADMIN, json={"server": {"name": "x"}})
    assert r.status_code == 200 and r.json()["server"]["name"] == "x"
    r = client.post(f"/v2.1/servers/{sid}/action", headers=ADMIN,
                    json={"os-resetState": {"state": "error"}})
    assert r.status_code == 202
    r = client.post(f"/v2.1/servers/{sid}/action", headers=ADMIN,
                    json={"reboot": {"type": "HARD"}})
    assert r.status_code == 202
    actions = client.get(f"/v2.1/servers/{sid}/os-instance-actions",
                         headers=ADMIN).json()["instanceActions"]
    assert [(a["action"], a["project_id"]) for a in actions][:2] == [
        ("reboot", "ops"), ("resetState", "ops")]  # who asked: the administrator
    rid = actions[0]["request_id"]
    r = client.get(f"/v2.1/servers/{sid}/os-instance-actions/{rid}", headers=ADMIN)
    assert r.status_code == 200
    assert client.delete(f"/v2.1/servers/{sid}", headers=ADMIN).status_code == 204


def test_non_admin_reset_state_is_403(client: ApiClient, system_clock_engine: Engine) -> None:
    sid = create(client, system_clock_engine, ALICE)
    r = client.post(f"/v2.1/servers/{sid}/action", headers=ALICE,
                    json={"os-resetState": {"state": "error"}})
    assert r.status_code == 403
    assert r.json()["forbidden"]["message"].startswith("Policy doesn't allow ")


def test_all_tenants(client: ApiClient, system_clock_engine: Engine) -> None:
    mine = create(client, system_clock_engine, ALICE)
    theirs = create(client, system_clock_engine, BOB)
    for path, kind in (("servers", "index"), ("servers/detail", "detail")):
        r = client.get(f"/v2.1/{path}?all_tenants=1", headers=ALICE)
        assert r.status_code == 403
        assert r.json()["forbidden"]["message"] == (
            f"Policy doesn't allow os_compute_api:servers:{kind}:get_all_tenants to be "
            "performed.")
    assert [s["id"] for s in client.get("/v2.1/servers?all_tenants=0",
                                        headers=ALICE).json()["servers"]] == [mine]
    everyone = client.get("/v2.1/servers?all_tenants=true", headers=ADMIN).json()["servers"]
    assert {s["id"] for s in everyone} == {mine, theirs}
    assert client.get("/v2.1/servers", headers=ADMIN).json() == {"servers": []}


def test_non_admin_filters_dropped_and_admin_only_rules(client: ApiClient,
                                                        system_clock_engine: Engine
                                                        ) -> None:
    kept = create(client, system_clock_engine, ALICE, "kept")
    gone = create(client, system_clock_engine, ALICE, "gone")
    assert client.delete(f"/v2.1/servers/{gone}", headers=ALICE).status_code == 204
    system_clock_engine.run_until_idle()

    def ids(query: str, version: str = "2.1") -> list[str]:
        r = client.get(f"/v2.1/servers/detail?{query}", headers=mv(version, ALICE))
        assert r.status_code == 200, r.text
        return [s["id"] for s in r.json()["servers"]]

    # known but not permitted: dropped, at 2.75+ too
    assert ids("deleted=true") == [kept]
    assert ids("host=nowhere&metadata=x&_private=1") == [kept]
    assert ids("host=nowhere&deleted=true&metadata=x&_private=1", "2.96") == [kept]
    assert ids("vm_state=error", "2.82") == [kept]  # permitted from 2.83
    assert ids("vm_state=error", "2.83") == []
    # unknown from 2.75: 400 for everyone
    r = client.get("/v2.1/servers?bogus=1", headers=mv("2.75", ALICE))
    assert r.status_code == 400
    # changes-since shows the caller's deleted servers
    assert set(ids("changes-since=2000-01-01T00:00:00Z")) == {kept, gone}
    r = client.get("/v2.1/servers?status=DELETED", headers=ALICE)
    assert r.status_code == 403
    assert r.json()["forbidden"]["message"] == "Only administrators may list deleted instances"
    r = client.get("/v2.1/servers?sort_key=host", headers=ALICE)
    assert r.status_code == 403
    assert r.json()["forbidden"]["message"] == "Only administrators can sort servers by host"


def test_instance_actions_for_non_admins(client: ApiClient, system_clock_engine: Engine) -> None:
    sid = create(client, system_clock_engine, ALICE)
    [action] = client.get(f"/v2.1/servers/{sid}/os-instance-actions",
                          headers=ALICE).json()["instanceActions"]
    assert (action["user_id"], action["project_id"]) == ("alice", "a1")
    path = f"/v2.1/servers/{sid}/os-instance-actions/{action['request_id']}"

    def shown(version: str) -> dict[str, Any]:
        r = client.get(path, headers=mv(version, ALICE))
        assert r.status_code == 200
        body: dict[str, Any] = r.json()["instanceAction"]
        return body

    assert "events" not in shown("2.50")
    [event] = shown("2.51")["events"]
    assert set(event) == {"event", "start_time", "finish_time", "result"}
    [event] = shown("2.62")["events"]
    assert set(event) == {"event", "start_time", "finish_time", "result", "hostId"}
    [event] = shown("2.84")["events"]
    assert "details" not in event and "host" not in event and "traceback" not in event


# --- keystone mode ---------------------------------------------------------------------------
def password_body(user: str, password: str, project: str | None) -> dict[str, Any]:
    auth: dict[str, Any] = {"identity": {"methods": ["password"], "password": {"user": {
        "name": user, "domain": {"name": "Default"}, "password": password}}}}
    if project is not None:
        auth["scope"] = {"project": {"name": project, "domain": {"name": "Default"}}}
    return {"auth": auth}


def login(client: ApiClient, user: str = "carol", password: str = "pa:ss",
          project: str | None = "a1", query: str = "") -> httpx.Response:
    return client.post(f"/identity/v3/auth/tokens{query}",
                       json=password_body(user, password, project))


def test_identity_version_documents(keystone: ApiClient) -> None:
    r = keystone.get("/identity")
    assert r.status_code == 300
    [v3] = r.json()["versions"]["values"]
    assert v3["id"].startswith("v3.") and v3["status"] == "stable"
    assert v3["links"] == [{"rel": "self", "href": "http://testserver/identity/v3/"}]
    for path in ("/identity/v3", "/identity/v3/"):
        assert keystone.get(path).json() == {"version": v3}


def test_password_login_issues_a_token_with_a_catalog(keystone: ApiClient,
                                                      system_clock_engine: Engine
                                                      ) -> None:
    r = login(keystone)
    assert r.status_code == 201
    token = r.headers["x-subject-token"]
    body = r.json()["token"]
    assert body["user"]["name"] == "carol" and body["project"]["id"] == "a1"
    assert [role["name"] for role in body["roles"]] == ["member"]
    assert body["expires_at"].endswith("Z")
    urls = {s["type"]: {e["interface"]: e["url"] for e in s["endpoints"]}
            for s in body["catalog"]}
    assert urls["compute"]["public"] == "http://testserver/v2.1"
    assert urls["identity"]["public"] == "http://testserver/identity/v3"
    assert urls["image"]["public"] == "http://testserver/image"
    sid = create(keystone, system_clock_engine, {"X-Auth-Token": token})
    server = keystone.get(f"/v2.1/servers/{sid}",
                          headers={"X-Auth-Token": token}).json()["server"]
    assert (server["user_id"], server["tenant_id"]) == ("carol", "a1")
    assert "catalog" not in login(keystone, query="?nocatalog").json()["token"]


@pytest.mark.parametrize(("user", "password", "project", "code"), [
    ("carol", "wrong", "a1", 401),
    ("nobody", "pa:ss", "a1", 401),
    ("carol", "pa:ss", "a2", 401),
])
def test_failed_logins(keystone: ApiClient, user: str, password: str, project: str,
                       code: int) -> None:
    r = login(keystone, user, password, project)
    assert r.status_code == code
    assert r.json()["error"]["code"] == code
    assert "x-subject-token" not in r.headers


@pytest.mark.parametrize("body", [b"not json", b"{}", b'{"auth": {"identity": {}}}',
                                  b'{"auth": {"identity": {"methods": ["totp"]}}}'])
def test_malformed_token_requests(keystone: ApiClient, body: bytes) -> None:
    r = keystone.post("/identity/v3/auth/tokens", content=body,
                      headers={"Content-Type": "application/json"})
    assert r.status_code in (400, 401)
    assert "error" in r.json()


def test_token_method_validate_and_revoke(keystone: ApiClient) -> None:
    unscoped = login(keystone, project=None)
    assert unscoped.status_code == 201
    assert "catalog" not in unscoped.json()["token"]
    plain = {"X-Auth-Token": unscoped.headers["x-subject-token"]}
    assert keystone.get("/v2.1/servers", headers=plain).status_code == 401
    r = keystone.post("/identity/v3/auth/tokens", json={"auth": {
        "identity": {"methods": ["token"], "token": {"id": plain["X-Auth-Token"]}},
        "scope": {"project": {"id": "a1"}}}})
    assert r.status_code == 201
    scoped = r.headers["x-subject-token"]
    assert keystone.get("/v2.1/servers", headers={"X-Auth-Token": scoped}).status_code == 200
    check = {"X-Auth-Token": "admin-secret", "X-Subject-Token": scoped}
    r = keystone.get("/identity/v3/auth/tokens", headers=check)
    assert r.status_code == 200 and r.json()["token"]["project"]["id"] == "a1"
    assert keystone.delete("/identity/v3/auth/tokens", headers=check).status_code == 204
    assert keystone.get("/identity/v3/auth/tokens", headers=check).status_code == 404
    assert keystone.get("/v2.1/servers", headers={"X-Auth-Token": scoped}).status_code == 401
    assert keystone.get("/identity/v3/auth/tokens",
                        headers={"X-Subject-Token": scoped}).status_code == 401


def test_admin_login_is_admin(keystone: ApiClient, system_clock_engine: Engine) -> None:
    token = {"X-Auth-Token": login(keystone, "admin", "s3cret", "ops").headers[
        "x-subject-token"]}
    assert keystone.get("/v2.1/servers?all_tenants=1", headers=token).status_code == 200
    # fixed tokens keep working in keystone mode
    assert keystone.get("/v2.1/servers", headers=ADMIN).status_code == 200


def test_projects_of_the_configured_users(keystone: ApiClient) -> None:
    """``openstack quota set PROJECT`` looks the project up in Keystone."""
    admin = {"X-Auth-Token": login(keystone, "admin", "s3cret", "ops").headers[
        "x-subject-token"]}
    carol = {"X-Auth-Token": login(keystone).headers["x-subject-token"]}
    listed = keystone.get("/identity/v3/projects", headers=admin).json()["projects"]
    assert [p["id"] for p in listed] == ["a1", "ops"]
    assert keystone.get("/identity/v3/projects?name=a1", headers=admin).json()[
        "projects"][0]["name"] == "a1"
    assert keystone.get("/identity/v3/projects/a1", headers=carol).json()["project"][
        "domain_id"] == "default"
    # others see their own project only
    assert [p["id"] for p in keystone.get("/identity/v3/projects", headers=carol).json()[
        "projects"]] == ["a1"]
    assert keystone.get("/identity/v3/projects/ops", headers=carol).status_code == 404
    assert keystone.get("/identity/v3/projects/nowhere", headers=admin).status_code == 404
    assert keystone.get("/identity/v3/projects").status_code == 401


def test_noauth_project_lookups_answer_any_project(system_clock_engine: Engine,
                                                   client: ApiClient) -> None:
    """noauth trusts the caller: ``openstack quota set|show P`` and ``usage show --project
    P`` find any project P at the Keystone shim (its id is its name)."""
    noauth = ApiClient(create_app(system_clock_engine))
    shown = noauth.get("/identity/v3/projects/team-x")
    assert shown.status_code == 200, shown.text
    project = shown.json()["project"]
    assert (project["id"], project["name"], project["domain_id"], project["enabled"]) == (
        "team-x", "team-x", "default", True)
    assert project["links"]["self"] == "http://testserver/identity/v3/projects/team-x"
    named = noauth.get("/identity/v3/projects", params={"name": "team-x"}).json()
    assert [p["id"] for p in named["projects"]] == ["team-x"]
    everyone = noauth.get("/identity/v3/projects").json()["projects"]
    assert [p["id"] for p in everyone] == ["admin"]  # the noauth caller's project
    # a name Keystone could not hold is not found, in Keystone's body
    missing = noauth.get("/identity/v3/projects/" + "x" * 65)
    assert missing.status_code == 404
    assert missing.json() == {"error": {"code": 404, "title": "Not Found",
                                        "message": f"Could not find project: {'x' * 65}."}}
    assert noauth.get("/identity/v3/projects", params={"name": "\t"}).json()[
        "projects"] == []
    # with fixed tokens there is no project lookup at all
    assert client.get("/identity/v3/projects/team-x", headers=ALICE).status_code == 404


# --- the Glance shim ---------------------------------------------------------------------------
def test_glance_shim(client: ApiClient) -> None:
    assert client.get("/image/v2/images").status_code == 401
    r = client.get("/image")
    [version] = r.json()["versions"]
    assert version["links"][0]["href"] == "http://testserver/image/v2/"
    images = client.get("/image/v2/images", headers=ALICE).json()
    assert images["first"] == "/v2/images"
    names = {i["name"]: i["id"] for i in images["images"]}
    assert names["cirros-0.6.2-x86_64"] == IMAGE
    r = client.get(f"/image/v2/images/{IMAGE}", headers=ALICE)
    assert r.status_code == 200
    image = r.json()
    assert (image["id"], image["status"], image["visibility"]) == (IMAGE, "active", "public")
    assert client.get("/image/v2/images/nope", headers=ALICE).status_code == 404
    by_name = client.get("/image/v2/images?name=cirros-0.6.2-x86_64", headers=ALICE).json()
    assert [i["id"] for i in by_name["images"]] == [IMAGE]
    by_ids = client.get(f"/image/v2/images?id=in:{IMAGE},other", headers=ALICE).json()
    assert [i["id"] for i in by_ids["images"]] == [IMAGE]
    page = client.get("/image/v2/images?limit=1", headers=ALICE).json()
    assert len(page["images"]) == 1 and "marker=" in page["next"]
    assert client.get("/image/v2/images?limit=x", headers=ALICE).status_code == 400

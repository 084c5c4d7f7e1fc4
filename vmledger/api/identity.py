"""A minimal Keystone v3 (``/identity``) so stock clients can log in with a password.

Served in every auth mode (``openstack`` with a fixed token reads the version document):

- ``GET /identity`` → 300 ``{"versions": {"values": [<v3>]}}``;
- ``GET /identity/v3`` and ``/identity/v3/`` → 200 ``{"version": <v3>}``.

Only with ``--auth keystone``:

- ``POST /identity/v3/auth/tokens`` with the ``password`` method (user by name or id;
  domains are accepted and ignored) or the ``token`` method, scoped to the user's
  project (or unscoped) → 201, ``X-Subject-Token`` and a token body whose catalog lists
  ``compute`` (``/v2.1``), ``identity`` (``/identity/v3``), ``image`` (``/image``, the
  Glance shim of :mod:`vmledger.api.glance`) and ``network`` (``/network``, the Neutron
  shim of :mod:`vmledger.api.neutron`); ``?nocatalog`` leaves the catalog out;
- ``GET``/``HEAD /identity/v3/auth/tokens`` validates ``X-Subject-Token``;
  ``DELETE`` revokes it;
- ``GET /identity/v3/projects[?name=]`` and ``/projects/{id}``: the projects of the
  configured users and tokens (a project's id is its name), all of them for
  administrators, their own for others (so ``openstack quota set PROJECT`` can find
  one).

With ``--auth noauth`` (which trusts the caller) the same two project lookups answer
for any project a client names, so ``openstack quota show|set PROJECT`` and ``usage show
--project PROJECT`` work with ``OS_IDENTITY_ENDPOINT_OVERRIDE`` pointing here:
``/projects/{id}`` echoes a project whose id and name are ``{id}``, ``/projects?name=X``
lists that one project, and ``/projects`` alone lists the noauth caller's ``admin``. A
name that Keystone could not hold (empty, over 64 characters, or not printable) is not
found: 404 with Keystone's error body, or an empty list.

Errors use Keystone's body: ``{"error": {"code", "title", "message"}}``; a body that is
not JSON, nests too deep or holds a string that is not valid Unicode text (or holds a
NUL) is a 400.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from vmledger.api.auth import UNAUTHORIZED, AuthSettings, Identity, TokenRegistry
from vmledger.api.faults import printable
from vmledger.api.jsontext import BodyError, decode_json

V3_ID = "v3.14"
V3_UPDATED = "2020-04-07T00:00:00Z"
DOMAIN = {"id": "default", "name": "Default"}
_TITLES = {400: "Bad Request", 401: "Unauthorized", 404: "Not Found"}
NOAUTH_PROJECT = "admin"  # the project of every noauth caller (vmledger.api.auth.noauth)
PROJECT_NAME_MAX = 64  # Keystone's limit on a project's name and id


def _project_name(value: str) -> bool:
    """Whether ``value`` could name a Keystone project: 1-64 printable characters."""
    return 0 < len(value) <= PROJECT_NAME_MAX and value.isprintable()


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def keystone_error(code: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "title": _TITLES.get(code, "Error"),
                                   "message": printable(message)}}, status_code=code)


def _v3(request: Request) -> dict[str, Any]:
    return {"id": V3_ID, "status": "stable", "updated": V3_UPDATED,
            "links": [{"rel": "self", "href": f"{_base(request)}/identity/v3/"}],
            "media-types": [{"base": "application/json",
                             "type": "application/vnd.openstack.identity-v3+json"}]}


async def versions(request: Request) -> Response:
    return JSONResponse({"versions": {"values": [_v3(request)]}}, status_code=300)


async def version_v3(request: Request) -> Response:
    return JSONResponse({"version": _v3(request)})


def catalog(base: str, region: str) -> list[dict[str, Any]]:
    """The service catalog: compute, identity, image and network, each
    public/internal/admin."""
    services = (("compute", "nova", f"{base}/v2.1"),
                ("identity", "keystone", f"{base}/identity/v3"),
                ("image", "glance", f"{base}/image"),
                ("network", "neutron", f"{base}/network"))
    return [{"type": kind, "name": name, "id": f"vmledger-{name}",
             "endpoints": [{"id": f"vmledger-{name}-{iface}", "interface": iface,
                            "region": region, "region_id": region, "url": url}
                           for iface in ("public", "internal", "admin")]}
            for kind, name, url in services]


def _time(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def token_body(request: Request, settings: AuthSettings, identity: Identity,
               issued: datetime, expires: datetime, methods: list[str], *,
               with_catalog: bool) -> dict[str, Any]:
    token: dict[str, Any] = {
        "methods": methods,
        "user": {"id": identity.user_id, "name": identity.user_id, "domain": DOMAIN,
                 "password_expires_at": None},
        "audit_ids": [],
        "issued_at": _time(issued),
        "expires_at": _time(expires),
    }
    if identity.project_id is not None:
        token["project"] = {"id": identity.project_id, "name": identity.project_id,
                            "domain": DOMAIN}
        token["is_domain"] = False
        token["roles"] = [{"id": role, "name": role} for role in identity.roles]
        if with_catalog:
            token["catalog"] = catalog(_base(request), settings.region)
    return {"token": token}


class _Refused(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Refused(400, f"Invalid input for field '{where}': expected an object.")
    return value


def _scope_project(auth: dict[str, Any]) -> str | None:
    scope = auth.get("scope")
    if scope is None or scope == "unscoped":
        return None
    project = _object(_object(scope, "scope").get("project"), "scope.project")
    name = project.get("id") or project.get("name")
    if not isinstance(name, str) or not name:
        raise _Refused(400, "Invalid input for field 'scope.project': expected an id or "
                            "a name.")
    return name


def authenticate(body: Any, settings: AuthSettings, registry: TokenRegistry
                 ) -> tuple[Identity, list[str]]:
    """The identity a token request proves, and the methods used; or :class:`_Refused`."""
    auth = _object(_object(body, "body").get("auth"), "auth")
    ident = _object(auth.get("identity"), "identity")
    methods = ident.get("methods")
    if not isinstance(methods, list) or not methods:
        raise _Refused(400, "Invalid input for field 'identity.methods'.")
    project = _scope_project(auth)
    if "password" in methods:
        user = _object(_object(ident.get("password"), "password").get("user"),
                       "password.user")
        name = user.get("name") or user.get("id")
        password = user.get("password")
        account = settings.accounts.get(name) if isinstance(name, str) else None
        if account is None or not isinstance(password, str) or not account.check_password(
                password):
            raise _Refused(401, UNAUTHORIZED)
        if project is not None and project != account.project_id:
            raise _Refused(401, f"User {account.name} has no access to project {project}")
        return account.identity(project), ["password"]
    if "token" in methods:
        token_id = _object(ident.get("token"), "token").get("id")
        found = registry.lookup(token_id) if isinstance(token_id, str) else None
        if found is None:
            raise _Refused(401, UNAUTHORIZED)
        home = found.project_id
        if project is not None and home is not None and project != home:
            raise _Refused(401, f"User {found.user_id} has no access to project {project}")
        scoped = project if project is not None else home
        return Identity(found.user_id, scoped, found.roles), ["token"]
    raise _Refused(401, "Unsupported authentication method.")


def identity_routes(settings: AuthSettings, registry: TokenRegistry) -> list[BaseRoute]:
    """The ``/identity`` routes for ``settings`` (tokens only in keystone mode)."""

    async def issue(request: Request) -> Response:
        try:
            body = decode_json(await request.body() or b"null")
        except BodyError as exc:
            return keystone_error(400, exc.message)
        try:
            identity, methods = authenticate(body, settings, registry)
        except _Refused as exc:
            return keystone_error(exc.code, exc.message)
        token, issued, expires = registry.issue(identity)
        with_catalog = "nocatalog" not in request.query_params
        return JSONResponse(token_body(request, settings, identity, issued, expires, methods,
                                       with_catalog=with_catalog),
                            status_code=201, headers={"X-Subject-Token": token})

    def _subject(request: Request) -> tuple[str, Identity] | Response:
        caller = request.headers.get("x-auth-token")
        if not caller or registry.lookup(caller) is None:
            return keystone_error(401, UNAUTHORIZED)
        subject = request.headers.get("x-subject-token", "")
        identity = registry.lookup(subject) if subject else None
        if identity is None:
            return keystone_error(404, f"Could not find token: {subject}.")
        return subject, identity

    async def validate(request: Request) -> Response:
        found = _subject(request)
        if isinstance(found, Response):
            return found
        subject, identity = found
        details = registry.details(subject)
        if details is not None:
            _, issued, expires = details
        else:  # a fixed token: valid for another lifetime from now
            issued = registry.now()
            expires = issued + registry.lifetime
        with_catalog = "nocatalog" not in request.query_params
        body = token_body(request, settings, identity, issued, expires, ["token"],
                          with_catalog=with_catalog)
        return JSONResponse(body, headers={"X-Subject-Token": subject})

    async def revoke(request: Request) -> Response:
        found = _subject(request)
        if isinstance(found, Response):
            return found
        registry.revoke(found[0])
        return Response(status_code=204)

    def _projects() -> list[str]:
        named = {a.project_id for a in settings.accounts.values()}
        named |= {i.project_id for i in settings.tokens.values() if i.project_id}
        return sorted(named)

    def _project(request: Request, project_id: str) -> dict[str, Any]:
        return {"id": project_id, "name": project_id, "domain_id": DOMAIN["id"],
                "description": "", "enabled": True, "is_domain": False,
                "parent_id": DOMAIN["id"], "tags": [], "options": {},
                "links": {"self": f"{_base(request)}/identity/v3/projects/{project_id}"}}

    def _caller(request: Request) -> Identity | Response:
        caller = registry.lookup(request.headers.get("x-auth-token") or "")
        return keystone_error(401, UNAUTHORIZED) if caller is None else caller

    async def list_projects(request: Request) -> Response:
        caller = _caller(request)
        if isinstance(caller, Response):
            return caller
        visible = _projects() if caller.is_admin else [
            p for p in _projects() if p == caller.project_id]
        name = request.query_params.get("name")
        if name is not None:
            visible = [p for p in visible if p == name]
        return JSONResponse({"projects": [_project(request, p) for p in visible],
                             "links": {"self": str(request.url), "previous": None,
                                       "next": None}})

    async def show_project(request: Request) -> Response:
        caller = _caller(request)
        if isinstance(caller, Response):
            return caller
        project_id = request.path_params["project_id"]
        if project_id not in _projects() or not (caller.is_admin
                                                 or caller.project_id == project_id):
            return keystone_error(404, f"Could not find project: {project_id}.")
        return JSONResponse({"project": _project(request, project_id)})

    # noauth trusts the caller as Nova's noauth does: any project a client names exists
    # (a quota may be set before the project has anything), and its id is its name
    async def echo_projects(request: Request) -> Response:
        name = request.query_params.get("name")
        named = [NOAUTH_PROJECT] if name is None else [n for n in [name] if _project_name(n)]
        return JSONResponse({"projects": [_project(request, p) for p in named],
                             "links": {"self": str(request.url), "previous": None,
                                       "next": None}})

    async def echo_project(request: Request) -> Response:
        project_id = request.path_params["project_id"]
        if not _project_name(project_id):
            return keystone_error(404, f"Could not find project: {project_id}.")
        return JSONResponse({"project": _project(request, project_id)})

    routes: list[BaseRoute] = [
        Route("/identity", versions, methods=["GET"]),
        Route("/identity/", versions, methods=["GET"]),
        Route("/identity/v3", version_v3, methods=["GET"]),
        Route("/identity/v3/", version_v3, methods=["GET"]),
    ]
    if settings.mode == "keystone":
        routes += [
            Route("/identity/v3/auth/tokens", issue, methods=["POST"]),
            Route("/identity/v3/auth/tokens", validate, methods=["GET"]),
            Route("/identity/v3/auth/tokens", revoke, methods=["DELETE"]),
            Route("/identity/v3/projects", list_projects, methods=["GET"]),
            Route("/identity/v3/projects/{project_id}", show_project, methods=["GET"]),
        ]
    elif settings.mode == "noauth":
        routes += [
            Route("/identity/v3/projects", echo_projects, methods=["GET"]),
            Route("/identity/v3/projects/{project_id}", echo_project, methods=["GET"]),
        ]
    return routes

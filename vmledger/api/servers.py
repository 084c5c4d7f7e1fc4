"""``/servers``: create, list, show, update, delete, and the actions.

Each handler validates the request first (400, as Nova's schemas), then finds the server
in the caller's project (404 otherwise, even for an administrator of another project),
then asks the engine, whose typed refusals become 403/409/400 faults with Nova's
messages. Engine calls block, so they run in the thread pool.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from starlette.responses import JSONResponse, Response

from vmledger.api import idempotency, listing
from vmledger.api import validation as val
from vmledger.api.auth import Principal
from vmledger.api.faults import ApiError
from vmledger.api.http import EMPTY, Call, header, read_json
from vmledger.api.rendering import JSONBody, RenderCache, Renderer, Rendering, join_list
from vmledger.api.server_groups import scheduler_group
from vmledger.api.views import (
    Viewer,
    created_view,
    server_summary,
    server_view,
    update_view,
)
from vmledger.domain import lifecycle as lc
from vmledger.domain import status as st
from vmledger.domain.commands import CommandResult
from vmledger.domain.commands.servers import MAX_SERVERS_PER_REQUEST
from vmledger.domain.errors import FlavorNotFound, ImageNotFound, NotFound, ServerNotFound
from vmledger.domain.server import Context
from vmledger.engine import Engine, ServerInfo
from vmledger.projections.server_groups import get_group
from vmledger.projections.server_queries import StoredServer

PASSWORD_LENGTH = 12
_PASSWORD_ALPHABET = string.ascii_letters + string.digits

#: create fields Nova accepts, with the microversion range that allows each
_CREATE_FIELDS: dict[str, tuple[tuple[int, int], tuple[int, int] | None]] = {
    "name": ((2, 1), None), "imageRef": ((2, 1), None), "flavorRef": ((2, 1), None),
    "adminPass": ((2, 1), None), "metadata": ((2, 1), None), "networks": ((2, 1), None),
    "OS-DCF:diskConfig": ((2, 1), None), "accessIPv4": ((2, 1), None),
    "accessIPv6": ((2, 1), None), "availability_zone": ((2, 1), None),
    "key_name": ((2, 1), None), "security_groups": ((2, 1), None),
    "user_data": ((2, 1), None), "config_drive": ((2, 1), None),
    "min_count": ((2, 1), None), "max_count": ((2, 1), None),
    "return_reservation_id": ((2, 1), None), "block_device_mapping": ((2, 1), None),
    "block_device_mapping_v2": ((2, 1), None), "personality": ((2, 1), (2, 56)),
    "description": ((2, 19), None), "tags": ((2, 52), None),
    "trusted_image_certificates": ((2, 63), None), "host": ((2, 74), None),
    "hypervisor_hostname": ((2, 74), None), "hostname": ((2, 90), None),
}
_CREATE_TOP_LEVEL = ("server", "os:scheduler_hints", "OS-SCH-HNT:scheduler_hints")


def _allowed(call: Call, table: dict[str, tuple[tuple[int, int], tuple[int, int] | None]]
             ) -> list[str]:
    return [k for k, (low, high) in table.items()
            if call.version >= low and (high is None or call.version <= high)]


def _new_password() -> str:
    return "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(PASSWORD_LENGTH))


def owned_server(engine: Engine, principal: Principal, server_id: str) -> ServerInfo:
    """The server, if it exists, is not deleted and the caller may see it — a member of
    its project, or an administrator (Nova's default policies: project member or
    admin); else 404, as for a server that does not exist."""
    info = engine.get_server(server_id)
    if not principal.is_admin and info.project_id != principal.project_id:
        raise ServerNotFound(server_id)
    return info


def _location(call: Call, server_id: str) -> dict[str, str]:
    return {"Location": call.viewer.links.versioned("servers", server_id)}


# --- create ----------------------------------------------------------------------------
def _boot_image_from_bdm(server: dict[str, Any]) -> str | None:
    mappings = server.get("block_device_mapping_v2")
    if not isinstance(mappings, list):
        return None
    for bdm in mappings:
        if (isinstance(bdm, dict) and str(bdm.get("boot_index", "")) == "0"
                and bdm.get("source_type") == "image" and bdm.get("uuid")):
            return str(bdm["uuid"])
    return None


def _security_groups(value: Any) -> list[str]:
    if value is None:
        return ["default"]
    if not isinstance(value, list):
        raise val.invalid_field("security_groups", value,
                                f"{value!r} is not of type 'array'")
    names: list[str] = []
    for item in value:
        group = val.require_object(item, "security_groups")
        name = val.string(group.get("name"), "name", min_length=1, max_length=255)
        assert name is not None
        if name not in names:
            names.append(name)
    return names or ["default"]


def _count(server: dict[str, Any], key: str, default: int) -> int:
    value = server.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(
            value).isdigit() or int(value) < 1:
        raise val.invalid_field(key, value, f"{value!r} is not a positive integer")
    return int(value)


@dataclass(frozen=True)
class _CreateRequest:
    name: str
    flavor: str
    image: str
    options: dict[str, Any]
    admin_pass: str
    return_reservation_id: bool
    #: how many servers (Nova's max_count, within what one request may create)
    count: int = 1
    #: the fewest the request accepts when the quota allows fewer (Nova's min_count)
    min_count: int = 1
    #: the request's Idempotency-Key
    key: str | None = None
    #: whether ``admin_pass`` was made here (a repeat cannot tell it again: it was
    #: never recorded)
    generated_pass: bool = False


def _parse_create(call: Call, body: Any) -> _CreateRequest:
    key = idempotency.key_of(call)
    body = val.require_object({} if body is EMPTY else body, None)
    if "server" not in body:
        raise val.invalid_field("server", body, "'server' is a required property")
    val.no_other_keys(body, "server", _CREATE_TOP_LEVEL)
    group = scheduler_group(body)
    server = val.require_object(body["server"], "server")
    val.no_other_keys(server, "server", _allowed(call, _CREATE_FIELDS))
    required = ["name", "flavorRef"] + (["networks"] if call.at_least(2, 37) else [])
    val.require_keys(server, "server", required)
    name = val.server_name(server["name"])
    flavor = val.reference(server["flavorRef"], "flavorRef")
    image_ref = server.get("imageRef")
    if image_ref in (None, ""):
        image_ref = _boot_image_from_bdm(server)
        if image_ref is None:
            raise ApiError(400, "Missing imageRef attribute")
    image = val.uuid_string(image_ref, "imageRef")
    networks = server.get("networks")
    if networks is not None and not isinstance(networks, list) and networks not in (
            "auto", "none"):
        raise val.invalid_field("networks", networks,
                                f"{networks!r} is not valid under any of the given schemas")
    min_count = _count(server, "min_count", 1)
    max_count = _count(server, "max_count", min_count)
    if min_count > max_count:
        raise ApiError(400, "min_count must be <= max_count")
    if min_count > MAX_SERVERS_PER_REQUEST:
        raise ApiError(403, f"Quota exceeded for instances: Requested {min_count}, but "
                            f"already used 0 of {MAX_SERVERS_PER_REQUEST} instances")
    admin_pass = server.get("adminPass")
    generated_pass = admin_pass is None
    if admin_pass is None:
        admin_pass = _new_password()
    elif not isinstance(admin_pass, str):
        raise val.invalid_field("adminPass", admin_pass,
                                f"{admin_pass!r} is not of type 'string'")
    # with a key, a repeat must ask for the same reservation as the first request
    reservation = (secrets.token_hex(4) if key is None
                   else idempotency.derived(call, key, "reservation_id")[:8])
    disk_config = server.get("OS-DCF:diskConfig", "MANUAL")
    if disk_config not in ("AUTO", "MANUAL"):
        raise val.invalid_field("OS-DCF:diskConfig", disk_config,
                                f"{disk_config!r} is not one of ['AUTO', 'MANUAL']")
    availability_zone = val.string(server.get("availability_zone"), "availability_zone",
                                   min_length=1, max_length=255, nullable=True)
    key_name = val.string(server.get("key_name"), "key_name", min_length=1,
                          max_length=255, nullable=True)
    user_data = val.string(server.get("user_data"), "user_data", max_length=65535,
                           nullable=True)
    tags = server.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise val.invalid_field("tags", tags, f"{tags!r} is not of type 'array'")
    hostname = val.string(server.get("hostname"), "hostname", min_length=1,
                          max_length=255, nullable=True)
    attributes: dict[str, Any] = {
        "security_groups": _security_groups(server.get("security_groups")),
        "disk_config": disk_config,
        "access_ip_v4": val.ip_address(server.get("accessIPv4"), "accessIPv4", 4),
        "access_ip_v6": val.ip_address(server.get("accessIPv6"), "accessIPv6", 6),
        "config_drive": val.boolean(server.get("config_drive", False), "config_drive"),
        "pinned_availability_zone": availability_zone,
        "reservation_id": "r-" + reservation,
        "user_data": user_data,
        "tags": list(dict.fromkeys(tags)),
        "hostname": hostname,
    }
    options: dict[str, Any] = {
        "metadata": server.get("metadata"),
        "key_name": key_name,
        "availability_zone": availability_zone,
        "attributes": attributes,
    }
    if "description" in server:
        options["description"] = val.description(server["description"])
    if group is not None:
        options["server_group"] = group
    return _CreateRequest(name=name, flavor=flavor, image=image, options=options,
                          admin_pass=admin_pass,
                          return_reservation_id=val.boolean(
                              server.get("return_reservation_id", False),
                              "return_reservation_id"),
                          count=min(max_count, MAX_SERVERS_PER_REQUEST),
                          min_count=min_count, key=key, generated_pass=generated_pass)


def _create(engine: Engine, ctx: Context, req: _CreateRequest
            ) -> tuple[CommandResult, ServerInfo]:
    if not any(f.id == req.flavor for f in engine.service.catalog.flavors()):
        raise ApiError(400, "Invalid flavorRef provided.")
    key_name = req.options.get("key_name")
    if key_name is not None:
        try:  # one of the requesting user's key pairs, as Nova checks
            engine.get_keypair(key_name, ctx=ctx)
        except NotFound:
            raise ApiError(400, "Invalid key_name provided.") from None
    try:
        result, infos = engine.request_servers(
            req.name, flavor=req.flavor, image=req.image, ctx=ctx, count=req.count,
            min_count=req.min_count, idempotency_key=req.key, **req.options)
        return result, infos[0]
    except FlavorNotFound:
        raise ApiError(400, "Invalid flavorRef provided.") from None
    except ImageNotFound:
        raise ApiError(400, "Can not find requested image") from None


async def create_server(call: Call) -> Response:
    req = _parse_create(call, await read_json(call.request))
    result, info = await call.run(_create, call.engine, call.context(), req)
    repeat = idempotency.answered(call, result)
    if req.return_reservation_id:
        reservation = (info.doc.get("attributes") or {}).get("reservation_id")
        return JSONResponse({"reservation_id": reservation}, status_code=202)
    # a password made for the first request was never recorded: a repeat omits it (as
    # Nova does without enable_instance_password); one the caller chose is echoed
    admin_pass = None if repeat and req.generated_pass else req.admin_pass
    body = {"server": created_view(info.doc, call.viewer, admin_pass)}
    return JSONResponse(body, status_code=202, headers=_location(call, info.id))


# --- list ------------------------------------------------------------------------------
def _servers_links(call: Call, collection: str, page: list[StoredServer], size: int
                   ) -> list[dict[str, str]]:
    if not size or len(page) != size:
        return []
    params = [(k, v) for k, v in sorted(call.request.query_params.multi_items())
              if k != "marker"]
    params.append(("marker", page[-1].id))
    return [{"rel": "next",
             "href": call.viewer.links.versioned(collection) + "?" + urlencode(params)}]


def render_cache(call: Call) -> RenderCache:
    """The app's cache of rendered servers (none when the app was built without one)."""
    cache = getattr(call.request.app.state, "renders", None)
    return cache if isinstance(cache, RenderCache) else _NO_CACHE


_NO_CACHE = RenderCache(capacity=0)


def _summary(doc: dict[str, Any], viewer: Viewer) -> dict[str, Any]:
    return server_summary(doc, viewer)


def _detail(doc: dict[str, Any], viewer: Viewer) -> dict[str, Any]:
    return server_view(doc, viewer)


def _select(call: Call) -> tuple[list[StoredServer], int, Viewer]:
    page, size = listing.select(call)
    return page, size, call.server_viewer()


async def _list(call: Call, collection: str, renderer: Renderer) -> Response:
    page, size, viewer = await call.run(_select, call)
    rendering = render_cache(call).renderer(viewer, renderer)
    # rows may come without documents: read only those of servers not rendered yet
    missing = [row for row in page if not row.loaded and not rendering.cached(row)]
    if missing:
        await call.run(call.engine.fill_server_docs, missing)
        gone = {row.id for row in missing if not row.loaded}  # left the view meanwhile
        if gone:
            page = [row for row in page if row.id not in gone]
    links = _servers_links(call, collection, page, size)
    return JSONBody(render_page(rendering, page,
                                {"servers_links": links} if links else None))


def render_page(rendering: Rendering, page: list[StoredServer],
                extra: dict[str, Any] | None) -> bytes:
    """``{"servers": [...], **extra}``, each server rendered once per version."""
    return join_list("servers", [rendering(row) for row in page], extra)


async def list_servers(call: Call) -> Response:
    return await _list(call, "servers", _summary)


async def list_servers_detail(call: Call) -> Response:
    return await _list(call, "servers/detail", _detail)


# --- show, update, delete --------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Facts:
    """What showing a server needs of one of its versions besides the rendered body:
    a function of the version, so it is kept with the rendered ones (see :func:`_shown`)."""

    project_id: str
    deleted: bool
    #: the group it names (``attributes.server_group``), which may be gone
    group: str | None
    #: the host it shows (for ``host_status``)
    host: str | None

    @classmethod
    def of(cls, doc: dict[str, Any]) -> _Facts:
        group = (doc.get("attributes") or {}).get("server_group")
        return cls(project_id=doc["project_id"], deleted=doc.get("vm_state") == lc.DELETED,
                   group=str(group) if group else None, host=st.placed_host(doc))


def entity_tag(version: int, call: Call, facts: _Facts, groups: list[str],
               viewer: Viewer) -> str:
    """The ETag of a server's representation: its version, and the microversion it is
    rendered at (one version looks different at different microversions); ``-g`` when
    the server names a group that was deleted since (2.71 shows no group then); the
    host's status when the body shows it (``host_status``, administrators from 2.16)."""
    gone = "-g" if call.at_least(2, 71) and not groups and facts.group else ""
    host = ""
    if viewer.host_states is not None:
        host = "-" + (viewer.host_status(facts.host) or "none").lower()
    return f'"{version}-{call.version}{gone}{host}"'


def _none_match(header: str | None, tag: str) -> bool:
    """Whether ``If-None-Match`` matches ``tag`` (weak comparison, as RFC 9110 says)."""
    if header is None:
        return False
    candidates = [c.strip() for c in header.split(",")]
    return any(c == "*" or c.removeprefix("W/") == tag for c in candidates)


def _shown(call: Call, server_id: str, cache: RenderCache
           ) -> tuple[StoredServer, _Facts, list[str], Viewer]:
    """The server's row as stored (its document decoded only when this version was not
    seen before), what showing it needs, its live group and the viewer; 404 as
    :func:`owned_server` (the same checks, on the same row)."""
    row = StoredServer(server_id, 0, None)
    call.engine.fill_server_docs([row])  # the row as the view has it now, undecoded
    facts = cache.facts(row, _Facts.of) if row.loaded else None
    principal = call.principal
    if facts is None or facts.deleted or (not principal.is_admin
                                          and facts.project_id != principal.project_id):
        raise ServerNotFound(server_id)
    return row, facts, _live_group(call, facts.group), call.server_viewer()


async def show_server(call: Call) -> Response:
    server_id = call.request.path_params["server_id"]
    cache = render_cache(call)
    row, facts, groups, viewer = await call.run(_shown, call, server_id, cache)
    tag = entity_tag(row.version, call, facts, groups, viewer)
    if _none_match(header(call.request, b"if-none-match"), tag):
        return Response(status_code=304, headers={"ETag": tag})
    # the rendered document is a function of its version and the viewer (as a list
    # page's are): a client polling a server until an action is done gets it rendered
    # once per version, and its document decoded once
    render = _show_grouped if groups else _show_alone
    text = cache.render(row, viewer, render)
    return JSONBody(b'{"server":' + text + b"}", headers={"ETag": tag})


def _show_alone(doc: dict[str, Any], viewer: Viewer) -> dict[str, Any]:
    return server_view(doc, viewer, server_groups=[])


def _show_grouped(doc: dict[str, Any], viewer: Viewer) -> dict[str, Any]:
    """Shown with its group (which :func:`server_groups_of` found live)."""
    return server_view(doc, viewer,
                       server_groups=[str((doc.get("attributes") or {})["server_group"])])


def server_groups_of(call: Call, doc: dict[str, Any]) -> list[str]:
    """The server's group, while it exists (2.71's ``server_groups``)."""
    if not call.at_least(2, 71):
        return []
    group = (doc.get("attributes") or {}).get("server_group")
    return [group] if group and get_group(call.engine.view, str(group)) else []


def _live_group(call: Call, group: str | None) -> list[str]:
    """:func:`server_groups_of` for a server naming ``group``."""
    if not group or not call.at_least(2, 71):
        return []
    return [group] if get_group(call.engine.view, group) else []


_UPDATE_FIELDS: dict[str, tuple[tuple[int, int], tuple[int, int] | None]] = {
    "name": ((2, 1), None), "description": ((2, 19), None),
}


def _update(call: Call, server_id: str, changes: dict[str, Any]) -> ServerInfo:
    # the command's own load answers 404 for a server the caller may not see (see
    # server_actions._act): no read of the view before it
    return call.engine.update_server(server_id, ctx=call.context(), **changes)


async def update_server(call: Call) -> Response:
    server_id = call.request.path_params["server_id"]
    body = val.require_object(await body_or_empty(call), None)
    if "server" not in body:
        raise val.invalid_field("server", body, "'server' is a required property")
    val.no_other_keys(body, "server", ["server"])
    server = val.require_object(body["server"], "server")
    unsupported = {"accessIPv4", "accessIPv6", "OS-DCF:diskConfig", "hostname"} & set(server)
    if unsupported:
        raise ApiError(400, "Updating " + ", ".join(sorted(unsupported))
                       + " is not supported by vmledger.")
    val.no_other_keys(server, "server", _allowed(call, _UPDATE_FIELDS))
    changes: dict[str, Any] = {}
    if "name" in server:
        changes["name"] = val.server_name(server["name"])
    if "description" in server:
        changes["description"] = val.description(server["description"])
    info = await call.run(_update, call, server_id, changes)
    groups = await call.run(server_groups_of, call, info.doc)
    viewer = await call.run(call.server_viewer)
    return JSONResponse({"server": update_view(info.doc, viewer, groups)})


async def delete_server(call: Call) -> Response:
    server_id = call.request.path_params["server_id"]

    def delete() -> None:
        # the command's own load answers 404 (see server_actions._act)
        call.engine.act(server_id, "delete", ctx=call.context())

    await call.run(delete)
    return Response(status_code=204)


async def body_or_empty(call: Call) -> Any:
    body = await read_json(call.request)
    return {} if body is EMPTY else body


__all__ = [
    "create_server", "delete_server", "list_servers",
    "list_servers_detail", "show_server", "update_server",
]

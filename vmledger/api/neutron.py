"""A minimal Networking API v2.0 (Neutron) shim under ``/network``, read-only.

Clients assume a cloud has a Networking service: openstacksdk's cloud layer (and so
Ansible's ``openstack.cloud`` modules) looks up networks, ports and floating IPs around
every server it creates or shows. This shim shows what the simulated network is
(:mod:`vmledger.domain.network`):

- ``GET /network`` and ``/network/`` → the versions document (v2.0);
- ``GET /network/v2.0`` and ``/network/v2.0/`` → the resources document;
- ``GET /network/v2.0/extensions[/{alias}]`` → the extensions whose attributes are shown;
- ``GET /network/v2.0/networks[/{id}]`` → the one network, ``private`` (shared);
- ``GET /network/v2.0/subnets[/{id}]`` → its subnet, 10.0.0.0/16;
- ``GET /network/v2.0/ports[/{id}]`` → one port per server, derived from its fixed address
  (``device_id`` = the server id, ``device_owner`` = ``compute:<zone>``, ``fixed_ips``,
  ``mac_address``; ``status`` ACTIVE while the guest is plugged in, else DOWN);
- ``GET /network/v2.0/security-groups[/{id}]`` and ``/security-group-rules[/{id}]`` →
  each project's ``default`` group with Neutron's default rules (egress to anywhere,
  ingress from the group's members, IPv4 and IPv6);
- ``GET /network/v2.0/floatingips`` → none: there is no external network;
- ``GET /network/v2.0/quotas/{project_id}`` (and ``/default``) → Neutron's default
  quotas, which nothing here can change, ``/details`` with what the project uses (its
  ports and its ``default`` group); ``GET /network/v2.0/quotas`` → none set (so
  ``openstack quota show PROJECT`` shows network quotas too). Another project's quotas
  are an administrator's to read (403 otherwise, as Neutron's policy answers).

Lists take Neutron's filters: any attribute by value (repeat a parameter for "any of"),
``fixed_ips=ip_address=...`` / ``subnet_id=...`` on ports, ``fields`` (repeatable) to
choose the attributes, ``limit`` and ``marker`` (with a ``<collection>_links`` next link);
an unknown filter is a 400, as Neutron's strict filter validation answers; an empty value
filters nothing, as in Neutron. A caller sees its own project's ports and security groups
(an administrator: every project's); the network and subnet are shared.

Requests are authenticated as the Compute API's (401 in Keystone's body without a
token). Anything that would change a resource answers 405: nothing here can be created or
changed. Errors use Neutron's body ``{"NeutronError": {"type", "message", "detail"}}``, URLs
refused before any handler (not UTF-8, a NUL) too; every response carries
``X-Openstack-Request-Id`` (:class:`vmledger.api.http.ApiLayer`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from vmledger.api.auth import Authenticator, Principal
from vmledger.api.faults import ApiError
from vmledger.api.identity import keystone_error
from vmledger.api.views import isotime
from vmledger.domain import network as net
from vmledger.domain.errors import NotFound
from vmledger.domain.server import Context
from vmledger.engine import Engine

PREFIX = "/network"
API_VERSION = "v2.0"
#: when the simulated network and subnet are said to have been made
CREATED = "2024-01-01T00:00:00Z"
#: query parameters that are not filters
_CONTROLS = frozenset({"fields", "limit", "marker", "sort_key", "sort_dir", "page_reverse"})
#: a port is plugged in (ACTIVE) while its server has a running guest
_PLUGGED = frozenset({"ACTIVE", "PAUSED", "RESCUE", "VERIFY_RESIZE", "REBOOT", "HARD_REBOOT",
                      "MIGRATING", "PASSWORD", "REBUILD", "RESIZE", "REVERT_RESIZE"})

#: (alias, name, description) of the extensions whose attributes the resources carry
EXTENSIONS = (
    ("binding", "Port Binding", "Expose port bindings of a virtual port to external "
                                "application"),
    ("external-net", "Neutron external network", "Adds external network attribute to "
                                                 "network resource."),
    ("network_availability_zone", "Network Availability Zone", "Availability zone support "
                                                               "for network."),
    ("port-security", "Port Security", "Provides port security"),
    ("project-id", "project_id field enabled", "Extension that indicates that project_id "
                                               "field is enabled."),
    ("security-group", "security-group", "The security groups extension."),
    ("standard-attr-description", "standard-attr-description", "Extension to add "
                                                               "descriptions to standard "
                                                               "attributes"),
    ("standard-attr-revisions", "Resource revision numbers", "This extension will display "
                                                             "the revision number of "
                                                             "neutron resources."),
    ("standard-attr-tag", "Tag support for resources with standard attribute: ...",
     "Enables to set tag on resources with standard attribute."),
    ("standard-attr-timestamp", "Resource timestamps", "Adds created_at and updated_at "
                                                       "fields to all Neutron resources "
                                                       "that have Neutron standard "
                                                       "attributes."),
)


class NeutronError(Exception):
    """A refusal with Neutron's type (``NetworkNotFound``, ``HTTPBadRequest``...)."""

    def __init__(self, code: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.kind = kind
        self.message = message


def neutron_error(code: int, kind: str, message: str,
                  headers: Mapping[str, str] | None = None) -> JSONResponse:
    """Neutron's error body."""
    return JSONResponse({"NeutronError": {"type": kind, "message": message, "detail": ""}},
                        status_code=code, headers=headers)


def not_found(kind: str, message: str) -> NeutronError:
    return NeutronError(404, kind, message)


# --- the documents ---------------------------------------------------------------------
# Neutron's configured defaults ([quotas] in neutron.conf); -1 is unlimited
QUOTA_DEFAULTS = {"network": 100, "subnet": 100, "port": 500, "router": 10,
                  "floatingip": 50, "security_group": 10, "security_group_rule": 100,
                  "rbac_policy": 10, "subnetpool": -1}


def quota_details(used: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """Neutron's ``/details`` body: each resource's limit, use and reservation."""
    return {name: {"limit": limit, "used": used.get(name, 0), "reserved": 0}
            for name, limit in QUOTA_DEFAULTS.items()}


def _standard(project_id: str, created: str | None, updated: str | None,
              revision: int = 0) -> dict[str, Any]:
    """Attributes every Neutron resource with standard attributes has."""
    return {"tenant_id": project_id, "project_id": project_id, "description": "",
            "tags": [], "created_at": created, "updated_at": updated,
            "revision_number": revision}


def network_doc() -> dict[str, Any]:
    return {"id": net.NETWORK_ID, "name": net.NETWORK_NAME, "admin_state_up": True,
            "status": "ACTIVE", "subnets": [net.SUBNET_ID], "shared": True,
            "mtu": net.MTU, "router:external": False, "is_default": False,
            "port_security_enabled": True, "availability_zone_hints": [],
            "availability_zones": ["nova"], "ipv4_address_scope": None,
            "ipv6_address_scope": None, "qos_policy_id": None, "l2_adjacency": True,
            **_standard(net.OWNER, CREATED, CREATED, 1)}


def subnet_doc() -> dict[str, Any]:
    return {"id": net.SUBNET_ID, "name": net.SUBNET_NAME, "network_id": net.NETWORK_ID,
            "ip_version": 4, "cidr": net.CIDR, "gateway_ip": net.GATEWAY_IP,
            "allocation_pools": [{"start": net.POOL_START, "end": net.POOL_END}],
            "dns_nameservers": [], "host_routes": [], "enable_dhcp": True,
            "ipv6_ra_mode": None, "ipv6_address_mode": None, "subnetpool_id": None,
            "segment_id": None, "service_types": [], "dns_publish_fixed_ip": False,
            **_standard(net.OWNER, CREATED, CREATED)}


def port_doc(server: Mapping[str, Any], status: str, *, admin: bool) -> dict[str, Any] | None:
    """The port of a server (its addresses on the simulated network), or None."""
    entries = [e for e in (server.get("addresses") or {}).get(net.NETWORK_NAME) or []
               if isinstance(e, Mapping) and e.get("addr")]
    if not entries:
        return None
    server_id = str(server["id"])
    project_id = str(server["project_id"])
    doc: dict[str, Any] = {
        "id": net.port_id(server_id), "name": "", "network_id": net.NETWORK_ID,
        "mac_address": entries[0].get("OS-EXT-IPS-MAC:mac_addr") or "",
        "admin_state_up": True, "status": "ACTIVE" if status in _PLUGGED else "DOWN",
        "device_id": server_id,
        "device_owner": f"compute:{server.get('availability_zone') or 'nova'}",
        "fixed_ips": [{"subnet_id": net.SUBNET_ID, "ip_address": str(e["addr"])}
                      for e in entries],
        "allowed_address_pairs": [], "extra_dhcp_opts": [],
        "security_groups": [net.default_security_group_id(project_id)],
        "port_security_enabled": True, "binding:vnic_type": "normal",
        "ip_allocation": "immediate", "propagate_uplink_status": False,
        **_standard(project_id, isotime(server.get("created_at")),
                    isotime(server.get("updated_at")), int(server.get("version") or 0)),
    }
    if admin:  # Neutron shows the binding's host and driver to administrators only
        doc.update({"binding:host_id": server.get("host") or "",
                    "binding:vif_type": "ovs" if server.get("host") else "unbound",
                    "binding:vif_details": {}, "binding:profile": {}})
    return doc


def _rule(group_id: str, project_id: str, direction: str, ethertype: str) -> dict[str, Any]:
    return {"id": net.stable_id("security-group-rule", group_id, direction, ethertype),
            "security_group_id": group_id, "direction": direction, "ethertype": ethertype,
            "protocol": None, "port_range_min": None, "port_range_max": None,
            "remote_ip_prefix": None, "normalized_cidr": None,
            "remote_group_id": group_id if direction == "ingress" else None,
            "remote_address_group_id": None, "belongs_to_default_sg": True,
            **_standard(project_id, CREATED, CREATED)}


def security_group_doc(project_id: str) -> dict[str, Any]:
    """A project's ``default`` group with Neutron's default rules."""
    group_id = net.default_security_group_id(project_id)
    rules = [_rule(group_id, project_id, direction, ethertype)
             for direction in ("egress", "ingress") for ethertype in ("IPv4", "IPv6")]
    return {"id": group_id, "name": "default", "stateful": True, "shared": False,
            "security_group_rules": rules,
            **_standard(project_id, CREATED, CREATED), "description": "Default security group"}


def _extension(alias: str, name: str, description: str) -> dict[str, Any]:
    return {"alias": alias, "name": name, "description": description,
            "updated": "2013-01-01T00:00:00-00:00", "links": []}


# --- filters, fields and pages ---------------------------------------------------------
def _matches(value: Any, wanted: Sequence[str]) -> bool:
    if isinstance(value, bool):
        return any(w.lower() == str(value).lower() for w in wanted)
    if value is None:
        return any(w in ("None", "null") for w in wanted)
    if isinstance(value, list):  # a port's security_groups, a network's subnets
        return any(str(item) in wanted for item in value)
    return str(value) in wanted


def _fixed_ips_conditions(wanted: Sequence[str]) -> list[tuple[str, str]]:
    """``fixed_ips=ip_address=A`` / ``subnet_id=S`` / ``ip_address_substr=P``."""
    conditions = []
    for condition in wanted:
        key, sep, value = condition.partition("=")
        if not sep or key not in ("ip_address", "subnet_id", "ip_address_substr"):
            raise NeutronError(400, "HTTPBadRequest",
                               f"Invalid input for fixed_ips. Reason: '{condition}' is not "
                               f"a valid filter.")
        conditions.append((key, value))
    return conditions


def _fixed_ips_match(doc: Mapping[str, Any], conditions: Sequence[tuple[str, str]]) -> bool:
    """Every condition holds for one of the port's addresses."""
    entries = doc.get("fixed_ips") or []
    return all(any((value in entry["ip_address"]) if key == "ip_address_substr"
                   else entry.get(key) == value for entry in entries)
               for key, value in conditions)


def select(docs: Iterable[dict[str, Any]], request: Request, collection: str
           ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """The documents the query's filters keep, paged by ``limit``/``marker``, with only
    the ``fields`` asked for; and the page's links."""
    query = request.query_params
    kept = list(docs)
    attributes = _ATTRIBUTES[collection]
    invalid = [key for key in dict.fromkeys(query.keys())
               if key not in _CONTROLS and key not in attributes]
    if invalid:  # Neutron's message names them as a Python list
        raise NeutronError(400, "HTTPBadRequest", f"{invalid} is invalid attribute for "
                                                  f"filtering")
    for key in dict.fromkeys(query.keys()):
        wanted = [v for v in query.getlist(key) if v]  # empty values filter nothing
        if key in _CONTROLS or not wanted:
            continue
        if key == "fixed_ips":
            conditions = _fixed_ips_conditions(wanted)
            kept = [d for d in kept if _fixed_ips_match(d, conditions)]
        else:
            kept = [d for d in kept if _matches(d.get(key), wanted)]
    kept.sort(key=lambda d: str(d["id"]))
    marker = query.get("marker")
    if marker is not None:
        kept = [d for d in kept if str(d["id"]) > marker]
    links: list[dict[str, str]] = []
    raw_limit = query.get("limit")
    if raw_limit is not None:
        try:
            limit = int(raw_limit)
        except ValueError:
            raise NeutronError(400, "HTTPBadRequest",
                               f"Invalid input for limit. Reason: '{raw_limit}' is not an "
                               f"integer.") from None
        if limit < 0:
            raise NeutronError(400, "HTTPBadRequest",
                               f"Invalid input for limit. Reason: '{raw_limit}' should be "
                               f"non negative.")
        if limit and len(kept) > limit:
            kept = kept[:limit]
            params = [(k, v) for k, v in query.multi_items() if k != "marker"]
            params.append(("marker", str(kept[-1]["id"])))
            base = str(request.base_url).rstrip("/")
            links.append({"rel": "next",
                          "href": f"{base}{request.url.path}?{urlencode(params)}"})
    fields = [f for f in query.getlist("fields") if f]
    if fields:
        kept = [{k: v for k, v in d.items() if k in fields} for d in kept]
    return kept, links


def _only_fields(doc: dict[str, Any], request: Request) -> dict[str, Any]:
    fields = [f for f in request.query_params.getlist("fields") if f]
    return {k: v for k, v in doc.items() if k in fields} if fields else doc


_SAMPLE_SERVER = {"id": "s", "project_id": "p", "addresses": {
    net.NETWORK_NAME: [{"addr": "10.0.1.2"}]}}
#: the attributes each collection can be filtered on (its members' attributes)
_ATTRIBUTES: dict[str, frozenset[str]] = {
    "networks": frozenset(network_doc()),
    "subnets": frozenset(subnet_doc()),
    "ports": frozenset(port_doc(_SAMPLE_SERVER, "ACTIVE", admin=True) or ()),
    "security-groups": frozenset(security_group_doc("p")),
    "security-group-rules": frozenset(_rule("g", "p", "egress", "IPv4")),
    "floatingips": frozenset({
        "id", "floating_ip_address", "floating_network_id", "fixed_ip_address", "port_id",
        "router_id", "status", "tenant_id", "project_id", "description", "tags",
        "dns_domain", "dns_name", "port_details", "qos_policy_id", "revision_number",
        "created_at", "updated_at"}),
}


# --- the routes ------------------------------------------------------------------------
#: (collection, its member's key, the type of its 404, how its 404 reads)
_COLLECTIONS = {
    "networks": ("network", "NetworkNotFound", "Network {} could not be found."),
    "subnets": ("subnet", "SubnetNotFound", "Subnet {} could not be found."),
    "ports": ("port", "PortNotFound", "Port {} could not be found."),
    "security-groups": ("security_group", "SecurityGroupNotFound",
                        "Security group {} does not exist"),
    "security-group-rules": ("security_group_rule", "SecurityGroupRuleNotFound",
                             "Security group rule {} does not exist"),
    "floatingips": ("floatingip", "FloatingIPNotFound", "Floating IP {} could not be found"),
}


def neutron_routes(engine: Engine, authenticate: Authenticator) -> list[BaseRoute]:
    """The ``/network`` routes, authenticated with ``authenticate``."""

    def context(caller: Principal) -> Context:
        return engine.context(user_id=caller.user_id, project_id=caller.project_id,
                              is_admin=caller.is_admin)

    def servers(caller: Principal) -> list[tuple[dict[str, Any], str]]:
        return [(info.doc, info.status) for info in engine.list_servers(ctx=context(caller))]

    def these_servers(caller: Principal, ids: Iterable[str]
                      ) -> list[tuple[dict[str, Any], str]]:
        found = []
        for server_id in dict.fromkeys(ids):
            try:
                info = engine.get_server(server_id, ctx=context(caller))
            except NotFound:
                continue
            found.append((info.doc, info.status))
        return found

    def ports(caller: Principal, request: Request) -> list[dict[str, Any]]:
        # the cloud layer asks for each server's ports by device_id: read those only
        device_ids = [v for v in request.query_params.getlist("device_id") if v]
        chosen = these_servers(caller, device_ids) if device_ids else servers(caller)
        found = (port_doc(doc, status, admin=caller.is_admin) for doc, status in chosen)
        return [p for p in found if p is not None]

    def projects(caller: Principal) -> list[str]:
        seen = {caller.project_id}
        if caller.is_admin:  # Neutron shows an administrator every project's groups
            seen |= {str(doc["project_id"]) for doc, _ in servers(caller)}
        return sorted(seen)

    def security_groups(caller: Principal, _: Request) -> list[dict[str, Any]]:
        return [security_group_doc(p) for p in projects(caller)]

    def rules(caller: Principal, request: Request) -> list[dict[str, Any]]:
        return [r for g in security_groups(caller, request)
                for r in g["security_group_rules"]]

    sources: dict[str, Callable[[Principal, Request], list[dict[str, Any]]]] = {
        "networks": lambda *_: [network_doc()],
        "subnets": lambda *_: [subnet_doc()],
        "ports": ports,
        "security-groups": security_groups,
        "security-group-rules": rules,
        "floatingips": lambda *_: [],
    }

    def caller_of(request: Request) -> Principal:
        try:
            return authenticate(request)
        except ApiError as exc:
            if exc.code == 401:
                raise
            raise NeutronError(exc.code, "HTTPBadRequest", exc.message) from None

    async def guarded(request: Request, produce: Callable[[], Any]) -> Response:
        try:
            body = await run_in_threadpool(produce)
        except NeutronError as exc:
            return neutron_error(exc.code, exc.kind, exc.message)
        except ApiError as exc:  # no token: keystonemiddleware's answer
            response = keystone_error(exc.code, exc.message)
            response.headers.update(exc.headers)
            return response
        return JSONResponse(body)

    def list_endpoint(collection: str) -> Callable[[Request], Any]:
        async def handler(request: Request) -> Response:
            def produce() -> dict[str, Any]:
                docs, links = select(sources[collection](caller_of(request), request), request,
                                     collection)
                body: dict[str, Any] = {collection.replace("-", "_"): docs}
                if links:
                    body[f"{collection.replace('-', '_')}_links"] = links
                return body
            return await guarded(request, produce)
        return handler

    def show_endpoint(collection: str) -> Callable[[Request], Any]:
        member, kind, message = _COLLECTIONS[collection]

        async def handler(request: Request) -> Response:
            wanted = request.path_params["id"]

            def produce() -> dict[str, Any]:
                for doc in sources[collection](caller_of(request), request):
                    if doc["id"] == wanted:
                        return {member: _only_fields(doc, request)}
                raise not_found(kind, message.format(wanted))
            return await guarded(request, produce)
        return handler

    async def read_only(request: Request) -> Response:
        return neutron_error(405, "HTTPMethodNotAllowed",
                             f"The Networking API of vmledger is read-only: "
                             f"{request.method} is not supported here.")

    async def versions(request: Request) -> Response:
        base = str(request.base_url).rstrip("/")
        return JSONResponse({"versions": [{
            "id": API_VERSION, "status": "CURRENT",
            "links": [{"rel": "self", "href": f"{base}{PREFIX}/{API_VERSION}/"}]}]})

    async def resources(request: Request) -> Response:
        base = str(request.base_url).rstrip("/")
        return JSONResponse({"resources": [
            {"name": member, "collection": collection.replace("-", "_"),
             "links": [{"rel": "self",
                        "href": f"{base}{PREFIX}/{API_VERSION}/{collection}"}]}
            for collection, (member, _, _) in _COLLECTIONS.items()]})

    async def extensions(request: Request) -> Response:
        def produce() -> dict[str, Any]:
            caller_of(request)
            return {"extensions": [_extension(*e) for e in EXTENSIONS]}
        return await guarded(request, produce)

    async def extension(request: Request) -> Response:
        alias = request.path_params["alias"]

        def produce() -> dict[str, Any]:
            caller_of(request)
            for found in EXTENSIONS:
                if found[0] == alias:
                    return {"extension": _extension(*found)}
            raise not_found("HTTPNotFound", f"Extension with alias {alias} does not exist")
        return await guarded(request, produce)

    def quota_caller(request: Request) -> tuple[Principal, str]:
        caller = caller_of(request)
        # not "project_id": the authenticators take that one for Nova's URL project
        project_id = request.path_params["project"]
        if project_id != caller.project_id and not caller.is_admin:
            raise NeutronError(403, "HTTPForbidden", "Non-admin is not authorized to "
                                                     "access quotas for another tenant")
        return caller, project_id

    async def list_quotas(request: Request) -> Response:
        def produce() -> dict[str, Any]:
            caller_of(request)
            return {"quotas": []}  # no project's differ from the defaults
        return await guarded(request, produce)

    async def show_quota(request: Request) -> Response:
        def produce() -> dict[str, Any]:
            quota_caller(request)
            return {"quota": dict(QUOTA_DEFAULTS)}
        return await guarded(request, produce)

    async def quota_usage(request: Request) -> Response:
        def produce() -> dict[str, Any]:
            caller, project_id = quota_caller(request)
            owned = [port_doc(doc, status, admin=True) for doc, status in servers(caller)
                     if doc.get("project_id") == project_id]
            group = security_group_doc(project_id)
            used = {"port": sum(1 for p in owned if p is not None), "security_group": 1,
                    "security_group_rule": len(group["security_group_rules"])}
            return {"quota": quota_details(used)}
        return await guarded(request, produce)

    v2 = f"{PREFIX}/{API_VERSION}"
    routes: list[BaseRoute] = [
        Route(PREFIX, versions, methods=["GET"]),
        Route(f"{PREFIX}/", versions, methods=["GET"]),
        Route(v2, resources, methods=["GET"]),
        Route(f"{v2}/", resources, methods=["GET"]),
        Route(f"{v2}/extensions", extensions, methods=["GET"]),
        Route(f"{v2}/extensions/{{alias}}", extension, methods=["GET"]),
    ]
    routes += [
        Route(f"{v2}/quotas", list_quotas, methods=["GET"]),
        Route(f"{v2}/quotas/{{project}}", show_quota, methods=["GET"]),
        Route(f"{v2}/quotas/{{project}}", read_only, methods=["PUT", "DELETE"]),
        Route(f"{v2}/quotas/{{project}}/default", show_quota, methods=["GET"]),
        Route(f"{v2}/quotas/{{project}}/details", quota_usage, methods=["GET"]),
    ]
    for collection in _COLLECTIONS:
        routes += [
            Route(f"{v2}/{collection}", list_endpoint(collection), methods=["GET"]),
            Route(f"{v2}/{collection}", read_only, methods=["POST", "PUT", "DELETE"]),
            Route(f"{v2}/{collection}/{{id}}", show_endpoint(collection), methods=["GET"]),
            Route(f"{v2}/{collection}/{{id}}", read_only,
                  methods=["POST", "PUT", "DELETE"]),
        ]
    return routes


def is_network_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def routing_error(code: int) -> JSONResponse:
    """An unknown path (404) or method (405) under ``/network``, as Neutron answers."""
    if code == 405:
        return neutron_error(405, "HTTPMethodNotAllowed",
                             "The method specified is not allowed for this resource.")
    return neutron_error(code, "HTTPNotFound", "The resource could not be found.")

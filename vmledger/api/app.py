"""The OpenStack Compute API v2.1 as an ASGI application (Starlette).

``create_app(engine)`` serves:

- ``GET /``: the versions document (no auth, no microversion);
- ``GET /v2.1`` and ``/v2.1/`` (and ``/v2.1/{project_id}``): the v2.1 version document;
- under both ``/v2.1`` and ``/v2.1/{project_id}``: servers (create, list, detail, show,
  update, delete, actions, os-instance-actions), key pairs (``os-keypairs``), flavors
  (list, detail, show) and the images proxy (up to microversion 2.35);
- ``/identity``: a minimal Keystone v3 (version documents; tokens with
  ``auth="keystone"``), see :mod:`vmledger.api.identity`;
- ``/image``: an Image API v2 shim (list, show, delete), see :mod:`vmledger.api.glance`;
- ``/network``: a read-only Networking API v2.0 shim (the simulated network, its subnet,
  the servers' ports, default security groups, no floating IPs), see
  :mod:`vmledger.api.neutron`;
- ``/ledger/v1``: the ledger (history, as-of, causal chains, feed, timeline), see
  :mod:`vmledger.api.ledger`;
- ``/healthcheck`` (oslo.middleware's semantics, see :mod:`vmledger.api.health`) and
  ``/metrics`` (Prometheus, see :mod:`vmledger.api.metrics`), without auth.

Callers are identified as :mod:`vmledger.api.auth` describes (``noauth``, ``token``,
``keystone``).

A project id in a URL follows Nova's pattern (:data:`PROJECT_ID_PATTERN`); any other path
is a 404 fault. Every response carries the request id headers, those under ``/v2.1`` the
microversion headers too (see :class:`vmledger.api.http.ApiLayer`), and every
error is a Nova fault body (the Keystone and Glance shims answer in their own shapes).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from vmledger.api import (
    aggregates,
    catalog,
    diagnostics,
    flavor_manage,
    hypervisors,
    instance_actions,
    keypairs,
    limits,
    migrations,
    quotas,
    server_actions,
    server_groups,
    server_metadata,
    server_security_groups,
    server_tags,
    servers,
    services,
    usage,
    zones,
)
from vmledger.api import microversions as mv
from vmledger.api.auth import (
    DEFAULT_TOKEN_LIFETIME,
    Account,
    Authenticator,
    AuthSettings,
    Identity,
    TokenRegistry,
    noauth,
    token_authenticator,
)
from vmledger.api.faults import fault_response
from vmledger.api.glance import glance_routes
from vmledger.api.health import HealthCheck, health_routes
from vmledger.api.http import (
    ApiLayer,
    Call,
    Handler,
    base_url,
    endpoint,
)
from vmledger.api.identity import identity_routes
from vmledger.api.ledger import ledger_routes
from vmledger.api.metrics import ApiMetrics
from vmledger.api.neutron import is_network_path, neutron_routes, routing_error
from vmledger.api.rendering import RenderCache
from vmledger.api.routing import IndexedRouter
from vmledger.engine import Engine

#: when v2.1 was introduced (Nova's fixed ``updated`` value)
V21_UPDATED = "2013-07-23T11:33:21Z"

#: Nova's pattern for a project id in a URL (``[osapi_v21] project_id_regex``): hex
#: digits and dashes, as Keystone's ids are. Anything else under ``/v2.1`` that is no
#: resource (``/v2.1/ports``, ``/v2.1/projects``) is a 404, not a project.
PROJECT_ID_PATTERN = r"[0-9a-f\-]+"


class ProjectIdConvertor(Convertor[str]):
    """The ``{project_id:nova_project_id}`` path parameter: Nova's project id pattern."""

    regex = PROJECT_ID_PATTERN

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("nova_project_id", ProjectIdConvertor())
PROJECT_PREFIX = "/v2.1/{project_id:nova_project_id}"

_HTTP_MESSAGES = {
    404: "The resource could not be found.",
    405: "The method specified is not allowed for this resource.",
}


def version_v21(request: Request) -> dict[str, Any]:
    """The v2.1 entry: status CURRENT, the microversion range, a self link."""
    return {
        "id": "v2.1",
        "status": "CURRENT",
        "version": str(mv.MAX_VERSION),
        "min_version": str(mv.MIN_VERSION),
        "updated": V21_UPDATED,
        "links": [{"rel": "self", "href": f"{base_url(request)}/v2.1/"}],
    }


async def versions(request: Request) -> Response:
    """``GET /``: every API version (only v2.1 is served)."""
    return JSONResponse({"versions": [version_v21(request)]})


async def version_document(call: Call) -> Response:
    """``GET /v2.1`` and ``/v2.1/``: the v2.1 version with media types and docs link."""
    doc = version_v21(call.request)
    doc["links"].append({"rel": "describedby", "type": "text/html",
                         "href": "https://docs.openstack.org/"})
    doc["media-types"] = [{"base": "application/json",
                           "type": "application/vnd.openstack.compute+json;version=2.1"}]
    return JSONResponse({"version": doc})


#: (path below the prefix, handler, methods); more specific paths first
RESOURCE_ROUTES: list[tuple[str, Handler, list[str]]] = [
    ("/servers", servers.list_servers, ["GET"]),
    ("/servers", servers.create_server, ["POST"]),
    ("/servers/detail", servers.list_servers_detail, ["GET"]),
    ("/servers/{server_id}", servers.show_server, ["GET"]),
    ("/servers/{server_id}", servers.update_server, ["PUT"]),
    ("/servers/{server_id}", servers.delete_server, ["DELETE"]),
    ("/servers/{server_id}/action", server_actions.server_action, ["POST"]),
    ("/servers/{server_id}/metadata", server_metadata.list_metadata, ["GET"]),
    ("/servers/{server_id}/metadata", server_metadata.update_metadata, ["POST"]),
    ("/servers/{server_id}/metadata", server_metadata.replace_metadata, ["PUT"]),
    ("/servers/{server_id}/metadata/{key}", server_metadata.show_metadata_item, ["GET"]),
    ("/servers/{server_id}/metadata/{key}", server_metadata.set_metadata_item, ["PUT"]),
    ("/servers/{server_id}/metadata/{key}", server_metadata.delete_metadata_item,
     ["DELETE"]),
    ("/servers/{server_id}/tags", server_tags.list_tags, ["GET"]),
    ("/servers/{server_id}/tags", server_tags.replace_tags, ["PUT"]),
    ("/servers/{server_id}/tags", server_tags.delete_tags, ["DELETE"]),
    ("/servers/{server_id}/tags/{tag}", server_tags.check_tag, ["GET"]),
    ("/servers/{server_id}/tags/{tag}", server_tags.add_tag, ["PUT"]),
    ("/servers/{server_id}/tags/{tag}", server_tags.delete_tag, ["DELETE"]),
    ("/servers/{server_id}/ips", server_tags.list_ips, ["GET"]),
    ("/servers/{server_id}/diagnostics", diagnostics.show_diagnostics, ["GET"]),
    ("/servers/{server_id}/os-security-groups",
     server_security_groups.list_server_security_groups, ["GET"]),
    ("/servers/{server_id}/ips/{network}", server_tags.show_network_ips, ["GET"]),
    ("/servers/{server_id}/os-instance-actions", instance_actions.list_instance_actions,
     ["GET"]),
    ("/servers/{server_id}/os-instance-actions/{request_id}",
     instance_actions.show_instance_action, ["GET"]),
    ("/servers/{server_id}/migrations", migrations.list_server_migrations, ["GET"]),
    ("/servers/{server_id}/migrations/{migration_id}", migrations.show_server_migration,
     ["GET"]),
    ("/servers/{server_id}/migrations/{migration_id}", migrations.abort_server_migration,
     ["DELETE"]),
    ("/servers/{server_id}/migrations/{migration_id}/action",
     migrations.server_migration_action, ["POST"]),
    ("/os-migrations", migrations.list_migrations, ["GET"]),
    ("/os-quota-sets/{quota_project_id}", quotas.show_quotas, ["GET"]),
    ("/os-quota-sets/{quota_project_id}", quotas.update_quotas, ["PUT"]),
    ("/os-quota-sets/{quota_project_id}", quotas.delete_quotas, ["DELETE"]),
    ("/os-quota-sets/{quota_project_id}/detail", quotas.show_quota_details, ["GET"]),
    ("/os-quota-sets/{quota_project_id}/defaults", quotas.show_default_quotas, ["GET"]),
    ("/os-quota-class-sets/{quota_class}", quotas.show_quota_class, ["GET"]),
    ("/os-quota-class-sets/{quota_class}", quotas.update_quota_class, ["PUT"]),
    ("/os-server-groups", server_groups.list_server_groups, ["GET"]),
    ("/os-server-groups", server_groups.create_server_group, ["POST"]),
    ("/os-server-groups/{group_id}", server_groups.show_server_group, ["GET"]),
    ("/os-server-groups/{group_id}", server_groups.delete_server_group, ["DELETE"]),
    ("/os-aggregates", aggregates.list_aggregates, ["GET"]),
    ("/os-aggregates/{aggregate_id}", aggregates.show_aggregate, ["GET"]),
    ("/os-hypervisors", hypervisors.list_hypervisors, ["GET"]),
    ("/os-hypervisors/detail", hypervisors.list_hypervisors_detail, ["GET"]),
    ("/os-hypervisors/statistics", hypervisors.show_statistics, ["GET"]),
    ("/os-hypervisors/{id}", hypervisors.show_hypervisor, ["GET"]),
    ("/os-hypervisors/{id}/uptime", hypervisors.show_uptime, ["GET"]),
    ("/os-hypervisors/{pattern}/search", hypervisors.search_hypervisors, ["GET"]),
    ("/os-hypervisors/{pattern}/servers", hypervisors.hypervisor_servers, ["GET"]),
    ("/os-simple-tenant-usage", usage.list_usage, ["GET"]),
    ("/os-simple-tenant-usage/{tenant_id}", usage.show_usage, ["GET"]),
    ("/limits", limits.show_limits, ["GET"]),
    ("/os-availability-zone", zones.list_zones, ["GET"]),
    ("/os-availability-zone/detail", zones.list_zones_detail, ["GET"]),
    ("/os-services", services.list_services, ["GET"]),
    ("/os-services/{service_id}", services.update_service, ["PUT"]),
    ("/os-services/{service_id}", services.delete_service, ["DELETE"]),
    ("/os-keypairs", keypairs.list_keypairs, ["GET"]),
    ("/os-keypairs", keypairs.create_keypair, ["POST"]),
    ("/os-keypairs/{name}", keypairs.show_keypair, ["GET"]),
    ("/os-keypairs/{name}", keypairs.delete_keypair, ["DELETE"]),
    ("/flavors", catalog.list_flavors, ["GET"]),
    ("/flavors/detail", catalog.list_flavors_detail, ["GET"]),
    ("/flavors/{flavor_id}", catalog.show_flavor, ["GET"]),
    ("/flavors", flavor_manage.create_flavor, ["POST"]),
    ("/flavors/{flavor_id}", flavor_manage.update_flavor, ["PUT"]),
    ("/flavors/{flavor_id}", flavor_manage.delete_flavor, ["DELETE"]),
    ("/flavors/{flavor_id}/action", flavor_manage.flavor_action, ["POST"]),
    ("/flavors/{flavor_id}/os-flavor-access", flavor_manage.list_flavor_access, ["GET"]),
    ("/flavors/{flavor_id}/os-extra_specs", flavor_manage.list_extra_specs, ["GET"]),
    ("/flavors/{flavor_id}/os-extra_specs", flavor_manage.create_extra_specs, ["POST"]),
    ("/flavors/{flavor_id}/os-extra_specs/{key}", flavor_manage.show_extra_spec, ["GET"]),
    ("/flavors/{flavor_id}/os-extra_specs/{key}", flavor_manage.update_extra_spec, ["PUT"]),
    ("/flavors/{flavor_id}/os-extra_specs/{key}", flavor_manage.delete_extra_spec,
     ["DELETE"]),
    ("/images", catalog.list_images, ["GET"]),
    ("/images/detail", catalog.list_images_detail, ["GET"]),
    ("/images/{image_id}", catalog.show_image, ["GET"]),
    ("/images/{image_id}", catalog.delete_image, ["DELETE"]),
]


def _routes(engine: Engine, settings: AuthSettings, registry: TokenRegistry
            ) -> list[BaseRoute]:
    authenticate: Authenticator = (noauth if settings.mode == "noauth"
                                   else token_authenticator(registry))
    # version documents need no token (Nova's are outside its auth pipeline)
    routes: list[BaseRoute] = [
        Route("/", versions, methods=["GET"]),
        Route("/v2.1", endpoint(engine, noauth, version_document), methods=["GET"]),
        Route("/v2.1/", endpoint(engine, noauth, version_document), methods=["GET"]),
    ]
    for prefix in ("/v2.1", PROJECT_PREFIX):
        for path, handler, methods in RESOURCE_ROUTES:
            routes.append(Route(prefix + path, endpoint(engine, authenticate, handler),
                                methods=methods))
    routes.append(Route(PROJECT_PREFIX, endpoint(engine, noauth, version_document),
                        methods=["GET"]))
    routes += identity_routes(settings, registry)
    routes += glance_routes(engine, authenticate)
    routes += neutron_routes(engine, authenticate)
    routes += ledger_routes(engine, authenticate)
    return routes


async def _http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths (404) and methods (405) as Nova faults (Neutron's under
    ``/network``)."""
    assert isinstance(exc, HTTPException)
    if is_network_path(request.scope["path"]):
        return routing_error(exc.status_code)
    message = _HTTP_MESSAGES.get(exc.status_code, str(exc.detail))
    return fault_response(exc.status_code, message, headers=exc.headers)


def create_app(engine: Engine, *, auth: str | AuthSettings = "noauth",
               tokens: Mapping[str, Identity] | Iterable[str] | None = None,
               users: Iterable[Account | str] | None = None,
               token_lifetime: timedelta = DEFAULT_TOKEN_LIFETIME) -> Starlette:
    """The Compute API over ``engine``; ``auth`` picks how callers are identified.

    ``auth`` is ``"noauth"`` (anyone, as admin), ``"token"`` (``tokens``: a mapping of
    token to :class:`~vmledger.api.auth.Identity`, or ``TOKEN:USER:PROJECT:ROLES``
    specs) or ``"keystone"`` (``users`` log in at ``/identity/v3`` with a password:
    :class:`~vmledger.api.auth.Account` objects or ``NAME:PASSWORD:PROJECT:ROLES``
    specs; fixed ``tokens`` work too), or ready-made :class:`AuthSettings`.
    Raises ValueError for a mode it does not know or settings that do not fit it.
    """
    settings = auth if isinstance(auth, AuthSettings) else AuthSettings.build(
        auth, tokens=tokens, users=users, token_lifetime=token_lifetime)
    registry = settings.registry()
    metrics, health = ApiMetrics(engine), HealthCheck(engine)
    operations: list[BaseRoute] = [*health_routes(health),
                                   Route("/metrics", metrics.endpoint, methods=["GET"])]
    app = Starlette(routes=operations + _routes(engine, settings, registry),
                    middleware=[Middleware(ApiLayer, metrics=metrics, engine=engine)],
                    exception_handlers={HTTPException: _http_error})
    app.router = IndexedRouter(app.router.routes)  # the same table, fewer routes tried
    app.state.engine = engine
    app.state.auth = settings
    app.state.tokens = registry
    app.state.renders = RenderCache()
    app.state.metrics = metrics
    app.state.health = health
    return app

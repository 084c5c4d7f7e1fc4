"""Response documents: servers, flavors and images as Nova shows them.

The server view follows ``nova/api/openstack/compute/views/servers.py``: the status from
the lifecycle table, ``progress`` only in the statuses that show it, ``fault`` only in
ERROR and DELETED, ``hostId`` as sha224(project_id + host), the ``OS-EXT-STS:*`` and
``OS-SRV-USG:*`` extension fields, and the fields each microversion adds up to
:data:`vmledger.api.microversions.MAX_VERSION`. Fields the engine does not model
(access IPs, disk config, security groups, tags...) are echoed from what the create
request asked for, kept in the server's ``attributes``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property, lru_cache
from typing import Any

from vmledger.api.microversions import APIVersion
from vmledger.domain import lifecycle as lc
from vmledger.domain import status as st
from vmledger.domain.catalog import Flavor

#: statuses in which Nova shows ``progress``
PROGRESS_STATUSES = frozenset({"ACTIVE", "BUILD", "REBUILD", "RESIZE", "VERIFY_RESIZE",
                               "MIGRATING"})
#: statuses in which Nova shows ``fault``
FAULT_STATUSES = frozenset({"ERROR", "DELETED"})

#: what images do not record: a fixed creation time for the catalog's images
IMAGE_TIMESTAMP = "2024-01-01T00:00:00Z"

_IMAGE_STATUS = {"active": "ACTIVE", "queued": "SAVING", "saving": "SAVING",
                 "deleted": "DELETED", "pending_delete": "DELETED", "killed": "ERROR"}
_IMAGE_PROGRESS = {"queued": 25, "saving": 50, "active": 100}


#: the microversions the documents change at (built once, compared per field)
V2_3 = APIVersion(2, 3)
V2_9 = APIVersion(2, 9)
V2_16 = APIVersion(2, 16)
V2_19 = APIVersion(2, 19)
V2_26 = APIVersion(2, 26)
V2_47 = APIVersion(2, 47)
V2_54 = APIVersion(2, 54)
V2_55 = APIVersion(2, 55)
V2_57 = APIVersion(2, 57)
V2_61 = APIVersion(2, 61)
V2_63 = APIVersion(2, 63)
V2_71 = APIVersion(2, 71)
V2_73 = APIVersion(2, 73)
V2_75 = APIVersion(2, 75)
V2_90 = APIVersion(2, 90)
V2_96 = APIVersion(2, 96)


# --- time formats ----------------------------------------------------------------------
def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def isotime(value: datetime | None) -> str | None:
    """``created``/``updated``: ISO 8601 with ``Z``, no fraction."""
    if value is None:
        return None
    utc = _utc(value)
    if utc.year < 1000:  # isoformat pads years to four digits only from 1000 on
        return utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    return utc.isoformat(timespec="seconds")[:19] + "Z"


def usage_time(value: datetime | None) -> str | None:
    """``OS-SRV-USG:*``: ISO 8601 with microseconds and no zone designator."""
    if value is None:
        return None
    utc = _utc(value)
    if utc.year < 1000:
        return utc.strftime("%Y-%m-%dT%H:%M:%S.%f")
    return utc.isoformat(timespec="microseconds")[:26]


# --- links -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Links:
    """Builds self (versioned) and bookmark (unversioned) links.

    ``project_id`` is the project in the request URL; links carry it only if the request
    did, as Nova's do.
    """

    base: str
    project_id: str | None = None

    def _join(self, *parts: str) -> str:
        segments = [p.strip("/") for p in parts if p]
        return "/".join([self.base.rstrip("/"), *segments])

    @cached_property
    def _prefixes(self) -> tuple[str, str]:
        return self._join("v2.1", self.project_id or ""), self._join(self.project_id or "")

    def versioned(self, *parts: str) -> str:
        return self._join("v2.1", self.project_id or "", *parts)

    def bookmark(self, *parts: str) -> str:
        return self._join(self.project_id or "", *parts)

    def root(self, *parts: str) -> str:
        return self._join(*parts)

    def pair(self, collection: str, item_id: str) -> list[dict[str, str]]:
        versioned, bookmark = self._prefixes
        tail = "".join("/" + part.strip("/") for part in (collection, item_id) if part)
        return [{"rel": "self", "href": versioned + tail},
                {"rel": "bookmark", "href": bookmark + tail}]


@dataclass(frozen=True)
class Viewer:
    """Who a document is rendered for: microversion, links and admin-ness."""

    version: APIVersion
    links: Links
    is_admin: bool = False
    #: each compute host's status as ``host_status`` shows it (2.16, administrators),
    #: as ``(host, status)`` pairs; part of the viewer, so a server rendered while its
    #: host was up is not served again from the render cache once the host is down
    host_states: tuple[tuple[str, str], ...] | None = None

    def host_status(self, host: str | None) -> str:
        """Nova's ``host_status`` of a server on ``host``: ``UP``, ``DOWN`` (forced
        down), ``MAINTENANCE`` (disabled), ``UNKNOWN`` (not heard from lately), or ""
        when the server has no host or its host has no compute service."""
        if not host:
            return ""
        return self._host_states.get(host, "")

    @cached_property
    def _host_states(self) -> dict[str, str]:
        return dict(self.host_states or ())


# --- servers ---------------------------------------------------------------------------
@lru_cache(maxsize=4096)
def host_id(project_id: str, host: str | None) -> str:
    if not host:
        return ""
    return hashlib.sha224((project_id + host).encode("utf-8")).hexdigest()


@lru_cache(maxsize=4096)
def sanitize_hostname(name: str, default: str) -> str:
    """A hostname from a display name, as Nova derives ``OS-EXT-SRV-ATTR:hostname``."""
    text = name.encode("latin-1", "ignore").decode("latin-1")[:63]
    text = re.sub(r"[ _.]", "-", text)
    text = re.sub(r"[^\w.-]+", "", text).lower().strip(".-")
    return text or default[:63]


def server_status(doc: dict[str, Any]) -> str:
    return st.status_of(doc["vm_state"], doc.get("task_state"))


def _addresses(doc: dict[str, Any], *, extended: bool) -> dict[str, Any]:
    if doc.get("vm_state") == lc.BUILDING:
        return {}
    addresses: dict[str, Any] = doc.get("addresses") or {}
    if extended:
        return addresses
    return {net: [{"addr": a.get("addr"), "version": a.get("version")} for a in entries]
            for net, entries in addresses.items()}


def server_addresses(doc: dict[str, Any]) -> dict[str, Any]:
    """``/servers/{id}/ips``: each network's addresses with version and address only."""
    return _addresses(doc, extended=False)


def _image_ref(doc: dict[str, Any], viewer: Viewer) -> dict[str, Any] | str:
    image = doc.get("image") or {}
    image_id = image.get("id")
    if not image_id:
        return ""
    return {"id": image_id,
            "links": [{"rel": "bookmark", "href": viewer.links.bookmark("images", image_id)}]}


def _flavor_ref(doc: dict[str, Any], viewer: Viewer) -> dict[str, Any]:
    flavor: dict[str, Any] = doc.get("flavor") or {}
    if viewer.version >= V2_47:
        return {"vcpus": flavor.get("vcpus"), "ram": flavor.get("ram"),
                "disk": flavor.get("disk"), "ephemeral": flavor.get("ephemeral", 0),
                "swap": flavor.get("swap", 0), "original_name": flavor.get("name"),
                "extra_specs": dict(flavor.get("extra_specs") or {})}
    flavor_id = str(flavor.get("id"))
    return {"id": flavor_id,
            "links": [{"rel": "bookmark", "href": viewer.links.bookmark("flavors", flavor_id)}]}


def _fault(doc: dict[str, Any], viewer: Viewer) -> dict[str, Any] | None:
    fault = doc.get("fault")
    if not fault:
        return None
    created = fault.get("created")
    view: dict[str, Any] = {
        "code": fault.get("code"),
        "created": isotime(created) if isinstance(created, datetime) else created,
        "message": fault.get("message"),
    }
    if fault.get("details") and (viewer.is_admin or fault.get("code") != 500):
        view["details"] = fault["details"]
    return view


def _attributes(doc: dict[str, Any]) -> dict[str, Any]:
    attributes: dict[str, Any] = doc.get("attributes") or {}
    return attributes


def server_hostname(doc: dict[str, Any]) -> str:
    """``OS-EXT-SRV-ATTR:hostname``: the requested hostname, else one from the name."""
    attributes = _attributes(doc)
    if attributes.get("hostname"):
        return str(attributes["hostname"])
    return sanitize_hostname(str(doc.get("name") or ""), f"Server-{doc['id']}")


def server_summary(doc: dict[str, Any], viewer: Viewer) -> dict[str, Any]:
    """An entry of ``GET /servers``."""
    return {"id": doc["id"], "name": doc.get("name"),
            "links": viewer.links.pair("servers", doc["id"])}


def server_view(doc: dict[str, Any], viewer: Viewer, *, reduced: bool = False,
                server_groups: list[str] | None = None) -> dict[str, Any]:
    """The full server document (``GET /servers/{id}``, ``/servers/detail``).

    ``reduced`` gives the smaller body Nova returns from rebuild and update before 2.75
    (no extension fields); ``server_groups`` (the ids of the server's live groups) adds
    the 2.71 field that show, rebuild and update carry but lists do not.
    """
    v = viewer.version
    attributes = _attributes(doc)
    status = server_status(doc)
    host = st.placed_host(doc)
    server: dict[str, Any] = {
        "id": doc["id"],
        "name": doc.get("name"),
        "status": status,
        "tenant_id": doc.get("project_id"),
        "user_id": doc.get("user_id"),
        "metadata": dict(doc.get("metadata") or {}),
        "hostId": host_id(str(doc.get("project_id") or ""), host),
        "image": _image_ref(doc, viewer),
        "flavor": _flavor_ref(doc, viewer),
        "created": isotime(doc.get("created_at")),
        "updated": isotime(doc.get("updated_at")),
        "addresses": _addresses(doc, extended=not reduced),
        "accessIPv4": attributes.get("access_ip_v4") or "",
        "accessIPv6": attributes.get("access_ip_v6") or "",
        "links": viewer.links.pair("servers", doc["id"]),
        "OS-DCF:diskConfig": attributes.get("disk_config") or "MANUAL",
    }
    if status in PROGRESS_STATUSES:
        server["progress"] = int(doc.get("progress") or 0)
    fault = _fault(doc, viewer) if status in FAULT_STATUSES else None
    if fault is not None:
        server["fault"] = fault
    if not reduced:
        server.update({
            "OS-EXT-AZ:availability_zone": doc.get("availability_zone") or "",
            "config_drive": "True" if attributes.get("config_drive") else "",
            "key_name": doc.get("key_name"),
            "OS-SRV-USG:launched_at": usage_time(doc.get("launched_at")),
            "OS-SRV-USG:terminated_at": usage_time(doc.get("terminated_at")),
            "OS-EXT-STS:task_state": doc.get("task_state"),
            "OS-EXT-STS:vm_state": doc.get("vm_state"),
            "OS-EXT-STS:power_state": int(doc.get("power_state") or 0),
            "os-extended-volumes:volumes_attached": [],
        })
        groups = attributes.get("security_groups", ["default"])
        if groups:
            server["security_groups"] = [{"name": name} for name in groups]
        if viewer.is_admin:
            server.update({
                "OS-EXT-SRV-ATTR:host": host,
                "OS-EXT-SRV-ATTR:hypervisor_hostname": host,
                "OS-EXT-SRV-ATTR:instance_name": f"instance-{doc['id'][:8]}",
            })
            if v >= V2_3:
                server.update({
                    "OS-EXT-SRV-ATTR:hostname": server_hostname(doc),
                    "OS-EXT-SRV-ATTR:kernel_id": "",
                    "OS-EXT-SRV-ATTR:launch_index": 0,
                    "OS-EXT-SRV-ATTR:ramdisk_id": "",
                    "OS-EXT-SRV-ATTR:reservation_id": attributes.get("reservation_id", ""),
                    "OS-EXT-SRV-ATTR:root_device_name": "/dev/vda",
                    "OS-EXT-SRV-ATTR:user_data": attributes.get("user_data"),
                })
        if v >= V2_90:
            server["OS-EXT-SRV-ATTR:hostname"] = server_hostname(doc)
        if v >= V2_16 and viewer.is_admin:
            server["host_status"] = viewer.host_status(host)
    if v >= V2_9:
        server["locked"] = bool(doc.get("locked"))
    if v >= V2_19:
        server["description"] = doc.get("description")
    if v >= V2_26:
        server["tags"] = list(attributes.get("tags") or [])
    if v >= V2_63:
        server["trusted_image_certificates"] = None
    if server_groups is not None and v >= V2_71:
        server["server_groups"] = list(server_groups)
    if v >= V2_73:
        server["locked_reason"] = doc.get("locked_reason")
    if not reduced and v >= V2_96:
        server["pinned_availability_zone"] = attributes.get("pinned_availability_zone")
    return server


def rebuild_view(doc: dict[str, Any], viewer: Viewer, admin_pass: str | None,
                 server_groups: list[str]) -> dict[str, Any]:
    """The 202 body of a rebuild: reduced before 2.75, then the show body without
    ``OS-EXT-SRV-ATTR:user_data``; plus ``key_name`` (2.54) and ``user_data`` (2.57)."""
    server = server_view(doc, viewer, reduced=viewer.version < V2_75,
                         server_groups=server_groups)
    # Nova's view builder leaves the admin user_data attribute out of rebuild bodies:
    # they carry the top-level ``user_data`` (2.57) instead
    server.pop("OS-EXT-SRV-ATTR:user_data", None)
    if viewer.version >= V2_54:
        server["key_name"] = doc.get("key_name")
    if viewer.version >= V2_57:
        server["user_data"] = _attributes(doc).get("user_data")
    if admin_pass is not None:
        server["adminPass"] = admin_pass
    return server


def update_view(doc: dict[str, Any], viewer: Viewer, server_groups: list[str]
                ) -> dict[str, Any]:
    """The body of ``PUT /servers/{id}``: reduced before 2.75, then the show body."""
    return server_view(doc, viewer, reduced=viewer.version < V2_75,
                       server_groups=server_groups)


def created_view(doc: dict[str, Any], viewer: Viewer, admin_pass: str | None
                 ) -> dict[str, Any]:
    """The 202 body of ``POST /servers``."""
    attributes = _attributes(doc)
    server: dict[str, Any] = {
        "id": doc["id"],
        "links": viewer.links.pair("servers", doc["id"]),
        "OS-DCF:diskConfig": attributes.get("disk_config") or "MANUAL",
        "security_groups": [{"name": n} for n in attributes.get("security_groups",
                                                                  ["default"])],
    }
    if admin_pass is not None:
        server["adminPass"] = admin_pass
    return server


# --- flavors ---------------------------------------------------------------------------
def flavor_summary(flavor: Flavor, viewer: Viewer) -> dict[str, Any]:
    view: dict[str, Any] = {"id": flavor.id, "name": flavor.name,
                            "links": viewer.links.pair("flavors", flavor.id)}
    if viewer.version >= V2_55:
        view["description"] = flavor.description
    return view


def flavor_view(flavor: Flavor, viewer: Viewer) -> dict[str, Any]:
    v = viewer.version
    view: dict[str, Any] = {
        "id": flavor.id,
        "name": flavor.name,
        "ram": flavor.ram,
        "disk": flavor.disk,
        "vcpus": flavor.vcpus,
        "swap": flavor.swap if (flavor.swap or v >= V2_75) else "",
        "OS-FLV-EXT-DATA:ephemeral": flavor.ephemeral,
        "os-flavor-access:is_public": flavor.is_public,
        "OS-FLV-DISABLED:disabled": flavor.disabled,
        "rxtx_factor": flavor.rxtx_factor,
        "links": viewer.links.pair("flavors", flavor.id),
    }
    if v >= V2_55:
        view["description"] = flavor.description
    if v >= V2_61:
        view["extra_specs"] = dict(flavor.extra_specs)
    return view


# --- images: the proxy (2.1-2.35) and the Glance shim -----------------------------------
# Images reach the views as the engine's dicts (``Engine.list_images``/``get_image``):
# pre-built ones (``type`` "image", catalog fields, no owner, no timestamps) and custom
# ones (``type`` "snapshot": owner ``project_id``, ``server_id``, ``metadata``,
# ``base_image``, ``created_at``/``updated_at``).

#: the creation time shown for pre-built images, which record none
IMAGE_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
#: Glance's name for a status of vmledger's images (a failed snapshot is ``killed``)
_GLANCE_STATUS = {"error": "killed"}


def glance_status(status: str) -> str:
    """The Image API status of an image status (``queued``, ``saving``, ``active``,
    ``killed``, ``deleted``)."""
    return _GLANCE_STATUS.get(status, status)


def image_status(status: str) -> str:
    """The compute proxy's status (Nova's ``views/images.py``): active → ACTIVE, queued and
    saving → SAVING, deleted and pending_delete → DELETED, killed → ERROR, else UNKNOWN."""
    return _IMAGE_STATUS.get(glance_status(status), "UNKNOWN")


def image_progress(status: str) -> int:
    """queued 25, saving 50, active 100, anything else 0 (as Nova)."""
    return _IMAGE_PROGRESS.get(glance_status(status), 0)


def is_snapshot(image: Mapping[str, Any]) -> bool:
    return image.get("type") == "snapshot"


def image_properties(image: Mapping[str, Any]) -> dict[str, str]:
    """The image's Glance properties.

    A pre-built image has its catalog properties. A snapshot has what Nova's
    ``compute_utils.create_image`` writes (``image_type`` snapshot, ``instance_uuid``,
    ``base_image_ref``) overlaid with the metadata of the ``createImage`` request.
    """
    metadata = {str(k): str(v) for k, v in (image.get("metadata") or {}).items()}
    if not is_snapshot(image):
        return metadata
    properties = {"image_type": "snapshot", "instance_uuid": str(image.get("server_id"))}
    base = (image.get("base_image") or {}).get("id")
    if base:
        properties["base_image_ref"] = str(base)
    properties.update(metadata)
    return properties


def _as_time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return _utc(value)
    if isinstance(value, str) and value:
        return _utc(datetime.fromisoformat(value.replace("Z", "+00:00")))
    return IMAGE_EPOCH


def image_created(image: Mapping[str, Any]) -> datetime:
    return _as_time(image.get("created_at"))


def image_updated(image: Mapping[str, Any]) -> datetime:
    return _as_time(image.get("updated_at") or image.get("created_at"))


def image_size(image: Mapping[str, Any]) -> int | None:
    """The stored size in bytes; None while nothing is stored yet (as Glance)."""
    size = int(image.get("size") or 0)
    if size == 0 and glance_status(str(image.get("status"))) != "active":
        return None
    return size


def newest_first(images: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Glance's default order: ``created_at`` descending, then ``id`` descending."""
    return sorted(images, key=lambda i: (image_created(i), str(i["id"])), reverse=True)


def _image_links(image_id: str, viewer: Viewer) -> list[dict[str, str]]:
    return [*viewer.links.pair("images", image_id),
            {"rel": "alternate", "type": "application/vnd.openstack.image",
             "href": viewer.links.root("images", image_id)}]


def image_summary(image: Mapping[str, Any], viewer: Viewer) -> dict[str, Any]:
    """An entry of ``GET /images``."""
    image_id = str(image["id"])
    return {"id": image_id, "name": image.get("name"), "links": _image_links(image_id, viewer)}


def image_view(image: Mapping[str, Any], viewer: Viewer) -> dict[str, Any]:
    """``GET /images/{id}`` and ``/images/detail`` (Nova's proxy view of a Glance image);
    a snapshot also names its server (from its ``instance_uuid`` property, as Nova)."""
    image_id = str(image["id"])
    status = str(image.get("status") or "")
    properties = image_properties(image)
    view: dict[str, Any] = {
        "id": image_id,
        "name": image.get("name"),
        "minRam": int(image.get("min_ram") or 0),
        "minDisk": int(image.get("min_disk") or 0),
        "metadata": properties,
        "created": isotime(image_created(image)),
        "updated": isotime(image_updated(image)),
        "status": image_status(status),
        "progress": image_progress(status),
        "OS-EXT-IMG-SIZE:size": image_size(image),
        "links": _image_links(image_id, viewer),
    }
    server_id = properties.get("instance_uuid")
    if server_id:
        view["server"] = {"id": server_id, "links": viewer.links.pair("servers", server_id)}
    return view

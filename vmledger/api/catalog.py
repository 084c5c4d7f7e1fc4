"""Flavors and the images proxy (``/flavors``, ``/images``, the latter only up to 2.35):
list, detail and show of pre-built and custom images, and delete."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlencode

from starlette.datastructures import QueryParams
from starlette.responses import JSONResponse, Response

from vmledger.api.faults import ApiError
from vmledger.api.http import Call
from vmledger.api.query import time_param
from vmledger.api.validation import non_negative_int
from vmledger.api.views import (
    flavor_summary,
    flavor_view,
    glance_status,
    image_properties,
    image_status,
    image_summary,
    image_updated,
    image_view,
    newest_first,
)
from vmledger.domain.catalog import Flavor
from vmledger.domain.errors import NotFound

#: Nova's ``[api] max_limit``
MAX_LIMIT = 1000
#: the last microversion with the images proxy
MAX_PROXY_VERSION = (2, 35)

T = TypeVar("T")


def paginate(items: Sequence[T], query: QueryParams, key: Callable[[T], str]
             ) -> tuple[list[T], int]:
    """The page after ``marker`` (unknown → 400) of at most ``limit`` items.

    Returns the page and the page size that triggers a next link.
    """
    limit = MAX_LIMIT
    raw = query.get("limit")
    if raw is not None:
        limit = min(non_negative_int(raw, "limit"), MAX_LIMIT)
    start = 0
    marker = query.get("marker")
    if marker is not None:
        ids = [key(item) for item in items]
        if marker not in ids:
            raise ApiError(400, f"marker [{marker}] not found")
        start = ids.index(marker) + 1
    return list(items[start:start + limit]), limit


def next_link(call: Call, collection: str, page: Sequence[Any], page_size: int,
              last_id: str) -> list[dict[str, str]]:
    """``[{"rel": "next", ...}]`` when the page is full, as Nova's collection links."""
    if not page_size or len(page) != page_size:
        return []
    params = [(k, v) for k, v in sorted(call.request.query_params.multi_items())
              if k != "marker"]
    params.append(("marker", last_id))
    href = call.viewer.links.versioned(collection) + "?" + urlencode(params)
    return [{"rel": "next", "href": href}]


# --- flavors ---------------------------------------------------------------------------
def _parse_is_public(value: str | None) -> bool | None:
    if value is None:
        return True
    lowered = value.strip().lower()
    if lowered == "none":
        return None
    if lowered in ("true", "1", "yes", "on", "t", "y"):
        return True
    if lowered in ("false", "0", "no", "off", "f", "n"):
        return False
    raise ApiError(400, f"Invalid is_public filter [{value}]")


def _int_filter(query: QueryParams, name: str) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ApiError(400, f"Invalid {name} filter [{raw}]") from None


def _flavors(call: Call) -> list[Flavor]:
    query = call.request.query_params
    flavors = call.engine.service.catalog.flavors()
    if call.principal.is_admin:
        is_public = _parse_is_public(query.get("is_public"))
        if is_public is not None:
            flavors = [f for f in flavors if f.is_public == is_public]
    else:
        flavors = [f for f in flavors
                   if not f.disabled and call.engine.may_use_flavor(f, call.context())]
    min_ram = _int_filter(query, "minRam")
    if min_ram is not None:
        flavors = [f for f in flavors if f.ram >= min_ram]
    min_disk = _int_filter(query, "minDisk")
    if min_disk is not None:
        flavors = [f for f in flavors if f.disk >= min_disk]
    return flavors


async def list_flavors(call: Call) -> Response:
    return _flavor_list(call, detail=False)


async def list_flavors_detail(call: Call) -> Response:
    return _flavor_list(call, detail=True)


def _flavor_list(call: Call, *, detail: bool) -> Response:
    page, size = paginate(_flavors(call), call.request.query_params, key=lambda f: f.id)
    render = flavor_view if detail else flavor_summary
    body: dict[str, Any] = {"flavors": [render(f, call.viewer) for f in page]}
    links = next_link(call, "flavors/detail" if detail else "flavors", page, size,
                      page[-1].id if page else "")
    if links:
        body["flavors_links"] = links
    return JSONResponse(body)


async def show_flavor(call: Call) -> Response:
    flavor_id = call.request.path_params["flavor_id"]
    found = next((f for f in call.engine.service.catalog.flavors() if f.id == flavor_id),
                 None)
    if found is not None and not call.engine.may_use_flavor(found, call.context()):
        found = None  # a private flavor: administrators and the projects given access
    if found is None:
        raise ApiError(404, f"Flavor {flavor_id} could not be found.")
    return JSONResponse({"flavor": flavor_view(found, call.viewer)})


# --- images (proxy) --------------------------------------------------------------------
# Nova's ``images.py``: the images the caller may see in Glance, which are the catalog's
# pre-built images and the custom images (snapshots) of the caller's project, or of every
# project for an administrator (``Engine.list_images``). Only up to 2.35.

#: Nova's filters, each with the Glance property it reads (``property-*`` reads any)
_PROPERTY_FILTERS = {"server": "instance_uuid", "type": "image_type"}

#: what Nova answers when Glance refuses a delete (403: the image is protected)
NOT_ALLOWED_TO_DELETE = "You are not allowed to delete the image."
IMAGE_NOT_FOUND = "Image not found."


def _check_proxy_version(call: Call) -> None:
    if call.version > MAX_PROXY_VERSION:
        raise ApiError(404, "The resource could not be found.")


def _property_filters(query: QueryParams) -> dict[str, str]:
    wanted: dict[str, str] = {}
    for key, value in query.multi_items():
        if key.startswith("property-") and len(key) > len("property-"):
            wanted[key.removeprefix("property-")] = value
    for param, prop in _PROPERTY_FILTERS.items():
        given = query.get(param)
        if given is not None:
            # ``server`` may be a server's URL (Nova keeps what follows the last slash)
            wanted[prop] = given.rsplit("/", 1)[-1] if param == "server" else given
    return wanted


def select_images(images: Sequence[Mapping[str, Any]], query: QueryParams
                  ) -> list[Mapping[str, Any]]:
    """Nova's image filters, in Glance's order (newest first).

    ``name`` (exact), ``status`` (a Glance status such as ``active``, or the proxy's
    ``ACTIVE``/``SAVING``/…), ``changes-since`` (updated at or after), ``server`` and
    ``type`` (the ``instance_uuid`` and ``image_type`` properties), ``property-<key>``,
    ``minRam`` and ``minDisk`` (at least).
    """
    selected = newest_first(images)
    name = query.get("name")
    if name is not None:
        selected = [i for i in selected if i.get("name") == name]
    status = query.get("status")
    if status is not None:
        selected = [i for i in selected
                    if glance_status(str(i.get("status"))) == status.lower()
                    or image_status(str(i.get("status"))) == status.upper()]
    since = time_param("changes-since", query.get("changes-since"))
    if since is not None:
        selected = [i for i in selected if image_updated(i) >= since]
    for prop, value in _property_filters(query).items():
        selected = [i for i in selected if image_properties(i).get(prop) == value]
    min_ram = _int_filter(query, "minRam")
    if min_ram is not None:
        selected = [i for i in selected if int(i.get("min_ram") or 0) >= min_ram]
    min_disk = _int_filter(query, "minDisk")
    if min_disk is not None:
        selected = [i for i in selected if int(i.get("min_disk") or 0) >= min_disk]
    return selected


def _images(call: Call) -> list[Mapping[str, Any]]:
    return select_images(call.engine.list_images(ctx=call.context()),
                         call.request.query_params)


async def list_images(call: Call) -> Response:
    return await _image_list(call, detail=False)


async def list_images_detail(call: Call) -> Response:
    return await _image_list(call, detail=True)


async def _image_list(call: Call, *, detail: bool) -> Response:
    _check_proxy_version(call)
    images = await call.run(_images, call)
    page, size = paginate(images, call.request.query_params, key=lambda i: str(i["id"]))
    render = image_view if detail else image_summary
    body: dict[str, Any] = {"images": [render(i, call.viewer) for i in page]}
    links = next_link(call, "images/detail" if detail else "images", page, size,
                      str(page[-1]["id"]) if page else "")
    if links:
        body["images_links"] = links
    return JSONResponse(body)


def _image(call: Call, image_id: str) -> dict[str, Any]:
    try:
        return call.engine.get_image(image_id, ctx=call.context())
    except NotFound:
        raise ApiError(404, IMAGE_NOT_FOUND) from None


async def show_image(call: Call) -> Response:
    _check_proxy_version(call)
    image = await call.run(_image, call, call.request.path_params["image_id"])
    return JSONResponse({"image": image_view(image, call.viewer)})


def _delete_image(call: Call, image_id: str) -> None:
    if any(i.id == image_id for i in call.engine.service.catalog.images()):
        # pre-built images are protected: Glance refuses (403) and Nova says so
        raise ApiError(403, NOT_ALLOWED_TO_DELETE)
    try:
        call.engine.delete_image(image_id, ctx=call.context())
    except NotFound:
        raise ApiError(404, IMAGE_NOT_FOUND) from None


async def delete_image(call: Call) -> Response:
    """``DELETE /images/{id}`` → 204: the owner project or an administrator. Someone
    else's image is 404 (Glance hides private images); a pre-built one is 403; a snapshot
    still being saved is 409."""
    _check_proxy_version(call)
    await call.run(_delete_image, call, call.request.path_params["image_id"])
    return Response(status_code=204)


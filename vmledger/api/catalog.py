"""Flavors and the images proxy (``/flavors``, ``/images``, the latter only up to 2.35)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlencode

from starlette.datastructures import QueryParams
from starlette.responses import JSONResponse, Response

from vmledger.api.faults import ApiError
from vmledger.api.http import Call
from vmledger.api.validation import non_negative_int
from vmledger.api.views import (
    flavor_summary,
    flavor_view,
    image_status,
    image_summary,
    image_view,
)
from vmledger.domain.catalog import Flavor, Image

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
        flavors = [f for f in flavors if f.is_public and not f.disabled]
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
    if found is None:
        raise ApiError(404, f"Flavor {flavor_id} could not be found.")
    return JSONResponse({"flavor": flavor_view(found, call.viewer)})


# --- images (proxy) --------------------------------------------------------------------
def _check_proxy_version(call: Call) -> None:
    if call.version > MAX_PROXY_VERSION:
        raise ApiError(404, "The resource could not be found.")


def _images(call: Call) -> list[Image]:
    query = call.request.query_params
    images = call.engine.service.catalog.images()
    name = query.get("name")
    if name is not None:
        images = [i for i in images if i.name == name]
    status = query.get("status")
    if status is not None:
        wanted = status.upper()
        images = [i for i in images if image_status(i) == wanted or i.status.upper() == wanted]
    min_ram = _int_filter(query, "minRam")
    if min_ram is not None:
        images = [i for i in images if i.min_ram >= min_ram]
    min_disk = _int_filter(query, "minDisk")
    if min_disk is not None:
        images = [i for i in images if i.min_disk >= min_disk]
    return images


async def list_images(call: Call) -> Response:
    return _image_list(call, detail=False)


async def list_images_detail(call: Call) -> Response:
    return _image_list(call, detail=True)


def _image_list(call: Call, *, detail: bool) -> Response:
    _check_proxy_version(call)
    page, size = paginate(_images(call), call.request.query_params, key=lambda i: i.id)
    render = image_view if detail else image_summary
    body: dict[str, Any] = {"images": [render(i, call.viewer) for i in page]}
    links = next_link(call, "images/detail" if detail else "images", page, size,
                      page[-1].id if page else "")
    if links:
        body["images_links"] = links
    return JSONResponse(body)


async def show_image(call: Call) -> Response:
    _check_proxy_version(call)
    image_id = call.request.path_params["image_id"]
    found = next((i for i in call.engine.service.catalog.images() if i.id == image_id), None)
    if found is None:
        raise ApiError(404, "Image not found.")
    return JSONResponse({"image": image_view(found, call.viewer)})

"""A read-only Image API v2 shim under ``/image`` over the catalog's images.

Clients that find images through the ``image`` service (the ``openstack`` CLI's
``server create --image`` and ``server list``, openstacksdk's ``conn.image``) get what
they need without a Glance:

- ``GET /image``, ``/image/``, ``/image/v2``, ``/image/v2/`` → the versions document;
- ``GET /image/v2/images`` with ``name``, ``id`` (``in:a,b`` or one id), ``status``,
  ``visibility``, ``limit`` and ``marker`` → ``{"images": [...], "first", "schema",
  "next"?}``;
- ``GET /image/v2/images/{id}`` → the image (404 otherwise).

Requests are authenticated as the Compute API's (401 without a token in token modes).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from vmledger.api.auth import Authenticator
from vmledger.api.faults import ApiError
from vmledger.api.views import IMAGE_TIMESTAMP
from vmledger.domain.catalog import Image
from vmledger.engine import Engine

IMAGE_API_VERSION = "v2.9"
MAX_PAGE = 1000


def _error(code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    titles = {400: "Bad Request", 401: "Unauthorized", 404: "Not Found"}
    title = titles.get(code, "Error")
    return JSONResponse({"code": f"{code} {title}", "title": title, "message": message},
                        status_code=code, headers=headers)


def image_document(image: Image) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": image.id,
        "name": image.name,
        "status": image.status,
        "visibility": "public",
        "protected": False,
        "os_hidden": False,
        "tags": [],
        "container_format": "bare",
        "disk_format": image.disk_format,
        "min_disk": image.min_disk,
        "min_ram": image.min_ram,
        "size": image.size,
        "virtual_size": None,
        "checksum": None,
        "os_hash_algo": None,
        "os_hash_value": None,
        "owner": None,
        "created_at": IMAGE_TIMESTAMP,
        "updated_at": IMAGE_TIMESTAMP,
        "self": f"/v2/images/{image.id}",
        "file": f"/v2/images/{image.id}/file",
        "schema": "/v2/schemas/image",
    }
    for key, value in image.properties.items():
        doc.setdefault(key, value)
    return doc


def _versions(request: Request) -> dict[str, Any]:
    base = str(request.base_url).rstrip("/")
    return {"versions": [{"id": IMAGE_API_VERSION, "status": "CURRENT",
                          "links": [{"rel": "self", "href": f"{base}/image/v2/"}]}]}


def _select(images: list[Image], request: Request) -> tuple[list[Image], str | None]:
    query = request.query_params
    name = query.get("name")
    if name is not None:
        images = [i for i in images if i.name == name]
    wanted_id = query.get("id")
    if wanted_id is not None:
        ids = set(wanted_id.removeprefix("in:").split(",")) if wanted_id.startswith(
            "in:") else {wanted_id}
        images = [i for i in images if i.id in ids]
    status = query.get("status")
    if status is not None:
        images = [i for i in images if i.status == status]
    visibility = query.get("visibility")
    if visibility not in (None, "public", "all"):
        images = []
    images = sorted(images, key=lambda i: i.id)
    marker = query.get("marker")
    if marker is not None:
        ids_in_order = [i.id for i in images]
        if marker not in ids_in_order:
            raise ApiError(400, f"marker {marker} not found")
        images = images[ids_in_order.index(marker) + 1:]
    raw_limit = query.get("limit")
    limit = MAX_PAGE
    if raw_limit is not None:
        if not raw_limit.isdigit():
            raise ApiError(400, "limit param must be an integer")
        limit = min(int(raw_limit), MAX_PAGE)
    page = images[:limit]
    next_href = None
    if raw_limit is not None and page and len(page) == limit:
        params = [(k, v) for k, v in query.multi_items() if k != "marker"]
        params.append(("marker", page[-1].id))
        next_href = "/v2/images?" + urlencode(params)
    return page, next_href


def glance_routes(engine: Engine, authenticate: Authenticator) -> list[BaseRoute]:
    """The ``/image`` routes, authenticated with ``authenticate``."""

    def refused(request: Request) -> Response | None:
        try:
            authenticate(request)
        except ApiError as exc:
            return _error(exc.code, exc.message, exc.headers)
        return None

    async def versions(request: Request) -> Response:
        return JSONResponse(_versions(request))

    async def list_images(request: Request) -> Response:
        denied = refused(request)
        if denied is not None:
            return denied
        try:
            page, next_href = _select(engine.service.catalog.images(), request)
        except ApiError as exc:
            return _error(exc.code, exc.message)
        body: dict[str, Any] = {"images": [image_document(i) for i in page],
                                "first": "/v2/images", "schema": "/v2/schemas/images"}
        if next_href is not None:
            body["next"] = next_href
        return JSONResponse(body)

    async def show_image(request: Request) -> Response:
        denied = refused(request)
        if denied is not None:
            return denied
        image_id = request.path_params["image_id"]
        found = next((i for i in engine.service.catalog.images() if i.id == image_id), None)
        if found is None:
            return _error(404, f"No image found with ID {image_id}")
        return JSONResponse(image_document(found))

    return [
        Route("/image", versions, methods=["GET"]),
        Route("/image/", versions, methods=["GET"]),
        Route("/image/v2", versions, methods=["GET"]),
        Route("/image/v2/", versions, methods=["GET"]),
        Route("/image/v2/images", list_images, methods=["GET"]),
        Route("/image/v2/images/{image_id}", show_image, methods=["GET"]),
    ]

"""An Image API v2 shim under ``/image`` over the engine's images.

Clients that find images through the ``image`` service (the ``openstack`` CLI's
``server create --image``, ``server list``, ``server image create``, ``image show``,
``image list`` and ``image delete``; openstacksdk's ``conn.image`` and
``conn.compute.create_server_image(..., wait=True)``) get what they need without a
Glance. The images are the catalog's pre-built ones (``visibility`` public, ``protected``)
and the custom images made by ``createImage`` (``visibility`` private, ``owner`` = the
project, status ``queued`` → ``saving`` → ``active``, or ``killed``; properties
``image_type`` snapshot, ``instance_uuid``, ``base_image_ref`` and the request's metadata).
A caller sees the pre-built images and its project's custom images (an administrator:
every project's).

- ``GET /image``, ``/image/``, ``/image/v2``, ``/image/v2/`` → the versions document;
- ``GET /image/v2/images`` with ``name``, ``id`` (``in:a,b`` or one id), ``status``,
  ``visibility``, ``owner``, ``limit`` and ``marker`` → ``{"images": [...], "first",
  "schema", "next"?}``, newest first (Glance's default order);
- ``GET /image/v2/images/{id}`` → the image (404 for an image the caller may not see);
- ``DELETE /image/v2/images/{id}`` → 204 for the owner project or an administrator;
  404 for anyone else (a private image is invisible to them); 403 for a pre-built
  image (protected, as Glance answers); 409 while a snapshot is still being saved.

Requests are authenticated as the Compute API's (401 without a token in token modes).
Errors use Glance's JSON body ``{"code": "404 Not Found", "title", "message"}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from vmledger.api.auth import Authenticator
from vmledger.api.faults import ApiError
from vmledger.api.views import (
    glance_status,
    image_created,
    image_properties,
    image_size,
    image_updated,
    is_snapshot,
    isotime,
    newest_first,
)
from vmledger.domain.errors import Conflict, NotFound
from vmledger.domain.server import Context
from vmledger.engine import Engine

IMAGE_API_VERSION = "v2.9"
MAX_PAGE = 1000
_TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           409: "Conflict"}


def _error(code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    title = _TITLES.get(code, "Error")
    return JSONResponse({"code": f"{code} {title}", "title": title, "message": message},
                        status_code=code, headers=headers)


def image_document(image: Mapping[str, Any]) -> dict[str, Any]:
    """An image as Glance v2 shows it (core fields, then the properties at top level)."""
    image_id = str(image["id"])
    snapshot = is_snapshot(image)
    doc: dict[str, Any] = {
        "id": image_id,
        "name": image.get("name"),
        "status": glance_status(str(image.get("status") or "")),
        "visibility": "private" if snapshot else "public",
        "protected": not snapshot,
        "os_hidden": False,
        "tags": [],
        "container_format": "bare",
        "disk_format": image.get("disk_format") or "qcow2",
        "min_disk": int(image.get("min_disk") or 0),
        "min_ram": int(image.get("min_ram") or 0),
        "size": image_size(image),
        "virtual_size": None,
        "checksum": image.get("checksum"),
        "os_hash_algo": None,
        "os_hash_value": None,
        "owner": image.get("owner"),
        "created_at": isotime(image_created(image)),
        "updated_at": isotime(image_updated(image)),
        "self": f"/v2/images/{image_id}",
        "file": f"/v2/images/{image_id}/file",
        "schema": "/v2/schemas/image",
    }
    for key, value in image_properties(image).items():
        doc.setdefault(key, value)
    return doc


def _versions(request: Request) -> dict[str, Any]:
    base = str(request.base_url).rstrip("/")
    return {"versions": [{"id": IMAGE_API_VERSION, "status": "CURRENT",
                          "links": [{"rel": "self", "href": f"{base}/image/v2/"}]}]}


def _visibility(image: Mapping[str, Any]) -> str:
    return "private" if is_snapshot(image) else "public"


def _select(images: Sequence[Mapping[str, Any]], request: Request
            ) -> tuple[list[Mapping[str, Any]], str | None]:
    query = request.query_params
    images = newest_first(images)
    name = query.get("name")
    if name is not None:
        images = [i for i in images if i.get("name") == name]
    wanted_id = query.get("id")
    if wanted_id is not None:
        ids = set(wanted_id.removeprefix("in:").split(",")) if wanted_id.startswith(
            "in:") else {wanted_id}
        images = [i for i in images if str(i["id"]) in ids]
    status = query.get("status")
    if status is not None:
        images = [i for i in images if glance_status(str(i.get("status"))) == status]
    visibility = query.get("visibility")
    if visibility is not None and visibility != "all":
        images = [i for i in images if _visibility(i) == visibility]
    owner = query.get("owner")
    if owner is not None:
        images = [i for i in images if i.get("owner") == owner]
    marker = query.get("marker")
    if marker is not None:
        ids_in_order = [str(i["id"]) for i in images]
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
        params.append(("marker", str(page[-1]["id"])))
        next_href = "/v2/images?" + urlencode(params)
    return page, next_href


def glance_routes(engine: Engine, authenticate: Authenticator) -> list[BaseRoute]:
    """The ``/image`` routes, authenticated with ``authenticate``."""

    def caller(request: Request) -> Context:
        principal = authenticate(request)
        return engine.context(user_id=principal.user_id, project_id=principal.project_id,
                              is_admin=principal.is_admin)

    async def versions(request: Request) -> Response:
        return JSONResponse(_versions(request))

    async def list_images(request: Request) -> Response:
        try:
            ctx = caller(request)
            images = await run_in_threadpool(engine.list_images, ctx=ctx)
            page, next_href = _select(images, request)
        except ApiError as exc:
            return _error(exc.code, exc.message, exc.headers)
        body: dict[str, Any] = {"images": [image_document(i) for i in page],
                                "first": "/v2/images", "schema": "/v2/schemas/images"}
        if next_href is not None:
            body["next"] = next_href
        return JSONResponse(body)

    async def show_image(request: Request) -> Response:
        image_id = request.path_params["image_id"]
        try:
            ctx = caller(request)
            image = await run_in_threadpool(engine.get_image, image_id, ctx=ctx)
        except ApiError as exc:
            return _error(exc.code, exc.message, exc.headers)
        except NotFound:
            return _error(404, f"No image found with ID {image_id}")
        return JSONResponse(image_document(image))

    def delete(image_id: str, ctx: Context) -> None:
        if any(i.id == image_id for i in engine.service.catalog.images()):
            raise ApiError(403, f"Image {image_id} is protected and cannot be deleted.")
        engine.delete_image(image_id, ctx=ctx)

    async def delete_image(request: Request) -> Response:
        image_id = request.path_params["image_id"]
        try:
            ctx = caller(request)
            await run_in_threadpool(delete, image_id, ctx)
        except ApiError as exc:
            return _error(exc.code, exc.message, exc.headers)
        except NotFound:
            return _error(404, f"Failed to find image {image_id} to delete")
        except Conflict as exc:
            return _error(409, exc.message)
        return Response(status_code=204)

    return [
        Route("/image", versions, methods=["GET"]),
        Route("/image/", versions, methods=["GET"]),
        Route("/image/v2", versions, methods=["GET"]),
        Route("/image/v2/", versions, methods=["GET"]),
        Route("/image/v2/images", list_images, methods=["GET"]),
        Route("/image/v2/images/{image_id}", show_image, methods=["GET"]),
        Route("/image/v2/images/{image_id}", delete_image, methods=["DELETE"]),
    ]

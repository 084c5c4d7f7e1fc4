"""Flavors and images: what servers are built from.

The catalog starts with Nova-like defaults (m1.tiny … m1.xlarge and a few images) and
takes more through :meth:`Catalog.add_flavor` / :meth:`Catalog.add_image` or the
engine's settings. A server's events carry a copy of the flavor and image it was built
with, so its history stays readable even if the catalog changes later.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from vmledger.domain.errors import BadRequest, FlavorNotFound, ImageNotFound

_IMAGE_NS = uuid.UUID("6f1a2a7e-4d5b-4b8e-9a57-6e0f4f1d2c10")


@dataclass(frozen=True)
class Flavor:
    id: str
    name: str
    vcpus: int
    ram: int  # MB
    disk: int  # GB
    ephemeral: int = 0
    swap: int = 0
    is_public: bool = True
    disabled: bool = False
    description: str | None = None
    extra_specs: dict[str, str] = field(default_factory=dict)
    rxtx_factor: float = 1.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Image:
    id: str
    name: str
    min_ram: int = 0  # MB
    min_disk: int = 0  # GB
    size: int = 0  # bytes
    status: str = "active"
    disk_format: str = "qcow2"
    properties: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


#: the resources a server takes of its host (Nova's placement classes VCPU, MEMORY_MB,
#: DISK_GB)
RESOURCES = ("vcpus", "ram", "disk")


def flavor_resources(flavor: Any) -> dict[str, int]:
    """What a server of ``flavor`` (a flavor's dict, as recorded) takes of its host:
    ``vcpus``, ``ram`` (MB) and ``disk`` (GB: root, ephemeral and swap rounded up to
    whole GB, as Nova's ``DISK_GB``); zeros for what the record lacks."""
    if not isinstance(flavor, dict):
        return {"vcpus": 0, "ram": 0, "disk": 0}
    swap = _count(flavor.get("swap"))
    return {"vcpus": _count(flavor.get("vcpus")), "ram": _count(flavor.get("ram")),
            "disk": _count(flavor.get("disk")) + _count(flavor.get("ephemeral"))
            + -(-swap // 1024)}


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def image_id_for(name: str) -> str:
    """A stable id for a pre-built image named in configuration."""
    return str(uuid.uuid5(_IMAGE_NS, name))


DEFAULT_FLAVORS: tuple[Flavor, ...] = (
    Flavor("1", "m1.tiny", vcpus=1, ram=512, disk=1),
    Flavor("2", "m1.small", vcpus=1, ram=2048, disk=20),
    Flavor("3", "m1.medium", vcpus=2, ram=4096, disk=40),
    Flavor("4", "m1.large", vcpus=4, ram=8192, disk=80),
    Flavor("5", "m1.xlarge", vcpus=8, ram=16384, disk=160),
)

DEFAULT_IMAGES: tuple[Image, ...] = (
    Image(image_id_for("cirros-0.6.2-x86_64"), "cirros-0.6.2-x86_64", min_disk=1,
          size=21430272, properties={"os_distro": "cirros"}),
    Image(image_id_for("debian-12-genericcloud-amd64"), "debian-12-genericcloud-amd64",
          min_ram=512, min_disk=2, size=352321536, properties={"os_distro": "debian"}),
    Image(image_id_for("ubuntu-24.04-server-cloudimg-amd64"),
          "ubuntu-24.04-server-cloudimg-amd64", min_ram=1024, min_disk=4, size=593494016,
          properties={"os_distro": "ubuntu"}),
)


class Catalog:
    """Flavors by id and images by id, with lookup by name for embedding callers."""

    def __init__(self, flavors: tuple[Flavor, ...] = DEFAULT_FLAVORS,
                 images: tuple[Image, ...] = DEFAULT_IMAGES) -> None:
        self._lock = threading.Lock()
        self._flavors: dict[str, Flavor] = {f.id: f for f in flavors}
        self._images: dict[str, Image] = {i.id: i for i in images}
        #: flavors administrators made or changed, by id (None: deleted), overriding the
        #: configured ones; the engine answers it from the flavors read model
        self.overrides: Callable[[], dict[str, Flavor | None]] = dict

    def _all_flavors(self) -> dict[str, Flavor]:
        with self._lock:
            merged: dict[str, Flavor | None] = dict(self._flavors)
        merged.update(self.overrides())
        return {key: f for key, f in merged.items() if f is not None}

    def configured_flavor(self, flavor_id: str) -> Flavor | None:
        """A flavor as configured (before any administrator's change), by id."""
        with self._lock:
            return self._flavors.get(flavor_id)

    def add_flavor(self, flavor: Flavor) -> Flavor:
        if flavor.vcpus < 1 or flavor.ram < 1 or flavor.disk < 0:
            raise BadRequest("A flavor needs at least 1 vCPU, 1 MB of RAM and a disk >= 0")
        with self._lock:
            self._flavors[flavor.id] = flavor
        return flavor

    def add_image(self, image: Image) -> Image:
        with self._lock:
            self._images[image.id] = image
        return image

    def flavors(self) -> list[Flavor]:
        return sorted(self._all_flavors().values(), key=lambda f: f.id)

    def images(self) -> list[Image]:
        with self._lock:
            return sorted(self._images.values(), key=lambda i: i.name)

    def flavor(self, ref: str | int) -> Flavor:
        """The usable flavor with this id (a URL's last segment is accepted), or name."""
        key = str(ref).rstrip("/").rsplit("/", 1)[-1]
        flavors = self._all_flavors()
        found = flavors.get(key) or next((f for f in flavors.values() if f.name == key),
                                         None)
        if found is None or found.disabled:
            raise FlavorNotFound(key)
        return found

    def image(self, ref: str) -> Image:
        """The image with this id (a URL's last segment is accepted), or name."""
        key = str(ref).rstrip("/").rsplit("/", 1)[-1]
        with self._lock:
            found = self._images.get(key) or next(
                (i for i in self._images.values() if i.name == key), None)
        if found is None:
            raise ImageNotFound(key)
        return found

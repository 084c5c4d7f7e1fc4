"""Hypervisor drivers by name: what ``--hypervisor`` on the command line selects.

``simulator`` or ``simulator:memory`` (in memory: the guests are gone with the process),
``simulator:///path/state.json`` (the simulator's guests kept in a file, so a restarted
process finds them; the ``vmledger`` command's default, beside the database) — either
with ``?live_migration_seconds=N`` to make a live migration copy for N seconds (time to
abort it or force it to complete) —, or any libvirt
URI (``test:///default``, ``qemu:///system``, ``qemu+ssh://host/system``) for the
libvirt driver. For libvirt, ``image_dir`` holds the base qcow2 files of the catalog's
images, named ``<image name>.qcow2`` or ``<image id>.qcow2`` (an image without one boots
diskless); server disks and custom images go to ``disk_dir``; ``peer_uri`` and
``migrate_uri`` say how other hosts reach this one in a migration (see
:class:`~vmledger.adapters.libvirt.LibvirtDriver`).
"""

from __future__ import annotations

import os
from urllib.parse import parse_qsl, urlsplit

from vmledger.adapters.hypervisor import Hypervisor
from vmledger.adapters.simulator import Simulator
from vmledger.domain.catalog import Catalog

LIBVIRT_SCHEMES = ("test", "qemu", "qemu+ssh", "qemu+tcp", "qemu+tls", "qemu+unix")


def open_hypervisor(name: str, *, catalog: Catalog | None = None,
                    image_dir: str | None = None, disk_dir: str | None = None,
                    seed: int = 0, peer_uri: str | None = None,
                    migrate_uri: str | None = None) -> Hypervisor:
    """The driver a name or URI selects (ValueError with the choices otherwise)."""
    if name in ("simulator", "sim", "simulator:memory"):
        return Simulator(seed=seed)
    parts = urlsplit(name)
    if parts.scheme == "simulator":
        path = None if parts.path in ("", "memory") else parts.path
        return Simulator(seed=seed, state_path=path,
                         live_migration_seconds=_live_migration_seconds(parts.query))
    scheme = parts.scheme
    if scheme in LIBVIRT_SCHEMES:
        from vmledger.adapters.libvirt import LibvirtDriver

        images: dict[str, str] = {}
        if image_dir:
            for image in (catalog or Catalog()).images():
                for candidate in (image.name, image.id):
                    path = os.path.join(image_dir, f"{candidate}.qcow2")
                    if os.path.isfile(path):
                        images[image.id] = path
                        break
        if disk_dir is None:
            disk_dir = os.path.abspath("vmledger-disks")
        os.makedirs(disk_dir, exist_ok=True)
        return LibvirtDriver(name, images=images, disk_dir=disk_dir, peer_uri=peer_uri,
                             migrate_uri=migrate_uri)
    raise ValueError(f"unknown hypervisor {name!r}: use simulator, simulator:memory, "
                     "simulator:///state.json or a libvirt URI (test:///default, qemu:///system, "
                     "qemu+ssh://host/system)")


def _live_migration_seconds(query: str) -> float:
    """The simulator's one option a URI's query may give (ValueError for any other)."""
    seconds = 0.0
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key != "live_migration_seconds":
            raise ValueError(f"unknown simulator option {key!r}: use live_migration_seconds")
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if not 0 <= seconds < float("inf"):
            raise ValueError(f"live_migration_seconds is a number of seconds, not {value!r}")
    return seconds

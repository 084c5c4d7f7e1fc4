"""The libvirt driver: the hypervisor port over libvirt-python, for any libvirt URI.

Each server is one persistent domain named ``vmledger-<server id>`` whose UUID is the
server id. The port's semantics are the simulator's (idempotent in the target state,
409 with ``rollback`` from a wrong state, 404 for an unknown guest); how each operation
maps onto libvirt calls is in docs/libvirt-hosts.md.

:class:`LibvirtDriver` is composed of one mixin per concept: :mod:`~.power` (power
transitions), :mod:`~.definitions` (defining, changing and removing guests),
:mod:`~.inspection` (reading guests and the host), :mod:`~.migration` (moving guests to
another host), over :mod:`~.base` (connection, locking, errors).
"""

from __future__ import annotations

from vmledger.adapters.libvirt.definitions import DefinitionsMixin
from vmledger.adapters.libvirt.inspection import InspectionMixin
from vmledger.adapters.libvirt.migration import MigrationMixin
from vmledger.adapters.libvirt.power import PowerMixin

__all__ = ["LibvirtDriver"]


class LibvirtDriver(PowerMixin, DefinitionsMixin, InspectionMixin, MigrationMixin):
    """The :class:`~vmledger.adapters.hypervisor.Hypervisor` port over one libvirt URI.

    ``images`` maps image ids to base qcow2 files: a guest of such an image gets a qcow2
    overlay in ``disk_dir``; any other image gives a diskless guest. Thread-safe: one
    connection (libvirt connections are), one lock per guest around each operation.
    Call :meth:`close` when done, or libvirt keeps the connection open.
    """

    driver = "libvirt"

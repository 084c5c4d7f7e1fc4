"""The libvirt hypervisor driver: vmledger guests as libvirt domains, on any URI.

``LibvirtDriver("qemu:///system")`` drives real QEMU guests through libvirtd;
``LibvirtDriver("test:///path/node.xml")`` drives libvirt's in-process test driver (no
daemon; about 2,800 driver calls/s through this driver, measured by
``python -m benchmarks --suite hypervisors``), which the test suite uses. Needs
libvirt-python (built against the system libvirt: ``apt-get install libvirt-dev
pkg-config`` first).
See docs/libvirt-hosts.md.

Modules: :mod:`~.driver` (:class:`LibvirtDriver`, composed of the four that follow),
:mod:`~.power` (power transitions), :mod:`~.definitions` (spawn, rebuild, resize, rescue,
snapshot, destroy), :mod:`~.inspection` (observe, diagnostics, console, host facts),
:mod:`~.migration` (cold and live migration between hosts),
:mod:`~.base` (what they share: locking, running an operation, errors),
:mod:`~.domain_xml` (definitions and vmledger's metadata in them), :mod:`~.connection`
(the connection, its events), :mod:`~.disks` (qcow2 overlays).
"""

from vmledger.adapters.libvirt.connection import LibvirtUnavailable, LifecycleEvent
from vmledger.adapters.libvirt.driver import LibvirtDriver

__all__ = ["LibvirtDriver", "LibvirtUnavailable", "LifecycleEvent"]

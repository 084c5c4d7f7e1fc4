"""The libvirt driver's reading side: a guest's observation, its diagnostics and console
output, and the host's facts; nothing here changes a guest.
"""

from __future__ import annotations

import contextlib
import os
import socket
import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import urlsplit

import libvirt

from vmledger.adapters.hypervisor import (
    DIAGNOSTICS_STATE,
    NO_CONSOLE,
    HypervisorError,
    Observation,
    PowerState,
    Result,
    local_uptime,
    nic_detail,
)
from vmledger.adapters.libvirt import disks
from vmledger.adapters.libvirt.base import DriverBase, _error, _instance, _power, _Progress
from vmledger.adapters.libvirt.connection import LibvirtUnavailable
from vmledger.adapters.libvirt.domain_xml import console_log


def _local_ip() -> str:
    """This machine's address on its default route (nothing is sent), else loopback."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # TEST-NET-1
        return str(s.getsockname()[0])
    return "127.0.0.1"


class InspectionMixin(DriverBase):
    """Reads guests and the host."""

    def observe(self, server_id: str) -> Observation:
        for attempt in (1, 2):
            conn = self._connection.get()
            try:
                return self._observe(conn, server_id)
            except libvirt.libvirtError as e:
                if not self._connection.is_lost(conn, e):
                    raise _error(e, rollback=True) from e
                if attempt == 2:
                    raise LibvirtUnavailable(f"lost the connection to {self.uri}") from e
        raise AssertionError("unreachable")

    def _observe(self, conn: Any, server_id: str) -> Observation:
        dom = self._lookup(conn, server_id)
        if dom is None:
            return Observation(exists=False)
        state, max_kib, _kib, vcpus, _cpu_time = dom.info()
        inst = _instance(dom)
        return Observation(
            exists=True, power_state=_power(dom, state), flavor_id=inst.flavor_id,
            image_id=inst.image_id, resize_pending=inst.resize_pending, rescued=inst.rescued,
            details={"domain": dom.name(), "state": state, "vcpus": vcpus,
                     "ram_mb": max_kib // 1024, "disk_gb": inst.disk_gb, "name": inst.name})

    def diagnostics(self, server_id: str) -> Result:
        """From ``virDomainGetInfo``, the definition (NICs, disks) and, while the guest
        runs, its vCPU times and disk statistics (``virDomainBlockStats``)."""

        def body(conn: Any, do: _Progress) -> Result:
            dom = self._require(conn, server_id)
            state, max_kib, kib, vcpus, _cpu_time = dom.info()
            power = _power(dom, state)
            root = ET.fromstring(dom.XMLDesc(0))
            targets = [t.get("dev", "") for t in root.findall("devices/disk/target")]
            running = power == PowerState.RUNNING
            cpus: list[dict[str, Any]] = []
            disk_details: list[dict[str, Any]] = []
            for dev in targets:
                stats: Any = None
                if running:
                    with contextlib.suppress(libvirt.libvirtError):
                        stats = dom.blockStats(dev)  # rd_req, rd_bytes, wr_req, wr_bytes, errs
                disk_details.append({
                    "read_requests": stats[0] if stats else None,
                    "read_bytes": stats[1] if stats else None,
                    "write_requests": stats[2] if stats else None,
                    "write_bytes": stats[3] if stats else None,
                    "errors_count": stats[4] if stats else None})
            if running:
                with contextlib.suppress(libvirt.libvirtError):
                    cpus = [{"id": number, "time": cpu_time, "utilisation": None}
                            for number, _state, cpu_time, _cpu in dom.vcpus()[0]]
            return {
                "state": DIAGNOSTICS_STATE.get(int(power), "pending"), "driver": "libvirt",
                "hypervisor": root.get("type"), "hypervisor_os": "linux", "uptime": None,
                "config_drive": False, "num_cpus": vcpus,
                "num_nics": len(root.findall("devices/interface")),
                "num_disks": len(targets),
                "memory_details": {"maximum": max_kib // 1024,
                                   "used": kib // 1024 if running else 0},
                "cpu_details": cpus,
                "nic_details": [nic_detail(m.get("address"))
                                for m in root.findall("devices/interface/mac")],
                "disk_details": disk_details}

        return self._act(server_id, body)

    def host_info(self) -> Result:
        """From ``virConnectGetInfo``, ``virConnectGetType``/``GetVersion`` and the host
        CPU of the capabilities; the disk capacity and free space of ``disk_dir``'s file
        system (``/`` without one); this machine's address and, for a local URI, its
        uptime (None for a remote host)."""
        conn = self._connection.get()
        try:
            arch, memory_mb, cpus, _mhz, nodes, sockets, cores, threads = conn.getInfo()
            hypervisor_type = conn.getType()
            version = conn.getVersion()
            capabilities = ET.fromstring(conn.getCapabilities())
        except libvirt.libvirtError as e:
            if self._connection.is_lost(conn, e):
                raise LibvirtUnavailable(f"lost the connection to {self.uri}: "
                                         f"{e.get_error_message()}") from e
            raise _error(e, rollback=True) from e
        cpu = capabilities.find("host/cpu")
        features = sorted({str(f.get("name")) for f in cpu.findall("feature")}
                          if cpu is not None else set())
        total_gb = free_gb = None
        with contextlib.suppress(OSError):
            fs = os.statvfs(_existing(self.disk_dir or "/"))
            total_gb = fs.f_frsize * fs.f_blocks // 1024 ** 3
            free_gb = fs.f_frsize * fs.f_bavail // 1024 ** 3
        return {
            "hypervisor_type": hypervisor_type, "hypervisor_version": int(version),
            "vcpus": int(cpus), "memory_mb": int(memory_mb), "local_gb": total_gb or 0,
            "disk_available_least": free_gb, "host_ip": _local_ip(),
            "cpu_info": {
                "arch": (cpu.findtext("arch") if cpu is not None else None) or arch,
                "model": cpu.findtext("model") if cpu is not None else None,
                "vendor": cpu.findtext("vendor") if cpu is not None else None,
                "topology": {"cells": int(nodes), "sockets": int(sockets),
                             "cores": int(cores), "threads": int(threads)},
                "features": features},
            "uptime": local_uptime() if urlsplit(self.uri).hostname is None else None,
        }

    #: at most this much of a console log is read (Nova's libvirt driver: 100 KiB)
    CONSOLE_BYTES = 100 * 1024

    def console_output(self, server_id: str) -> str:
        """The end of the file the guest's serial console writes to (guests spawned
        with a ``disk_dir`` have one; others: no console, 404)."""

        def body(conn: Any, do: _Progress) -> Result:
            path = console_log(self._require(conn, server_id).XMLDesc(0))
            if path is None:
                raise HypervisorError(NO_CONSOLE, rollback=True, code=404)
            return {"output": disks.tail(path, self.CONSOLE_BYTES)}

        return str(self._act(server_id, body)["output"])


def _existing(path: str) -> str:
    """``path``, or its nearest existing parent (the disk directory is made on first
    use: its file system is the parent's until then)."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path

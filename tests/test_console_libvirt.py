"""Console logs of libvirt guests, on libvirt's in-process test driver: new definitions
get a file-backed serial console next to their disk, read back through the definition.
(Real QEMU writing to it: test_libvirt_qemu.py.)"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.support.libvirtd import LIBVIRT_MISSING_REASON, node_uri

libvirt = pytest.importorskip("libvirt", reason=LIBVIRT_MISSING_REASON, exc_type=ImportError)

from vmledger.adapters.hypervisor import GuestSpec, HypervisorError  # noqa: E402
from vmledger.adapters.libvirt import LibvirtDriver  # noqa: E402


def spec(server_id: str) -> GuestSpec:
    return GuestSpec(server_id=server_id, name="web-1", flavor_id="1", vcpus=1, ram_mb=512,
                     disk_gb=1, image_id="image-a")


def test_a_guest_with_a_disk_dir_logs_its_serial_console_there(tmp_path: Path) -> None:
    disk_dir = tmp_path / "disks"
    disk_dir.mkdir()
    with LibvirtDriver(node_uri(tmp_path), disk_dir=str(disk_dir)) as driver:
        sid = str(uuid.uuid4())
        driver.spawn(spec(sid))
        xml = driver.connection().lookupByUUIDString(sid).XMLDesc(0)
        [serial] = ET.fromstring(xml).findall("devices/serial")
        log = disk_dir / f"vmledger-{sid}.console.log"
        assert serial.get("type") == "file"
        assert serial.find("source").get("path") == str(log)  # type: ignore[union-attr]
        assert driver.console_output(sid) == ""  # nothing written yet
        log.write_bytes(b"boot \xff\nweb-1 login: ")
        assert driver.console_output(sid) == "boot \ufffd\nweb-1 login: "
        # only the end of a long log is read, from a line start
        log.write_bytes(b"x" * 10 + b"\n" + b"y\n" * (LibvirtDriver.CONSOLE_BYTES // 2))
        tail = driver.console_output(sid)
        assert tail.startswith("y\n") and len(tail) <= LibvirtDriver.CONSOLE_BYTES
        driver.destroy(sid)
        assert not log.exists()


def test_a_guest_without_a_console_log_is_404(tmp_path: Path) -> None:
    with LibvirtDriver(node_uri(tmp_path)) as driver:  # no disk_dir: no console file
        sid = str(uuid.uuid4())
        driver.spawn(spec(sid))
        with pytest.raises(HypervisorError) as refused:
            driver.console_output(sid)
        assert (refused.value.code, refused.value.message) == (
            404, "Guest does not have a console available.")
        with pytest.raises(HypervisorError) as missing:
            driver.console_output(str(uuid.uuid4()))
        assert missing.value.code == 404

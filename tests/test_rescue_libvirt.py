"""Rescue on libvirt's in-process test driver: the definition boots an overlay of the
rescue image with the guest's own disk as ``vdb``, and unrescue puts the guest's own
definition back (UUID, MAC, disk); the engine drives both. (Real QEMU:
test_libvirt_qemu.py.)"""

from __future__ import annotations

import shutil
import subprocess
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from tests.support.libvirtd import LIBVIRT_MISSING_REASON, node_uri

libvirt = pytest.importorskip("libvirt", reason=LIBVIRT_MISSING_REASON, exc_type=ImportError)

from vmledger import Engine, FakeClock  # noqa: E402
from vmledger.adapters.hypervisor import GuestSpec, HypervisorError, PowerState  # noqa: E402
from vmledger.adapters.libvirt import LibvirtDriver  # noqa: E402
from vmledger.domain.catalog import image_id_for  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None,
                                reason="qemu-img not found: apt-get install qemu-utils")

IMAGE, RESCUE = "cirros-0.6.2-x86_64", "debian-12-genericcloud-amd64"


def disks_of(dom: Any) -> list[tuple[str, str]]:
    root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    return [(d.find("target").get("dev"), d.find("source").get("file"))  # type: ignore[union-attr]
            for d in root.findall("devices/disk")]


def macs(dom: Any) -> list[str]:
    root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    return [m.get("address", "") for m in root.findall("devices/interface/mac")]


def base(tmp_path: Path, name: str) -> str:
    path = tmp_path / f"{name}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    return str(path)


def test_the_driver_rescues_and_unrescues(tmp_path: Path) -> None:
    disk_dir = tmp_path / "disks"
    images = {"image-a": base(tmp_path, "a"), "rescue-img": base(tmp_path, "r")}
    with LibvirtDriver(node_uri(tmp_path), images=images, disk_dir=str(disk_dir)) as driver:
        sid = str(uuid.uuid4())
        spec = GuestSpec(server_id=sid, name="web-1", flavor_id="1", vcpus=1, ram_mb=512,
                         disk_gb=1, image_id="image-a")
        driver.spawn(spec)
        dom = driver.connection().lookupByUUIDString(sid)
        own = str(disk_dir / f"vmledger-{sid}.qcow2")
        rescue_disk = str(disk_dir / f"vmledger-{sid}.rescue.qcow2")
        before, mac = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), macs(dom)
        driver.power_off(sid)

        rescue = GuestSpec(**{**spec.__dict__, "image_id": "rescue-img"})
        assert driver.rescue(rescue) == {"rescue_image_id": "rescue-img", "disk": rescue_disk}
        assert disks_of(dom) == [("vda", rescue_disk), ("vdb", own)]
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING and macs(dom) == mac
        obs = driver.observe(sid)
        assert (obs.rescued, obs.power_state, obs.image_id) == (True, PowerState.RUNNING,
                                                                "image-a")
        assert driver.rescue(rescue) == {"already": True}
        dom.destroy()  # as if the driver had died between the redefine and the start
        assert driver.rescue(rescue) == {"already": True, "started": True}
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING

        assert driver.unrescue(sid)["removed"] == [rescue_disk]
        assert dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) == before
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert driver.observe(sid).rescued is False
        assert driver.unrescue(sid) == {"already": True}
        assert not Path(rescue_disk).exists()

        # a guest with a disk cannot be rescued by an image with no base file here (it
        # would boot its own disk): refused, nothing changed
        with pytest.raises(HypervisorError) as refused:
            driver.rescue(GuestSpec(**{**spec.__dict__, "image_id": "unknown-img"}))
        assert (refused.value.code, refused.value.rollback) == (400, True)
        assert dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) == before


def test_the_engine_rescues_on_libvirt(tmp_path: Path) -> None:
    disk_dir = tmp_path / "disks"
    images = {image_id_for(IMAGE): base(tmp_path, "cirros"),
              image_id_for(RESCUE): base(tmp_path, "debian")}
    with LibvirtDriver(node_uri(tmp_path), images=images, disk_dir=str(disk_dir)) as driver, \
            Engine("memory", clock=FakeClock(), hypervisor=driver) as engine:
        sid = engine.create_server("web-1", flavor="m1.tiny", image=IMAGE).id
        engine.run_until_idle()
        engine.rescue(sid, image=RESCUE)
        engine.run_until_idle()
        assert engine.get_server(sid).status == "RESCUE"
        dom = driver.connection().lookupByUUIDString(sid)
        assert [dev for dev, _ in disks_of(dom)] == ["vda", "vdb"]
        engine.unrescue(sid)
        engine.run_until_idle()
        s = engine.get_server(sid)
        assert (s.status, s.power_state) == ("ACTIVE", int(PowerState.RUNNING))
        assert disks_of(dom) == [("vda", str(disk_dir / f"vmledger-{sid}.qcow2"))]
        engine.delete(sid)
        engine.run_until_idle()
        assert sorted(p.name for p in disk_dir.iterdir()) == []


def test_the_guest_has_the_mac_the_api_shows_even_after_an_offloaded_unshelve(
        tmp_path: Path) -> None:
    with LibvirtDriver(node_uri(tmp_path)) as driver, \
            Engine("memory", clock=FakeClock(), hypervisor=driver) as engine:
        sid = engine.create_server("web-1", flavor="m1.tiny", image=IMAGE).id
        engine.run_until_idle()
        [port] = engine.get_server(sid).doc["addresses"]["private"]
        shown = port["OS-EXT-IPS-MAC:mac_addr"]
        assert macs(driver.connection().lookupByUUIDString(sid)) == [shown]
        engine.shelve(sid)  # offloaded at once: the domain is undefined
        engine.run_until_idle()
        assert driver.observe(sid).exists is False
        engine.unshelve(sid)  # a new domain, with the same MAC (as Nova keeps the port)
        engine.run_until_idle()
        assert macs(driver.connection().lookupByUUIDString(sid)) == [shown]

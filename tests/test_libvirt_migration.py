"""The libvirt driver's migration calls on libvirt's in-process test driver: two private
test hypervisors stand for two hosts, each with its own disk directory.

Cold migration needs nothing of libvirt beyond defining domains, so it runs here whole
(qcow2 files made by ``qemu-img``). The test driver cannot migrate a running domain:
here live migration shows its refusals, the answers that need no move, and that a
failed move leaves the guest where it was; the moves themselves run on real QEMU in
test_libvirt_migration_qemu.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.libvirtd import LIBVIRT_MISSING_REASON, node_uri

libvirt = pytest.importorskip("libvirt", reason=LIBVIRT_MISSING_REASON, exc_type=ImportError)

from vmledger.adapters.hypervisor import GuestSpec, HypervisorError, PowerState  # noqa: E402
from vmledger.adapters.libvirt import LibvirtDriver  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None,
                                reason="qemu-img not found: apt-get install qemu-utils")

RUNNING, SHUTDOWN = PowerState.RUNNING, PowerState.SHUTDOWN


def spec(server_id: str, *, flavor: str = "1", vcpus: int = 1, ram_mb: int = 512,
         disk_gb: int = 1, image: str = "image-a") -> GuestSpec:
    return GuestSpec(server_id=server_id, name="moving", flavor_id=flavor, vcpus=vcpus,
                     ram_mb=ram_mb, disk_gb=disk_gb, image_id=image)


@pytest.fixture
def base(tmp_path: Path) -> str:
    path = tmp_path / "image-a.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    return str(path)


def host(tmp_path: Path, name: str, images: dict[str, str]) -> LibvirtDriver:
    node = tmp_path / name
    node.mkdir()
    return LibvirtDriver(node_uri(node), images=images, disk_dir=str(node / "disks"),
                         acpi_timeout=0.0)


@pytest.fixture
def hosts(tmp_path: Path, base: str) -> Iterator[tuple[LibvirtDriver, LibvirtDriver]]:
    """Host one has the image's base file, host two has none."""
    one, two = host(tmp_path, "one", {"image-a": base}), host(tmp_path, "two", {})
    yield one, two
    one.close()
    two.close()


def dom_of(driver: LibvirtDriver, server_id: str) -> Any:
    return driver.connection().lookupByUUIDString(server_id)


def macs(dom: Any) -> list[str]:
    root = ET.fromstring(dom.XMLDesc(0))
    return [m.get("address", "") for m in root.findall("devices/interface/mac")]


def exists(driver: LibvirtDriver, server_id: str) -> bool:
    return driver.observe(server_id).exists


def backing(path: str) -> str | None:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", path], check=True,
                         capture_output=True, text=True).stdout
    found = json.loads(out).get("backing-filename")
    return None if found is None else str(found)


def test_prepare_answers_how_to_reach_the_destination(hosts: tuple[LibvirtDriver,
                                                                   LibvirtDriver],
                                                      base: str) -> None:
    one, two = hosts
    sid = str(uuid.uuid4())
    target = one.prepare_migration(spec(sid), live=True)["target"]
    assert target["driver"] == "libvirt" and target["uri"] == one.uri
    assert target["disk_dir"] == one.disk_dir and target["base"] == base
    assert two.prepare_migration(spec(sid), live=False)["target"]["base"] is None
    with LibvirtDriver("qemu:///system?socket=/s", migrate_uri="tcp://10.0.0.2") as local:
        # from inside another libvirtd a local URI names that daemon's own driver
        assert local.peer_uri == "qemu+unix:///system?socket=/s"
        assert local.migrate_uri == "tcp://10.0.0.2"
    assert LibvirtDriver("qemu+ssh://h2/system").peer_uri == "qemu+ssh://h2/system"
    assert LibvirtDriver("qemu:///system", peer_uri="qemu+tls://h1/system").peer_uri == (
        "qemu+tls://h1/system")

    one.spawn(spec(sid))  # a guest of the server already here: never two copies
    with pytest.raises(HypervisorError, match="already defined") as refused:
        one.prepare_migration(spec(sid), live=False)
    assert (refused.value.code, refused.value.rollback) == (409, True)


def test_cold_migration_between_two_hosts(hosts: tuple[LibvirtDriver, LibvirtDriver],
                                          base: str) -> None:
    one, two = hosts
    sid = str(uuid.uuid4())
    one.spawn(spec(sid))
    source_disk = Path(one.disk_dir or "") / f"vmledger-{sid}.qcow2"
    console = source_disk.with_name(f"vmledger-{sid}.console.log")
    console.write_text("booted on host one\n")
    mac = macs(dom_of(one, sid))
    bigger = spec(sid, flavor="2", vcpus=2, ram_mb=1024, disk_gb=2)

    target = two.prepare_migration(bigger, live=False)["target"]
    sent = one.migrate_disk(sid, target)
    dest = Path(two.disk_dir or "") / f"vmledger-{sid}.qcow2"
    assert sent["disk"]["path"] == str(dest) and sent["disk"]["copied"] == "flattened"
    assert sent["disk"]["power_state"] == RUNNING and sent["disk"]["method"] == "acpi"
    assert one.observe(sid).power_state == SHUTDOWN  # kept, off, for a revert
    assert backing(str(dest)) is None  # host two lacks the base: one whole file
    assert one.migrate_disk(sid, target)["already"] is True

    done = two.finish_migration(bigger, sent["disk"], power_on=True)
    assert done["power_state"] == RUNNING and done["disk"] == str(dest)
    dom = dom_of(two, sid)
    assert dom.info()[1] == 1024 * 1024 and dom.info()[3] == 2
    assert two.observe(sid).flavor_id == "2"
    assert macs(dom) == mac and mac != []
    assert two.console_output(sid) == "booted on host one\n"  # the console continues
    again = two.finish_migration(bigger, sent["disk"], power_on=True)
    assert again == {"already": True, "power_state": RUNNING}

    # revert: the destination's guest and files go, the source starts again
    two.destroy(sid)
    one.power_on(sid)
    assert not exists(two, sid) and not dest.exists()
    assert one.observe(sid).power_state == RUNNING and source_disk.exists()

    # confirm: after a second move, the source's guest and files go
    two.images["image-a"] = base
    target = two.prepare_migration(bigger, live=False)["target"]
    sent = one.migrate_disk(sid, target)
    assert sent["disk"]["copied"] == "overlay" and backing(str(dest)) == base
    two.finish_migration(bigger, sent["disk"], power_on=False)
    assert two.observe(sid).power_state == SHUTDOWN
    one.destroy(sid)
    assert not exists(one, sid) and not source_disk.exists() and dest.exists()


def test_cold_migration_refusals_leave_the_guest_as_it_was(
        hosts: tuple[LibvirtDriver, LibvirtDriver], tmp_path: Path) -> None:
    one, two = hosts
    sid = str(uuid.uuid4())
    one.spawn(spec(sid))
    target = dict(two.prepare_migration(spec(sid), live=False)["target"])
    for bad, message in (({**target, "disk_dir": None}, "keeps no disks"),
                         ({**target, "disk_dir": one.disk_dir}, "each host needs its own")):
        with pytest.raises(HypervisorError, match=message) as refused:
            one.migrate_disk(sid, bad)
        assert (refused.value.code, refused.value.rollback) == (409, True)
        assert one.observe(sid).power_state == RUNNING
    one.resize(spec(sid, flavor="2"))
    with pytest.raises(HypervisorError, match="resize awaiting") as refused:
        one.migrate_disk(sid, target)
    assert refused.value.rollback and one.observe(sid).power_state == RUNNING
    with pytest.raises(HypervisorError, match="Domain not found") as missing:
        one.migrate_disk(str(uuid.uuid4()), target)
    assert missing.value.code == 404

    lost = {"path": str(tmp_path / "never-sent.qcow2"), "mac": None}
    with pytest.raises(HypervisorError, match="not received") as refused:
        two.finish_migration(spec(sid), lost, power_on=True)
    assert (refused.value.code, refused.value.rollback) == (404, True)
    assert not exists(two, sid)


def test_live_migration_on_a_driver_that_cannot_leaves_the_guest_running(
        hosts: tuple[LibvirtDriver, LibvirtDriver]) -> None:
    """The test driver has no peer-to-peer migration: refused (501) with rollback, the
    guest still here and running, nothing left on the destination."""
    one, two = hosts
    sid = str(uuid.uuid4())
    one.spawn(spec(sid))
    target = two.prepare_migration(spec(sid), live=True)["target"]
    with pytest.raises(HypervisorError) as refused:
        one.live_migrate(sid, target, block_migration=False)
    assert (refused.value.code, refused.value.rollback) == (501, True)
    assert one.observe(sid).power_state == RUNNING
    assert list((Path(two.disk_dir or "")).iterdir()) == []  # its links were taken back

    one.power_off(sid)
    with pytest.raises(HypervisorError, match="power state SHUTDOWN") as refused:
        one.live_migrate(sid, target, block_migration=False)
    assert (refused.value.code, refused.value.rollback) == (409, True)
    with pytest.raises(HypervisorError, match="no libvirt URI") as refused:
        one.live_migrate(sid, {}, block_migration=False)
    assert refused.value.code == 400
    with pytest.raises(HypervisorError, match="Domain not found"):
        one.live_migrate(str(uuid.uuid4()), target, block_migration=False)
    # nothing in progress: abort and force-complete have nothing to do
    assert one.abort_migration(sid) == {"already": True}
    assert one.force_complete_migration(sid) == {"already": True}
    assert one.abort_migration(str(uuid.uuid4())) == {"already": True}
    with pytest.raises(HypervisorError, match="No guest") as missing:
        two.finish_live_migration(spec(sid), {"power_state": 1})
    assert (missing.value.code, missing.value.rollback) == (404, True)


def test_finish_live_migration_restores_the_power_state_it_had(
        hosts: tuple[LibvirtDriver, LibvirtDriver]) -> None:
    """A guest that arrived paused (force-completed) runs again; one that was paused on
    the source stays paused."""
    one, _two = hosts
    sid = str(uuid.uuid4())
    one.spawn(spec(sid))
    one.pause(sid)  # as a force-completed migration leaves it
    assert one.finish_live_migration(spec(sid), {"power_state": 1}) == {
        "power_state": RUNNING, "resumed": True}
    assert dom_of(one, sid).state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert one.finish_live_migration(spec(sid), {"power_state": 1}) == {
        "power_state": RUNNING}
    assert one.finish_live_migration(spec(sid), {"power_state": 3})["power_state"] == (
        PowerState.PAUSED)

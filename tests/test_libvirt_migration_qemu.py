"""Guests moving between two libvirt hosts on real QEMU: cold migration (the disk copied,
a marker on it surviving) and live migration (the guest keeps running and counting its
uptime while the source domain disappears; an abort leaves it on the source, running).

The ``qemu`` tier, between the two libvirt daemons ``.ci/libvirt-setup`` starts on this
machine ("host 1" on ``qemu:///system``, "host 2" in its own mount namespace): skipped
with a reason when the second one is missing (and failed in CI, which sets
``VMLEDGER_REQUIRE_ALL``). Each host keeps its disks in its own directory under the
test's ``tmp_path``, which both daemons see. Both daemons report this machine's name, so
QEMU's migration stream is sent to ``tcp://127.0.0.1``.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.libvirtd import (
    LIBVIRT_MISSING_REASON,
    QEMU_URI,
    READY_MARKER,
    UPTIME_MARKER,
    AcpiGuest,
    ConsoleLog,
    boot_from_kernel,
    build_acpi_guest,
    second_host,
)

libvirt = pytest.importorskip("libvirt", reason=LIBVIRT_MISSING_REASON, exc_type=ImportError)

from vmledger.adapters.hypervisor import GuestSpec, HypervisorError, PowerState  # noqa: E402
from vmledger.adapters.libvirt import LibvirtDriver  # noqa: E402
from vmledger.adapters.libvirt import disks as disk_files  # noqa: E402
from vmledger.adapters.libvirt.domain_xml import domain_xml  # noqa: E402

pytestmark = pytest.mark.qemu

R, P, S = libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_SHUTOFF
MARKER_WRITE, MARKER_READ = "write -P 0x5a 1M 64k", "read -P 0x5a 1M 64k"
LOOPBACK = "tcp://127.0.0.1"


@pytest.fixture(scope="session")
def host_uris() -> tuple[str, str]:
    found = second_host()
    if isinstance(found, str):
        pytest.skip(found)
    return found


@pytest.fixture(scope="session")
def acpi_guest(host_uris: tuple[str, str]) -> AcpiGuest:
    try:
        return build_acpi_guest()
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"cannot build the ACPI test guest from Debian packages: {e}")


class Hosts:
    """The drivers of the two hosts, and every guest a test made (destroyed after)."""

    def __init__(self, tmp_path: Path, host_uris: tuple[str, str]) -> None:
        host2, host1 = host_uris
        self.base = str(tmp_path / "image-a.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", self.base, "64M"],
                       check=True)
        self.dirs = (tmp_path / "host1", tmp_path / "host2")
        # host 1 has the image's base file; host 2 only when a test gives it
        self.one = LibvirtDriver(QEMU_URI, images={"image-a": self.base},
                                 disk_dir=str(self.dirs[0]), acpi_timeout=1.0, poll=0.05,
                                 peer_uri=host1, migrate_uri=LOOPBACK)
        self.two = LibvirtDriver(host2, disk_dir=str(self.dirs[1]), acpi_timeout=1.0,
                                 poll=0.05, migrate_uri=LOOPBACK)
        self.ids: list[str] = []

    def spec(self, *, image: str = "no-disk", server_id: str | None = None,
             flavor: str = "1", vcpus: int = 1, ram_mb: int = 128) -> GuestSpec:
        sid = server_id or str(uuid.uuid4())
        if sid not in self.ids:
            self.ids.append(sid)
        return GuestSpec(server_id=sid, name="moving", flavor_id=flavor, vcpus=vcpus,
                         ram_mb=ram_mb, disk_gb=0, image_id=image)

    def close(self) -> None:
        for sid in self.ids:
            for driver in (self.one, self.two):
                driver.abort_migration(sid)  # a move left hanging holds the guest's lock
                driver.destroy(sid)
        self.one.close()
        self.two.close()


@pytest.fixture
def hosts(host_uris: tuple[str, str], tmp_path: Path) -> Iterator[Hosts]:
    made = Hosts(tmp_path, host_uris)
    yield made
    made.close()


def state(driver: LibvirtDriver, sid: str) -> int | None:
    """The domain's libvirt state on that host, None when it has no such domain."""
    try:
        return int(driver.connection().lookupByUUIDString(sid).state()[0])
    except libvirt.libvirtError:
        return None


def macs(driver: LibvirtDriver, sid: str) -> list[str]:
    root = ET.fromstring(driver.connection().lookupByUUIDString(sid).XMLDesc(0))
    return [m.get("address", "") for m in root.findall("devices/interface/mac")]


def qemu_io(disk: str, command: str) -> str:
    done = subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, disk],
                          capture_output=True, text=True, check=True)
    return done.stdout + done.stderr


def backing(disk: str) -> str | None:
    return disk_files.backing_file(disk)


def uptimes(text: str) -> list[float]:
    return [float(v) for v in re.findall(rf"{UPTIME_MARKER} ([0-9.]+)", text)]


def wait_until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_cold_migration_carries_the_disk_to_the_other_host(hosts: Hosts) -> None:
    """A marker written to the disk on host 1 is on the disk the guest has on host 2,
    with the new flavor; a revert runs it on host 1 again, a confirm leaves only host 2's."""
    one, two = hosts.one, hosts.two
    spec = hosts.spec(image="image-a")
    sid = spec.server_id
    one.spawn(spec)
    one.power_off(sid)
    source_disk = disk_files.overlay_path(str(hosts.dirs[0]), sid)
    qemu_io(source_disk, MARKER_WRITE)
    one.power_on(sid)
    mac = macs(one, sid)
    bigger = hosts.spec(server_id=sid, image="image-a", flavor="2", vcpus=2, ram_mb=192)

    # host 2 has no base file for the image: the disk goes flattened
    target = two.prepare_migration(bigger, live=False)["target"]
    assert (target["uri"], target["base"]) == (two.uri, None)
    sent = one.migrate_disk(sid, target)
    dest_disk = disk_files.overlay_path(str(hosts.dirs[1]), sid)
    assert (sent["disk"]["path"], sent["disk"]["copied"]) == (dest_disk, "flattened")
    assert state(one, sid) == S  # powered off, still defined for a revert
    assert backing(dest_disk) is None
    assert one.migrate_disk(sid, target)["already"] is True  # repeated: the copy stands
    finished = two.finish_migration(bigger, sent["disk"], power_on=True)
    assert finished["power_state"] == PowerState.RUNNING and state(two, sid) == R
    dom = two.connection().lookupByUUIDString(sid)
    assert dom.info()[1:4] == [192 * 1024, 192 * 1024, 2] and macs(two, sid) == mac
    assert two.finish_migration(bigger, sent["disk"], power_on=True)["already"] is True

    # revert: the destination's copy goes, the source runs again on its own disk
    assert two.destroy(sid)["removed"][0] == dest_disk
    one.power_on(sid)
    assert (state(one, sid), state(two, sid)) == (R, None)

    # again, host 2 now having the base: only the overlay travels; then confirm
    two.images["image-a"] = hosts.base
    target = two.prepare_migration(bigger, live=False)["target"]
    sent = one.migrate_disk(sid, target)
    assert sent["disk"]["copied"] == "overlay" and backing(dest_disk) == hosts.base
    two.finish_migration(bigger, sent["disk"], power_on=False)
    assert state(two, sid) == S
    one.destroy(sid)  # confirm: the source's guest and files go
    assert state(one, sid) is None and not Path(source_disk).exists()
    assert "Pattern verification failed" not in qemu_io(dest_disk, MARKER_READ)
    two.power_on(sid)
    assert state(two, sid) == R


def _ticking_guest(hosts: Hosts, acpi_guest: AcpiGuest, *, ram_mb: int = 256
                   ) -> tuple[GuestSpec, ConsoleLog]:
    """The ACPI guest (it prints its uptime on its serial console) on host 1, with a
    qcow2 root disk and its console in host 1's disk directory; booted."""
    spec = hosts.spec(image="image-a", ram_mb=ram_mb)
    sid = spec.server_id
    disk_dir = str(hosts.dirs[0])
    disk = disk_files.overlay_path(disk_dir, sid)
    disk_files.create_overlay(hosts.base, disk, 0)
    console = Path(disk_files.console_log(disk_dir, sid))
    hosts.one.connection().defineXML(boot_from_kernel(
        domain_xml(spec, domain_type="qemu", disk=disk, network=None), acpi_guest, console))
    assert hosts.one.spawn(spec) == {"started": "create"}
    log = ConsoleLog(console)
    log.wait_for(READY_MARKER)
    log.wait_for(UPTIME_MARKER, times=2)
    return spec, log


def test_live_migration_keeps_the_guest_running_both_ways(hosts: Hosts,
                                                         acpi_guest: AcpiGuest) -> None:
    """The guest runs on host 2 afterwards without a new boot, its uptime still growing
    and its console continuing in host 2's directory, while host 1's domain is gone;
    then back to host 1 the same way."""
    one, two = hosts.one, hosts.two
    spec, console = _ticking_guest(hosts, acpi_guest)
    sid = spec.server_id
    before = max(uptimes(console.path.read_text()))

    target = two.prepare_migration(spec, live=True)["target"]
    moved = one.live_migrate(sid, target, block_migration=False)
    assert (state(one, sid), state(two, sid)) == (None, R)  # gone from the source
    assert moved["power_state"] == PowerState.RUNNING and moved["forced"] is False
    assert not console.path.exists()  # the source's names of its files are removed
    again = one.live_migrate(sid, target, block_migration=False)  # repeated: the same
    assert again == {**{k: v for k, v in moved.items() if k != "removed"}, "already": True}
    assert two.finish_live_migration(spec, moved)["power_state"] == PowerState.RUNNING
    assert two.observe(sid).power_state == PowerState.RUNNING

    there = ConsoleLog(Path(moved["console"]))
    wait_until(lambda: max(uptimes(there.path.read_text())) > before + 1.0)
    text = two.console_output(sid)
    assert text.count(READY_MARKER) == 1  # the same boot: no restart on host 2
    assert min(uptimes(text)) <= before  # the console continues what host 1 wrote
    assert disk_files.backing_file(moved["disk"]) == hosts.base

    # and back, host 2's libvirtd reaching host 1 through the URI it was given
    middle = max(uptimes(there.path.read_text()))
    target = one.prepare_migration(spec, live=True)["target"]
    back = two.live_migrate(sid, target, block_migration=False)
    assert (state(one, sid), state(two, sid)) == (R, None)
    assert not there.path.exists()
    one.finish_live_migration(spec, back)
    home = ConsoleLog(Path(back["console"]))
    wait_until(lambda: max(uptimes(home.path.read_text())) > middle + 1.0)
    assert one.console_output(sid).count(READY_MARKER) == 1


def test_block_migration_copies_the_disk_while_the_guest_runs(hosts: Hosts) -> None:
    """Without a base file on host 2 QEMU copies the whole disk into a standalone file
    there (the marker with it); the guest keeps running throughout."""
    one, two = hosts.one, hosts.two
    spec = hosts.spec(image="image-a")
    sid = spec.server_id
    one.spawn(spec)
    one.power_off(sid)
    qemu_io(disk_files.overlay_path(str(hosts.dirs[0]), sid), MARKER_WRITE)
    one.power_on(sid)
    target = two.prepare_migration(spec, live=True)["target"]
    moved = one.live_migrate(sid, target, block_migration=True)
    assert (state(one, sid), state(two, sid)) == (None, R)
    two.finish_live_migration(spec, moved)
    assert backing(moved["disk"]) is None
    two.power_off(sid)
    assert "Pattern verification failed" not in qemu_io(moved["disk"], MARKER_READ)


def test_a_paused_guest_arrives_paused(hosts: Hosts) -> None:
    one, two = hosts.one, hosts.two
    spec = hosts.spec()
    sid = spec.server_id
    one.spawn(spec)
    one.pause(sid)
    target = two.prepare_migration(spec, live=True)["target"]
    moved = one.live_migrate(sid, target, block_migration=False)
    assert moved["power_state"] == PowerState.PAUSED
    assert two.finish_live_migration(spec, moved)["power_state"] == PowerState.PAUSED
    assert (state(one, sid), state(two, sid)) == (None, P)
    two.unpause(sid)
    assert state(two, sid) == R


def test_abort_and_force_complete_of_a_slow_live_migration(hosts: Hosts,
                                                         acpi_guest: AcpiGuest) -> None:
    """Copying at 1 MiB/s: an abort leaves the guest on host 1, running, and nothing on
    host 2; force-complete pauses it so the copy converges, and host 2 runs it again."""
    one, two = hosts.one, hosts.two
    spec, _console = _ticking_guest(hosts, acpi_guest)
    sid = spec.server_id
    dom = one.connection().lookupByUUIDString(sid)
    target = two.prepare_migration(spec, live=True)["target"]
    outcome: dict[str, Any] = {}

    def migrate() -> None:
        try:
            outcome["moved"] = one.live_migrate(sid, target, block_migration=False)
        except HypervisorError as e:
            outcome["error"] = e

    def copying() -> bool:
        return int(dom.jobStats(0).get("type", 0)) != libvirt.VIR_DOMAIN_JOB_NONE

    assert one.abort_migration(sid) == {"already": True}  # nothing in progress
    dom.migrateSetMaxSpeed(1, 0)
    mover = threading.Thread(target=migrate, daemon=True)
    mover.start()
    wait_until(copying)
    assert one.abort_migration(sid) == {"abort": True}
    mover.join(60)
    error = outcome.pop("error")
    assert (error.code, error.rollback) == (409, True) and "cancelled" in error.message
    assert (state(one, sid), state(two, sid)) == (R, None)
    assert not Path(disk_files.overlay_path(str(hosts.dirs[1]), sid)).exists()
    assert one.force_complete_migration(sid) == {"already": True}

    mover = threading.Thread(target=migrate, daemon=True)
    mover.start()
    wait_until(copying)
    # an agent restarted meanwhile (another driver, knowing nothing of the move) asks
    # again: it waits for the move libvirtd carries on with, then answers "already"
    restarted = LibvirtDriver(QEMU_URI, disk_dir=str(hosts.dirs[0]), poll=0.05)
    repeat = threading.Thread(target=lambda: outcome.setdefault(
        "again", restarted.live_migrate(sid, target, block_migration=False)), daemon=True)
    repeat.start()
    assert one.force_complete_migration(sid) == {"force": True, "method": "pause"}
    dom.migrateSetMaxSpeed(8192, 0)  # paused, the copy converges; let it finish quickly
    mover.join(60)
    repeat.join(60)
    restarted.close()
    moved = outcome["moved"]
    assert moved["forced"] is True and moved["power_state"] == PowerState.RUNNING
    assert outcome["again"]["already"] is True and outcome["again"]["uri"] == target["uri"]
    assert state(one, sid) is None and state(two, sid) in (R, P)
    assert two.finish_live_migration(spec, moved)["power_state"] == PowerState.RUNNING
    assert state(two, sid) == R


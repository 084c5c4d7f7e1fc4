"""The libvirt driver on real QEMU guests through libvirtd (``qemu:///system``).

The ``qemu`` tier: skipped with a reason unless a libvirtd answers (``.ci/libvirt-setup``
starts one on a Debian 12 machine, as root). Guests are software-emulated
(``type='qemu'``) and tiny: 128 MiB, diskless or on a 64 MiB qcow2 overlay. Every step is
checked against ``dom.state()`` as libvirt reports it, not only the driver's observe().

A diskless guest has no OS, so it ignores ACPI: soft reboot and power-off show their
fallbacks (``reset()``, ``destroy()``) after a 1 s ``acpi_timeout``. The ACPI guest (a
Debian kernel with a busybox initramfs that powers off on the power button, built once
from Debian packages: ≈27 MB download, ≈4 s) shows the graceful paths.
"""

from __future__ import annotations

import subprocess
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.libvirtd import (
    LIBVIRT_MISSING_REASON,
    QEMU_URI,
    READY_MARKER,
    AcpiGuest,
    ConsoleLog,
    boot_from_kernel,
    build_acpi_guest,
    qemu_skip_reason,
)

libvirt = pytest.importorskip("libvirt", reason=LIBVIRT_MISSING_REASON, exc_type=ImportError)

from vmledger import Engine, FakeClock  # noqa: E402
from vmledger.adapters.hypervisor import GuestSpec, PowerState  # noqa: E402
from vmledger.adapters.libvirt import LibvirtDriver  # noqa: E402
from vmledger.adapters.libvirt.domain_xml import disk_source, domain_xml  # noqa: E402
from vmledger.domain.catalog import image_id_for  # noqa: E402

pytestmark = pytest.mark.qemu

R, P, S = libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_SHUTOFF
INACTIVE = libvirt.VIR_DOMAIN_XML_INACTIVE
CIRROS = "cirros-0.6.2-x86_64"


@pytest.fixture(scope="session")
def qemu_uri() -> str:
    reason = qemu_skip_reason(QEMU_URI)
    if reason is not None:
        pytest.skip(reason)
    return QEMU_URI


@pytest.fixture(scope="session")
def acpi_guest(qemu_uri: str) -> AcpiGuest:
    try:
        return build_acpi_guest()
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"cannot build the ACPI test guest from Debian packages: {e}")


@pytest.fixture
def bases(tmp_path: Path) -> dict[str, str]:
    made = {}
    for name in ("image-a", "image-b", image_id_for(CIRROS)):
        path = tmp_path / f"{name}.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"],
                       check=True)
        made[name] = str(path)
    return made


class Guests:
    """The driver under test, and every guest a test made (destroyed afterwards)."""

    def __init__(self, driver: LibvirtDriver) -> None:
        self.driver = driver
        self.ids: list[str] = []

    def spec(self, *, image: str = "no-disk", flavor: str = "1", vcpus: int = 1,
             ram_mb: int = 128, server_id: str | None = None) -> GuestSpec:
        sid = server_id or str(uuid.uuid4())
        if sid not in self.ids:
            self.ids.append(sid)
        return GuestSpec(server_id=sid, name="qemu-test", flavor_id=flavor, vcpus=vcpus,
                         ram_mb=ram_mb, disk_gb=0, image_id=image)

    def dom(self, sid: str) -> Any:
        return self.driver.connection().lookupByUUIDString(sid)

    def state(self, sid: str) -> list[int]:
        return list(self.dom(sid).state())


@pytest.fixture
def guests(qemu_uri: str, tmp_path: Path, bases: dict[str, str]) -> Iterator[Guests]:
    driver = LibvirtDriver(qemu_uri, images=bases, disk_dir=str(tmp_path / "disks"),
                           acpi_timeout=1.0, poll=0.05)
    made = Guests(driver)
    yield made
    for sid in made.ids:
        driver.destroy(sid)
    driver.close()


def macs(dom: Any) -> list[str]:
    root = ET.fromstring(dom.XMLDesc(INACTIVE))
    return [m.get("address", "") for m in root.findall("devices/interface/mac")]


def backing_of(path: str) -> str:
    out = subprocess.run(["qemu-img", "info", "-U", path], check=True, capture_output=True,
                         text=True).stdout
    return next(line.split(": ", 1)[1] for line in out.splitlines()
                if line.startswith("backing file:"))


def test_power_actions_on_a_diskless_guest(guests: Guests) -> None:
    d = guests.driver
    spec = guests.spec()
    sid = spec.server_id
    assert d.spawn(spec) == {"domain": f"vmledger-{sid}", "disk": None}
    assert guests.state(sid) == [R, libvirt.VIR_DOMAIN_RUNNING_BOOTED]
    assert ET.fromstring(guests.dom(sid).XMLDesc(0)).get("type") == "qemu"
    assert d.pause(sid) == {"power_state": PowerState.PAUSED}
    assert guests.state(sid)[0] == P
    assert d.unpause(sid) == {"power_state": PowerState.RUNNING}
    assert guests.state(sid)[0] == R
    d.suspend(sid)
    assert guests.state(sid) == [S, libvirt.VIR_DOMAIN_SHUTOFF_SAVED]
    assert guests.dom(sid).hasManagedSaveImage(0) == 1
    assert d.observe(sid).power_state == PowerState.SUSPENDED
    assert d.resume(sid)["method"] == "restore"
    assert guests.state(sid) == [R, libvirt.VIR_DOMAIN_RUNNING_RESTORED]
    assert guests.dom(sid).hasManagedSaveImage(0) == 0
    assert d.reboot(sid, hard=True) == {"method": "reset"}
    assert guests.state(sid)[0] == R
    # no OS to answer ACPI: both fall back once acpi_timeout (1 s) has passed
    assert d.reboot(sid, hard=False) == {"method": "reset", "acpi_timeout": 1.0}
    assert guests.state(sid)[0] == R
    assert d.power_off(sid)["method"] == "destroy"
    assert guests.state(sid) == [S, libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED]
    assert d.power_on(sid)["method"] == "create"
    assert guests.state(sid)[0] == R
    d.pause(sid)
    assert d.reboot(sid, hard=True) == {"method": "destroy+create"}
    assert guests.state(sid)[0] == R


def test_resize_confirm_and_revert_on_a_real_guest(guests: Guests) -> None:
    d = guests.driver
    spec = guests.spec(image="image-a")
    sid = spec.server_id
    d.spawn(spec)
    dom = guests.dom(sid)
    original = dom.XMLDesc(INACTIVE)
    d.resize(guests.spec(server_id=sid, image="image-a", flavor="2", vcpus=2, ram_mb=192))
    assert guests.state(sid)[0] == R
    assert dom.info()[1:4] == [192 * 1024, 192 * 1024, 2]  # the live guest, restarted
    assert d.observe(sid).resize_pending
    assert d.revert_resize(sid) == {"flavor_id": "1", "power_state": PowerState.RUNNING}
    assert guests.state(sid)[0] == R
    assert dom.info()[1:4] == [128 * 1024, 128 * 1024, 1]
    assert dom.XMLDesc(INACTIVE) == original

    d.resize(guests.spec(server_id=sid, image="image-a", flavor="2", vcpus=2, ram_mb=192))
    assert d.confirm_resize(sid) == {"confirmed": True}
    obs = d.observe(sid)
    assert (obs.flavor_id, obs.resize_pending) == ("2", False)
    assert dom.info()[3] == 2 and guests.state(sid)[0] == R

    d.power_off(sid)  # resized while stopped: stays stopped, both ways
    d.resize(guests.spec(server_id=sid, image="image-a", flavor="3", vcpus=1, ram_mb=160))
    assert guests.state(sid)[0] == S
    d.revert_resize(sid)
    assert guests.state(sid)[0] == S and d.observe(sid).flavor_id == "2"


def test_rebuild_and_destroy_on_a_real_guest(guests: Guests, tmp_path: Path,
                                             bases: dict[str, str]) -> None:
    d = guests.driver
    spec = guests.spec(image="image-a")
    sid = spec.server_id
    disk = str(tmp_path / "disks" / f"vmledger-{sid}.qcow2")
    assert d.spawn(spec)["disk"] == disk
    assert backing_of(disk) == bases["image-a"]
    dom = guests.dom(sid)
    mac = macs(dom)
    assert d.rebuild(guests.spec(server_id=sid, image="image-b"))["disk"] == disk
    assert guests.state(sid)[0] == R
    assert backing_of(disk) == bases["image-b"] and disk in dom.XMLDesc(0)
    assert dom.UUIDString() == sid and macs(dom) == mac
    d.power_off(sid)
    d.rebuild(guests.spec(server_id=sid, image="image-a"))
    assert guests.state(sid)[0] == S and backing_of(disk) == bases["image-a"]

    d.power_on(sid)
    taken = d.snapshot(sid, "snap-1")
    assert guests.state(sid)[0] == R and Path(taken["disk"]).is_file()
    from_snapshot = guests.spec(image="snap-1")
    assert backing_of(str(d.spawn(from_snapshot)["disk"])) == taken["disk"]
    assert guests.state(from_snapshot.server_id)[0] == R
    d.suspend(sid)
    save = Path(f"/var/lib/libvirt/qemu/save/vmledger-{sid}.save")
    assert save.exists()
    console = str(tmp_path / "disks" / f"vmledger-{sid}.console.log")
    assert d.destroy(sid) == {"destroyed": True, "removed": [disk, console]}
    assert not save.exists() and not Path(disk).exists() and not Path(console).exists()
    with pytest.raises(libvirt.libvirtError):
        d.connection().lookupByUUIDString(sid)


def test_rescue_and_unrescue_on_a_real_guest(guests: Guests, tmp_path: Path,
                                            bases: dict[str, str]) -> None:
    """QEMU boots the rescue definition (the rescue overlay first, the guest's own disk
    second) and, after unrescue, the guest's own definition again."""
    d = guests.driver
    spec = guests.spec(image="image-a")
    sid = spec.server_id
    own = str(tmp_path / "disks" / f"vmledger-{sid}.qcow2")
    rescue = str(tmp_path / "disks" / f"vmledger-{sid}.rescue.qcow2")
    d.spawn(spec)
    mac = macs(guests.dom(sid))
    assert d.rescue(guests.spec(server_id=sid, image="image-b"))["disk"] == rescue
    assert guests.state(sid)[0] == R and backing_of(rescue) == bases["image-b"]
    live = ET.fromstring(guests.dom(sid).XMLDesc(0))  # what QEMU runs
    assert [(t.get("dev"), src.get("file")) for t, src in zip(
        live.findall("devices/disk/target"), live.findall("devices/disk/source"),
        strict=True)] == [("vda", rescue), ("vdb", own)]
    assert d.observe(sid).rescued and macs(guests.dom(sid)) == mac
    diag = d.diagnostics(sid)  # while it runs: vCPU times and both disks' statistics
    assert (diag["state"], diag["num_disks"], len(diag["disk_details"])) == ("running", 2, 2)
    assert diag["cpu_details"][0]["time"] is not None
    assert diag["disk_details"][0]["read_requests"] is not None
    assert d.inject_nmi(sid) == {"nmi": True}  # QEMU takes it (trigger_crash_dump)
    assert d.unrescue(sid)["removed"] == [rescue]
    assert guests.state(sid)[0] == R and not d.observe(sid).rescued
    assert disk_source(guests.dom(sid).XMLDesc(0)) == own and macs(guests.dom(sid)) == mac


def test_soft_reboot_and_graceful_stop_of_an_acpi_guest(guests: Guests, acpi_guest: AcpiGuest,
                                                        tmp_path: Path) -> None:
    d = guests.driver
    d.acpi_timeout = 30.0
    spec = guests.spec(ram_mb=256)
    sid = spec.server_id
    console = ConsoleLog(tmp_path / "console.log")
    # the driver's own definition, booting the kernel; spawn starts what is defined
    d.connection().defineXML(boot_from_kernel(
        domain_xml(spec, domain_type="qemu", disk=None, network=None), acpi_guest,
        console.path))
    assert d.spawn(spec) == {"started": "create"}
    console.wait_for(READY_MARKER)
    assert d.reboot(sid, hard=False) == {"method": "acpi"}  # a reboot event, no reset
    console.wait_for(READY_MARKER, times=2)
    assert guests.state(sid)[0] == R
    assert d.power_off(sid) == {"method": "acpi", "power_state": PowerState.SHUTDOWN}
    assert guests.state(sid) == [S, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN]  # by the guest
    d.power_on(sid)
    console.wait_for(READY_MARKER, times=3)
    assert guests.state(sid)[0] == R
    # os-getConsoleOutput reads what the guest wrote to its serial console, all 3 boots
    assert d.console_output(sid).count(READY_MARKER) == 3


def test_engine_on_real_qemu(guests: Guests) -> None:
    d = guests.driver
    with Engine("memory", clock=FakeClock(), hypervisor=d) as engine:
        sid = engine.create_server("qemu-1", flavor="m1.tiny", image=CIRROS).id
        guests.ids.append(sid)
        engine.run_until_idle()
        assert engine.get_server(sid).status == "ACTIVE" and guests.state(sid)[0] == R
        # the compute node: libvirtd's host, this machine's uptime, the guest placed on it
        [node] = engine.hypervisors()
        assert (node["hypervisor_type"], node["state"], node["running_vms"]) == (
            "QEMU", "up", 1)
        assert node["vcpus"] >= 1 and node["memory_mb"] > 0 and " up " in node["uptime"]
        assert [s["uuid"] for s in node["servers"]] == [sid]
        for act, status, state in ((engine.pause, "PAUSED", P),
                                   (engine.unpause, "ACTIVE", R),
                                   (engine.suspend, "SUSPENDED", S),
                                   (engine.resume, "ACTIVE", R),
                                   (engine.stop, "SHUTOFF", S),
                                   (engine.start, "ACTIVE", R)):
            act(sid)
            engine.run_until_idle()
            assert engine.get_server(sid).status == status
            assert guests.state(sid)[0] == state
        engine.delete(sid)
        engine.run_until_idle()
        assert d.observe(sid).exists is False
        calls = [e.details for e in engine.history(sid) if e.event == "HypervisorCalled"]
        assert {c["driver"] for c in calls} == {"libvirt"}
        assert [c for c in calls if c["error"]] == []


def test_drift_on_real_qemu_becomes_an_audited_stop(guests: Guests) -> None:
    """A running guest destroyed behind the engine's back: the next power-state sync
    records the drift and the server shows SHUTOFF, as Nova's sync would make it."""
    d = guests.driver
    with Engine("memory", clock=FakeClock(), hypervisor=d) as engine:
        sid = engine.create_server("drift", flavor="m1.tiny", image=CIRROS).id
        guests.ids.append(sid)
        engine.run_until_idle()
        guests.dom(sid).destroy()  # virsh destroy, out of band
        assert guests.state(sid)[0] == S
        assert engine.sync_power_states() == 1
        server = engine.get_server(sid)
        assert (server.status, server.power_state) == ("SHUTOFF", 4)
        drift = [e for e in engine.history(sid) if e.event == "DriftObserved"]
        assert len(drift) == 1 and drift[0].details["previous_vm_state"] == "active"
        assert engine.sync_power_states() == 0


class _Died(BaseException):
    """The agent process dying right after libvirt acted."""


class _DiesAfter:
    """The real driver, but the process 'dies' right after one call returns."""

    def __init__(self, driver: LibvirtDriver, op: str) -> None:
        self._driver = driver
        self._op = op
        self.driver = driver.driver

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._driver, name)
        if name != self._op:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            attr(*args, **kwargs)
            raise _Died(name)
        return call


def test_agent_killed_between_libvirt_and_its_outcome_recovers(guests: Guests,
                                                               tmp_path: Path) -> None:
    d = guests.driver
    url = f"sqlite:///{tmp_path / 'crash.db'}"
    clock = FakeClock()
    with Engine(url, clock=clock, hypervisor=d) as engine:
        sid = engine.create_server("crash", flavor="m1.tiny", image=CIRROS).id
        guests.ids.append(sid)
        engine.run_until_idle()
        engine.pause(sid)
    for op, act, status, state in (("pause", None, "PAUSED", P),
                                   ("unpause", "unpause", "ACTIVE", R),
                                   ("power_off", "stop", "SHUTOFF", S)):
        dying = Engine(url, clock=clock, hypervisor=_DiesAfter(d, op))  # type: ignore[arg-type]
        if act:
            getattr(dying, act)(sid)
        with pytest.raises(_Died):
            dying.run_until_idle()
        dying.close()
        assert guests.state(sid)[0] == state  # libvirt acted; no outcome was recorded
        with Engine(url, clock=clock, hypervisor=d) as restarted:
            assert restarted.get_server(sid).task_state is not None
            restarted.run_until_idle()  # observes libvirt, skips the repeated call
            server = restarted.get_server(sid)
            assert (server.status, server.task_state) == (status, None)
            history = restarted.history(sid)
            outcomes = [e for e in history if e.event in ("ActionCompleted", "ActionFailed")]
            assert len(outcomes) == len({e.request_id for e in outcomes})
            last = [e.details["call"] for e in history if e.event == "HypervisorCalled"][-1]
            assert last == "observe"  # the restarted agent did not act twice


def test_custom_image_carries_the_disk_content(guests: Guests, tmp_path: Path,
                                               bases: dict[str, str]) -> None:
    """createImage on real QEMU: a marker written into the source server's disk is on the
    disk of a new server built from the custom image."""
    d = guests.driver
    marker = "write -P 0x5a 1M 64k"
    with Engine("memory", clock=FakeClock(), hypervisor=d) as engine:
        sid = engine.create_server("gold", flavor="m1.tiny", image=CIRROS).id
        guests.ids.append(sid)
        engine.run_until_idle()
        engine.stop(sid)
        engine.run_until_idle()
        disk = d.observe(sid).details.get("disk") or next(
            str(p) for p in (tmp_path / "disks").glob(f"*{sid}*.qcow2"))
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", marker, disk], check=True,
                       capture_output=True)
        image_id = engine.create_image(sid, "gold-image").details["image_id"]
        engine.run_until_idle()
        assert engine.get_image(image_id)["status"] == "active"
        assert engine.get_server(sid).status == "SHUTOFF"
        clone = engine.create_server("clone", flavor="m1.tiny", image=image_id).id
        guests.ids.append(clone)
        engine.run_until_idle()
        assert engine.get_server(clone).status == "ACTIVE" and guests.state(clone)[0] == R
        engine.stop(clone)
        engine.run_until_idle()
        clone_disk = next(str(p) for p in (tmp_path / "disks").glob(f"*{clone}*.qcow2"))
        check = subprocess.run(["qemu-io", "-f", "qcow2", "-c", "read -P 0x5a 1M 64k",
                                clone_disk], capture_output=True, text=True, check=True)
        assert "Pattern verification failed" not in check.stdout + check.stderr
        calls = [e.details["call"] for e in engine.history(sid)
                 if e.event == "HypervisorCalled"]
        assert "snapshot" in calls


def test_shelve_and_unshelve_carry_the_disk_content(guests: Guests, tmp_path: Path) -> None:
    """shelve on real QEMU: the running guest is powered off, its disk saved as the
    shelved image and (offloaded at once) the domain and its overlay removed; unshelve
    boots a new domain on that image, with a marker written before the shelve."""
    d = guests.driver
    disks = tmp_path / "disks"
    with Engine("memory", clock=FakeClock(), hypervisor=d) as engine:
        sid = engine.create_server("shelf", flavor="m1.tiny", image=CIRROS).id
        guests.ids.append(sid)
        engine.run_until_idle()
        engine.stop(sid)  # qemu-io cannot open the disk of a running guest
        engine.run_until_idle()
        disk = disks / f"vmledger-{sid}.qcow2"
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 64k", str(disk)],
                       check=True, capture_output=True)
        engine.start(sid)
        engine.run_until_idle()
        assert guests.state(sid)[0] == R

        shelve = engine.shelve(sid)
        image_id = shelve.details["image_id"]
        engine.run_until_idle()
        assert engine.get_server(sid).status == "SHELVED_OFFLOADED"
        assert d.observe(sid).exists is False
        with pytest.raises(libvirt.libvirtError):
            d.connection().lookupByUUIDString(sid)
        assert not disk.exists()
        saved = disks / f"image-{image_id}.qcow2"
        assert engine.get_image(image_id)["status"] == "active" and saved.is_file()
        power_off = [e.details for e in engine.history(sid) if e.event == "HypervisorCalled"
                     and e.request_id == shelve.request_id
                     and e.details["call"] == "power_off"]
        # no OS to answer ACPI: destroyed once acpi_timeout (1 s) has passed
        assert [c["result"]["method"] for c in power_off] == ["destroy"]

        engine.unshelve(sid)
        engine.run_until_idle()
        assert engine.get_server(sid).status == "ACTIVE" and guests.state(sid)[0] == R
        assert backing_of(str(disk)) == str(saved)
        engine.stop(sid)
        engine.run_until_idle()
        check = subprocess.run(["qemu-io", "-f", "qcow2", "-c", "read -P 0x5a 1M 64k",
                                str(disk)], capture_output=True, text=True, check=True)
        assert "Pattern verification failed" not in check.stdout + check.stderr
        calls = [e.details for e in engine.history(sid) if e.event == "HypervisorCalled"]
        assert [c for c in calls if c["error"]] == []

"""The libvirt driver on libvirt's in-process test driver, and the engine driving it.

Every test opens its own ``test:///<tmp_path>/node.xml``: each open of such a URI is a
private hypervisor, so tests never see each other's domains. Assertions read the
domains back through libvirt (``dom.state()``, ``dom.info()``, the XML), not only
through the driver's own observe().

The test driver completes ``reboot()`` and ``shutdown()`` synchronously and has no
qcow2 disks of its own; tests that need overlays run ``qemu-img`` (qemu-utils). What
only real QEMU shows (ACPI timeouts, restore reasons) is in test_libvirt_qemu.py.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.libvirtd import LIBVIRT_MISSING_REASON, node_uri

libvirt = pytest.importorskip("libvirt", reason=LIBVIRT_MISSING_REASON, exc_type=ImportError)

from vmledger import Engine, FakeClock, NotFound  # noqa: E402
from vmledger.adapters.hypervisor import (  # noqa: E402
    GuestSpec,
    Hypervisor,
    HypervisorError,
    PowerState,
)
from vmledger.adapters.libvirt import (  # noqa: E402
    LibvirtDriver,
    LibvirtUnavailable,
    LifecycleEvent,
)
from vmledger.domain.catalog import image_id_for  # noqa: E402

RUNNING, PAUSED, SHUTDOWN, SUSPENDED = (PowerState.RUNNING, PowerState.PAUSED,
                                        PowerState.SHUTDOWN, PowerState.SUSPENDED)
#: the libvirt state each power state is read from
LIBVIRT_STATE = {RUNNING: libvirt.VIR_DOMAIN_RUNNING, PAUSED: libvirt.VIR_DOMAIN_PAUSED,
                 SHUTDOWN: libvirt.VIR_DOMAIN_SHUTOFF, SUSPENDED: libvirt.VIR_DOMAIN_SHUTOFF}
INACTIVE = libvirt.VIR_DOMAIN_XML_INACTIVE
needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None,
                                    reason="qemu-img not found: apt-get install qemu-utils")


def spec(server_id: str, *, flavor: str = "1", vcpus: int = 1, ram_mb: int = 512,
         disk_gb: int = 1, image: str = "image-a", name: str = "web-1") -> GuestSpec:
    return GuestSpec(server_id=server_id, name=name, flavor_id=flavor, vcpus=vcpus,
                     ram_mb=ram_mb, disk_gb=disk_gb, image_id=image)


@pytest.fixture
def uri(tmp_path: Path) -> str:
    return node_uri(tmp_path)


@pytest.fixture
def driver(uri: str) -> Iterator[LibvirtDriver]:
    with LibvirtDriver(uri) as d:
        yield d


def dom_of(driver: LibvirtDriver, server_id: str) -> Any:
    return driver.connection().lookupByUUIDString(server_id)


def macs(dom: Any) -> list[str]:
    root = ET.fromstring(dom.XMLDesc(INACTIVE))
    return [m.get("address", "") for m in root.findall("devices/interface/mac")]


def disk_files(dom: Any) -> list[str]:
    root = ET.fromstring(dom.XMLDesc(INACTIVE))
    return [s.get("file", "") for s in root.findall("devices/disk/source")]


def assert_power(driver: LibvirtDriver, server_id: str, power: PowerState) -> None:
    dom = dom_of(driver, server_id)
    assert driver.observe(server_id).power_state == power
    assert dom.state()[0] == LIBVIRT_STATE[power]
    assert bool(dom.hasManagedSaveImage(0)) == (power == SUSPENDED)


def guest_in(driver: LibvirtDriver, power: PowerState, **kw: Any) -> str:
    """A new guest brought to ``power`` through the driver."""
    server_id = str(uuid.uuid4())
    driver.spawn(spec(server_id, **kw))
    if power != RUNNING:
        {PAUSED: driver.pause, SHUTDOWN: driver.power_off, SUSPENDED: driver.suspend}[power](
            server_id)
    assert_power(driver, server_id, power)
    return server_id


# --- spawn and observe ----------------------------------------------------------------
def test_spawn_defines_and_starts_a_domain_named_after_the_server(
        driver: LibvirtDriver) -> None:
    sid = str(uuid.uuid4())
    assert isinstance(driver, Hypervisor) and driver.driver == "libvirt"
    assert driver.observe(sid).exists is False
    assert driver.spawn(spec(sid, vcpus=2, ram_mb=768)) == {"domain": f"vmledger-{sid}",
                                                            "disk": None}
    dom = dom_of(driver, sid)
    assert (dom.name(), dom.UUIDString()) == (f"vmledger-{sid}", sid)
    root = ET.fromstring(dom.XMLDesc(INACTIVE))
    assert root.get("type") == "qemu"
    assert root.find("devices/disk") is None  # no base file for the image: diskless
    assert len(macs(dom)) == 1
    assert dom.info()[1:4] == [768 * 1024, 768 * 1024, 2]
    obs = driver.observe(sid)
    assert (obs.exists, obs.power_state, obs.flavor_id, obs.image_id, obs.resize_pending) == (
        True, RUNNING, "1", "image-a", False)
    assert obs.details["name"] == "web-1" and obs.details["vcpus"] == 2
    assert driver.spawn(spec(sid)) == {"already": True}
    driver.power_off(sid)
    assert driver.spawn(spec(sid)) == {"started": "create"}  # defined but off: started
    assert_power(driver, sid, RUNNING)


def test_observe_unknown_ids_and_foreign_domains(driver: LibvirtDriver) -> None:
    assert driver.observe(str(uuid.uuid4())).exists is False
    assert driver.observe("not-a-uuid").exists is False
    foreign = str(uuid.uuid4())
    driver.connection().defineXML(
        f"<domain type='qemu'><name>other</name><uuid>{foreign}</uuid>"
        "<memory unit='MiB'>64</memory><os><type>hvm</type></os></domain>")
    obs = driver.observe(foreign)
    assert (obs.exists, obs.power_state, obs.flavor_id, obs.image_id) == (
        True, SHUTDOWN, None, None)


def test_spawn_refusals_leave_nothing_behind(uri: str) -> None:
    with LibvirtDriver(uri) as driver:
        with pytest.raises(HypervisorError) as bad_id:
            driver.spawn(spec("not-a-uuid"))
        assert (bad_id.value.code, bad_id.value.rollback) == (400, True)
    with LibvirtDriver(uri, domain_type="no-such-type") as driver:
        sid = str(uuid.uuid4())
        with pytest.raises(HypervisorError) as refused:
            driver.spawn(spec(sid))
        # libvirt's own message, and a 4xx: the definition was refused
        assert "no-such-type" in refused.value.message
        assert refused.value.rollback and 400 <= refused.value.code < 500
        assert driver.observe(sid).exists is False
        assert driver.connection().listAllDomains() == []


# --- power transitions ----------------------------------------------------------------
@pytest.mark.parametrize(("op", "source", "target", "answer"), [
    ("pause", RUNNING, PAUSED, {}),
    ("unpause", PAUSED, RUNNING, {}),
    ("suspend", RUNNING, SUSPENDED, {}),
    ("resume", SUSPENDED, RUNNING, {"method": "restore"}),
    ("power_off", RUNNING, SHUTDOWN, {"method": "acpi"}),
    ("power_off", PAUSED, SHUTDOWN, {"method": "destroy"}),  # a paused guest cannot hear ACPI
    ("power_on", SHUTDOWN, RUNNING, {"method": "create"}),
])
def test_transition_then_repeat_is_already_done(driver: LibvirtDriver, op: str,
                                                source: PowerState, target: PowerState,
                                                answer: dict[str, Any]) -> None:
    sid = guest_in(driver, source)
    call: Callable[[str], Any] = getattr(driver, op)
    assert call(sid) == {**answer, "power_state": int(target)}
    assert_power(driver, sid, target)
    assert call(sid) == {"already": True}
    assert_power(driver, sid, target)


@pytest.mark.parametrize(("op", "source"), [
    ("pause", SHUTDOWN), ("pause", SUSPENDED), ("unpause", SHUTDOWN), ("unpause", SUSPENDED),
    ("suspend", PAUSED), ("suspend", SHUTDOWN), ("resume", SHUTDOWN), ("resume", PAUSED),
    ("power_off", SUSPENDED), ("power_on", SUSPENDED), ("power_on", PAUSED),
])
def test_wrong_source_state_is_refused_with_rollback(driver: LibvirtDriver, op: str,
                                                     source: PowerState) -> None:
    sid = guest_in(driver, source)
    with pytest.raises(HypervisorError) as refused:
        getattr(driver, op)(sid)
    assert (refused.value.code, refused.value.rollback) == (409, True)
    assert source.name in refused.value.message
    assert_power(driver, sid, source)


def test_every_operation_on_an_unknown_guest_is_404_with_rollback(
        driver: LibvirtDriver) -> None:
    sid = str(uuid.uuid4())
    calls: list[Callable[[], Any]] = [
        lambda: driver.reboot(sid, hard=False), lambda: driver.reboot(sid, hard=True),
        lambda: driver.rebuild(spec(sid)), lambda: driver.resize(spec(sid)),
        lambda: driver.snapshot(sid, "image-x"),
        *(lambda op=op: getattr(driver, op)(sid)
          for op in ("confirm_resize", "revert_resize", "pause", "unpause", "suspend",
                     "resume", "power_off", "power_on")),
    ]
    for call in calls:
        with pytest.raises(HypervisorError) as missing:
            call()
        assert (missing.value.message, missing.value.code, missing.value.rollback) == (
            "Domain not found", 404, True)
    assert driver.destroy(sid) == {"already": True, "removed": []}


# --- reboots --------------------------------------------------------------------------
def test_soft_reboot_needs_a_running_guest(driver: LibvirtDriver) -> None:
    sid = guest_in(driver, RUNNING)
    assert driver.reboot(sid, hard=False) == {"method": "acpi"}
    assert_power(driver, sid, RUNNING)
    driver.power_off(sid)
    with pytest.raises(HypervisorError) as refused:
        driver.reboot(sid, hard=False)
    assert (refused.value.code, refused.value.rollback) == (409, False)  # as the simulator


@pytest.mark.parametrize(("source", "method"), [
    (RUNNING, "reset"), (PAUSED, "destroy+create"), (SHUTDOWN, "create"),
    (SUSPENDED, "create"),
])
def test_hard_reboot_boots_from_every_settled_state(driver: LibvirtDriver,
                                                    source: PowerState, method: str) -> None:
    sid = guest_in(driver, source)
    assert driver.reboot(sid, hard=True) == {"method": method}
    assert_power(driver, sid, RUNNING)  # a suspended guest's memory image is discarded


def test_a_guest_ignoring_acpi_is_reset_or_destroyed_after_the_timeout(
        uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    with LibvirtDriver(uri, acpi_timeout=1.0, poll=0.25, sleep=sleep,
                       monotonic=lambda: now[0]) as driver:
        sid = guest_in(driver, RUNNING)
        # as a guest without an OS on QEMU: the power button is pressed, nothing happens
        monkeypatch.setattr(libvirt.virDomain, "shutdown", lambda self: 0)
        assert driver.reboot(sid, hard=False) == {"method": "reset", "acpi_timeout": 1.0}
        assert sleeps == [0.25] * 4
        assert_power(driver, sid, RUNNING)
        assert driver.power_off(sid) == {"method": "destroy", "power_state": int(SHUTDOWN)}
        assert sleeps == [0.25] * 8
        assert_power(driver, sid, SHUTDOWN)


# --- resize ---------------------------------------------------------------------------
def test_resize_keeps_the_old_definition_until_confirmed(driver: LibvirtDriver) -> None:
    sid = guest_in(driver, RUNNING)
    dom = dom_of(driver, sid)
    assert driver.resize(spec(sid, flavor="2", vcpus=2, ram_mb=1024, disk_gb=2)) == {
        "flavor_id": "2", "old_flavor_id": "1", "disk_grown": False}
    assert dom.info()[1:4] == [1024 * 1024, 1024 * 1024, 2]
    obs = driver.observe(sid)
    assert (obs.power_state, obs.flavor_id, obs.resize_pending) == (RUNNING, "2", True)
    before = dom.XMLDesc(INACTIVE)
    with pytest.raises(HypervisorError) as twice:
        driver.resize(spec(sid, flavor="3", vcpus=4, ram_mb=2048, disk_gb=4))
    assert (twice.value.code, twice.value.rollback) == (409, True)
    assert dom.XMLDesc(INACTIVE) == before
    assert driver.confirm_resize(sid) == {"confirmed": True}
    obs = driver.observe(sid)
    assert (obs.power_state, obs.flavor_id, obs.resize_pending) == (RUNNING, "2", False)
    assert dom.info()[3] == 2
    assert driver.confirm_resize(sid) == {"already": True}
    assert driver.revert_resize(sid) == {"already": True}


@pytest.mark.parametrize(("source", "during"), [
    (RUNNING, RUNNING), (SHUTDOWN, SHUTDOWN), (PAUSED, RUNNING), (SUSPENDED, RUNNING),
])
def test_revert_restores_the_old_definition_and_power_state(
        driver: LibvirtDriver, source: PowerState, during: PowerState) -> None:
    sid = guest_in(driver, source)
    dom = dom_of(driver, sid)
    original, mac = dom.XMLDesc(INACTIVE), macs(dom)
    driver.resize(spec(sid, flavor="3", vcpus=4, ram_mb=2048, disk_gb=4))
    assert_power(driver, sid, during)  # a stopped guest stays stopped, others run
    assert dom.info()[3] == 4
    assert driver.revert_resize(sid) == {"flavor_id": "1", "power_state": int(source)}
    assert_power(driver, sid, source)
    assert dom.XMLDesc(INACTIVE) == original and macs(dom) == mac
    obs = driver.observe(sid)
    assert (obs.flavor_id, obs.resize_pending) == ("1", False)
    assert driver.revert_resize(sid) == {"already": True}


def test_resize_disk_down_is_refused_and_changes_nothing(driver: LibvirtDriver) -> None:
    sid = guest_in(driver, RUNNING, disk_gb=20)
    dom = dom_of(driver, sid)
    before = dom.XMLDesc(INACTIVE)
    with pytest.raises(HypervisorError, match="Unable to resize disk down") as refused:
        driver.resize(spec(sid, flavor="2", vcpus=2, ram_mb=1024, disk_gb=10))
    assert (refused.value.code, refused.value.rollback) == (400, True)
    assert dom.XMLDesc(INACTIVE) == before
    assert_power(driver, sid, RUNNING)


# --- rebuild --------------------------------------------------------------------------
@pytest.mark.parametrize(("source", "after"), [
    (RUNNING, RUNNING), (SHUTDOWN, SHUTDOWN), (PAUSED, RUNNING), (SUSPENDED, RUNNING),
])
def test_rebuild_keeps_uuid_and_mac_and_a_stopped_guest_stays_off(
        driver: LibvirtDriver, source: PowerState, after: PowerState) -> None:
    sid = guest_in(driver, source)
    mac = macs(dom_of(driver, sid))
    assert driver.rebuild(spec(sid, image="image-b", name="web-1b")) == {
        "image_id": "image-b", "disk": None, "power_state": int(after)}
    dom = dom_of(driver, sid)
    assert dom.UUIDString() == sid and macs(dom) == mac
    assert_power(driver, sid, after)  # a saved memory image of the old disk is dropped
    obs = driver.observe(sid)
    assert (obs.image_id, obs.details["name"], obs.flavor_id) == ("image-b", "web-1b", "1")


# --- disks (qcow2 overlays made by qemu-img) --------------------------------------------
@pytest.fixture
def bases(tmp_path: Path) -> dict[str, str]:
    made = {}
    for name, size in (("image-a", "64M"), ("image-b", "2G")):
        path = tmp_path / f"{name}.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size],
                       check=True)
        made[name] = str(path)
    return made


def image_info(path: str) -> dict[str, Any]:
    import json

    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", path], check=True,
                         capture_output=True, text=True).stdout
    return dict(json.loads(out))


@needs_qemu_img
def test_disks_follow_spawn_resize_rebuild_and_destroy(uri: str, tmp_path: Path,
                                                       bases: dict[str, str]) -> None:
    disk_dir = tmp_path / "disks"
    with LibvirtDriver(uri, images=bases, disk_dir=str(disk_dir)) as driver:
        sid = str(uuid.uuid4())
        disk = str(disk_dir / f"vmledger-{sid}.qcow2")
        assert driver.spawn(spec(sid, disk_gb=1))["disk"] == disk
        info = image_info(disk)
        assert info["backing-filename"] == bases["image-a"]
        assert info["virtual-size"] == 1024**3  # the flavor's disk, larger than the base
        assert disk_files(dom_of(driver, sid)) == [disk]

        assert driver.resize(spec(sid, flavor="2", disk_gb=3))["disk_grown"] is True
        assert image_info(disk)["virtual-size"] == 3 * 1024**3
        driver.confirm_resize(sid)

        mac = macs(dom_of(driver, sid))
        assert driver.rebuild(spec(sid, flavor="2", disk_gb=3, image="image-b"))["disk"] == disk
        info = image_info(disk)
        assert (info["backing-filename"], info["virtual-size"]) == (bases["image-b"],
                                                                    3 * 1024**3)
        assert macs(dom_of(driver, sid)) == mac
        console = f"vmledger-{sid}.console.log"  # the serial console's log stays
        assert sorted(p.name for p in disk_dir.iterdir()) == [console, f"vmledger-{sid}.qcow2"]

        driver.rebuild(spec(sid, image="no-base-file"))  # diskless now: the overlay goes
        assert disk_files(dom_of(driver, sid)) == []
        assert [p.name for p in disk_dir.iterdir()] == [console]

        other = str(uuid.uuid4())
        driver.spawn(spec(other, image="image-b", disk_gb=1))
        assert image_info(str(disk_dir / f"vmledger-{other}.qcow2"))["virtual-size"] == (
            2 * 1024**3)  # the base is larger than the flavor's disk
        assert driver.destroy(other)["removed"] == [
            str(disk_dir / f"vmledger-{other}.qcow2"),
            str(disk_dir / f"vmledger-{other}.console.log")]
        assert [p.name for p in disk_dir.iterdir()] == [console]


@needs_qemu_img
def test_a_missing_base_file_rolls_back(uri: str, tmp_path: Path) -> None:
    with LibvirtDriver(uri, images={"image-a": str(tmp_path / "gone.qcow2")},
                       disk_dir=str(tmp_path / "disks")) as driver:
        sid = str(uuid.uuid4())
        with pytest.raises(HypervisorError, match="does not exist") as failed:
            driver.spawn(spec(sid))
        assert failed.value.rollback
        assert driver.observe(sid).exists is False


@needs_qemu_img
def test_snapshot_flattens_the_disk_into_a_bootable_image(uri: str, tmp_path: Path,
                                                          bases: dict[str, str]) -> None:
    disk_dir = tmp_path / "disks"
    with LibvirtDriver(uri, images=bases, disk_dir=str(disk_dir)) as driver:
        sid = guest_in(driver, RUNNING)
        image = str(disk_dir / "image-snap-1.qcow2")
        taken = driver.snapshot(sid, "snap-1")
        assert (taken["disk"], taken["size"]) == (image, Path(image).stat().st_size)
        assert len(taken["checksum"]) == 32
        assert "backing-filename" not in image_info(image)  # standalone
        assert image_info(image)["virtual-size"] == 1024**3
        assert_power(driver, sid, RUNNING)  # paused for the copy, running again
        assert driver.snapshot(sid, "snap-1") == {**taken, "already": True}
        driver.pause(sid)
        driver.snapshot(sid, "snap-2")
        assert_power(driver, sid, PAUSED)
        # the snapshot is the base of its image for new guests on this host
        other = str(uuid.uuid4())
        disk = driver.spawn(spec(other, image="snap-1"))["disk"]
        assert image_info(disk)["backing-filename"] == image
        driver.destroy(other)
        driver.destroy(sid)
        assert sorted(p.name for p in disk_dir.iterdir()) == [
            "image-snap-1.qcow2", "image-snap-2.qcow2"]  # images outlive their server
    with LibvirtDriver(uri, disk_dir=str(disk_dir)) as restarted:  # found again on disk
        assert restarted.spawn(spec(str(uuid.uuid4()), image="snap-2"))["disk"] is not None


def test_snapshot_of_a_diskless_guest_is_empty(driver: LibvirtDriver) -> None:
    sid = guest_in(driver, SHUTDOWN)
    assert driver.snapshot(sid, "snap-1") == {"size": 0, "checksum": None, "disk": None}
    assert_power(driver, sid, SHUTDOWN)
    with pytest.raises(HypervisorError, match="Domain not found"):
        driver.snapshot(str(uuid.uuid4()), "snap-2")


# --- destroy --------------------------------------------------------------------------
def test_destroy_removes_the_domain_and_its_managed_save(driver: LibvirtDriver) -> None:
    sid = guest_in(driver, SUSPENDED)  # plain undefine() refuses while a save image exists
    assert driver.destroy(sid) == {"destroyed": True, "removed": []}
    assert driver.observe(sid).exists is False
    assert driver.connection().listAllDomains() == []
    assert driver.destroy(sid) == {"already": True, "removed": []}
    running = guest_in(driver, RUNNING)
    driver.destroy(running)
    assert driver.connection().listAllDomains() == []


# --- connection and events ------------------------------------------------------------
def test_connection_is_reopened_after_it_drops(driver: LibvirtDriver) -> None:
    first = driver.connection()
    first.close()  # behind the driver's back
    assert driver.observe(str(uuid.uuid4())).exists is False
    assert driver.connection() is not first


def test_unreachable_libvirt_is_a_connection_error_not_a_refusal(tmp_path: Path) -> None:
    with LibvirtDriver(f"test://{tmp_path}/missing.xml") as driver:
        with pytest.raises(LibvirtUnavailable, match="cannot connect"):
            driver.observe(str(uuid.uuid4()))
        with pytest.raises(ConnectionError):
            driver.pause(str(uuid.uuid4()))


def test_lifecycle_events_reach_subscribers(driver: LibvirtDriver) -> None:
    seen: list[LifecycleEvent] = []
    stop = driver.lifecycle_events(seen.append)
    sid = guest_in(driver, PAUSED)
    deadline = time.monotonic() + 5
    while len(seen) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [(e.server_id, e.event) for e in seen] == [
        (sid, "DEFINED"), (sid, "STARTED"), (sid, "SUSPENDED")]
    stop()
    driver.unpause(sid)
    time.sleep(0.05)
    assert len(seen) == 3


def test_threads_share_one_driver(driver: LibvirtDriver) -> None:
    errors: list[BaseException] = []
    racing = guest_in(driver, RUNNING)
    answers: list[Any] = []

    def cycle() -> None:
        try:
            sid = guest_in(driver, RUNNING)
            for _ in range(20):
                for op in ("pause", "unpause", "suspend", "resume"):
                    getattr(driver, op)(sid)
            answers.append(driver.pause(racing))
            driver.destroy(sid)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=cycle) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert answers.count({"already": True}) == 5  # one of six paused it, once
    assert_power(driver, racing, PAUSED)
    assert len(driver.connection().listAllDomains()) == 1


# --- the whole engine on the test driver ------------------------------------------------
IMAGE = "cirros-0.6.2-x86_64"
IMAGE2 = "debian-12-genericcloud-amd64"


@pytest.fixture
def libvirt_engine(driver: LibvirtDriver) -> Iterator[Engine]:
    with Engine("memory", clock=FakeClock(), hypervisor=driver) as e:
        yield e


def settled(engine: Engine, server_id: str) -> tuple[str, str | None]:
    engine.run_until_idle()
    s = engine.get_server(server_id)
    return s.status, s.task_state


def test_engine_runs_every_action_on_libvirt(libvirt_engine: Engine, driver: LibvirtDriver) -> None:
    server = libvirt_engine.create_server("web-1", flavor="m1.small", image=IMAGE)
    sid = server.id
    assert settled(libvirt_engine, sid) == ("ACTIVE", None)
    dom = dom_of(driver, sid)
    assert dom.info()[1:4] == [2048 * 1024, 2048 * 1024, 1]
    steps: list[tuple[Callable[[], Any], str, PowerState]] = [
        (lambda: libvirt_engine.reboot(sid, hard=True), "ACTIVE", RUNNING),
        (lambda: libvirt_engine.reboot(sid), "ACTIVE", RUNNING),
        (lambda: libvirt_engine.pause(sid), "PAUSED", PAUSED),
        (lambda: libvirt_engine.unpause(sid), "ACTIVE", RUNNING),
        (lambda: libvirt_engine.suspend(sid), "SUSPENDED", SUSPENDED),
        (lambda: libvirt_engine.resume(sid), "ACTIVE", RUNNING),
        (lambda: libvirt_engine.stop(sid), "SHUTOFF", SHUTDOWN),
        (lambda: libvirt_engine.start(sid), "ACTIVE", RUNNING),
        (lambda: libvirt_engine.rebuild(sid, image=IMAGE2), "ACTIVE", RUNNING),
        (lambda: libvirt_engine.resize(sid, flavor="m1.medium"), "VERIFY_RESIZE", RUNNING),
        (lambda: libvirt_engine.confirm_resize(sid), "ACTIVE", RUNNING),
        (lambda: libvirt_engine.resize(sid, flavor="m1.large"), "VERIFY_RESIZE", RUNNING),
        (lambda: libvirt_engine.revert_resize(sid), "ACTIVE", RUNNING),
    ]
    for act, status, power in steps:
        act()
        assert settled(libvirt_engine, sid) == (status, None)
        assert libvirt_engine.get_server(sid).power_state == power
        assert_power(driver, sid, power)
    s = libvirt_engine.get_server(sid)
    assert (s.flavor["name"], s.image["name"]) == ("m1.medium", IMAGE2)
    assert dom.info()[3] == 2 and dom.UUIDString() == sid
    obs = driver.observe(sid)
    assert (obs.flavor_id, obs.image_id) == (s.flavor["id"], s.image["id"])
    assert obs.image_id == image_id_for(IMAGE2)

    libvirt_engine.delete(sid)
    libvirt_engine.run_until_idle()
    assert driver.connection().listAllDomains() == []
    calls = [e.details for e in libvirt_engine.history(sid) if e.event == "HypervisorCalled"]
    assert {c["driver"] for c in calls} == {"libvirt"}
    assert [c["error"] for c in calls if c["error"]] == []
    assert {c["call"] for c in calls} == {
        "observe", "spawn", "reboot", "pause", "unpause", "suspend", "resume", "power_off",
        "power_on", "rebuild", "resize", "confirm_resize", "revert_resize", "destroy"}
    spawn = next(c for c in calls if c["call"] == "spawn")
    assert spawn["result"] == {"domain": f"vmledger-{sid}", "disk": None}
    soft = [c for c in calls if c["call"] == "reboot" and not c["arguments"]["hard"]]
    assert soft[0]["result"] == {"method": "acpi"}


def test_engine_resize_of_a_stopped_server_stays_stopped(libvirt_engine: Engine,
                                                         driver: LibvirtDriver) -> None:
    sid = libvirt_engine.create_server("web-1", flavor="m1.small", image=IMAGE).id
    libvirt_engine.run_until_idle()
    libvirt_engine.stop(sid)
    libvirt_engine.run_until_idle()
    libvirt_engine.resize(sid, flavor="m1.medium")
    assert settled(libvirt_engine, sid) == ("VERIFY_RESIZE", None)
    assert_power(driver, sid, SHUTDOWN)
    libvirt_engine.revert_resize(sid)
    assert settled(libvirt_engine, sid) == ("SHUTOFF", None)
    assert_power(driver, sid, SHUTDOWN)
    assert dom_of(driver, sid).info()[3] == 1
    libvirt_engine.start(sid)
    assert settled(libvirt_engine, sid) == ("ACTIVE", None)


def test_engine_records_a_guest_removed_behind_its_back(libvirt_engine: Engine,
                                                        driver: LibvirtDriver) -> None:
    sid = libvirt_engine.create_server("web-1", flavor="m1.small", image=IMAGE).id
    libvirt_engine.run_until_idle()
    dom = dom_of(driver, sid)
    dom.destroy()
    dom.undefine()  # an operator's `virsh undefine`
    libvirt_engine.reboot(sid, hard=True)
    assert settled(libvirt_engine, sid) == ("ERROR", None)
    fault = libvirt_engine.get_server(sid).fault
    assert fault is not None and "Domain not found" in fault["message"]
    observed = [e.details for e in libvirt_engine.history(sid)
                if e.event == "HypervisorCalled" and e.details["call"] == "observe"]
    assert observed[-1]["result"]["exists"] is False


needs_qemu_io = pytest.mark.skipif(shutil.which("qemu-io") is None,
                                   reason="qemu-io not found: apt-get install qemu-utils")


def qemu_io(disk: Path, command: str) -> str:
    done = subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, str(disk)],
                          capture_output=True, text=True, check=True)
    return done.stdout + done.stderr


def calls_of(engine: Engine, server_id: str, request_id: str) -> list[str]:
    return [e.details["call"] for e in engine.history(server_id)
            if e.event == "HypervisorCalled" and e.request_id == request_id]


@needs_qemu_img
@needs_qemu_io
def test_engine_shelves_the_disk_offloads_the_guest_and_unshelves_from_it(
        uri: str, tmp_path: Path) -> None:
    """Shelve: the guest is powered off, its disk flattened into the shelved image, and
    (offloaded at once) the domain and its overlay removed. Unshelve: a new domain on an
    overlay of the shelved image, with what the guest had written."""
    disk_dir = tmp_path / "disks"
    base = tmp_path / "cirros.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    with LibvirtDriver(uri, images={image_id_for(IMAGE): str(base)},
                       disk_dir=str(disk_dir)) as driver, \
            Engine("memory", clock=FakeClock(), hypervisor=driver) as engine:
        sid = engine.create_server("web-1", flavor="m1.tiny", image=IMAGE).id
        assert settled(engine, sid) == ("ACTIVE", None)
        disk = disk_dir / f"vmledger-{sid}.qcow2"
        assert disk_files(dom_of(driver, sid)) == [str(disk)]
        qemu_io(disk, "write -P 0x5a 1M 64k")  # what the guest wrote

        shelve = engine.shelve(sid)
        image_id = shelve.details["image_id"]
        assert settled(engine, sid) == ("SHELVED_OFFLOADED", None)
        assert engine.get_server(sid).power_state == PowerState.NOSTATE
        assert driver.observe(sid).exists is False
        assert driver.connection().listAllDomains() == []
        saved = disk_dir / f"image-{image_id}.qcow2"
        assert sorted(p.name for p in disk_dir.iterdir()) == [saved.name]  # overlay gone
        assert "backing-filename" not in image_info(str(saved))  # standalone
        image = engine.get_image(image_id)
        assert (image["name"], image["status"], image["size"]) == (
            "web-1-shelved", "active", saved.stat().st_size)
        # the guest is removed in the shelve's own action (offload time 0)
        assert calls_of(engine, sid, shelve.request_id) == [
            "observe", "power_off", "observe", "snapshot", "observe", "destroy"]

        unshelve = engine.unshelve(sid)
        assert settled(engine, sid) == ("ACTIVE", None)
        assert calls_of(engine, sid, unshelve.request_id) == ["observe", "spawn"]
        dom = dom_of(driver, sid)
        assert (dom.name(), dom.UUIDString()) == (f"vmledger-{sid}", sid)
        assert_power(driver, sid, RUNNING)
        assert dom.info()[1:4] == [512 * 1024, 512 * 1024, 1]  # m1.tiny again
        assert disk_files(dom) == [str(disk)]
        info = image_info(str(disk))
        assert (info["backing-filename"], info["virtual-size"]) == (str(saved), 1024**3)
        assert "Pattern verification failed" not in qemu_io(disk, "read -P 0x5a 1M 64k")
        s = engine.get_server(sid)
        assert (s.image["id"], s.flavor["name"]) == (image_id_for(IMAGE), "m1.tiny")
        with pytest.raises(NotFound):  # the shelved image is deleted once it runs again
            engine.get_image(image_id)
        assert saved.exists()  # but its file stays: it backs the guest's disk

        engine.delete(sid)
        engine.run_until_idle()
        assert driver.connection().listAllDomains() == []
        assert sorted(p.name for p in disk_dir.iterdir()) == [saved.name]


@pytest.mark.parametrize(("first", "kept", "unshelved_by"), [
    (None, SHUTDOWN, "power_on"),
    ("pause", SHUTDOWN, "power_on"),  # a paused guest cannot hear ACPI: destroyed
    ("stop", SHUTDOWN, "power_on"),
    ("suspend", SUSPENDED, "resume"),  # its saved memory is kept, and restored
])
def test_engine_keeps_a_shelved_guest_until_shelve_offload(
        driver: LibvirtDriver, first: str | None, kept: PowerState, unshelved_by: str
        ) -> None:
    with Engine("memory", clock=FakeClock(), hypervisor=driver,
                shelved_offload_time=None) as engine:
        sid = engine.create_server("web-1", flavor="m1.small", image=IMAGE).id
        engine.run_until_idle()
        if first is not None:
            engine.act(sid, first)
            engine.run_until_idle()
        mac = macs(dom_of(driver, sid))
        engine.shelve(sid)
        assert settled(engine, sid) == ("SHELVED", None)
        assert engine.get_server(sid).power_state == kept
        assert_power(driver, sid, kept)  # still defined on the host

        unshelve = engine.unshelve(sid)
        assert settled(engine, sid) == ("ACTIVE", None)
        assert calls_of(engine, sid, unshelve.request_id) == ["observe", unshelved_by]
        assert_power(driver, sid, RUNNING)
        dom = dom_of(driver, sid)
        assert dom.UUIDString() == sid and macs(dom) == mac  # the same guest
        assert engine.get_server(sid).power_state == RUNNING

        engine.shelve(sid)
        assert settled(engine, sid) == ("SHELVED", None)
        offload = engine.shelve_offload(sid)
        assert settled(engine, sid) == ("SHELVED_OFFLOADED", None)
        assert calls_of(engine, sid, offload.request_id) == ["observe", "destroy"]
        assert driver.observe(sid).exists is False
        assert driver.connection().listAllDomains() == []
        engine.unshelve(sid)
        assert settled(engine, sid) == ("ACTIVE", None)
        assert_power(driver, sid, RUNNING)
        assert dom_of(driver, sid).info()[1:4] == [2048 * 1024, 2048 * 1024, 1]


def test_the_example_in_docs_runs(tmp_path: Path) -> None:
    import re
    import sys

    doc = Path(__file__).parent.parent / "docs" / "libvirt-hosts.md"
    example = re.findall(r"```python\n(.*?)```", doc.read_text(), re.S)[0]
    script = tmp_path / "example.py"
    script.write_text(example)
    run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        "SHUTOFF", "True True",
        "['observe', 'spawn', 'observe', 'power_off']"]


def test_host_info(driver: LibvirtDriver) -> None:
    """The compute node report: the connection's host, the disk's file system, and this
    machine's uptime for a local URI."""
    info = driver.host_info()
    conn = driver.connection()
    _arch, memory_mb, cpus, _mhz, nodes, sockets, cores, threads = conn.getInfo()
    assert (info["hypervisor_type"], info["hypervisor_version"]) == (
        conn.getType(), conn.getVersion())
    assert (info["vcpus"], info["memory_mb"]) == (cpus, memory_mb)
    assert info["cpu_info"]["topology"] == {"cells": nodes, "sockets": sockets,
                                            "cores": cores, "threads": threads}
    assert info["cpu_info"]["arch"]
    assert info["local_gb"] > 0 and 0 <= info["disk_available_least"] <= info["local_gb"]
    assert info["host_ip"].count(".") == 3
    assert " up " in info["uptime"] and "load average:" in info["uptime"]

"""Selecting a hypervisor driver by name, as the command line does."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmledger import Engine, FakeClock, Simulator
from vmledger.adapters.drivers import open_hypervisor


def test_simulator_names(tmp_path: Path) -> None:
    assert isinstance(open_hypervisor("simulator"), Simulator)
    state = tmp_path / "guests.json"
    first = open_hypervisor(f"simulator://{state}")
    with Engine("memory", clock=FakeClock(), hypervisor=first) as engine:
        sid = engine.create_server("kept", flavor="m1.tiny", image="cirros-0.6.2-x86_64").id
        engine.run_until_idle()
        image = engine.create_image(sid, "kept-image").details["image_id"]
        engine.run_until_idle()
    again = open_hypervisor(f"simulator://{state}")
    assert again.observe(sid).exists  # a restarted process finds the guest
    assert isinstance(again, Simulator)
    assert image in again.snapshots()  # and the images captured from it
    assert isinstance(open_hypervisor("simulator:memory"), Simulator)


def test_a_simulator_s_live_migrations_may_be_slow(tmp_path: Path) -> None:
    """``?live_migration_seconds=N``: a live migration leaving that host copies for N
    seconds (time to abort it or force it); any other option, or not a number, refused."""
    slow = open_hypervisor("simulator:memory?live_migration_seconds=2.5")
    assert isinstance(slow, Simulator) and slow.live_migration_seconds == 2.5
    kept = open_hypervisor(f"simulator://{tmp_path / 'g.json'}?live_migration_seconds=1")
    assert isinstance(kept, Simulator) and kept.live_migration_seconds == 1.0
    plain = open_hypervisor("simulator:memory")
    assert isinstance(plain, Simulator) and plain.live_migration_seconds == 0.0
    with pytest.raises(ValueError, match="unknown simulator option 'speed'"):
        open_hypervisor("simulator:memory?speed=1")
    for bad in ("-1", "x", "inf", "nan", ""):
        with pytest.raises(ValueError, match="live_migration_seconds is a number of seconds"):
            open_hypervisor(f"simulator:memory?live_migration_seconds={bad}")


def test_unknown_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown hypervisor 'vmware://x'"):
        open_hypervisor("vmware://x")


def test_libvirt_uri_selects_the_libvirt_driver(tmp_path: Path) -> None:
    pytest.importorskip("libvirt", reason="libvirt-python not installed: apt-get install "
                        "libvirt-dev pkg-config && pip install libvirt-python==12.8.0")
    (tmp_path / "cirros-0.6.2-x86_64.qcow2").write_bytes(b"")
    driver = open_hypervisor("test:///default", image_dir=str(tmp_path),
                             disk_dir=str(tmp_path / "disks"))
    assert driver.driver == "libvirt"
    assert list(driver.images.values()) == [  # type: ignore[attr-defined]
        str(tmp_path / "cirros-0.6.2-x86_64.qcow2")]

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

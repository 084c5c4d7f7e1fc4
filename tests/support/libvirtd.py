"""libvirt for tests: skip reasons, test-driver nodes, and a guest that answers ACPI.

* :func:`libvirt_skip_reason` -- why the libvirt tests cannot run (no binding);
* :func:`node_uri` -- a private ``test:///<dir>/node.xml`` (one per test: each
  ``open()`` of such a URI is its own in-process hypervisor);
* :func:`qemu_skip_reason` -- why the ``qemu`` tier cannot run (no libvirtd socket:
  ``.ci/libvirt-setup`` starts one);
* :func:`second_host` -- the second libvirtd ``.ci/libvirt-setup`` starts (another host
  on the same machine, for the migration tests), or why there is none;
* :func:`build_acpi_guest` -- a Linux kernel + busybox initramfs, from Debian packages,
  whose init runs ``acpid`` and powers off on the ACPI power button, so soft reboot and
  graceful shutdown have a guest that reacts (a diskless guest ignores both), and then
  prints its uptime twice a second (a live-migrated guest keeps counting);
* :func:`boot_from_kernel` -- turn a domain definition into one booting that guest,
  with its serial console in a file (:class:`ConsoleLog` waits for lines in it).
"""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "HOST2_URI_ENV",
    "LIBVIRT_MISSING_REASON",
    "QEMU_URI",
    "READY_MARKER",
    "UPTIME_MARKER",
    "AcpiGuest",
    "ConsoleLog",
    "boot_from_kernel",
    "build_acpi_guest",
    "libvirt_skip_reason",
    "node_uri",
    "qemu_skip_reason",
    "second_host",
]

LIBVIRT_MISSING_REASON = (
    "libvirt-python not installed: apt-get install libvirt-dev pkg-config && "
    "pip install libvirt-python==12.8.0"
)
QEMU_URI = "qemu:///system"
LIBVIRTD_SOCKETS = (Path("/run/libvirt/libvirt-sock"), Path("/var/run/libvirt/libvirt-sock"))
#: printed on the serial console by the ACPI guest's init once acpid runs
READY_MARKER = "VMLEDGER-GUEST-READY"
#: then, twice a second, followed by the guest's uptime in seconds (/proc/uptime)
UPTIME_MARKER = "VMLEDGER-GUEST-UPTIME"
#: where .ci/libvirt-setup writes the second host's URI (and host 1's, as host 2 sees it)
HOST2_URI_ENV = "VMLEDGER_LIBVIRT_HOST2_URI"

_NODE_XML = """<node>
  <cpu><mhz>2000</mhz><model>x86_64</model><active>8</active><nodes>1</nodes>
    <sockets>1</sockets><cores>8</cores><threads>1</threads></cpu>
  <memory>67108864</memory>
</node>
"""


def libvirt_skip_reason() -> str | None:
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return LIBVIRT_MISSING_REASON
    return None


def node_uri(directory: Path) -> str:
    """Write a minimal ``<node>`` (8 CPUs, 64 GiB, no domains) and return its URI."""
    node = directory / "node.xml"
    node.write_text(_NODE_XML, encoding="utf-8")
    return f"test://{node.resolve()}"


def qemu_skip_reason(uri: str = QEMU_URI) -> str | None:
    """None when ``uri`` answers; otherwise why not, and how to fix it."""
    reason = libvirt_skip_reason()
    if reason is not None:
        return reason
    import libvirt

    if uri == QEMU_URI and not any(p.exists() for p in LIBVIRTD_SOCKETS):
        return ("libvirtd is not running (no /run/libvirt/libvirt-sock): "
                "run .ci/libvirt-setup as root to start it")
    if shutil.which("qemu-img") is None:
        return "qemu-img not found: apt-get install qemu-utils (or run .ci/libvirt-setup)"
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as e:
        return f"cannot connect to {uri}: {e.get_error_message()} (run .ci/libvirt-setup)"
    try:
        if conn.getType() != "QEMU":
            return f"{uri} is not a QEMU driver but {conn.getType()}"
    finally:
        conn.close()
    return None


def _state_dir() -> Path:
    return Path(os.environ.get("VMLEDGER_LIBVIRT_STATE", "/run/vmledger-libvirt"))


def second_host() -> tuple[str, str] | str:
    """(host 2's URI, host 1's URI as any libvirtd on this machine reaches it): the
    second libvirtd ``.ci/libvirt-setup`` starts; or why there is none, and how to fix it.

    ``$VMLEDGER_LIBVIRT_HOST2_URI`` (and ``$VMLEDGER_LIBVIRT_HOST1_URI``) name other
    daemons; by default the URIs the setup wrote to ``$VMLEDGER_LIBVIRT_STATE``.
    """
    reason = qemu_skip_reason(QEMU_URI)
    if reason is not None:
        return reason
    state = _state_dir()
    host2 = os.environ.get(HOST2_URI_ENV)
    host1 = os.environ.get("VMLEDGER_LIBVIRT_HOST1_URI")
    try:
        host2 = host2 or (state / "host2.uri").read_text().strip()
        host1 = host1 or (state / "host1.uri").read_text().strip()
    except FileNotFoundError:
        return (f"no second libvirtd ({state}/host2.uri not found): run .ci/libvirt-setup "
                f"as root to start one, or set {HOST2_URI_ENV}")
    for uri in (host2, host1):
        reason = qemu_skip_reason(uri)
        if reason is not None:
            return f"the second libvirt host does not answer: {reason}"
    return host2, host1


# --------------------------------------------------------------------------------------
# The ACPI guest: Debian's cloud kernel + a busybox initramfs.
# --------------------------------------------------------------------------------------

_INIT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
insmod /lib/button.ko
insmod /lib/evdev.ko
# the power button's event device appears asynchronously; acpid only scans at start
for i in $(seq 200); do
  ev=$(grep -A5 'Name="Power Button"' /proc/bus/input/devices | grep -o 'event[0-9]*')
  [ -n "$ev" ] && [ -e "/dev/input/$ev" ] && break
  usleep 50000
done
acpid -f -c /etc/acpi -l /dev/console &
# ready only once acpid holds the device open (a press before that would be lost)
for i in $(seq 200); do
  ls -l /proc/$!/fd 2>/dev/null | grep -q /dev/input/ && break
  usleep 50000
done
echo {READY_MARKER}
# the guest's own clock, twice a second: a guest that keeps running (live migration)
# shows it growing without a new boot
while true; do echo "{UPTIME_MARKER} $(cut -d' ' -f1 /proc/uptime)"; usleep 500000; done
"""
_POWER_BUTTON = "#!/bin/sh\npoweroff -f\n"


@dataclass(frozen=True)
class AcpiGuest:
    kernel: Path
    initrd: Path


def _run(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def _cpio_entry(out: list[bytes], name: str, mode: int, data: bytes = b"",
                rdev: tuple[int, int] = (0, 0)) -> None:
    """One entry of a "newc" cpio archive (what the kernel unpacks as an initramfs)."""
    encoded = name.encode() + b"\0"
    fields = (len(out) + 1, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1],
              len(encoded), 0)
    header = b"070701" + b"".join(b"%08X" % value for value in fields)
    out.append(header + encoded + b"\0" * (-(len(header) + len(encoded)) % 4))
    out.append(data + b"\0" * (-len(data) % 4))


def _initramfs(busybox: bytes, modules: dict[str, bytes]) -> bytes:
    entries: list[bytes] = []
    for directory in ("bin", "dev", "etc", "etc/acpi", "etc/acpi/PWRF", "lib", "proc",
                      "sys", "var", "var/log", "var/run"):
        _cpio_entry(entries, directory, stat.S_IFDIR | 0o755)
    _cpio_entry(entries, "dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    _cpio_entry(entries, "bin/busybox", stat.S_IFREG | 0o755, busybox)
    _cpio_entry(entries, "init", stat.S_IFREG | 0o755, _INIT.encode())
    _cpio_entry(entries, "etc/acpi/PWRF/00000080", stat.S_IFREG | 0o755,
                _POWER_BUTTON.encode())
    for name, data in modules.items():
        _cpio_entry(entries, f"lib/{name}", stat.S_IFREG | 0o644, data)
    _cpio_entry(entries, "TRAILER!!!", 0)
    return gzip.compress(b"".join(entries), compresslevel=6)


def _default_cache() -> Path:
    return Path(os.environ.get("VMLEDGER_TEST_CACHE", "/var/cache/vmledger-tests"))


def build_acpi_guest(cache: Path | None = None) -> AcpiGuest:
    """The kernel and initramfs of the ACPI guest, built once and kept in ``cache``.

    Downloads ``linux-image-<version>-cloud-amd64`` (≈27 MB) and ``busybox-static`` with
    ``apt-get download`` (nothing is installed). Raises RuntimeError when that fails.
    """
    target = (cache or _default_cache()) / "acpi-guest-2"  # -2: the init prints its uptime
    guest = AcpiGuest(kernel=target / "vmlinuz", initrd=target / "initrd.gz")
    if guest.kernel.is_file() and guest.initrd.is_file():
        return guest
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise RuntimeError("apt-get and dpkg-deb are needed to build the ACPI guest")
    depends = _run("apt-cache", "depends", "linux-image-cloud-amd64")
    kernel_pkg = next((line.split(":", 1)[1].strip() for line in depends.splitlines()
                       if line.strip().startswith("Depends: linux-image-")), None)
    if kernel_pkg is None:
        raise RuntimeError("no linux-image-*-cloud-amd64 package known to apt")
    version = kernel_pkg.removeprefix("linux-image-")
    with tempfile.TemporaryDirectory(prefix="acpi-guest-") as tmp:
        work = Path(tmp)
        _run("apt-get", "download", "-q", kernel_pkg, "busybox-static", cwd=work)
        for deb in work.glob("*.deb"):
            _run("dpkg-deb", "-x", str(deb), str(work / "root"))
        root = work / "root"
        modules = {name: next((root / "lib/modules" / version).rglob(name)).read_bytes()
                   for name in ("button.ko", "evdev.ko")}
        initrd = _initramfs((root / "bin/busybox").read_bytes(), modules)
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / f"boot/vmlinuz-{version}", target / "vmlinuz.tmp")
        (target / "initrd.gz.tmp").write_bytes(initrd)
        os.replace(target / "vmlinuz.tmp", guest.kernel)
        os.replace(target / "initrd.gz.tmp", guest.initrd)
    return guest


def boot_from_kernel(xml: str, guest: AcpiGuest, console: Path) -> str:
    """``xml`` (a domain definition) booting ``guest``, serial console appended to
    ``console``."""
    root = ET.fromstring(xml)
    os_ = root.find("os")
    assert os_ is not None
    for tag, text in (("kernel", str(guest.kernel)), ("initrd", str(guest.initrd)),
                      ("cmdline", "console=ttyS0 quiet")):
        ET.SubElement(os_, tag).text = text
    devices = root.find("devices")
    assert devices is not None
    serial = ET.SubElement(devices, "serial", type="file")
    ET.SubElement(serial, "source", path=str(console), append="on")
    ET.SubElement(serial, "target", port="0")
    return ET.tostring(root, encoding="unicode")


class ConsoleLog:
    """The serial console file of a guest; waits for lines to appear in it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def count(self, marker: str) -> int:
        try:
            return self.path.read_text(errors="replace").count(marker)
        except FileNotFoundError:
            return 0

    def wait_for(self, marker: str, times: int = 1, timeout: float = 60.0) -> float:
        """Wait until ``marker`` was printed ``times`` times; return the seconds waited."""
        started = time.monotonic()
        while self.count(marker) < times:
            if time.monotonic() - started > timeout:
                tail = self.path.read_text(errors="replace")[-2000:] if self.path.exists() \
                    else "(no console output)"
                raise TimeoutError(f"{marker!r} x{times} not seen in {timeout} s:\n{tail}")
            time.sleep(0.05)
        return time.monotonic() - started

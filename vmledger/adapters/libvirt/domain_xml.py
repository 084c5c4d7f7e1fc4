"""Domain XML of vmledger guests: built from a GuestSpec, then edited for resize and rebuild.

What vmledger needs to know about a guest lives in the domain definition itself, in a
``<metadata>`` element of its own namespace, so every definition is self-describing and
a new process (or an operator with ``virsh dumpxml``) sees the same facts::

    <vmledger:instance xmlns:vmledger="http://vmledger.dev/xmlns/libvirt/1">
      <vmledger:name>web-1</vmledger:name>
      <vmledger:flavor id="2" vcpus="1" ram-mb="2048" disk-gb="20"/>
      <vmledger:image id="…"/>
      <!-- only while a resize awaits confirmation: the whole old definition, as text -->
      <vmledger:resize power-state="1">&lt;domain …&gt;…&lt;/domain&gt;</vmledger:resize>
    </vmledger:instance>

Resize and rebuild edit the *current* definition instead of rendering a new one, so the
UUID, the MAC addresses and anything an operator added (serial consoles, a kernel to
boot) are kept.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from vmledger.adapters.hypervisor import GuestSpec, PowerState

__all__ = [
    "DISK_TARGET",
    "NAMESPACE",
    "PREFIX",
    "Instance",
    "console_log",
    "disk_source",
    "domain_name",
    "domain_xml",
    "mac_address",
    "parse_instance",
    "rebuilt",
    "relocated",
    "rescued",
    "resized",
    "without_resize",
]

NAMESPACE = "http://vmledger.dev/xmlns/libvirt/1"
PREFIX = "vmledger"
#: the target of the root disk vmledger manages (other disks are left alone)
DISK_TARGET = "vda"

ET.register_namespace(PREFIX, NAMESPACE)


def _q(tag: str) -> str:
    return f"{{{NAMESPACE}}}{tag}"


def domain_name(server_id: str) -> str:
    return f"vmledger-{server_id}"


@dataclass(frozen=True)
class Instance:
    """What a domain's vmledger metadata says (all ``None`` for a foreign domain)."""

    name: str | None = None
    flavor_id: str | None = None
    vcpus: int | None = None
    ram_mb: int | None = None
    disk_gb: int | None = None
    image_id: str | None = None
    #: the definition a pending resize replaced, and the power state it had
    old_xml: str | None = None
    old_power_state: PowerState | None = None
    #: the guest's own definition while it runs a rescue image
    rescue_xml: str | None = None

    @property
    def resize_pending(self) -> bool:
        return self.old_xml is not None

    @property
    def rescued(self) -> bool:
        return self.rescue_xml is not None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(element: ET.Element, name: str) -> ET.Element | None:
    # libvirt's metadata() answers without the namespace, the full XML with it
    for child in element:
        if _local(child.tag) == name:
            return child
    return None


def _int(value: str | None) -> int | None:
    return None if value is None else int(value)


def _instance_from(element: ET.Element) -> Instance:
    name = _child(element, "name")
    flavor = _child(element, "flavor")
    image = _child(element, "image")
    resize = _child(element, "resize")
    rescue = _child(element, "rescue")
    fl = flavor.attrib if flavor is not None else {}
    old_state = resize.get("power-state") if resize is not None else None
    return Instance(
        name=name.text if name is not None else None,
        flavor_id=fl.get("id"),
        vcpus=_int(fl.get("vcpus")),
        ram_mb=_int(fl.get("ram-mb")),
        disk_gb=_int(fl.get("disk-gb")),
        image_id=image.get("id") if image is not None else None,
        old_xml=(resize.text or "") if resize is not None else None,
        old_power_state=PowerState(int(old_state)) if old_state is not None else None,
        rescue_xml=(rescue.text or "") if rescue is not None else None,
    )


def parse_instance(text: str) -> Instance:
    """The metadata element as ``virDomainGetMetadata`` returns it, or a whole domain."""
    root = ET.fromstring(text)
    if root.tag == "domain":
        found = root.find(f"metadata/{_q('instance')}")
        return Instance() if found is None else _instance_from(found)
    return _instance_from(root)


def _instance_element(root: ET.Element) -> ET.Element:
    metadata = root.find("metadata")
    if metadata is None:
        metadata = ET.Element("metadata")
        root.insert(0, metadata)
    instance = metadata.find(_q("instance"))
    if instance is None:
        instance = ET.SubElement(metadata, _q("instance"))
    return instance


def _set_child(parent: ET.Element, tag: str) -> ET.Element:
    element = parent.find(_q(tag))
    if element is None:
        element = ET.SubElement(parent, _q(tag))
    return element


def _set_flavor(root: ET.Element, spec: GuestSpec) -> None:
    instance = _instance_element(root)
    flavor = _set_child(instance, "flavor")
    flavor.attrib.clear()
    flavor.attrib.update({"id": spec.flavor_id, "vcpus": str(spec.vcpus),
                          "ram-mb": str(spec.ram_mb), "disk-gb": str(spec.disk_gb)})


def _set_image(root: ET.Element, spec: GuestSpec) -> None:
    instance = _instance_element(root)
    _set_child(instance, "name").text = spec.name
    _set_child(instance, "image").attrib.update({"id": spec.image_id})


def _disk_element(path: str) -> ET.Element:
    disk = ET.Element("disk", type="file", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type="qcow2")
    ET.SubElement(disk, "source", file=path)
    ET.SubElement(disk, "target", dev=DISK_TARGET, bus="virtio")
    return disk


def domain_xml(spec: GuestSpec, *, domain_type: str, disk: str | None,
               network: str | None, console: str | None = None) -> str:
    """A new definition: a small x86_64 ``pc`` machine, no graphics, one NIC, and with
    ``console`` a serial console QEMU appends to that file."""
    root = ET.Element("domain", type=domain_type)
    ET.SubElement(root, "name").text = domain_name(spec.server_id)
    ET.SubElement(root, "uuid").text = spec.server_id
    _set_image(root, spec)
    _set_flavor(root, spec)
    ET.SubElement(root, "memory", unit="MiB").text = str(spec.ram_mb)
    ET.SubElement(root, "vcpu", placement="static").text = str(spec.vcpus)
    os_ = ET.SubElement(root, "os")
    ET.SubElement(os_, "type", arch="x86_64", machine="pc").text = "hvm"
    ET.SubElement(os_, "boot", dev="hd")
    features = ET.SubElement(root, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    for event, action in (("on_poweroff", "destroy"), ("on_reboot", "restart"),
                          ("on_crash", "destroy")):
        ET.SubElement(root, event).text = action
    devices = ET.SubElement(root, "devices")
    if disk is not None:
        devices.append(_disk_element(disk))
    # user-mode networking needs nothing on the host; the MAC is chosen by libvirt
    nic = ET.SubElement(devices, "interface", type="user" if network is None else "network")
    if spec.mac is not None:  # the server's, as the API shows it (else libvirt picks one)
        ET.SubElement(nic, "mac", address=spec.mac)
    if network is not None:
        ET.SubElement(nic, "source", network=network)
    ET.SubElement(nic, "model", type="virtio")
    ET.SubElement(nic, "rom", enabled="no")  # no PXE attempt by a guest without a disk
    if console is not None:
        serial = ET.SubElement(devices, "serial", type="file")
        ET.SubElement(serial, "source", path=console, append="on")
        ET.SubElement(serial, "target", port="0")
    ET.SubElement(devices, "controller", type="usb", model="none")
    ET.SubElement(devices, "memballoon", model="virtio")
    return ET.tostring(root, encoding="unicode")


def console_log(xml: str) -> str | None:
    """The file the first file-backed serial port of a definition writes to, if any."""
    for serial in ET.fromstring(xml).findall("devices/serial"):
        source = serial.find("source")
        if serial.get("type") == "file" and source is not None and source.get("path"):
            return source.get("path")
    return None


def disk_source(xml: str) -> str | None:
    """The file behind vmledger's root disk in a definition, if it has one."""
    disk = _root_disk(ET.fromstring(xml))
    source = disk.find("source") if disk is not None else None
    return source.get("file") if source is not None else None


def _root_disk(root: ET.Element) -> ET.Element | None:
    for disk in root.findall("devices/disk"):
        target = disk.find("target")
        if target is not None and target.get("dev") == DISK_TARGET:
            return disk
    return None


def resized(xml: str, spec: GuestSpec, power_state: PowerState) -> str:
    """``xml`` with the flavor of ``spec``, keeping ``xml`` itself for a revert."""
    root = ET.fromstring(xml)
    memory = root.find("memory")
    if memory is None:
        memory = ET.SubElement(root, "memory")
    memory.attrib.clear()
    memory.set("unit", "MiB")
    memory.text = str(spec.ram_mb)
    current = root.find("currentMemory")
    if current is not None:
        root.remove(current)
    vcpu = root.find("vcpu")
    if vcpu is None:
        vcpu = ET.SubElement(root, "vcpu", placement="static")
    vcpu.attrib.pop("current", None)
    vcpu.text = str(spec.vcpus)
    _set_flavor(root, spec)
    resize = _set_child(_instance_element(root), "resize")
    resize.set("power-state", str(int(power_state)))
    resize.text = xml
    return ET.tostring(root, encoding="unicode")


#: where the guest's own root disk is attached while it runs a rescue image
RESCUED_DISK_TARGET = "vdb"


def rescued(xml: str, rescue_disk: str | None) -> str:
    """``xml`` booting ``rescue_disk`` (none: no rescue disk, a diskless rescue image)
    with the guest's own root disk moved to the second slot, and ``xml`` itself kept
    in the metadata for :func:`unrescued` (UUID, MACs and the rest unchanged)."""
    root = ET.fromstring(xml)
    devices = root.find("devices")
    if devices is None:
        devices = ET.SubElement(root, "devices")
    own = _root_disk(root)
    if own is not None:
        target = own.find("target")
        assert target is not None
        target.set("dev", RESCUED_DISK_TARGET)
        for stale in own.findall("backingStore") + own.findall("address"):
            own.remove(stale)
    if rescue_disk is not None:
        devices.insert(0, _disk_element(rescue_disk))
    _set_child(_instance_element(root), "rescue").text = xml
    return ET.tostring(root, encoding="unicode")


def without_resize(xml: str) -> str:
    """``xml`` without the kept old definition (a confirmed resize)."""
    root = ET.fromstring(xml)
    instance = _instance_element(root)
    resize = instance.find(_q("resize"))
    if resize is not None:
        instance.remove(resize)
    return ET.tostring(root, encoding="unicode")


def rebuilt(xml: str, spec: GuestSpec, *, disk: str | None) -> str:
    """``xml`` with the image of ``spec`` and root disk ``disk`` (``None``: diskless)."""
    root = ET.fromstring(xml)
    _set_image(root, spec)
    devices = root.find("devices")
    if devices is None:
        devices = ET.SubElement(root, "devices")
    old = _root_disk(root)
    if disk is None:
        if old is not None:
            devices.remove(old)
    elif old is None:
        devices.insert(0, _disk_element(disk))
    else:
        for stale in old.findall("backingStore"):
            old.remove(stale)
        source = old.find("source")
        if source is None:
            source = ET.SubElement(old, "source")
        source.attrib.clear()
        source.set("file", disk)
    return ET.tostring(root, encoding="unicode")


def mac_address(xml: str) -> str | None:
    """The MAC address of a definition's first NIC, if it has one."""
    mac = ET.fromstring(xml).find("devices/interface/mac")
    return None if mac is None else mac.get("address")


def relocated(xml: str, *, disk: str | None, console: str | None) -> str:
    """``xml`` with its root disk on ``disk`` and its file-backed serial console writing
    to ``console`` (where they are on the destination of a migration); the rest, UUID
    and MACs included, unchanged."""
    root = ET.fromstring(xml)
    own = _root_disk(root)
    if own is not None and disk is not None:
        for stale in own.findall("backingStore"):  # libvirt reads the new file's chain
            own.remove(stale)
        source = own.find("source")
        if source is None:
            source = ET.SubElement(own, "source")
        source.set("file", disk)
    old = console_log(xml)
    if console is not None and old is not None:
        # the live definition repeats the first serial port as <console>: move both
        for device in root.findall("devices/serial") + root.findall("devices/console"):
            source = device.find("source")
            if device.get("type") == "file" and source is not None \
                    and source.get("path") == old:
                source.set("path", console)
    return ET.tostring(root, encoding="unicode")

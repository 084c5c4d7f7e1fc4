"""The libvirt driver's operations that define, redefine or remove a guest and its disks:
spawn, rebuild, resize (with confirm and revert), rescue/unrescue, snapshot, destroy.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import libvirt

from vmledger.adapters.hypervisor import GuestSpec, HypervisorError, PowerState, Result
from vmledger.adapters.libvirt import disks
from vmledger.adapters.libvirt.base import (
    _INACTIVE,
    DriverBase,
    _instance,
    _power,
    _Progress,
    _undefine_flags,
)
from vmledger.adapters.libvirt.domain_xml import (
    disk_source,
    domain_name,
    domain_xml,
    parse_instance,
    rebuilt,
    rescued,
    resized,
    without_resize,
)


class DefinitionsMixin(DriverBase):
    """Creates, changes and removes guests' definitions and disks."""

    def spawn(self, spec: GuestSpec) -> Result:
        """Define and start the guest; a running guest is left alone."""

        def body(conn: Any, do: _Progress) -> Result:
            dom = self._lookup(conn, spec.server_id)
            if dom is not None:
                power = _power(dom)
                if power == PowerState.RUNNING:
                    return {"already": True}
                return {"started": self._start(dom, power, do)}
            try:
                uuid.UUID(spec.server_id)
            except ValueError:
                raise HypervisorError(f"Server id {spec.server_id!r} is not a UUID",
                                      rollback=True, code=400) from None
            overlay = self._overlay_for(spec)
            disk = overlay[1] if overlay is not None else None
            if overlay is not None:
                disks.create_overlay(*overlay, spec.disk_gb)
            try:
                console = (None if self.disk_dir is None
                           else disks.console_log(self.disk_dir, spec.server_id))
                dom = conn.defineXML(domain_xml(spec, domain_type=self.domain_type, disk=disk,
                                                network=self.network, console=console))
                try:
                    dom.create()
                except libvirt.libvirtError:
                    _undefine_flags(dom)  # leave nothing behind: the spawn rolls back
                    raise
            except BaseException:
                if disk is not None:
                    disks.remove(disk)
                raise
            return {"domain": domain_name(spec.server_id), "disk": disk}

        return self._act(spec.server_id, body)

    def rebuild(self, spec: GuestSpec) -> Result:
        """A new disk from the new image, same domain (UUID, MACs); a stopped guest stays
        stopped, any other boots. Without a base file for the image: diskless."""

        def body(conn: Any, do: _Progress) -> Result:
            dom = self._require(conn, spec.server_id)
            power = _power(dom)
            xml = dom.XMLDesc(_INACTIVE)
            overlay = self._overlay_for(spec)
            disk = overlay[1] if overlay is not None else None
            staged = None
            if overlay is not None:
                staged = overlay[1] + ".new"  # made before any change: a failure rolls back
                disks.create_overlay(overlay[0], staged, spec.disk_gb)
            try:
                if dom.isActive():
                    do(dom.destroy)
                if dom.hasManagedSaveImage(0):  # its memory belongs to the old disk
                    do(dom.managedSaveRemove, 0)
                if staged is not None and disk is not None:
                    do(os.replace, staged, disk)
                do(conn.defineXML, rebuilt(xml, spec, disk=disk))
                ours = self._disk_path(spec.server_id)
                if disk is None and ours is not None and disk_source(xml) == ours:
                    disks.remove(ours)  # rebuilt diskless: our overlay is unused now
                if power != PowerState.SHUTDOWN:
                    do(dom.create)
            finally:
                if staged is not None:
                    disks.remove(staged)
            running = PowerState.SHUTDOWN if power == PowerState.SHUTDOWN else PowerState.RUNNING
            return {"image_id": spec.image_id, "disk": disk, "power_state": int(running)}

        return self._act(spec.server_id, body)

    def resize(self, spec: GuestSpec) -> Result:
        """Redefine with the new flavor, keeping the old definition for a revert. A guest
        that is not shut off is restarted (the new flavor applies at boot); a shut-off
        guest stays off. A larger flavor disk grows the overlay (it never shrinks)."""

        def body(conn: Any, do: _Progress) -> Result:
            dom = self._require(conn, spec.server_id)
            inst = _instance(dom)
            if inst.resize_pending:
                raise HypervisorError(
                    f"Guest {spec.server_id} already has a resize awaiting confirmation",
                    rollback=True, code=409)
            if inst.disk_gb is not None and spec.disk_gb < inst.disk_gb:
                raise HypervisorError("Unable to resize disk down.", rollback=True, code=400)
            power = _power(dom)
            old_xml = dom.XMLDesc(_INACTIVE)
            conn.defineXML(resized(old_xml, spec, power))
            try:  # the first change to the guest itself; until then, undo the redefine
                if dom.isActive():
                    do(dom.destroy)
                elif power == PowerState.SUSPENDED:
                    do(dom.managedSaveRemove, 0)
            except BaseException:
                if not do.changed:
                    conn.defineXML(old_xml)
                raise
            do.changed = True  # the new definition stands from here on
            disk = self._disk_path(spec.server_id)
            grew = disk is not None and disk_source(old_xml) == disk and disks.grow(
                disk, spec.disk_gb)
            if power != PowerState.SHUTDOWN:
                do(dom.create)
            return {"flavor_id": spec.flavor_id, "old_flavor_id": inst.flavor_id,
                    "disk_grown": grew}

        return self._act(spec.server_id, body)

    def confirm_resize(self, server_id: str) -> Result:
        """Drop the kept old definition (nothing to do if there is none)."""

        def body(conn: Any, do: _Progress) -> Result:
            dom = self._require(conn, server_id)
            if not _instance(dom).resize_pending:
                return {"already": True}
            do(conn.defineXML, without_resize(dom.XMLDesc(_INACTIVE)))
            return {"confirmed": True}

        return self._act(server_id, body)

    def revert_resize(self, server_id: str) -> Result:
        """Redefine the kept old definition and restore its power state."""

        def body(conn: Any, do: _Progress) -> Result:
            dom = self._require(conn, server_id)
            inst = _instance(dom)
            if inst.old_xml is None:
                return {"already": True}
            if dom.isActive():
                do(dom.destroy)
            if dom.hasManagedSaveImage(0):
                do(dom.managedSaveRemove, 0)
            do(conn.defineXML, inst.old_xml)
            target = inst.old_power_state or PowerState.SHUTDOWN
            self._bring_to(dom, target, do)
            return {"flavor_id": parse_instance(inst.old_xml).flavor_id,
                    "power_state": int(_power(dom))}

        return self._act(server_id, body)

    def _bring_to(self, dom: Any, target: PowerState, do: _Progress) -> None:
        """From SHUTOFF (no save image) to ``target``; any other target stays off."""
        if target in (PowerState.RUNNING, PowerState.PAUSED, PowerState.SUSPENDED):
            do(dom.create)
        if target == PowerState.PAUSED:
            do(dom.suspend)
        elif target == PowerState.SUSPENDED:
            do(dom.managedSave, 0)

    def rescue(self, spec: GuestSpec) -> Result:
        """Redefine the guest to boot an overlay of the rescue image (when it has a base
        file here) with its own root disk as ``vdb``, keeping its definition in the
        metadata, and (re)start it; a suspended guest's saved memory is dropped."""

        def body(conn: Any, do: _Progress) -> Result:
            dom = self._require(conn, spec.server_id)
            if _instance(dom).rescued:
                if not dom.isActive():  # redefined, then stopped short of starting it
                    do(dom.create)
                    return {"already": True, "started": True}
                return {"already": True}
            own_xml = dom.XMLDesc(_INACTIVE)
            base = self._base(spec.image_id)
            if base is None and disk_source(own_xml) is not None:
                # it would boot its own disk again: no rescue at all
                raise HypervisorError(f"Rescue image {spec.image_id} has no base file on "
                                      "this host", rollback=True, code=400)
            disk = (None if base is None or self.disk_dir is None
                    else disks.rescue_path(self.disk_dir, spec.server_id))
            if base is not None and disk is not None:
                disks.create_overlay(base, disk, spec.disk_gb)
            try:
                conn.defineXML(rescued(own_xml, disk))
                if dom.isActive():
                    do(dom.destroy)
                elif dom.hasManagedSaveImage(0):
                    do(dom.managedSaveRemove, 0)
            except BaseException:
                if not do.changed:  # the guest is as it was: so is its definition
                    conn.defineXML(own_xml)
                    if disk is not None:
                        disks.remove(disk)
                raise
            do.changed = True
            do(dom.create)
            return {"rescue_image_id": spec.image_id, "disk": disk}

        return self._act(spec.server_id, body)

    def unrescue(self, server_id: str) -> Result:
        """Stop the rescue, redefine the guest's own definition, boot it."""

        def body(conn: Any, do: _Progress) -> Result:
            dom = self._require(conn, server_id)
            inst = _instance(dom)
            if inst.rescue_xml is None:
                return {"already": True}
            if dom.isActive():
                do(dom.destroy)
            if dom.hasManagedSaveImage(0):
                do(dom.managedSaveRemove, 0)
            do(conn.defineXML, inst.rescue_xml)
            removed = (disks.remove(disks.rescue_path(self.disk_dir, server_id))
                       if self.disk_dir is not None else [])
            do(dom.create)
            return {"power_state": int(PowerState.RUNNING), "removed": removed}

        return self._act(server_id, body)

    def snapshot(self, server_id: str, image_id: str) -> Result:
        """Flatten the guest's disk into ``<disk_dir>/image-<image_id>.qcow2``, which then
        serves as that image's base file for new guests on this host. A running guest is
        paused meanwhile (QEMU flushes its disks when it stops the CPUs); any other
        keeps its state. A diskless guest gives an empty image."""

        def body(conn: Any, do: _Progress) -> Result:
            dom = self._require(conn, server_id)
            disk = self._disk_path(server_id)
            if disk is None or disk_source(dom.XMLDesc(_INACTIVE)) != disk:
                return {"size": 0, "checksum": None, "disk": None}
            assert self.disk_dir is not None
            target = disks.snapshot_path(self.disk_dir, image_id)
            if os.path.isfile(target):
                return {"size": os.path.getsize(target), "checksum": disks.md5(target),
                        "disk": target, "already": True}
            running = dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
            if running:
                dom.suspend()
            try:
                size, checksum = disks.flatten(disk, target)
            finally:
                if running:
                    dom.resume()
            self.images[image_id] = target
            return {"size": size, "checksum": checksum, "disk": target}

        return self._act(server_id, body)

    def destroy(self, server_id: str) -> Result:
        """Stop and undefine the guest (saved memory image, snapshot metadata and NVRAM
        included) and delete its disk; nothing to do if it does not exist."""

        def body(conn: Any, do: _Progress) -> Result:
            dom = self._lookup(conn, server_id)
            disk = self._disk_path(server_id)
            files: tuple[str, ...] = ()
            if disk is not None and self.disk_dir is not None:
                files = (disk, disk + ".new", disks.rescue_path(self.disk_dir, server_id),
                         disks.console_path(self.disk_dir, server_id))
            if dom is None:
                return {"already": True, "removed": disks.remove(*files)}
            if dom.isActive():
                do(dom.destroy)
            do(_undefine_flags, dom)
            return {"destroyed": True, "removed": disks.remove(*files)}

        return self._act(server_id, body)

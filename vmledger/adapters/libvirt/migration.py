"""Moving libvirt guests between hosts: cold migration (the disk copied into the
destination's disk directory, the guest defined there with its possibly new flavor) and
live migration (libvirt's peer-to-peer ``migrateToURI3``, the disk shared through a hard
link or copied by QEMU), with abort and force-complete from another thread.

Each host keeps its guests' files in its own ``disk_dir``; the destination's must be
reachable from the source at the same path (one machine, or a shared filesystem) — the
source writes the copies (cold) or the links and blank targets (live) there. How each
call maps onto libvirt is in docs/libvirt-hosts.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

import libvirt

from vmledger.adapters.hypervisor import GuestSpec, HypervisorError, PowerState, Result
from vmledger.adapters.libvirt import disks
from vmledger.adapters.libvirt.base import (
    _INACTIVE,
    DriverBase,
    _error,
    _instance,
    _not_found,
    _power,
    _Progress,
    _undefine_flags,
    _wrong_state,
)
from vmledger.adapters.libvirt.domain_xml import (
    console_log,
    disk_source,
    domain_name,
    domain_xml,
    mac_address,
    relocated,
)

#: how many departed guests' answers are kept for a repeated live_migrate
DEPARTED_KEPT = 64
CANCELLED = "Migration was cancelled by a request to abort it"
_MIGRATABLE = libvirt.VIR_DOMAIN_XML_MIGRATABLE | libvirt.VIR_DOMAIN_XML_SECURE
_LIVE_FLAGS = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
               | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)


def _refused(message: str, code: int = 409) -> HypervisorError:
    return HypervisorError(message, rollback=True, code=code)


def _host_uuid(conn: Any) -> str | None:
    return ET.fromstring(conn.getCapabilities()).findtext("host/uuid")


def _same_dir(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and os.path.realpath(a) == os.path.realpath(b)


def _newer_or_same(copy: str, source: str) -> bool:
    """``copy`` exists and was written after ``source`` last changed (a guest that is
    off does not change its disk): copying again would copy the same bytes."""
    try:
        return os.stat(copy).st_mtime_ns >= os.stat(source).st_mtime_ns
    except FileNotFoundError:
        return False


def _migrating_out(dom: Any) -> bool:
    """Whether a job moving ``dom`` away runs (started by any process)."""
    try:
        stats = dom.jobStats(0)
    except libvirt.libvirtError:
        return False  # no job statistics here (the test driver): no job known
    if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
        return False
    operation = stats.get("operation")
    return operation is None or operation == libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT


class MigrationMixin(DriverBase):
    """The seven calls of the port's "moving a guest to another host" section."""

    # --- both kinds ---------------------------------------------------------------------
    def prepare_migration(self, spec: GuestSpec, *, live: bool) -> Result:
        """On the destination: nothing is defined ahead (libvirt defines the incoming
        guest itself during a live migration); answers how to reach this host and where
        its disks go. A guest of this server already defined here is refused."""

        def body(conn: Any, do: _Progress) -> Result:
            dom = self._lookup(conn, spec.server_id)
            if dom is not None and dom.isPersistent():  # transient: a live one incoming
                raise _refused(f"Guest {spec.server_id} is already defined on the "
                               "destination")
            disk_dir = None if self.disk_dir is None else os.path.abspath(self.disk_dir)
            if disk_dir is not None:
                os.makedirs(disk_dir, exist_ok=True)
            return {"target": {"driver": "libvirt", "uri": self.peer_uri,
                               "migrate_uri": self.migrate_uri, "disk_dir": disk_dir,
                               "base": self._base(spec.image_id),
                               "host_uuid": _host_uuid(conn), "live": live}}

        return self._act(spec.server_id, body)

    def _target_dir(self, server_id: str, target: Mapping[str, Any], xml: str) -> str | None:
        """The destination's disk directory, when the guest has files to move there."""
        dest = target.get("disk_dir")
        if disk_source(xml) is None and console_log(xml) is None:
            return None
        if not isinstance(dest, str) or not dest:
            raise _refused(f"The destination keeps no disks: guest {server_id} has a disk")
        if _same_dir(dest, self.disk_dir):
            raise _refused("The destination keeps its disks in this host's disk directory "
                           f"{dest}: each host needs its own")
        return dest

    # --- cold ---------------------------------------------------------------------------
    def migrate_disk(self, server_id: str, target: Mapping[str, Any]) -> Result:
        """On the source: power the guest off (ACPI, then ``destroy`` after
        ``acpi_timeout``; a suspended guest's saved memory is dropped) and copy its disk
        into the destination's disk directory — the overlay as it is when the destination
        has the same base file, else flattened (``qemu-img convert``) — with its console
        log. The guest stays defined here, off, for a revert. Repeated: a copy written
        after the guest's last change is kept (``"already": True``)."""

        def body(conn: Any, do: _Progress) -> Result:
            dom = self._require(conn, server_id)
            inst = _instance(dom)
            if inst.resize_pending:
                raise _refused(f"Cannot migrate guest {server_id}: it has a resize "
                               "awaiting confirmation")
            if inst.rescued:
                raise _refused(f"Cannot migrate guest {server_id}: it is rescued")
            xml = dom.XMLDesc(_INACTIVE)
            dest_dir = self._target_dir(server_id, target, xml)
            power = _power(dom)
            stopped: Result = {}
            if power == PowerState.SUSPENDED:
                do(dom.managedSaveRemove, 0)
                stopped = {"method": "discard-saved-memory"}
            elif power != PowerState.SHUTDOWN:
                stopped = self._power_off(dom, power, do)
            source, log = disk_source(xml), console_log(xml)
            copied: str | None = None
            disk = console = None
            already = False
            if dest_dir is not None and source is not None:
                disk = disks.overlay_path(dest_dir, server_id)
                if _newer_or_same(disk, source):
                    already, copied = True, "kept"
                else:
                    copied = self._copy_disk(source, disk, target.get("base"))
            if dest_dir is not None and log is not None:
                console = disks.console_path(dest_dir, server_id)
                if not (already and os.path.exists(console)) and os.path.exists(log):
                    disks.copy(log, console)
            return {"disk": {"path": disk, "console": console, "mac": mac_address(xml),
                             "image_id": inst.image_id, "copied": copied,
                             "power_state": int(power), **stopped},
                    **({"already": True} if already else {})}

        return self._act(server_id, body)

    @staticmethod
    def _copy_disk(source: str, disk: str, base: Any) -> str:
        backing = disks.backing_file(source)
        if backing is None or (isinstance(base, str) and os.path.abspath(base) == backing
                               and os.path.isfile(backing)):
            disks.copy(source, disk)  # standalone, or the destination has the base
            return "overlay" if backing is not None else "copy"
        disks.flatten(source, disk)  # the destination lacks the base: one whole file
        return "flattened"

    def finish_migration(self, spec: GuestSpec, disk: Mapping[str, Any], *,
                         power_on: bool) -> Result:
        """On the destination: define the guest (this host's kind of definition, the
        flavor of ``spec``, the MAC it had) on the disk copied here, grown to the
        flavor's disk if it is larger, and start it when ``power_on``. A guest already
        defined here is kept (started when ``power_on``)."""

        def body(conn: Any, do: _Progress) -> Result:
            dom = self._lookup(conn, spec.server_id)
            if dom is not None:
                power = _power(dom)
                if power_on and power != PowerState.RUNNING:
                    self._start(dom, power, do)
                return {"already": True, "power_state": int(_power(dom))}
            try:
                uuid.UUID(spec.server_id)
            except ValueError:
                raise _refused(f"Server id {spec.server_id!r} is not a UUID", 400) from None
            path = disk.get("path")
            if path is not None:
                if not isinstance(path, str) or not os.path.isfile(path):
                    raise _refused(f"The disk of guest {spec.server_id} was not received "
                                   f"here ({path})", 404)
                disks.grow(path, spec.disk_gb)
            console = (None if self.disk_dir is None
                       else disks.console_log(self.disk_dir, spec.server_id))
            mac = spec.mac or disk.get("mac")
            defined = dataclasses.replace(spec, mac=mac if isinstance(mac, str) else None)
            dom = do(conn.defineXML, domain_xml(defined, domain_type=self.domain_type,
                                                disk=path, network=self.network,
                                                console=console))
            if power_on:
                try:
                    dom.create()
                except libvirt.libvirtError:
                    _undefine_flags(dom)  # as before the call; the received disk stays
                    do.changed = False
                    raise
            return {"domain": domain_name(spec.server_id), "disk": path,
                    "power_state": int(_power(dom))}

        return self._act(spec.server_id, body)

    # --- live ---------------------------------------------------------------------------
    def live_migrate(self, server_id: str, target: Mapping[str, Any], *,
                     block_migration: bool) -> Result:
        """On the source: ``migrateToURI3`` to the destination's libvirtd (live,
        peer-to-peer, persistent there, undefined here), the disk and console moved into
        the destination's disk directory — hard links of the same files (shared storage)
        or, with ``block_migration``, blank files QEMU copies the disk into. Blocks until
        done; the files' names here are then removed. Repeated after the guest left:
        the same answer with ``"already": True``; repeated while a migration started
        earlier (by a process since restarted) still runs: waits for it first."""
        uri = target.get("uri")
        if not isinstance(uri, str) or not uri:
            raise _refused("The migration target names no libvirt URI", 400)

        def body(conn: Any, do: _Progress) -> Result:
            dom = self._lookup(conn, server_id)
            while dom is not None and _migrating_out(dom):
                # started before this process (re)started: libvirtd carries on with it,
                # so wait for its end rather than fail to start a second one
                self._sleep(self.poll)
                dom = self._lookup(conn, server_id)
            try:
                if dom is not None:
                    return self._send(conn, dom, server_id, target, uri, block_migration,
                                      do)
            except libvirt.libvirtError as e:
                # it left meanwhile (that earlier migration ended just now)
                if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN \
                        or self._lookup(conn, server_id) is not None:
                    raise
            return self._departed_answer(server_id, uri)

        return self._act(server_id, body)

    def _send(self, conn: Any, dom: Any, server_id: str, target: Mapping[str, Any],
              uri: str, block_migration: bool, do: _Progress) -> Result:
        host = target.get("host_uuid")
        if host is not None and host == _host_uuid(conn):
            raise _refused(f"Cannot live migrate guest {server_id} to the host it is on")
        inst = _instance(dom)
        if inst.resize_pending or inst.rescued:
            raise _refused(f"Cannot live migrate guest {server_id} now: it is "
                           f"{'resized' if inst.resize_pending else 'rescued'}")
        power = _power(dom)
        if power not in (PowerState.RUNNING, PowerState.PAUSED):
            raise _wrong_state("live migrate", server_id, power)
        live, persistent = dom.XMLDesc(_MIGRATABLE), dom.XMLDesc(_INACTIVE | _MIGRATABLE)
        dest_dir = self._target_dir(server_id, target, persistent)
        made: list[str] = []
        try:
            disk, console, flags = self._place_files(
                server_id, persistent, dest_dir, target, block_migration, made)
            params: dict[str, Any] = {
                libvirt.VIR_MIGRATE_PARAM_DEST_XML: relocated(live, disk=disk,
                                                              console=console),
                libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: relocated(
                    persistent, disk=disk, console=console)}
            migrate_uri = target.get("migrate_uri")
            if isinstance(migrate_uri, str) and migrate_uri:
                params[libvirt.VIR_MIGRATE_PARAM_URI] = migrate_uri
            forced = self._migrate(dom, server_id, uri, params, flags, power)
        except BaseException:
            disks.remove(*made)
            raise
        do.changed = True
        moved = {"domain": domain_name(server_id), "uri": uri, "disk": disk,
                 "console": console, "power_state": int(power), "forced": forced,
                 "block_migration": block_migration}
        with self._guard:
            self._departed[server_id] = moved
            self._departed.move_to_end(server_id)
            while len(self._departed) > DEPARTED_KEPT:
                self._departed.popitem(last=False)
        return {**moved, "removed": self._remove_left(server_id)}

    def _remove_left(self, server_id: str) -> list[str]:
        """This host's names of the files of a guest that left (the destination has its
        own: links, or copies)."""
        if self.disk_dir is None:
            return []
        path = disks.overlay_path(self.disk_dir, server_id)
        return disks.remove(path, path + ".new", disks.console_path(self.disk_dir, server_id))

    def _place_files(self, server_id: str, xml: str, dest_dir: str | None,
                     target: Mapping[str, Any], block: bool, made: list[str]
                     ) -> tuple[str | None, str | None, int]:
        """The guest's disk and console on the destination, and the migration flags."""
        flags = _LIVE_FLAGS | (libvirt.VIR_MIGRATE_POSTCOPY if self.post_copy else 0)
        source, log = disk_source(xml), console_log(xml)
        if dest_dir is None:
            return None, None, flags
        disk = console = None
        if log is not None:
            console = disks.console_path(dest_dir, server_id)
            with open(log, "ab"):  # QEMU made it when it started; be sure it is there
                pass
            if not os.path.exists(console):
                made.append(console)
            disks.link_or_copy(log, console)
        if source is None:
            return None, console, flags
        # a file already there was placed by an earlier attempt (the destination has
        # no guest of this server: prepare_migration refused one): replaced or reused
        disk = disks.overlay_path(dest_dir, server_id)
        if not block:
            if not os.path.exists(disk):
                made.append(disk)
            if disks.link_or_copy(source, disk) != "link":
                disks.remove(disk)
                raise _refused("The two hosts' disk directories are on different "
                               "filesystems: use block migration")
            # one file under two names: shared, though libvirt cannot tell (it knows
            # network filesystems, or wants cache='none', which tmpfs refuses)
            return disk, console, flags | libvirt.VIR_MIGRATE_UNSAFE
        made.append(disk)
        backing = disks.backing_file(source)
        base = target.get("base")
        size = disks.virtual_size(source)
        if backing is not None and isinstance(base, str) and os.path.abspath(base) == backing:
            disks.create_blank(disk, size, backing)  # QEMU copies the overlay's own data
            return disk, console, flags | libvirt.VIR_MIGRATE_NON_SHARED_INC
        disks.create_blank(disk, size)  # QEMU copies the whole chain into one file
        return disk, console, flags | libvirt.VIR_MIGRATE_NON_SHARED_DISK

    def _migrate(self, dom: Any, server_id: str, uri: str, params: dict[str, Any],
                 flags: int, power: PowerState) -> bool:
        """Run the migration (blocking; abort and force-complete act meanwhile); say
        whether it was forced. A failure leaves the guest here as it was."""
        with self._guard:
            job = self._outgoing.setdefault(server_id, {"wish": None, "forced": False})
            if job["wish"] == "abort":
                del self._outgoing[server_id]
                raise _refused(CANCELLED)
        try:
            dom.migrateToURI3(uri, params, flags)
        except libvirt.libvirtError as e:
            with self._guard:
                aborted = job["wish"] == "abort"
                forced = job["forced"]
            if forced and power == PowerState.RUNNING:  # paused to converge: undo it
                with contextlib.suppress(libvirt.libvirtError):
                    if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                        dom.resume()
            if aborted or e.get_error_code() == libvirt.VIR_ERR_OPERATION_ABORTED:
                raise _refused(CANCELLED) from e
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise  # gone before this move began: live_migrate looks where it went
            raise _error(e, rollback=True) from e
        finally:
            with self._guard:
                self._outgoing.pop(server_id, None)
        return bool(job["forced"])

    def _departed_answer(self, server_id: str, uri: str) -> Result:
        """The guest is not here: it left (this process remembers it, or the
        destination has it), or it is unknown (404)."""
        with self._guard:
            moved = self._departed.get(server_id)
        if moved is not None:
            return {**moved, "already": True}
        with contextlib.suppress(libvirt.libvirtError):
            other = libvirt.open(uri)
            try:
                dom = self._lookup(other, server_id)
                if dom is not None:
                    return {"domain": domain_name(server_id), "uri": uri,
                            "power_state": int(_power(dom)), "forced": False,
                            "already": True, "removed": self._remove_left(server_id)}
            finally:
                other.close()
        raise _not_found()

    def abort_migration(self, server_id: str) -> Result:
        """``abortJob()`` on the migration leaving this host (its ``live_migrate`` then
        fails with rollback: the guest stays here, as it was); no guest lock, as
        ``live_migrate`` holds it meanwhile."""
        with self._guard:
            job = self._outgoing.get(server_id)
            if job is not None:
                job["wish"] = "abort"
        dom = self._lookup(self._connection.get(), server_id)
        if dom is None or (job is None and not _migrating_out(dom)):
            return {"already": True}
        try:
            dom.abortJob()
        except libvirt.libvirtError as e:
            # no job yet (live_migrate will see the wish) or no more (it just finished)
            if e.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                raise _error(e, rollback=True) from e
            if job is None:
                return {"already": True}
        return {"abort": True}

    def force_complete_migration(self, server_id: str) -> Result:
        """Make the migration leaving this host converge: switch it to post-copy when
        the driver runs them so (``post_copy``), else pause the guest (Nova's libvirt
        driver does the same); ``finish_live_migration`` runs it again there."""
        with self._guard:
            job = self._outgoing.get(server_id)
        dom = self._lookup(self._connection.get(), server_id)
        if dom is None or not _migrating_out(dom):
            return {"already": True}
        try:
            if self.post_copy:
                dom.migrateStartPostCopy(0)
                method = "post-copy"
            elif dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING:
                dom.suspend()
                method = "pause"
            else:
                method = "paused already"
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID:
                return {"already": True}  # it finished meanwhile
            raise _error(e, rollback=True) from e
        if job is not None:
            with self._guard:
                job["forced"] = True
        return {"force": True, "method": method}

    def finish_live_migration(self, spec: GuestSpec, moved: Mapping[str, Any]) -> Result:
        """On the destination: the guest libvirt moved here (already persistent here),
        back in the power state it had on the source (a guest paused to force the
        migration to complete runs again)."""

        def body(conn: Any, do: _Progress) -> Result:
            dom = self._lookup(conn, spec.server_id)
            if dom is None:
                raise _refused(f"No guest {spec.server_id} was moved here", 404)
            if not dom.isPersistent():
                raise _refused(f"Guest {spec.server_id} is still arriving here")
            power, wanted = _power(dom), moved.get("power_state")
            settled: Result = {}
            if wanted == int(PowerState.RUNNING) and power == PowerState.PAUSED:
                do(dom.resume)
                settled = {"resumed": True}
            elif wanted == int(PowerState.PAUSED) and power == PowerState.RUNNING:
                do(dom.suspend)
                settled = {"paused": True}
            return {"power_state": int(_power(dom)), **settled}

        return self._act(spec.server_id, body)

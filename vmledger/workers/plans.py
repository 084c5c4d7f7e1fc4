"""What each action does on the hypervisor: one plan per asynchronous row of the
lifecycle table (:data:`PLANS`), each idempotent given an observation — it observes the
guest, skips a call whose effect is already there, and makes its calls through the
agent (:meth:`HostAgent.call`), which records them."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from vmledger.adapters.hypervisor import (
    GuestSpec,
    HypervisorError,
    Observation,
    PowerState,
)
from vmledger.domain import lifecycle as lc
from vmledger.domain.errors import VmledgerError
from vmledger.domain.server import Server
from vmledger.projections import images as image_view
from vmledger.workers import moves

if TYPE_CHECKING:
    from vmledger.workers.agent import HostAgent


def spec_of(server: Server, flavor: dict[str, Any] | None = None) -> GuestSpec:
    f = flavor or server.flavor
    return GuestSpec(server_id=str(server.id), name=server.name, flavor_id=str(f["id"]),
                     vcpus=int(f["vcpus"]), ram_mb=int(f["ram"]), disk_gb=int(f["disk"]),
                     image_id=str(server.image["id"]), mac=_mac_of(server))


def _mac_of(server: Server) -> str | None:
    """The MAC of the server's first port, as the API shows it."""
    for ports in (getattr(server, "addresses", None) or {}).values():
        for port in ports:
            mac = port.get("OS-EXT-IPS-MAC:mac_addr")
            if isinstance(mac, str):
                return mac
    return None


def _missing(obs: Observation) -> None:
    if not obs.exists:
        raise HypervisorError("Domain not found: the guest no longer exists", code=404)


# --- what each action does on the hypervisor (idempotent given an observation) -------
def _create(agent: HostAgent, server: Server) -> None:
    obs = agent.observe(server)
    if obs.exists and obs.power_state == PowerState.RUNNING:
        return
    hv = agent.hypervisor
    if obs.exists:
        agent.call(server, "power_on", {}, lambda: hv.power_on(str(server.id)))
        return
    spec = spec_of(server)
    agent.call(server, "spawn", _spec_args(spec), lambda: hv.spawn(spec))


def _spec_args(spec: GuestSpec) -> dict[str, Any]:
    return {"flavor_id": spec.flavor_id, "vcpus": spec.vcpus, "ram_mb": spec.ram_mb,
            "disk_gb": spec.disk_gb, "image_id": spec.image_id}


def _reboot(hard: bool) -> Callable[[HostAgent, Server], None]:
    def enact(agent: HostAgent, server: Server) -> None:
        _missing(agent.observe(server))
        agent.call(server, "reboot", {"hard": hard},
                   lambda: agent.hypervisor.reboot(str(server.id), hard=hard))
    return enact


def _rebuild(agent: HostAgent, server: Server) -> None:
    _missing(agent.observe(server))
    spec = spec_of(server)
    agent.call(server, "rebuild", _spec_args(spec), lambda: agent.hypervisor.rebuild(spec))


def _resize(agent: HostAgent, server: Server) -> None:
    obs = agent.observe(server)
    _missing(obs)
    assert server.pending is not None
    new = server.pending["params"]["flavor"]
    if obs.resize_pending and obs.flavor_id == str(new["id"]):
        return  # done before a crash
    spec = spec_of(server, new)
    agent.call(server, "resize", _spec_args(spec), lambda: agent.hypervisor.resize(spec))


def _confirm(agent: HostAgent, server: Server) -> None:
    obs = agent.observe(server)
    _missing(obs)
    if obs.resize_pending:
        agent.call(server, "confirm_resize", {},
                   lambda: agent.hypervisor.confirm_resize(str(server.id)))


def _revert(agent: HostAgent, server: Server) -> None:
    obs = agent.observe(server)
    _missing(obs)
    if obs.resize_pending:
        agent.call(server, "revert_resize", {},
                   lambda: agent.hypervisor.revert_resize(str(server.id)))
        obs = agent.hypervisor.observe(str(server.id))
    # a server resized while stopped is stopped again after the revert
    if server.old_vm_state == lc.STOPPED and obs.power_state != PowerState.SHUTDOWN:
        agent.call(server, "power_off", {},
                   lambda: agent.hypervisor.power_off(str(server.id)))


def _power(op: str, target: PowerState) -> Callable[[HostAgent, Server], None]:
    def enact(agent: HostAgent, server: Server) -> None:
        obs = agent.observe(server)
        _missing(obs)
        if obs.power_state == target:
            return
        fn = getattr(agent.hypervisor, op)
        agent.call(server, op, {}, lambda: fn(str(server.id)))
    return enact


def _delete(agent: HostAgent, server: Server) -> None:
    obs = agent.observe(server)
    if obs.exists:
        agent.call(server, "destroy", {}, lambda: agent.hypervisor.destroy(str(server.id)))


def _create_image(agent: HostAgent, server: Server) -> None:
    assert server.pending is not None
    _save_image(agent, server, str(server.pending["params"]["image_id"]))


def _create_backup(agent: HostAgent, server: Server) -> None:
    """Save the backup, then delete the server's backups of the same type beyond the
    newest ``rotation`` (Nova's ``_rotate_backups``; images already deleted are
    skipped, so a step repeated after a crash deletes nothing twice)."""
    assert server.pending is not None
    params = server.pending["params"]
    _save_image(agent, server, str(params["image_id"]))
    agent.updater.catch_up()
    backups = [image for image in image_view.list_images(agent.updater.view, None)
               if image.get("server_id") == str(server.id)
               and (image.get("metadata") or {}).get("image_type") == "backup"
               and (image.get("metadata") or {}).get("backup_type") == params["backup_type"]]
    backups.sort(key=lambda image: (image["created_at"], image["id"]), reverse=True)
    request_id = str(server.pending_request_id)
    for image in backups[int(params["rotation"]):]:
        with contextlib.suppress(VmledgerError):  # deleted meanwhile by its owner
            agent.images.record_image(str(image["id"]), request_id,
                                       lambda i, c, at: i.delete(c, at))


def _save_image(agent: HostAgent, server: Server, image_id: str) -> None:
    """Snapshot the guest into the queued custom image ``image_id`` and activate it (or
    mark it failed); nothing when it is already active (a step repeated after a crash)."""
    request_id = str(server.pending_request_id)
    images = agent.images
    try:
        image = images.get_image(image_id)
    except VmledgerError:
        raise HypervisorError(f"Image {image_id} was deleted before it was saved",
                              rollback=True, code=404) from None
    if image.status != "active":
        _missing(agent.observe(server))
        images.record_image(image_id, request_id, lambda i, c, at: i.saving(c, at))
        try:
            result = agent.call(server, "snapshot", {"image_id": image_id},
                                lambda: agent.hypervisor.snapshot(str(server.id), image_id))
        except HypervisorError as error:
            message = error.message
            images.record_image(image_id, request_id,
                                 lambda i, c, at: i.fail(c, at, message))
            raise
        images.record_image(image_id, request_id, lambda i, c, at: i.activate(
            c, at, size=int(result.get("size", 0)), checksum=result.get("checksum")))


def _shelve(agent: HostAgent, server: Server) -> None:
    """Power off (gracefully, as a stop), then save the disk as the shelved image."""
    assert server.pending is not None
    obs = agent.observe(server)
    _missing(obs)
    # a suspended guest stays as it is: its saved memory goes with the offload
    if obs.power_state in (PowerState.RUNNING, PowerState.PAUSED, PowerState.CRASHED):
        agent.call(server, "power_off", {},
                   lambda: agent.hypervisor.power_off(str(server.id)))
    _save_image(agent, server, str(server.pending["params"]["image_id"]))


def _soft_delete(agent: HostAgent, server: Server) -> None:
    """Power the guest off (a suspended one keeps its saved state); it stays defined."""
    obs = agent.observe(server)
    if obs.exists and obs.power_state in (PowerState.RUNNING, PowerState.PAUSED,
                                          PowerState.CRASHED):
        agent.call(server, "power_off", {},
                   lambda: agent.hypervisor.power_off(str(server.id)))


def _restore(agent: HostAgent, server: Server) -> None:
    obs = agent.observe(server)
    _missing(obs)
    hv = agent.hypervisor
    if obs.power_state == PowerState.SUSPENDED:
        agent.call(server, "resume", {}, lambda: hv.resume(str(server.id)))
    elif obs.power_state != PowerState.RUNNING:
        agent.call(server, "power_on", {}, lambda: hv.power_on(str(server.id)))


def _trigger_crash_dump(agent: HostAgent, server: Server) -> None:
    """An NMI leaves nothing to observe: a step repeated after a crash looks in the
    server's history for an NMI this request already sent, so none is sent twice; one
    written ahead and never recorded counts as sent (:data:`AT_MOST_ONCE`)."""
    request_id = server.pending_request_id
    sent = any(isinstance(e, Server.HypervisorCalled) and e.request_id == request_id
               and e.call == "inject_nmi" and e.error is None
               for e in agent.service.history(server.id))
    if sent:
        return
    _missing(agent.observe(server))
    agent.call(server, "inject_nmi", {}, lambda: agent.hypervisor.inject_nmi(str(server.id)))


def _rescue(agent: HostAgent, server: Server) -> None:
    assert server.pending is not None
    obs = agent.observe(server)
    _missing(obs)
    if obs.rescued and obs.power_state == PowerState.RUNNING:
        return  # done before a crash
    # (rescued but not running: the driver starts it)
    spec = replace(spec_of(server), image_id=str(server.pending["params"]["image_id"]))
    agent.call(server, "rescue", _spec_args(spec), lambda: agent.hypervisor.rescue(spec))


def _unrescue(agent: HostAgent, server: Server) -> None:
    obs = agent.observe(server)
    _missing(obs)
    hv = agent.hypervisor
    if obs.rescued:
        agent.call(server, "unrescue", {}, lambda: hv.unrescue(str(server.id)))
    elif obs.power_state != PowerState.RUNNING:
        # its own definition is back but not started (a crash in between): boot it
        agent.call(server, "power_on", {}, lambda: hv.power_on(str(server.id)))


def _shelve_offload(agent: HostAgent, server: Server) -> None:
    _delete(agent, server)


def _shelve_and_offload(agent: HostAgent, server: Server) -> None:
    _shelve(agent, server)
    _delete(agent, server)


def _evacuate(agent: HostAgent, server: Server) -> None:
    """On the host the server was evacuated to: a new guest from its image (there is no
    shared storage: the disk is new, as Nova's evacuate without it), powered off again
    when the server is to end stopped (it was, or the request said so: 2.95)."""
    obs = agent.observe(server)
    hv = agent.hypervisor
    if not obs.exists:
        spec = spec_of(server)
        agent.call(server, "spawn", _spec_args(spec), lambda: hv.spawn(spec))
        obs = agent.observe(server)
    stop = server.pending_action == "evacuate_stopped" or server.vm_state == lc.STOPPED
    if stop and obs.power_state != PowerState.SHUTDOWN:
        agent.call(server, "power_off", {}, lambda: hv.power_off(str(server.id)))


def _unshelve(agent: HostAgent, server: Server) -> None:
    """A guest still defined (shelved, not offloaded) is powered on; an offloaded one is
    spawned again from its shelved image."""
    assert server.pending is not None
    obs = agent.observe(server)
    hv = agent.hypervisor
    if obs.exists:
        if obs.power_state == PowerState.SUSPENDED:
            agent.call(server, "resume", {}, lambda: hv.resume(str(server.id)))
        elif obs.power_state != PowerState.RUNNING:
            agent.call(server, "power_on", {}, lambda: hv.power_on(str(server.id)))
        return
    image_id = server.pending["params"].get("image_id")
    if not image_id:
        raise HypervisorError("The server has no shelved image to unshelve from",
                              rollback=True, code=409)
    spec = replace(spec_of(server), image_id=str(image_id))
    agent.call(server, "spawn", _spec_args(spec), lambda: hv.spawn(spec))


def _or_moving(plan: Callable[[HostAgent, Server], None],
               moved: Callable[[HostAgent, Server], None]
               ) -> Callable[[HostAgent, Server], None]:
    """``plan`` for a server on one host, ``moved`` when the action involves another
    (see :func:`vmledger.workers.moves.moving`)."""
    def enact(agent: HostAgent, server: Server) -> None:
        (moved if moves.moving(server) else plan)(agent, server)
    return enact


PLANS: dict[str, Callable[[HostAgent, Server], None]] = {
    "create": _create,
    "reboot_soft": _reboot(False),
    "reboot_hard": _reboot(True),
    "rebuild": _rebuild,
    "resize": _or_moving(_resize, moves.cold_move),
    "migrate": moves.cold_move,
    "live_migrate": moves.live_move,
    "confirm_resize": _or_moving(_confirm, moves.confirm_moved),
    "revert_resize": _or_moving(_revert, moves.revert_moved),
    "pause": _power("pause", PowerState.PAUSED),
    "unpause": _power("unpause", PowerState.RUNNING),
    "suspend": _power("suspend", PowerState.SUSPENDED),
    "resume": _power("resume", PowerState.RUNNING),
    "stop": _power("power_off", PowerState.SHUTDOWN),
    "start": _power("power_on", PowerState.RUNNING),
    "delete": _or_moving(_delete, moves.delete_everywhere),
    "create_image": _create_image,
    "create_backup": _create_backup,
    "shelve": _shelve,
    "rescue": _rescue,
    "soft_delete": _soft_delete,
    "restore": _restore,
    "trigger_crash_dump": _trigger_crash_dump,
    "unrescue": _unrescue,
    "shelve_and_offload": _shelve_and_offload,
    "shelve_offload": _shelve_offload,
    "unshelve": _unshelve,
    "evacuate": _evacuate,
    "evacuate_stopped": _evacuate,
}

assert set(PLANS) == {a.name for a in lc.ACTIONS.values() if a.asynchronous}

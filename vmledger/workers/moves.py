"""What moving a server between two hosts does on each: the plans of a resize or cold
migration to another host, a live migration, and the confirm, revert and delete of a
server whose old copy is kept on another host.

Each host's agent enacts its own half and hands the action over to the other through
the log (:meth:`HostAgent.hand_over`: one event saying who acts next, in which task
state, and what it learned — the destination's address, the disk the source sent),
so the two agents may run in different processes; each half is idempotent given an
observation, as every plan (see :mod:`vmledger.workers.plans`).

Cold (resize to another host, migrate): the destination prepares (``RESIZE_PREP``),
the source powers the guest off and sends its disk (``RESIZE_MIGRATING``), the
destination defines it and starts it if it ran (``RESIZE_MIGRATED``, ``RESIZE_FINISH``);
the server is then on the destination in VERIFY_RESIZE, its old copy kept, off, on the
source. Confirm destroys that copy (on the source); revert destroys the new one (on the
destination) and starts the old one again (on the source).

Live: the destination prepares (``preparing``), the source sends the running guest
(``running``: an ``abort`` or ``force_complete`` asked meanwhile is passed on to the
hypervisor), the destination takes it over (``completed``). A move that fails or is
aborted is handed back to the destination, which removes what it prepared and records
the outcome, so nothing is left there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vmledger.adapters.hypervisor import GuestSpec, HypervisorError, PowerState
from vmledger.domain import lifecycle as lc
from vmledger.domain.server import Server

if TYPE_CHECKING:
    from vmledger.workers.agent import HostAgent

#: the actions that move a server to the host its request chose
MOVES = frozenset({"resize", "migrate", "live_migrate"})


class MigrationCancelled(HypervisorError):
    """A live migration stopped because an administrator aborted it."""

    def __init__(self, message: str) -> None:
        super().__init__(message, rollback=True, code=409)


def moving(server: Server) -> bool:
    """Whether the action in flight involves a host besides the server's own: a move
    to another host, or the confirm, revert or delete of a server whose old copy (or
    new one, mid-move) is on another."""
    pending = server.pending or {}
    action = pending.get("action")
    if action in MOVES:
        dest = (pending.get("params") or {}).get("dest_host")
        return bool(dest) and dest != server.host
    if action in ("confirm_resize", "revert_resize", "delete"):
        return bool(_elsewhere(server))
    return False


def _elsewhere(server: Server) -> list[str]:
    """The other hosts holding a copy of the server: the one its old copy is kept on,
    the one a move in progress goes to."""
    out = []
    for host in (getattr(server, "migration_source", None),
                 getattr(server, "migration_dest", None)):
        if host and host != server.host and host not in out:
            out.append(str(host))
    return out


def _spec(server: Server, flavor: dict[str, Any] | None = None) -> GuestSpec:
    from vmledger.workers.plans import spec_of

    return spec_of(server, flavor)


def _args(spec: GuestSpec) -> dict[str, Any]:
    return {"flavor_id": spec.flavor_id, "vcpus": spec.vcpus, "ram_mb": spec.ram_mb,
            "disk_gb": spec.disk_gb, "image_id": spec.image_id}


def _handover(server: Server) -> dict[str, Any]:
    return dict((server.pending or {}).get("handover") or {})


# --- cold: a resize to another host, a migration --------------------------------------
def cold_move(agent: HostAgent, server: Server) -> None:
    assert server.pending is not None
    params = server.pending["params"]
    source, dest = str(params["source_host"]), str(params["dest_host"])
    flavor = params.get("flavor") or server.flavor
    hv, sid = agent.hypervisor, str(server.id)
    handover = _handover(server)
    if agent.host == dest and "target" not in handover:
        spec = _spec(server, flavor)
        prepared = agent.call(server, "prepare_migration", {**_args(spec), "live": False},
                              lambda: hv.prepare_migration(spec, live=False))
        agent.hand_over(server, source, lc.RESIZE_MIGRATING,
                        data={"target": dict(prepared.get("target") or {})})
    if agent.host == source and "disk" not in handover:
        target = dict(handover.get("target") or {})
        obs = agent.observe(server)
        if not obs.exists:
            raise HypervisorError("Domain not found: the guest no longer exists",
                                  rollback=True, code=404)
        sent = agent.call(server, "migrate_disk", {"target": target},
                          lambda: hv.migrate_disk(sid, target))
        agent.hand_over(server, dest, lc.RESIZE_MIGRATED,
                        data={"disk": dict(sent.get("disk") or {}),
                              "power_state": int(obs.power_state)})
    # on the destination: the guest defined on the disk sent, running if it was
    agent.advance(lc.RESIZE_FINISH)
    disk = dict(handover.get("disk") or {})
    power_on = server.old_vm_state != lc.STOPPED
    spec = _spec(server, flavor)
    agent.call(server, "finish_migration", {**_args(spec), "power_on": power_on},
               lambda: hv.finish_migration(spec, disk, power_on=power_on))


def confirm_moved(agent: HostAgent, server: Server) -> None:
    """On the host the server left: its old copy destroyed."""
    obs = agent.observe(server)
    if obs.exists:
        agent.call(server, "destroy", {}, lambda: agent.hypervisor.destroy(str(server.id)))


def revert_moved(agent: HostAgent, server: Server) -> None:
    """The new copy destroyed on the destination, then the old one started again on the
    host it left (unless it was stopped)."""
    source = str(getattr(server, "migration_source", None) or server.host)
    hv, sid = agent.hypervisor, str(server.id)
    if agent.host != source:
        if agent.observe(server).exists:
            agent.call(server, "destroy", {}, lambda: hv.destroy(sid))
        agent.hand_over(server, source)
    obs = agent.observe(server)
    if not obs.exists:
        raise HypervisorError("Domain not found: the old copy of the guest is gone",
                              code=404)
    if server.old_vm_state != lc.STOPPED and obs.power_state != PowerState.RUNNING:
        agent.call(server, "power_on", {}, lambda: hv.power_on(sid))


def delete_everywhere(agent: HostAgent, server: Server) -> None:
    """A delete of a server with a copy on another host too (its old one kept, or a
    move in progress): each host destroys its own, the server's own host first."""
    hv, sid = agent.hypervisor, str(server.id)
    done = list(_handover(server).get("deleted_on") or [])
    # on another host than its own the copy may not show (an incoming one, mid-move):
    # destroy is asked anyway (it answers "already" when there is nothing)
    if agent.host != server.host or agent.observe(server).exists:
        agent.call(server, "destroy", {}, lambda: hv.destroy(sid))
    done.append(agent.host)
    left = [h for h in [str(server.host), *_elsewhere(server)] if h not in done]
    if left:
        agent.hand_over(server, left[0], data={"deleted_on": done})


# --- live ------------------------------------------------------------------------------
def live_move(agent: HostAgent, server: Server) -> None:
    assert server.pending is not None
    params = server.pending["params"]
    source, dest = str(params["source_host"]), str(params["dest_host"])
    block = params.get("block_migration", "auto")
    hv, sid = agent.hypervisor, str(server.id)
    handover = _handover(server)
    steer = server.pending.get("steer")
    if "failed" in handover:  # back on the destination: clean up, then the outcome
        _undo_live(agent, server, handover["failed"])
        return
    if agent.host == dest and "target" not in handover:
        if steer == "abort":
            raise MigrationCancelled("The live migration was aborted before it started")
        agent.note({"migration_status": "preparing"})
        spec = _spec(server)
        prepared = agent.call(server, "prepare_migration", {**_args(spec), "live": True},
                              lambda: hv.prepare_migration(spec, live=True))
        agent.hand_over(server, source, data={"target": dict(prepared.get("target") or {})},
                        changes={"migration_status": "running"})
    if agent.host == source and "moved" not in handover:
        target = dict(handover.get("target") or {})
        failed: dict[str, Any] | None = None
        moved: Any = None
        if steer == "abort":
            failed = {"message": "The live migration was aborted", "cancelled": True}
        else:
            try:
                moved = agent.call(
                    server, "live_migrate", {"target": target, "block_migration": block},
                    lambda: agent.watching(server, lambda: hv.live_migrate(
                        sid, target, block_migration=block is True)))
            except HypervisorError as error:
                aborted = (agent.service.get(server.id).pending or {}).get("steer")
                failed = {"message": error.message, "code": error.code,
                          "cancelled": aborted == "abort"}
        if failed is not None:
            agent.hand_over(server, dest, data={"failed": failed})
        agent.hand_over(server, dest, data={"moved": dict(moved or {})})
    moved_data = dict(handover.get("moved") or {})
    spec = _spec(server)
    agent.call(server, "finish_live_migration", {**_args(spec)},
               lambda: hv.finish_live_migration(spec, moved_data))


def _undo_live(agent: HostAgent, server: Server, failed: dict[str, Any]) -> None:
    """On the destination, after the source could not send the guest (or was told to
    stop): what was prepared here is removed — unless the guest did arrive (an abort
    that came too late), in which case the move is finished instead."""
    hv, sid = agent.hypervisor, str(server.id)
    obs = agent.observe(server)
    if obs.exists:
        spec = _spec(server)
        agent.call(server, "finish_live_migration", {**_args(spec)},
                   lambda: hv.finish_live_migration(spec, {}))
        return
    agent.call(server, "destroy", {}, lambda: hv.destroy(sid))
    message = str(failed.get("message") or "The live migration failed")
    if failed.get("cancelled"):
        raise MigrationCancelled(message)
    raise HypervisorError(message, rollback=True, code=int(failed.get("code") or 500))


def ends_on(server: Server) -> str:
    """The host the server is on once the action in flight completes."""
    pending = server.pending or {}
    action = pending.get("action")
    if action in MOVES and moving(server):
        return str((pending.get("params") or {}).get("dest_host"))
    if action == "revert_resize" and getattr(server, "migration_source", None):
        return str(server.migration_source)
    return str(server.host)


#: calls a host may make again after a crash left them in doubt: the driver answers
#: what it did the first time (``already``), and the next step needs that answer
REPEATABLE = frozenset({"prepare_migration", "migrate_disk", "finish_migration",
                        "live_migrate", "finish_live_migration"})

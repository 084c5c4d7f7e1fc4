"""Behaviour of the deterministic hypervisor simulator (vmledger.adapters.simulator)."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmledger.adapters.hypervisor import (
    GuestSpec,
    Hypervisor,
    HypervisorError,
    Observation,
    PowerState,
    Result,
)
from vmledger.adapters.simulator import MUTATING_OPERATIONS, SimulatedCrash, Simulator

P = PowerState
SMALL = GuestSpec("srv-1", "web", "m1.small", 1, 2048, 20, "img-a")
MEDIUM = replace(SMALL, flavor_id="m1.medium", vcpus=2, ram_mb=4096, disk_gb=40)
TINY = replace(SMALL, flavor_id="m1.tiny", vcpus=1, ram_mb=512, disk_gb=1)


def spawned(state: PowerState = P.RUNNING, **kwargs: Any) -> Simulator:
    sim = Simulator(**kwargs)
    sim.spawn(SMALL)
    if state != P.RUNNING:
        sim.set_power_state(SMALL.server_id, state)
    return sim


def power(sim: Simulator, server_id: str = SMALL.server_id) -> PowerState:
    return sim.observe(server_id).power_state


def boots(sim: Simulator, server_id: str = SMALL.server_id) -> int:
    return int(sim.guests()[server_id]["boot_count"])


# ---------------------------------------------------------------------------- basics


def test_implements_the_port() -> None:
    sim = Simulator()
    assert isinstance(sim, Hypervisor)
    assert sim.driver == "simulator"


def test_observe_unknown_guest() -> None:
    sim = Simulator()
    assert sim.observe("nope") == Observation(exists=False)
    assert list(sim.calls) == [("observe", "nope")]


def test_spawn_defines_and_starts() -> None:
    sim = Simulator()
    assert sim.spawn(SMALL) == {"boot_count": 1}
    obs = sim.observe(SMALL.server_id)
    assert obs.exists and obs.power_state == P.RUNNING
    assert obs.flavor_id == "m1.small" and obs.image_id == "img-a"
    assert not obs.resize_pending
    assert obs.details["vcpus"] == 1 and obs.details["disk_gb"] == 20
    guest = sim.guests()[SMALL.server_id]
    assert guest["name"] == "web" and guest["ram_mb"] == 2048
    assert guest["generation"] == 0 and guest["old_definition"] is None


def test_spawn_is_idempotent_when_running() -> None:
    sim = spawned()
    assert sim.spawn(SMALL) == {"boot_count": 1, "already": True}
    assert boots(sim) == 1


def test_spawn_starts_an_existing_stopped_guest() -> None:
    sim = spawned(P.SHUTDOWN)
    assert sim.spawn(SMALL) == {"boot_count": 2}
    assert power(sim) == P.RUNNING


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.reboot("x", hard=False),
        lambda s: s.reboot("x", hard=True),
        lambda s: s.rebuild(replace(SMALL, server_id="x")),
        lambda s: s.resize(replace(MEDIUM, server_id="x")),
        lambda s: s.confirm_resize("x"),
        lambda s: s.revert_resize("x"),
        lambda s: s.pause("x"),
        lambda s: s.unpause("x"),
        lambda s: s.suspend("x"),
        lambda s: s.resume("x"),
        lambda s: s.power_off("x"),
        lambda s: s.power_on("x"),
    ],
)
def test_unknown_guest_is_domain_not_found(call: Any) -> None:
    sim = Simulator()
    with pytest.raises(HypervisorError) as info:
        call(sim)
    assert info.value.message == "Domain not found"
    assert info.value.rollback is True
    assert sim.guests() == {}


def test_destroy_and_idempotency() -> None:
    sim = spawned()
    assert sim.destroy(SMALL.server_id) == {"destroyed": True}
    assert not sim.observe(SMALL.server_id).exists
    assert sim.destroy(SMALL.server_id) == {"already": True}
    assert sim.guests() == {}


# ---------------------------------------------------------------------------- reboot


def test_soft_reboot() -> None:
    sim = spawned()
    result = sim.reboot(SMALL.server_id, hard=False)
    assert result["method"] == "acpi"
    assert power(sim) == P.RUNNING and boots(sim) == 2


@pytest.mark.parametrize("state", [P.PAUSED, P.SHUTDOWN, P.SUSPENDED, P.CRASHED])
def test_soft_reboot_needs_running(state: PowerState) -> None:
    sim = spawned(state)
    with pytest.raises(HypervisorError) as info:
        sim.reboot(SMALL.server_id, hard=False)
    assert info.value.rollback is False
    assert power(sim) == state and boots(sim) == 1


@pytest.mark.parametrize("state", [P.RUNNING, P.PAUSED, P.SHUTDOWN, P.SUSPENDED, P.CRASHED])
def test_hard_reboot_from_any_settled_state(state: PowerState) -> None:
    sim = spawned(state)
    assert sim.reboot(SMALL.server_id, hard=True)["method"] == "reset"
    assert power(sim) == P.RUNNING and boots(sim) == 2


def test_hard_reboot_refuses_nostate() -> None:
    sim = spawned(P.NOSTATE)
    with pytest.raises(HypervisorError) as info:
        sim.reboot(SMALL.server_id, hard=True)
    assert info.value.rollback is True
    assert power(sim) == P.NOSTATE


# ---------------------------------------------------------------------------- rebuild


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (P.RUNNING, P.RUNNING),
        (P.SHUTDOWN, P.SHUTDOWN),
        (P.PAUSED, P.RUNNING),
        (P.SUSPENDED, P.RUNNING),
        (P.CRASHED, P.RUNNING),
    ],
)
def test_rebuild(before: PowerState, after: PowerState) -> None:
    sim = spawned(before)
    result = sim.rebuild(replace(SMALL, image_id="img-b"))
    assert result == {"generation": 1, "image_id": "img-b"}
    obs = sim.observe(SMALL.server_id)
    assert obs.image_id == "img-b" and obs.power_state == after
    assert obs.details["generation"] == 1
    assert obs.flavor_id == "m1.small"
    sim.rebuild(replace(SMALL, image_id="img-c"))
    assert sim.guests()[SMALL.server_id]["generation"] == 2


# ---------------------------------------------------------------------------- resize


def test_resize_keeps_old_definition_then_confirm() -> None:
    sim = spawned()
    result = sim.resize(MEDIUM)
    assert result == {"flavor_id": "m1.medium", "old_flavor_id": "m1.small"}
    obs = sim.observe(SMALL.server_id)
    assert obs.flavor_id == "m1.medium" and obs.resize_pending
    assert obs.power_state == P.RUNNING
    assert (obs.details["vcpus"], obs.details["ram_mb"], obs.details["disk_gb"]) == (2, 4096, 40)
    old = sim.guests()[SMALL.server_id]["old_definition"]
    assert old == {
        "flavor_id": "m1.small",
        "vcpus": 1,
        "ram_mb": 2048,
        "disk_gb": 20,
        "power_state": P.RUNNING,
    }

    assert sim.confirm_resize(SMALL.server_id) == {"confirmed": True}
    obs = sim.observe(SMALL.server_id)
    assert obs.flavor_id == "m1.medium" and not obs.resize_pending
    assert sim.confirm_resize(SMALL.server_id) == {"already": True}


@pytest.mark.parametrize(
    ("before", "after_resize"),
    [
        (P.RUNNING, P.RUNNING),
        (P.SHUTDOWN, P.SHUTDOWN),
        (P.PAUSED, P.RUNNING),
        (P.SUSPENDED, P.RUNNING),
        (P.CRASHED, P.RUNNING),
    ],
)
def test_resize_then_revert_restores_flavor_and_power(
    before: PowerState, after_resize: PowerState
) -> None:
    sim = spawned(before)
    sim.resize(MEDIUM)
    assert power(sim) == after_resize
    result = sim.revert_resize(SMALL.server_id)
    assert result == {"flavor_id": "m1.small", "power_state": int(before)}
    obs = sim.observe(SMALL.server_id)
    assert obs.flavor_id == "m1.small" and not obs.resize_pending
    assert obs.power_state == before
    assert (obs.details["vcpus"], obs.details["ram_mb"], obs.details["disk_gb"]) == (1, 2048, 20)
    assert sim.revert_resize(SMALL.server_id) == {"already": True}


def test_resize_disk_down_is_refused_and_changes_nothing() -> None:
    sim = spawned()
    before = sim.guests()
    with pytest.raises(HypervisorError) as info:
        sim.resize(TINY)
    assert info.value.message == "Unable to resize disk down."
    assert info.value.rollback is True
    assert sim.guests() == before


def test_resize_while_pending_is_refused() -> None:
    sim = spawned()
    sim.resize(MEDIUM)
    before = sim.guests()
    with pytest.raises(HypervisorError) as info:
        sim.resize(replace(MEDIUM, flavor_id="m1.large", disk_gb=80))
    assert info.value.rollback is True
    assert sim.guests() == before


def test_resize_same_disk_is_allowed() -> None:
    sim = spawned()
    sim.resize(replace(SMALL, flavor_id="m1.small-ram", ram_mb=8192))
    assert sim.observe(SMALL.server_id).details["ram_mb"] == 8192


# ---------------------------------------------------------------------------- power ops

TRANSITIONS: list[tuple[str, set[PowerState], PowerState]] = [
    ("pause", {P.RUNNING}, P.PAUSED),
    ("unpause", {P.PAUSED}, P.RUNNING),
    ("suspend", {P.RUNNING}, P.SUSPENDED),
    ("resume", {P.SUSPENDED}, P.RUNNING),
    ("power_off", {P.RUNNING, P.PAUSED, P.CRASHED}, P.SHUTDOWN),
    ("power_on", {P.SHUTDOWN, P.CRASHED}, P.RUNNING),
]
ALL_STATES = [P.NOSTATE, P.RUNNING, P.PAUSED, P.SHUTDOWN, P.CRASHED, P.SUSPENDED]


@pytest.mark.parametrize(
    ("op", "source", "target", "outcome"),
    [
        (op, state, target, "ok" if state in sources else "already" if state == target else "err")
        for op, sources, target in TRANSITIONS
        for state in ALL_STATES
    ],
)
def test_power_transitions(op: str, source: PowerState, target: PowerState, outcome: str) -> None:
    sim = spawned(source)
    before_boots = boots(sim)
    method = getattr(sim, op)
    if outcome == "err":
        with pytest.raises(HypervisorError) as info:
            method(SMALL.server_id)
        assert info.value.rollback is True
        assert power(sim) == source and boots(sim) == before_boots
    elif outcome == "already":
        assert method(SMALL.server_id) == {"already": True}
        assert power(sim) == target and boots(sim) == before_boots
    else:
        assert method(SMALL.server_id) == {"power_state": int(target)}
        assert power(sim) == target
        assert boots(sim) == before_boots + (1 if op == "power_on" else 0)


# ---------------------------------------------------------------------------- drift helpers


def test_out_of_band_drift() -> None:
    sim = spawned()
    sim.set_power_state(SMALL.server_id, P.CRASHED)
    assert power(sim) == P.CRASHED
    sim.forget(SMALL.server_id)
    assert not sim.observe(SMALL.server_id).exists
    sim.forget(SMALL.server_id)  # idempotent
    with pytest.raises(KeyError):
        sim.set_power_state(SMALL.server_id, P.RUNNING)
    assert ("forget", SMALL.server_id) not in sim.calls


def test_calls_record_every_operation_in_order() -> None:
    sim = Simulator()
    sim.observe("srv-1")
    sim.spawn(SMALL)
    sim.pause("srv-1")
    with pytest.raises(HypervisorError):
        sim.suspend("srv-1")
    sim.destroy("srv-1")
    assert list(sim.calls) == [
        ("observe", "srv-1"),
        ("spawn", "srv-1"),
        ("pause", "srv-1"),
        ("suspend", "srv-1"),
        ("destroy", "srv-1"),
    ]


def test_guests_is_a_snapshot() -> None:
    sim = spawned()
    sim.resize(MEDIUM)
    snap = sim.guests()
    snap[SMALL.server_id]["power_state"] = P.CRASHED
    snap[SMALL.server_id]["old_definition"]["flavor_id"] = "mutated"
    assert power(sim) == P.RUNNING
    assert sim.guests()[SMALL.server_id]["old_definition"]["flavor_id"] == "m1.small"


# ---------------------------------------------------------------------------- latency


def test_latency_per_operation_uses_injected_sleep() -> None:
    slept: list[float] = []
    sim = Simulator(latency={"spawn": 0.5, "observe": 0.01}, sleep=slept.append)
    sim.spawn(SMALL)
    sim.observe(SMALL.server_id)
    sim.pause(SMALL.server_id)
    assert slept == [0.5, 0.01]


def test_latency_single_number_applies_to_every_operation() -> None:
    slept: list[float] = []
    sim = Simulator(latency=0.25, sleep=slept.append)
    sim.spawn(SMALL)
    sim.observe(SMALL.server_id)
    assert slept == [0.25, 0.25]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fail_rate": -0.1},
        {"crash_rate": 1.5},
        {"fail_rate": 0.6, "crash_rate": 0.6},
        {"latency": -1.0},
        {"latency": {"teleport": 1.0}},
    ],
)
def test_constructor_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Simulator(**kwargs)


# ---------------------------------------------------------------------------- faults


def test_scripted_failure_changes_nothing() -> None:
    sim = spawned()
    sim.inject("pause", "fail", rollback=True)
    with pytest.raises(HypervisorError) as info:
        sim.pause(SMALL.server_id)
    assert info.value.message == "Injected failure in pause"
    assert info.value.rollback is True
    assert power(sim) == P.RUNNING
    assert sim.pause(SMALL.server_id) == {"power_state": int(P.PAUSED)}  # consumed


def test_scripted_failure_targets_server_and_counts() -> None:
    sim = Simulator()
    sim.inject("spawn", "fail", server_id="srv-2", times=2)
    sim.spawn(SMALL)  # other server unaffected
    other = replace(SMALL, server_id="srv-2")
    for _ in range(2):
        with pytest.raises(HypervisorError) as info:
            sim.spawn(other)
        assert info.value.rollback is False
        assert not sim.observe("srv-2").exists
    sim.spawn(other)
    assert sim.observe("srv-2").power_state == P.RUNNING


def test_scripted_crash_leaves_the_effect_applied() -> None:
    sim = spawned()
    sim.inject("resize", "crash")
    with pytest.raises(SimulatedCrash) as info:
        sim.resize(MEDIUM)
    assert info.value.op == "resize" and info.value.server_id == SMALL.server_id
    assert info.value.result == {"flavor_id": "m1.medium", "old_flavor_id": "m1.small"}
    assert info.value.error is None
    obs = sim.observe(SMALL.server_id)
    assert obs.flavor_id == "m1.medium" and obs.resize_pending


def test_crash_is_not_swallowed_by_except_exception() -> None:
    sim = spawned()
    sim.inject("power_off", "crash")
    with pytest.raises(SimulatedCrash):
        try:
            sim.power_off(SMALL.server_id)
        except Exception:  # an agent's ordinary error handling
            pytest.fail("SimulatedCrash must not be an Exception")
    assert power(sim) == P.SHUTDOWN


def test_crash_after_a_refused_operation_carries_the_error() -> None:
    sim = spawned()
    sim.inject("resize", "crash")
    before = sim.guests()
    with pytest.raises(SimulatedCrash) as info:
        sim.resize(TINY)
    assert info.value.result is None
    assert info.value.error is not None
    assert info.value.error.message == "Unable to resize disk down."
    assert sim.guests() == before


def test_inject_validation() -> None:
    sim = Simulator()
    with pytest.raises(ValueError):
        sim.inject("observe", "fail")
    with pytest.raises(ValueError):
        sim.inject("pause", "explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        sim.inject("pause", "fail", times=0)


def test_scripted_fault_takes_precedence_and_skips_the_draw() -> None:
    a = Simulator(seed=7, fail_rate=1.0)
    a.inject("spawn", "crash")
    with pytest.raises(SimulatedCrash):
        a.spawn(SMALL)
    with pytest.raises(HypervisorError) as info:
        a.pause(SMALL.server_id)
    assert info.value.message == "Injected failure in pause"
    # the first random draw went to pause, exactly as in a fresh simulator's first op
    b = Simulator(seed=7, fail_rate=1.0)
    with pytest.raises(HypervisorError) as other:
        b.spawn(SMALL)
    assert other.value.rollback == info.value.rollback


def test_observe_never_draws_or_faults() -> None:
    a = Simulator(seed=3, fail_rate=0.5, crash_rate=0.5)
    b = Simulator(seed=3, fail_rate=0.5, crash_rate=0.5)
    for _ in range(20):
        a.observe("srv-1")
    assert outcome_of(lambda: a.spawn(SMALL)) == outcome_of(lambda: b.spawn(SMALL))


def outcome_of(call: Any) -> tuple[Any, ...]:
    try:
        return ("ok", dict(call()))
    except HypervisorError as error:
        return ("error", error.message, error.rollback)
    except SimulatedCrash as crash:
        return ("crash", crash.op, crash.result, crash.error is not None)


def test_random_faults_are_deterministic_and_roughly_calibrated() -> None:
    def run(seed: int) -> list[tuple[Any, ...]]:
        sim = Simulator(seed=seed, fail_rate=0.3, crash_rate=0.2)
        return [
            outcome_of(lambda i=i: sim.spawn(replace(SMALL, server_id=f"s{i}"))) for i in range(400)
        ]

    first = run(42)
    assert first == run(42)
    assert first != run(43)
    kinds = [o[0] for o in first]
    assert 80 < kinds.count("error") < 160
    assert 40 < kinds.count("crash") < 120
    rollbacks = {o[2] for o in first if o[0] == "error"}
    assert rollbacks == {True, False}
    assert all(o[1].startswith("Injected failure in spawn") for o in first if o[0] == "error")


def test_random_failure_changes_nothing_and_crash_applies() -> None:
    sim = Simulator(seed=1, fail_rate=1.0)
    with pytest.raises(HypervisorError):
        sim.spawn(SMALL)
    assert sim.guests() == {}
    sim = Simulator(seed=1, crash_rate=1.0)
    with pytest.raises(SimulatedCrash):
        sim.spawn(SMALL)
    assert power(sim) == P.RUNNING


# ---------------------------------------------------------------------------- persistence


def test_state_path_persists_across_instances(tmp_path: Path) -> None:
    path = str(tmp_path / "sub" / "guests.json")
    first = Simulator(state_path=path)
    first.spawn(SMALL)
    first.spawn(replace(SMALL, server_id="srv-2", name="db"))
    first.resize(replace(MEDIUM, server_id="srv-2"))
    first.pause(SMALL.server_id)
    first.rebuild(replace(SMALL, image_id="img-b"))  # paused -> running, generation 1
    first.set_power_state("srv-2", P.CRASHED)

    second = Simulator(state_path=path)
    assert second.guests() == first.guests()
    obs = second.observe("srv-2")
    assert obs.power_state == P.CRASHED and obs.resize_pending
    assert second.guests()[SMALL.server_id]["generation"] == 1
    second.revert_resize("srv-2")
    assert second.observe("srv-2").flavor_id == "m1.small"
    second.forget(SMALL.server_id)

    third = Simulator(state_path=path)
    assert set(third.guests()) == {"srv-2"}
    assert third.observe("srv-2").power_state == P.RUNNING
    saved = json.loads(Path(path).read_text())
    assert saved["version"] == 1
    assert list(tmp_path.joinpath("sub").iterdir()) == [Path(path)]  # no temp files left


def test_state_path_crash_is_persisted_failure_is_not(tmp_path: Path) -> None:
    path = str(tmp_path / "guests.json")
    sim = Simulator(state_path=path)
    sim.inject("spawn", "crash")
    with pytest.raises(SimulatedCrash):
        sim.spawn(SMALL)
    sim.inject("power_off", "fail")
    with pytest.raises(HypervisorError):
        sim.power_off(SMALL.server_id)
    assert Simulator(state_path=path).observe(SMALL.server_id).power_state == P.RUNNING


def test_missing_state_file_starts_empty(tmp_path: Path) -> None:
    assert Simulator(state_path=str(tmp_path / "absent.json")).guests() == {}


# ---------------------------------------------------------------------------- threads


def test_thread_safety() -> None:
    sim = Simulator()
    ids = [f"t{i}" for i in range(8)]

    def worker(server_id: str) -> None:
        spec = replace(SMALL, server_id=server_id)
        sim.spawn(spec)
        for _ in range(50):
            sim.pause(server_id)
            sim.unpause(server_id)
            sim.reboot(server_id, hard=True)

    threads = [threading.Thread(target=worker, args=(sid,)) for sid in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    guests = sim.guests()
    assert set(guests) == set(ids)
    assert all(g["boot_count"] == 51 and g["power_state"] == P.RUNNING for g in guests.values())
    assert len(sim.calls) == 8 * (1 + 150)


# ---------------------------------------------------------------------------- property

SERVERS = ["a", "b"]
FLAVORS = [
    ("f.small", 1, 1024, 10),
    ("f.medium", 2, 2048, 20),
    ("f.large", 4, 4096, 40),
]
IMAGES = ["img-1", "img-2"]
POWER_TARGETS: dict[str, PowerState] = {op: target for op, _, target in TRANSITIONS}

step = st.tuples(
    st.sampled_from(sorted(MUTATING_OPERATIONS | {"observe", "drift", "forget"})),
    st.sampled_from(SERVERS),
    st.sampled_from(range(len(FLAVORS))),
    st.sampled_from(IMAGES),
    st.booleans(),
    st.sampled_from(ALL_STATES),
)


def spec_for(server_id: str, flavor: int, image: str) -> GuestSpec:
    flavor_id, vcpus, ram_mb, disk_gb = FLAVORS[flavor]
    return GuestSpec(server_id, f"vm-{server_id}", flavor_id, vcpus, ram_mb, disk_gb, image)


def perform(sim: Simulator, item: tuple[str, str, int, str, bool, PowerState]) -> Result | None:
    op, sid, flavor, image, hard, state = item
    spec = spec_for(sid, flavor, image)
    if op in ("spawn", "rebuild", "resize", "rescue"):
        result: Result = getattr(sim, op)(spec)
        return result
    if op == "reboot":
        return sim.reboot(sid, hard=hard)
    if op == "observe":
        return sim.observe(sid).as_dict()
    if op == "drift":
        if sim.observe(sid).exists:
            sim.set_power_state(sid, state)
        return None
    if op == "forget":
        sim.forget(sid)
        return None
    if op == "snapshot":
        return sim.snapshot(sid, f"snap-{image}")
    if op == "prepare_migration":
        return sim.prepare_migration(spec, live=hard)
    if op == "migrate_disk":
        return sim.migrate_disk(sid, {"driver": "simulator"})
    if op == "finish_migration":
        return sim.finish_migration(spec, moved_guest(spec), power_on=hard)
    if op == "live_migrate":
        return sim.live_migrate(sid, {"driver": "simulator"}, block_migration=hard)
    if op == "finish_live_migration":
        return sim.finish_live_migration(spec, {"guest": moved_guest(spec)})
    result = getattr(sim, op)(sid)
    return result


def moved_guest(spec: GuestSpec) -> dict[str, Any]:
    """A guest as another host's simulator sends it (its disk, or itself live)."""
    return {"server_id": spec.server_id, "name": spec.name, "flavor_id": spec.flavor_id,
            "vcpus": spec.vcpus, "ram_mb": spec.ram_mb, "disk_gb": spec.disk_gb,
            "image_id": spec.image_id, "power_state": int(P.RUNNING), "boot_count": 3,
            "generation": 2}


def check_effect(
    item: tuple[str, str, int, str, bool, PowerState], before: Observation, after: Observation
) -> None:
    """What observe must show after an operation took effect (returned or crashed after)."""
    op, sid, flavor, image, _, _ = item
    spec = spec_for(sid, flavor, image)
    if op == "destroy" or op == "forget":
        assert not after.exists
        return
    if op in ("observe", "drift", "prepare_migration", "abort_migration",
              "force_complete_migration"):
        if op != "observe" and op != "drift":
            assert after == before  # nothing of the guest shown here changes
        return
    if op == "live_migrate":
        assert not after.exists  # it runs elsewhere now
        return
    assert after.exists
    if op == "migrate_disk":
        assert after.power_state == P.SHUTDOWN
        return
    if op == "finish_migration":
        if item[4]:
            assert after.power_state == P.RUNNING
        elif before.exists:
            assert after.power_state == before.power_state
        return
    if op == "finish_live_migration":
        return
    if op == "snapshot":  # capturing the disk changes nothing in the guest
        assert after == before
        return
    if op in POWER_TARGETS:
        assert after.power_state == POWER_TARGETS[op]
    elif op in ("spawn", "reboot"):
        assert after.power_state == P.RUNNING
    elif op == "rebuild":
        assert after.image_id == image
        assert after.details["generation"] == before.details["generation"] + 1
        expected = P.SHUTDOWN if before.power_state == P.SHUTDOWN else P.RUNNING
        assert after.power_state == expected
    elif op == "resize":
        assert after.flavor_id == spec.flavor_id and after.resize_pending
        expected = P.SHUTDOWN if before.power_state == P.SHUTDOWN else P.RUNNING
        assert after.power_state == expected
    elif op in ("confirm_resize", "revert_resize"):
        assert not after.resize_pending
        if not before.resize_pending:
            assert after == before
    elif op in ("rescue", "unrescue"):
        assert after.rescued == (op == "rescue")
        assert after.image_id == before.image_id  # the guest's own image stays its own
        if before.rescued == after.rescued:
            assert after == before  # already so: nothing changed
        else:
            assert after.power_state == P.RUNNING


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    fail_rate=st.sampled_from([0.0, 0.2]),
    crash_rate=st.sampled_from([0.0, 0.2]),
    steps=st.lists(step, max_size=40),
)
def test_property_same_seed_same_story_and_observe_is_consistent(
    seed: int, fail_rate: float, crash_rate: float, steps: list[Any]
) -> None:
    sims = [Simulator(seed=seed, fail_rate=fail_rate, crash_rate=crash_rate) for _ in range(2)]
    for sim in sims:  # where a guest is sent: the same address for both, to compare them
        sim.__dict__["_migration_token"] = "simulator-under-test"
    outcomes: list[list[tuple[Any, ...]]] = [[], []]
    for item in steps:
        sid = item[1]
        for sim, log in zip(sims, outcomes, strict=True):
            before = sim.observe(sid)
            outcome = outcome_of(lambda sim=sim, item=item: perform(sim, item) or {})
            after = sim.observe(sid)
            log.append(outcome)
            if outcome[0] == "ok" or (outcome[0] == "crash" and outcome[2] is not None):
                check_effect(item, before, after)
            else:
                # a refusal (or a crash after a refusal) leaves the guest as it was
                assert after == before
            assert after.as_dict() == observation_from_snapshot(sim, sid)
    assert outcomes[0] == outcomes[1]
    assert list(sims[0].calls) == list(sims[1].calls)
    assert sims[0].guests() == sims[1].guests()


def observation_from_snapshot(sim: Simulator, server_id: str) -> dict[str, Any]:
    guest = sim.guests().get(server_id)
    if guest is None or guest.get("incoming"):  # an incoming copy shows nothing yet
        return Observation(exists=False).as_dict()
    return {
        "exists": True,
        "power_state": int(guest["power_state"]),
        "flavor_id": guest["flavor_id"],
        "image_id": guest["image_id"],
        "resize_pending": guest["old_definition"] is not None,
        "rescued": guest["rescue_image_id"] is not None,
    }

"""Lifecycle operations on the hypervisor drivers: the engine on libvirt's test driver
against the simulator, the drivers alone, and per-operation latency on real QEMU.

What is measured
----------------
*Engine*: ``Engine("memory", hypervisor=...)`` drives N servers through a lifecycle -
create, hard and soft reboot, pause, unpause, suspend, resume, stop, start, rebuild,
resize + confirm, resize + revert, delete. Each step is requested for every server, then
``run_until_idle()`` lets the host agent enact it (observe, the driver's call, the
outcome) and the view follow. One *operation* = one user action taken to its outcome.
The same loop runs on the simulator (``Engine("memory")``'s default hypervisor) and on
``LibvirtDriver(node_uri(dir))`` (libvirt's in-process test driver), interleaved in a
shuffled order over repetitions, each on a fresh database and a fresh test node;
medians are reported, with the ratio libvirt/simulator of each repetition.

*Drivers alone*: the port's calls made directly on the driver (spawn, observe, both
reboots, pause, unpause, suspend, resume, power off/on, rebuild, resize + confirm,
resize + revert, destroy) for M guests: calls per second, libvirt's test driver and the
simulator.

*Real QEMU*: the same operations on ``qemu:///system`` (through libvirtd), one tiny
diskless guest (128 MiB, ``type='qemu'``: software emulation) per repetition, each call
timed; medians in milliseconds. A diskless guest has no OS to answer ACPI, so a power
off waits the (short) ``acpi_timeout`` and then destroys the guest.
"""

from __future__ import annotations

import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import commands
from benchmarks.commands import REPO_ROOT, WorkloadError, contention, pressure_totals, settle
from vmledger.adapters.hypervisor import GuestSpec, Hypervisor
from vmledger.adapters.simulator import Simulator
from vmledger.engine import Engine

IMAGE = "cirros-0.6.2-x86_64"
IMAGE2 = "debian-12-genericcloud-amd64"
QEMU_ACPI_TIMEOUT = 0.2

EngineStep = Callable[[Engine, str], object]
#: the lifecycle after create: (label, request)
STEPS: tuple[tuple[str, EngineStep], ...] = (
    ("reboot hard", lambda e, s: e.reboot(s, hard=True)),
    ("reboot soft", lambda e, s: e.reboot(s)),
    ("pause", lambda e, s: e.pause(s)),
    ("unpause", lambda e, s: e.unpause(s)),
    ("suspend", lambda e, s: e.suspend(s)),
    ("resume", lambda e, s: e.resume(s)),
    ("stop", lambda e, s: e.stop(s)),
    ("start", lambda e, s: e.start(s)),
    ("rebuild", lambda e, s: e.rebuild(s, IMAGE2)),
    ("resize", lambda e, s: e.resize(s, "m1.medium")),
    ("confirm resize", lambda e, s: e.confirm_resize(s)),
    ("resize", lambda e, s: e.resize(s, "m1.large")),
    ("revert resize", lambda e, s: e.revert_resize(s)),
    ("delete", lambda e, s: e.delete(s)),
)
OPS_PER_SERVER = 1 + len(STEPS)


@dataclass(frozen=True)
class Sizes:
    engine_servers: int
    repetitions: int
    driver_guests: int
    qemu_repetitions: int


FULL = Sizes(engine_servers=100, repetitions=3, driver_guests=1000, qemu_repetitions=3)
QUICK = Sizes(engine_servers=15, repetitions=2, driver_guests=200, qemu_repetitions=1)


def _libvirt_support() -> tuple[Any, str | None]:
    """(the tests.support.libvirtd module, None), or (None, why libvirt is skipped)."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    try:
        from tests.support import libvirtd
    except ImportError as e:  # pragma: no cover - the repository layout changed
        return None, f"cannot import tests.support.libvirtd ({e})"
    reason: str | None = libvirtd.libvirt_skip_reason()
    return (None, reason) if reason is not None else (libvirtd, None)


# ---------------------------------------------------------------------------------------
# The engine, on a driver
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EngineRun:
    ops: int
    seconds: float
    calls: int  # hypervisor calls the agent made (HypervisorCalled events)

    @property
    def rate(self) -> float:
        return self.ops / self.seconds


def engine_run(hypervisor: Hypervisor, servers: int) -> EngineRun:
    """Drive ``servers`` servers through the lifecycle; time only the operations."""
    with Engine("memory", hypervisor=hypervisor,
                allocation_ratios=commands.UNLIMITED) as engine:
        engine.run_until_idle()
        settle()
        began = time.perf_counter()
        ids = [engine.create_server(f"bench-{i}", flavor="m1.small", image=IMAGE).id
               for i in range(servers)]
        engine.run_until_idle()
        for _label, request in STEPS:
            for sid in ids:
                request(engine, sid)
            engine.run_until_idle()
        seconds = time.perf_counter() - began
        # checked after the clock stopped: every action reached its outcome, none failed
        calls = 0
        for sid in ids:
            history = engine.history(sid)
            failed = [e for e in history if e.event == "ActionFailed"]
            if failed:
                raise WorkloadError(f"{hypervisor.driver}: {failed[0]}")
            calls += sum(1 for e in history if e.event == "HypervisorCalled")
            done = sum(1 for e in history if e.event == "ActionCompleted")
            if done != OPS_PER_SERVER:
                raise WorkloadError(f"{hypervisor.driver}: {done} of {OPS_PER_SERVER} "
                                    f"actions completed for {sid}")
        return EngineRun(servers * OPS_PER_SERVER, seconds, calls)


# ---------------------------------------------------------------------------------------
# The drivers alone
# ---------------------------------------------------------------------------------------

def _spec(sid: str, flavor: str = "2", vcpus: int = 1, ram_mb: int = 2048, disk_gb: int = 20,
          image: str = "image-a") -> GuestSpec:
    return GuestSpec(server_id=sid, name="bench", flavor_id=flavor, vcpus=vcpus,
                     ram_mb=ram_mb, disk_gb=disk_gb, image_id=image)


DriverCall = Callable[[Hypervisor, str], object]
DRIVER_CALLS: tuple[tuple[str, DriverCall], ...] = (
    ("spawn", lambda d, s: d.spawn(_spec(s))),
    ("observe", lambda d, s: d.observe(s)),
    ("reboot hard", lambda d, s: d.reboot(s, hard=True)),
    ("reboot soft", lambda d, s: d.reboot(s, hard=False)),
    ("pause", lambda d, s: d.pause(s)),
    ("unpause", lambda d, s: d.unpause(s)),
    ("suspend", lambda d, s: d.suspend(s)),
    ("resume", lambda d, s: d.resume(s)),
    ("power_off", lambda d, s: d.power_off(s)),
    ("power_on", lambda d, s: d.power_on(s)),
    ("rebuild", lambda d, s: d.rebuild(_spec(s, image="image-b"))),
    ("resize", lambda d, s: d.resize(_spec(s, "3", 2, 4096, 40, "image-b"))),
    ("confirm_resize", lambda d, s: d.confirm_resize(s)),
    ("resize", lambda d, s: d.resize(_spec(s, "4", 4, 8192, 80, "image-b"))),
    ("revert_resize", lambda d, s: d.revert_resize(s)),
    ("destroy", lambda d, s: d.destroy(s)),
)


@dataclass(frozen=True)
class DriverRun:
    calls: int
    seconds: float  # the sum of the calls' times
    per_call: dict[str, float]  # label → mean µs per call

    @property
    def rate(self) -> float:
        return self.calls / self.seconds


def driver_run(driver: Hypervisor, guests: int) -> DriverRun:
    """Every call of :data:`DRIVER_CALLS` on ``guests`` guests, each call timed."""
    ids = [str(uuid.uuid4()) for _ in range(guests)]
    spent: dict[str, float] = {}
    counts: dict[str, int] = {}
    clock = time.perf_counter
    settle()
    for sid in ids:
        for label, call in DRIVER_CALLS:
            began = clock()
            call(driver, sid)
            spent[label] = spent.get(label, 0.0) + clock() - began
            counts[label] = counts.get(label, 0) + 1
    return DriverRun(sum(counts.values()), sum(spent.values()),
                     {k: 1e6 * spent[k] / counts[k] for k in spent})


# ---------------------------------------------------------------------------------------
# Real QEMU
# ---------------------------------------------------------------------------------------

def _tiny(sid: str, flavor: str = "1", vcpus: int = 1, ram_mb: int = 128,
          image: str = "no-disk") -> GuestSpec:
    return GuestSpec(server_id=sid, name="bench-qemu", flavor_id=flavor, vcpus=vcpus,
                     ram_mb=ram_mb, disk_gb=0, image_id=image)


QEMU_CALLS: tuple[tuple[str, DriverCall], ...] = (
    ("spawn", lambda d, s: d.spawn(_tiny(s))),
    ("pause", lambda d, s: d.pause(s)),
    ("unpause", lambda d, s: d.unpause(s)),
    ("suspend", lambda d, s: d.suspend(s)),
    ("resume", lambda d, s: d.resume(s)),
    ("power_off", lambda d, s: d.power_off(s)),
    ("power_on", lambda d, s: d.power_on(s)),
    ("reboot hard", lambda d, s: d.reboot(s, hard=True)),
    ("resize", lambda d, s: d.resize(_tiny(s, "2", 2, 192))),
    ("confirm_resize", lambda d, s: d.confirm_resize(s)),
    ("resize", lambda d, s: d.resize(_tiny(s, "3", 1, 160))),
    ("revert_resize", lambda d, s: d.revert_resize(s)),
    ("rebuild", lambda d, s: d.rebuild(_tiny(s, "2", 2, 192, image="no-disk-b"))),
    ("destroy", lambda d, s: d.destroy(s)),
)


@dataclass
class QemuResult:
    ms: dict[str, list[float]] = field(default_factory=dict)
    results: dict[str, object] = field(default_factory=dict)  # the last answer of each
    skipped: str | None = None
    failed: str | None = None
    contention: dict[str, float] = field(default_factory=dict)
    versions: str = ""


def qemu_latency(repetitions: int, log: Callable[[str], None]) -> QemuResult:
    support, reason = _libvirt_support()
    if support is None:
        return QemuResult(skipped=reason)
    reason = support.qemu_skip_reason(support.QEMU_URI)
    if reason is not None:
        return QemuResult(skipped=reason)
    from vmledger.adapters.libvirt import LibvirtDriver

    out = QemuResult()
    driver = LibvirtDriver(support.QEMU_URI, acpi_timeout=QEMU_ACPI_TIMEOUT, poll=0.02)
    try:
        conn = driver.connection()
        out.versions = (f"libvirt {_version(conn.getLibVersion())}, QEMU "
                        f"{_version(conn.getVersion())}")
        stalls = pressure_totals()
        began = time.perf_counter()
        for rep in range(1, repetitions + 1):
            sid = str(uuid.uuid4())
            label = "?"
            try:
                for label, call in QEMU_CALLS:
                    t = time.perf_counter()
                    out.results[label] = call(driver, sid)
                    out.ms.setdefault(label, []).append(1000 * (time.perf_counter() - t))
            except Exception as e:  # report what was measured, and why it stopped
                out.failed = f"repetition {rep}, {label}: {type(e).__name__}: {e}"
                break
            finally:
                driver.destroy(sid)
            log(f"  qemu repetition {rep}/{repetitions}: "
                f"{sum(v[-1] for v in out.ms.values()) / 1000:.1f} s of calls")
        out.contention = contention(stalls, pressure_totals(), time.perf_counter() - began)
    finally:
        driver.close()
    return out


def _version(number: int) -> str:
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


# ---------------------------------------------------------------------------------------
# The whole suite
# ---------------------------------------------------------------------------------------

@dataclass
class Report:
    sizes: Sizes
    engine: dict[str, list[EngineRun]] = field(default_factory=dict)
    drivers: dict[str, list[DriverRun]] = field(default_factory=dict)
    ratios: list[float] = field(default_factory=list)
    qemu: QemuResult = field(default_factory=QemuResult)
    libvirt_skipped: str | None = None
    contention: dict[str, float] = field(default_factory=dict)


SIM, LIBVIRT = "simulator", "libvirt test driver"


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


def format_report(r: Report) -> str:
    out: list[str] = [""]
    w = out.append
    stalls = ", ".join(f"{k} {v:.0f} %" for k, v in r.contention.items()) or "unknown"
    w(f"[engine] {r.sizes.engine_servers} servers x {OPS_PER_SERVER} operations (create, "
      f"{', '.join(label for label, _ in STEPS)}) per run; Engine('memory'); each step "
      f"requested for every server, then run_until_idle(); medians of "
      f"{r.sizes.repetitions} interleaved repetitions (stalls: {stalls})")
    if r.libvirt_skipped:
        w(f"  {LIBVIRT}: skipped: {r.libvirt_skipped}")
    w(f"  {'hypervisor':<22} {'ops/s':>8} {'ms/op':>7} {'driver calls/op':>16}")
    for name, runs in r.engine.items():
        rate = _median([x.rate for x in runs])
        calls = _median([x.calls / x.ops for x in runs])
        w(f"  {name:<22} {rate:>8,.0f} {1000 / rate:>7.2f} {calls:>16.1f}")
    if r.ratios:
        sim = _median([x.rate for x in r.engine[SIM]])
        lib = _median([x.rate for x in r.engine[LIBVIRT]])
        w(f"  ratio libvirt/simulator: {_median(r.ratios):.2f} (per repetition: "
          f"{', '.join(f'{x:.2f}' for x in r.ratios)}); the test driver adds "
          f"{1000 / lib - 1000 / sim:+.2f} ms per operation")
    w("")
    w(f"[drivers alone] {r.sizes.driver_guests} guests x {len(DRIVER_CALLS)} direct calls "
      f"({', '.join(label for label, _ in DRIVER_CALLS)})")
    for name, druns in r.drivers.items():
        rate = _median([x.rate for x in druns])
        w(f"  {name:<22} {rate:>9,.0f} calls/s {1e6 / rate:>7.1f} µs/call (mean over the mix)")
    if r.libvirt_skipped:
        w(f"  {LIBVIRT}: skipped: {r.libvirt_skipped}")
    if r.drivers:
        names = list(r.drivers)
        w("  µs per call, by call (median of the repetitions' means):")
        w(f"    {'call':<15}" + "".join(f" {n:>20}" for n in names))
        for label in dict.fromkeys(label for label, _ in DRIVER_CALLS):
            w(f"    {label:<15}" + "".join(
                f" {_median([x.per_call[label] for x in r.drivers[n]]):>20,.1f}"
                for n in names))
    w("")
    q = r.qemu
    if q.skipped:
        w(f"[real QEMU] skipped: {q.skipped}")
        return "\n".join(out)
    stalls = ", ".join(f"{k} {v:.0f} %" for k, v in q.contention.items()) or "unknown"
    reps = r.sizes.qemu_repetitions
    w(f"[real QEMU] qemu:///system ({q.versions}), one diskless guest per repetition "
      f"(128 MiB, 1 vCPU, type='qemu'), acpi_timeout {QEMU_ACPI_TIMEOUT} s; LibvirtDriver "
      f"called directly; {reps} repetition{'s' if reps != 1 else ''} (stalls: {stalls})")
    w(f"  {'operation':<16} {'median ms':>10} {'min':>8} {'max':>8}  n  answer (last)")
    for label, values in q.ms.items():
        note = ""
        if label == "power_off":
            note = f"  (includes the {QEMU_ACPI_TIMEOUT} s ACPI wait: no OS to answer)"
        w(f"  {label:<16} {_median(values):>10.1f} {min(values):>8.1f} {max(values):>8.1f} "
          f"{len(values):>2}  {q.results.get(label)}{note}")
    if q.failed:
        w(f"  FAILED (the measurements above are the calls made before): {q.failed}")
    return "\n".join(out)


def header_line() -> str:
    return (f"vmledger hypervisor benchmark - Python {platform.python_version()}, "
            f"{os.cpu_count()} CPUs")


def run(sizes: Sizes = FULL, *, log: Callable[[str], None] = print) -> str:
    """Run the hypervisor benchmark; return the report to print."""
    report = Report(sizes)
    support, reason = _libvirt_support()
    report.libvirt_skipped = reason
    directory = Path(tempfile.mkdtemp(prefix="vmledger-hv-"))
    try:
        def libvirt_driver(name: str) -> Any:
            from vmledger.adapters.libvirt import LibvirtDriver

            node = directory / name
            node.mkdir()
            return LibvirtDriver(support.node_uri(node), acpi_timeout=1.0, poll=0.01)

        makers: dict[str, Callable[[str], Any]] = {SIM: lambda _name: Simulator(seed=0)}
        if support is not None:
            makers[LIBVIRT] = libvirt_driver
        stalls = pressure_totals()
        began = time.perf_counter()
        order = random.Random(0)
        # warm-up (imports, statement caches)
        for name, make in makers.items():
            for what, measure in (("engine", engine_run), ("driver", driver_run)):
                hypervisor = make(f"warm-{what}-{_slug(name)}")
                try:
                    measure(hypervisor, 2)
                finally:
                    if hasattr(hypervisor, "close"):
                        hypervisor.close()
        for rep in range(1, sizes.repetitions + 1):
            names = list(makers)
            order.shuffle(names)
            runs: dict[str, EngineRun] = {}
            for name in names:
                hypervisor = makers[name](f"engine-{rep}-{_slug(name)}")
                try:
                    runs[name] = engine_run(hypervisor, sizes.engine_servers)
                finally:
                    if hasattr(hypervisor, "close"):
                        hypervisor.close()
                report.engine.setdefault(name, []).append(runs[name])
            order.shuffle(names)
            for name in names:
                driver = makers[name](f"driver-{rep}-{_slug(name)}")
                try:
                    report.drivers.setdefault(name, []).append(
                        driver_run(driver, sizes.driver_guests))
                finally:
                    if hasattr(driver, "close"):
                        driver.close()
            if LIBVIRT in runs:
                report.ratios.append(runs[LIBVIRT].rate / runs[SIM].rate)
            log(f"  repetition {rep}/{sizes.repetitions}: " + ", ".join(
                f"engine on {n} {runs[n].rate:,.0f} ops/s" for n in makers))
        report.contention = contention(stalls, pressure_totals(),
                                       time.perf_counter() - began)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    log("real QEMU: per-operation latency")
    report.qemu = qemu_latency(sizes.qemu_repetitions, log)
    return header_line() + "\n" + format_report(report)


def _slug(name: str) -> str:
    return name.replace(" ", "-")

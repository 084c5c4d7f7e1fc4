"""Bounded memory in a long-running process: what the embedded hypervisor keeps per
guest, the caches bounded in bytes (rendered servers, loaded aggregates), and a soak
of many power-state sync passes (with list requests between them) whose traced memory
stays flat — a structure that grows by an entry per server per pass, as the simulator's
call record once did, fails it."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.compute import built
from vmledger import Engine
from vmledger.adapters.hypervisor import GuestSpec, Observation
from vmledger.adapters.simulator import Simulator
from vmledger.api import create_app
from vmledger.api.testing import ApiClient
from vmledger.domain.clock import FakeClock


def _traced(run: Callable[[], Any]) -> int:
    """The bytes Python holds more after ``run()`` than before it."""
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    run()
    gc.collect()
    return tracemalloc.get_traced_memory()[0] - before


@pytest.fixture
def traced() -> Any:
    tracemalloc.start()
    try:
        yield _traced
    finally:
        tracemalloc.stop()


def test_a_guest_costs_the_simulator_few_bytes_beyond_its_id_and_name(traced: Any) -> None:
    # the embedded hypervisor keeps one guest per server: at 100,000 servers each byte
    # of a guest is 100 kB of the serving process
    sim = Simulator(calls_kept=0)
    count = 5000
    specs = [GuestSpec(server_id=f"{i:08d}-0000-4000-8000-000000000000", name=f"vm-{i}",
                       flavor_id="2", vcpus=1, ram_mb=2048, disk_gb=20, image_id="cirros")
             for i in range(count)]

    def spawn() -> None:
        for spec in specs:
            sim.spawn(spec)

    per_guest = traced(spawn) / count
    assert per_guest < 180, f"{per_guest:.0f} bytes a guest"
    guest = sim.guests()[specs[7].server_id]
    assert (guest["flavor_id"], guest["vcpus"], guest["ram_mb"], guest["disk_gb"],
            guest["image_id"], guest["panicked_boots"]) == ("2", 1, 2048, 20, "cirros", [])


def test_rendered_servers_are_bounded_in_bytes() -> None:
    from vmledger.api.microversions import APIVersion
    from vmledger.api.rendering import ENTRY_OVERHEAD, RenderCache
    from vmledger.api.views import Links, Viewer
    from vmledger.projections.server_queries import StoredServer

    cache = RenderCache(capacity=1000, max_bytes=10 * (1000 + ENTRY_OVERHEAD))
    viewer = Viewer(APIVersion(2, 1), Links("http://x"))

    def render(doc: dict[str, Any], _: Viewer) -> dict[str, Any]:
        return {"id": doc["id"], "pad": "x" * 979}  # 1,000 bytes of JSON

    rows = [StoredServer.of({"id": f"{i:03d}", "version": 1}) for i in range(50)]
    for row in rows:
        assert cache.render(row, viewer, render).startswith(b'{"id":"%s"' % row.id.encode())
    assert len(cache) == 10 and cache.bytes <= cache.max_bytes
    # the newest are kept: rendering them again is a hit
    hits = cache.hits
    cache.render(rows[-1], viewer, render)
    assert cache.hits == hits + 1
    # a body larger than the whole bound is served, not kept
    huge = RenderCache(capacity=10, max_bytes=500)
    assert len(huge.render(rows[0], viewer, render)) == 1000 and len(huge) == 0


def test_loaded_aggregates_are_cached_within_a_bound_in_bytes(
        clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    from vmledger.domain.aggregate_cache import approximate_size

    monkeypatch.setenv("VMLEDGER_AGGREGATE_CACHE_BYTES", "60000")
    with Engine("memory", clock=clock) as engine:
        servers = [built(engine, f"vm-{i}") for i in range(30)]
        cache: Any = engine.service.repository.cache
        for server_id in servers:
            assert engine.get_server(server_id).name.startswith("vm-")
            engine.service.get(server_id)
        assert cache.max_bytes == 60000
        assert 0 < cache.bytes <= 60000
        held = [cache.cache[key][3] for key in cache.cache]
        assert 3 <= len(held) < 30
        assert sum(approximate_size(a) for a in held) <= 60000
        # the cached aggregates are still right after more changes (fast-forwarded)
        engine.lock(servers[-1])
        assert engine.get_server(servers[-1]).locked


class LeakySimulator(Simulator):
    """The simulator as it once was: every observation kept, forever."""

    def __init__(self) -> None:
        super().__init__(calls_kept=100)
        self.every_call: list[tuple[str, str]] = []

    def observe(self, server_id: str) -> Observation:
        self.every_call.append(("observe", server_id))
        return super().observe(server_id)


def _growth_over_sync_passes(tmp_path: Path, sim: Simulator, servers: int = 100,
                             passes: tuple[int, int] = (10, 100)) -> int:
    """How many bytes the traced memory grew from after pass ``passes[0]`` to after
    pass ``passes[1]`` of the power-state sync (a list page requested after each)."""
    with Engine(f"sqlite:///{tmp_path / 'soak.db'}", hypervisor=sim) as engine:
        for i in range(servers):
            built(engine, f"vm-{i}")
        client = ApiClient(create_app(engine))
        tracemalloc.start()
        try:
            marks: dict[int, int] = {}
            for n in range(1, passes[1] + 1):
                assert engine.sync_power_states() == 0
                response = client.get("/v2.1/servers/detail", params={"limit": 50})
                assert response.status_code == 200
                if n in passes:
                    gc.collect()
                    marks[n] = tracemalloc.get_traced_memory()[0]
            return marks[passes[1]] - marks[passes[0]]
        finally:
            tracemalloc.stop()


#: what the traced memory may move by between pass 10 and pass 100: it wanders by up
#: to about 100 kB (the event loop's and the HTTP client's objects in flight, statement
#: caches); a record of every observation (one 2-tuple per server per pass) grows it by
#: about 1.4 MB here
SOAK_BOUND = 256 * 1024


def _growth_in_a_fresh_process(tmp_path: Path, simulator: str, servers: int) -> int:
    """:func:`_growth_over_sync_passes` in a process of its own: what other tests left
    running in this one (a background thread, an engine not yet collected) would be
    counted with it."""
    root = Path(__file__).resolve().parent.parent
    code = ("import sys; from pathlib import Path; import tests.test_memory as t;"
            " from vmledger.adapters.simulator import Simulator;"
            f" sim = {simulator};"
            " print(t._growth_over_sync_passes(Path(sys.argv[1]), sim,"
            f" servers={servers}))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1])


@pytest.mark.slow
def test_memory_stays_flat_over_many_sync_passes(tmp_path: Path) -> None:
    grown = _growth_in_a_fresh_process(tmp_path, "Simulator(calls_kept=100)", 100)
    assert grown < SOAK_BOUND, f"grew {grown} bytes from pass 10 to pass 100"


@pytest.mark.slow
def test_the_soak_catches_a_record_that_grows_with_every_pass(tmp_path: Path) -> None:
    grown = _growth_in_a_fresh_process(tmp_path, "t.LeakySimulator()", 100)
    assert grown > SOAK_BOUND, f"a leak went unseen: grew only {grown} bytes"

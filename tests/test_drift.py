"""Drift: the hypervisor disagrees with the record; the power-state sync records it as
an audited event and follows Nova's policy (stop, or only record; skip tasks in flight)."""

from __future__ import annotations

from pathlib import Path

from tests.engines import make_engine
from vmledger import Engine, FakeClock, PowerState, Simulator


def _active(engine: Engine) -> str:
    server = engine.create_server("d", flavor="m1.small", image="cirros-0.6.2-x86_64")
    engine.run_until_idle()
    return server.id


def test_power_state_sync_follows_novas_policy(tmp_path: Path) -> None:
    sim = Simulator()
    with make_engine(f"sqlite:///{tmp_path / 'd.db'}", clock=FakeClock(), hypervisor=sim) as e:
        shut, crashed, forced, gone, busy = (_active(e) for _ in range(5))
        e.stop(forced)
        e.run_until_idle()
        assert e.sync_power_states() == 0  # everything agrees

        sim.set_power_state(shut, PowerState.SHUTDOWN)      # the guest shut itself down
        sim.set_power_state(crashed, PowerState.CRASHED)
        sim.set_power_state(forced, PowerState.RUNNING)     # started behind our back
        sim.forget(gone)                                    # undefined out of band
        e.pause(busy)                                       # a task in flight is skipped
        sim.set_power_state(busy, PowerState.SHUTDOWN)
        assert e.sync_power_states() == 4

        assert (e.get_server(shut).status, e.get_server(shut).power_state) == ("SHUTOFF", 4)
        assert e.get_server(crashed).status == "SHUTOFF"
        assert sim.observe(crashed).power_state == PowerState.SHUTDOWN  # powered off
        assert e.get_server(forced).status == "SHUTOFF"
        assert sim.observe(forced).power_state == PowerState.SHUTDOWN
        assert (e.get_server(gone).status, e.get_server(gone).power_state) == ("ACTIVE", 0)
        assert e.get_server(busy).task_state == "pausing"

        drift = [h for h in e.history(forced) if h.event == "DriftObserved"]
        assert len(drift) == 1 and drift[0].cause == "agent"
        assert drift[0].details["observed_power_state"] == 1
        assert drift[0].details["drift_action"] == "stop"
        assert drift[0].details["call"]["call"] == "power_off"
        record = next(h for h in e.history(gone) if h.event == "DriftObserved")
        assert record.details["drift_action"] == "record"
        assert e.sync_power_states() == 0  # recorded once, not on every pass


def test_drift_is_told_in_plain_english(tmp_path: Path) -> None:
    """The ledger's story of a drift request and the server's explanation describe the
    drift (they used to recurse without end on it)."""
    from vmledger.api import create_app
    from vmledger.api.testing import ApiClient

    sim = Simulator()
    with make_engine(f"sqlite:///{tmp_path / 'd.db'}", clock=FakeClock(), hypervisor=sim) as e:
        sid = _active(e)
        sim.set_power_state(sid, PowerState.SHUTDOWN)
        assert e.sync_power_states() == 1
        drift = next(h for h in e.history(sid) if h.event == "DriftObserved")
        story = e.ledger.story(drift.request_id)
        assert any("found the guest shutdown" in line for line in story), story
        assert any("found the guest shutdown" in line for line in e.ledger.explain(sid))
        client = ApiClient(create_app(e))
        assert client.get(f"/ledger/v1/requests/{drift.request_id}").status_code == 200
        assert client.get(f"/ledger/v1/servers/{sid}/explain").status_code == 200
        assert client.get(f"/ledger/v1/servers/{sid}/timeline").status_code == 200

"""Background mode: the agent and the view follow the log written by another process
(another Engine on the same database) without anyone calling run_until_idle."""

from __future__ import annotations

import time

from vmledger import Engine


def wait_for(predicate: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


def test_agent_process_follows_commands_from_an_api_process(url: str) -> None:
    with Engine(url, host="compute-1") as agent_side, Engine(url, host="compute-1") as api:
        agent_side.run_in_background(interval=0.05)
        server = api.create_server("bg", flavor="m1.small", image="cirros-0.6.2-x86_64")
        # the other process's agent builds it; the API side's view follows the log
        wait_for(lambda: api.updater.catch_up() >= 0
                 and api.get_server(server.id).status == "ACTIVE")
        started = time.monotonic()
        api.pause(server.id)
        wait_for(lambda: agent_side.view.get(server.id)["vm_state"] == "paused")
        assert time.monotonic() - started < 5

"""Background mode: the agent and the view follow the log written by another process
(another Engine on the same database) without anyone calling run_until_idle."""

from __future__ import annotations

import time

from tests.support.waiting import wait_for
from vmledger import Engine


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


def test_an_api_engine_without_an_agent_has_no_host_of_its_own(url: str) -> None:
    """``Engine(agent=False)`` (``vmledger serve --no-agent``): its host is no compute
    host (not listed, never scheduled on), it enacts nothing, and in the background its
    view follows what the agents of other processes record."""
    with Engine(url, host="compute-2") as agent_side, \
            Engine(url, host="api-1", agent=False) as api:
        agent_side.run_until_idle()  # its agent reports compute-2
        assert api.known_hosts() == ["compute-2"]
        assert [h["host"] for h in api.hypervisors()] == ["compute-2"]
        server = api.create_server("apart", flavor="m1.small", image="cirros-0.6.2-x86_64")
        assert server.host == "compute-2"
        assert api.run_until_idle() == 0
        assert api.get_server(server.id).status == "BUILD"
        agent_side.run_in_background(interval=0.05)
        api.run_in_background(interval=0.05)
        wait_for(lambda: api.get_server(server.id).status == "ACTIVE")

"""Every row of the lifecycle table is wired end to end — an API route, a command handler,
an agent plan for what the agent enacts, an Engine method — and an unknown action name
fails loudly everywhere it could be looked up."""

from __future__ import annotations

import pytest

from vmledger import Engine
from vmledger.api.app import RESOURCE_ROUTES
from vmledger.api.server_actions import ACTION_PARSERS
from vmledger.domain import lifecycle as lc
from vmledger.domain.commands import actions
from vmledger.domain.commands.actions import HANDLERS, REQUESTED_ELSEWHERE
from vmledger.domain.errors import BadRequest
from vmledger.workers import plans

ROWS = list(lc.ACTIONS.values())
#: the route of each command another module serves (not POST /servers/{id}/action)
ROUTES = {
    "ServerCommands.create": ("/servers", "POST"),
    "ImageCommands.create_image": None,  # an action key: createImage
    "ImageCommands.create_backup": None,  # an action key: createBackup
    "ServerCommands.set_metadata": ("/servers/{server_id}/metadata", "POST"),
    "ServerCommands.delete_metadata": ("/servers/{server_id}/metadata/{key}", "DELETE"),
    "ServerCommands.change_tags": ("/servers/{server_id}/tags", "PUT"),
}


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_every_row_is_reachable_over_http(row: lc.Action) -> None:
    if row.variant_of is not None:  # the command picks it for its base row's request
        assert not row.api_keys
        return
    if row.api_keys:
        assert all(key in ACTION_PARSERS for key in row.api_keys)
        return
    route = ROUTES[REQUESTED_ELSEWHERE[row.name]]
    assert route is not None
    assert any(path == route[0] and route[1] in methods
               for path, _, methods in RESOURCE_ROUTES), route


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_every_row_has_a_command_handler(row: lc.Action) -> None:
    if row.name in REQUESTED_ELSEWHERE:
        module, method = REQUESTED_ELSEWHERE[row.name].split(".")
        from vmledger.domain import commands
        assert callable(getattr(getattr(commands, module), method))
        return
    base = row.variant_of or row.name
    assert base in HANDLERS


@pytest.mark.parametrize("row", [r for r in ROWS if r.asynchronous], ids=lambda r: r.name)
def test_every_row_the_agent_enacts_has_a_plan(row: lc.Action) -> None:
    assert row.name in plans.PLANS


@pytest.mark.parametrize("name", sorted(HANDLERS))
def test_the_engine_has_a_method_for_every_action_name(name: str) -> None:
    if name in ("reboot_soft", "reboot_hard"):  # engine.reboot(hard=...)
        return
    assert callable(getattr(Engine, name, None)), name


def test_a_handler_for_an_action_the_table_lacks_fails_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(actions._WRITTEN, "frobnicate", actions.Handler(actions._lock))
    with pytest.raises(LookupError, match="frobnicate"):
        actions._handlers()


def test_an_unknown_action_is_refused_by_name() -> None:
    with Engine("memory") as engine:
        sid = engine.create_server("web", flavor="m1.small", image="cirros-0.6.2-x86_64").id
        with pytest.raises(BadRequest, match="There is no such action: frobnicate"):
            engine.act(sid, "frobnicate")

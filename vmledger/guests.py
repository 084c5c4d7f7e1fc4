"""Reading a guest: its console output and diagnostics, from this host's hypervisor, or
asked of another host's agent through the database (as Nova asks the compute host over
RPC), and answering the questions other processes ask of this host's guests."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any

from vmledger.adapters.hypervisor import Hypervisor, HypervisorError
from vmledger.domain import lifecycle as lc
from vmledger.domain import status as st
from vmledger.domain.errors import Conflict, InvalidState, NotFound
from vmledger.fleet import Fleet
from vmledger.projections import guest_reads
from vmledger.projections.servers import ServersView

log = logging.getLogger(__name__)

#: how long a read of a guest on another host waits for that host's agent, in seconds
#: (its passes run every fraction of a second)
GUEST_READ_TIMEOUT = 10.0
#: what Nova removes from console output (control characters but tab and newline)
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f]")


class Guests:
    def __init__(self, view: ServersView, hypervisor: Hypervisor, host: str | None,
                 fleet: Fleet) -> None:
        self.view = view
        self.hypervisor = hypervisor
        self.host = host
        self.fleet = fleet
        #: how long a read of a guest on another host waits for that host's agent (s)
        self.timeout = GUEST_READ_TIMEOUT

    def console_output(self, doc: dict[str, Any], length: int | None) -> str:
        """What the server's guest wrote to its serial console, its last ``length`` lines
        as Nova cuts them (0: nothing; -1 or None: all), without control characters."""
        text = _CONTROL.sub("", str(self.read(doc, "get_console_output", "console_output")))
        if length is None or length == -1:
            return text
        if length == 0:
            return ""
        return "\n".join(text.split("\n")[-length:])

    def diagnostics(self, doc: dict[str, Any]) -> dict[str, Any]:
        return dict(self.read(doc, "get_diagnostics", "diagnostics"))

    def read(self, doc: dict[str, Any], what: str, kind: str) -> Any:
        """Read the server's guest (``kind``: ``console_output`` or ``diagnostics``):
        409 while it is being deleted, or when it has no host (scheduling, offloaded,
        never placed) or its host is down (``Instance <id> is not ready``); the
        hypervisor's 404 is not found, any other refusal 409."""
        sid = str(doc["id"])
        if doc.get("task_state") == lc.DELETING:
            raise InvalidState(what, sid, "task_state", lc.DELETING)
        host = st.placed_host(doc)
        if host is None or doc.get("vm_state") == lc.SHELVED_OFFLOADED:  # no guest yet
            raise Conflict(f"Instance {sid} is not ready")
        if host == self.host:
            result = self.read_here(sid, kind)
        else:
            if not self.fleet.host_is_up(str(host)):
                raise Conflict(f"Instance {sid} is not ready")
            question = guest_reads.ask(self.view, str(host), sid, kind, datetime.now(UTC))
            answer = guest_reads.wait(self.view, question, self.timeout)
            if answer is None:
                raise Conflict(f"The compute host {host} did not answer in time; "
                               "try again.")
            result = answer
        if result["code"] == 200:
            return result["body"]
        if result["code"] == 404:
            raise NotFound(result["message"])
        raise Conflict(result["message"])

    def read_here(self, server_id: str, kind: str) -> dict[str, Any]:
        """Read a guest of this host's hypervisor: ``code`` 200 and ``body``, or the
        refusal's ``code`` (404 or 409) and ``message``."""
        try:
            body: Any = (self.hypervisor.console_output(server_id) if kind == "console_output"
                         else dict(self.hypervisor.diagnostics(server_id)))
        except HypervisorError as e:
            return {"code": 404 if e.code == 404 else 409, "message": e.message}
        return {"code": 200, "body": body}

    def answer(self) -> int:
        """Answer the questions other processes asked of this host's guests; drop those
        their askers gave up on. Returns how many were answered."""
        answered = 0
        if self.host is None:  # no host of its own (a process without an agent)
            return answered
        now = datetime.now(UTC)
        for question, server_id, kind, asked_at in guest_reads.questions(self.view,
                                                                          self.host):
            if now - datetime.fromisoformat(asked_at) > guest_reads.STALE_AFTER:
                guest_reads.drop(self.view, question)
                continue
            try:
                result = self.read_here(server_id, kind)
            except Exception:  # a bug or a lost connection: the asker gets a refusal
                log.exception("agent %s: reading %s of %s failed", self.host, kind,
                              server_id)
                result = {"code": 409, "message": "The host agent could not read the "
                                                  "guest; try again."}
            guest_reads.answer(self.view, question, result)
            answered += 1
        return answered

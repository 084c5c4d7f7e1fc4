"""The lifecycle state diagram, generated from the lifecycle table.

``python -m vmledger.domain.diagram > docs/lifecycle.md`` writes the document; a test
fails when the committed document no longer matches the table. Nodes are vm_states;
an edge ``a --> b: action`` means the action started in ``a`` ends in ``b`` on success;
``action (fails)`` and ``action (rollback)`` are its failure ends where they differ.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from transitions.extensions import GraphMachine

from vmledger.domain import lifecycle as lc
from vmledger.domain.changes import Change, Clear, ConfirmDeadline, Field, Now, Param
from vmledger.domain.drift import DRIFT_STOPS
from vmledger.domain.power import PowerState


def _edges() -> list[tuple[str, str, str]]:
    edges: dict[tuple[str, str, str], None] = {}
    for action in lc.ACTIONS.values():
        if action.name == "create":
            edges[(lc.NEW, lc.BUILDING, "create")] = None
            starts = [lc.BUILDING]
        else:
            starts = sorted(action.vm_states if action.vm_states is not None
                            else set(lc.VM_STATES) - {lc.DELETED})
        for start in starts:
            ends: set[str] = set()
            for kind, label in (("complete", action.name), ("fail", f"{action.name} (fails)"),
                                ("rollback", f"{action.name} (rollback)")):
                if not action.asynchronous:
                    if action.name != "reset_state":
                        continue  # lock/unlock change no state
                    for target in (lc.ACTIVE, lc.ERROR):
                        edges[(start, target, action.name)] = None
                    break
                first = action.steps[0] if action.steps else None
                stash_values = [lc.ACTIVE, lc.STOPPED] if action.success == lc.STASHED else [None]
                for stashed in stash_values:
                    end, _ = lc.outcome(kind, action.name, start, first, stashed=stashed)
                    if kind != "complete" and (end == start or end in ends):
                        continue
                    ends.add(end)
                    edges[(start, end, label)] = None
    return list(edges)


def mermaid() -> str:
    """The state diagram as Mermaid ``stateDiagram-v2`` text (rendered by transitions)."""
    transitions: list[dict[str, Any]] = [
        {"trigger": f"t{i}", "source": src, "dest": dst, "label": label}
        for i, (src, dst, label) in enumerate(_edges())]
    logging.getLogger("transitions").setLevel(logging.ERROR)
    machine = GraphMachine(states=[lc.NEW, *lc.VM_STATES],
                           transitions=[{k: v for k, v in t.items() if k != "label"}
                                        for t in transitions],
                           initial=lc.NEW, graph_engine="mermaid", auto_transitions=False,
                           title="vmledger server lifecycle", show_conditions=False)
    text: str = machine.get_graph().draw(None)
    title = "vmledger server lifecycle"
    text = text.replace(f"---\n{title}\n---", f"---\ntitle: {title}\n---", 1)
    labels = {t["trigger"]: t["label"] for t in transitions}
    # transitions draws trigger names (merged with " | "); show the table's labels
    return "\n".join(
        re.sub(r"\bt\d+\b", lambda m: labels[m.group(0)], line) if "-->" in line else line
        for line in text.splitlines()) + "\n"


def document() -> str:
    rows = "\n".join(
        f"| `{a.name}` | {a.api_name} | "
        f"{', '.join(sorted(a.vm_states)) if a.vm_states is not None else 'any'} | "
        f"{_tasks(a.task_states)} | {' → '.join(a.steps) or '—'} | {_ends(a)} | {a.doc} |"
        for a in lc.ACTIONS.values())
    return f"""# Server lifecycle

Generated from `vmledger/domain/lifecycle.py` by `python -m vmledger.domain.diagram`;
a test fails when this file no longer matches the table. Do not edit by hand.

| action | Nova name | from vm_state | from task_state | task states in flight \
| success | failure | rollback | note |
|---|---|---|---|---|---|---|---|---|
{rows}

*same* keeps the vm_state the action started from; *stashed* is the vm_state saved
when the resize was requested (a server resized while stopped ends stopped).

## What each action records

The API key is the key of a `POST /servers/{{id}}/action` body; a *variant* is a row the
command turns a request into (a `reboot` of type HARD is `reboot_hard`). The instance
action and its event are what `os-instance-actions` shows. The last two columns are
what the outcome changes besides the vm_state (a rollback changes what a failure does).

| action | API key | instance action | event | on success also | on failure also |
|---|---|---|---|---|---|
{_record_rows()}

```mermaid
{mermaid().strip()}
```

## Drift

The host agent's power-state sync compares every server with no task in flight with
the hypervisor. These (vm_state, reported power state) pairs stop the server (vm_state
`stopped`; a guest still running is powered off); any other difference only updates the
recorded power state. Either way the finding is a `DriftObserved` event.

{_drift_rows()}
"""


def _record_rows() -> str:
    def keys(action: lc.Action) -> str:
        if action.variant_of:
            return f"variant of `{action.variant_of}`"
        return ", ".join(f"`{k}`" for k in action.api_keys) or "—"

    return "\n".join(
        f"| `{a.name}` | {keys(a)} | {a.instance_action or '—'} | {a.event or '—'} | "
        f"{_changes(a.on_complete)} | {_changes(a.on_fail)} |"
        for a in lc.ACTIONS.values())


def _changes(changes: Mapping[str, Change]) -> str:
    def value(change: Change) -> str:
        if isinstance(change, Now):
            return "now"
        if isinstance(change, ConfirmDeadline):
            return "now + confirm window"
        if isinstance(change, Param):
            return f"the request's {change.name}" + (" (if any)" if change.skip_empty else "")
        if isinstance(change, Clear):
            return "none (if set)"
        if isinstance(change, Field):
            return f"its {change.name}" + (" (if any)" if change.skip_empty else "")
        return "none" if change is None else f"{change}"

    return ", ".join(f"{name} = {value(c)}" for name, c in changes.items()) or "—"


def _drift_rows() -> str:
    names = {int(p): p.name for p in PowerState}
    lines = ["| vm_state | hypervisor reports | sync does |", "|---|---|---|"]
    lines += [f"| {vm} | {names[power]} | stop |" for vm, power in sorted(DRIFT_STOPS)]
    return "\n".join(lines)


def _ends(action: lc.Action) -> str:
    if action.name == "reset_state":
        return "active or error (as asked) | — | —"
    if not action.asynchronous:
        return "*same* (no state change) | — | —"
    return f"{_end(action.success)} | {_end(action.failure)} | {_end(action.rollback)}"


def _tasks(tasks: frozenset[str | None] | None) -> str:
    if tasks is None:
        return "any"
    return ", ".join(sorted(t or "none" for t in tasks))


def _end(rule: Any) -> str:
    if isinstance(rule, dict):
        return ", ".join(f"{k} → {v}" for k, v in sorted(rule.items()))
    return str({lc.SAME: "*same*", lc.STASHED: "*stashed*"}.get(rule, rule))


if __name__ == "__main__":
    print(document(), end="")

"""A server's life as one self-contained HTML page: inline SVG and CSS, nothing loaded.

:func:`render_timeline` draws, from the server's events (the ledger, not the view):

- a band per status (BUILD, ACTIVE, RESIZE, VERIFY_RESIZE, ERROR…) showing when the
  server was in it;
- a bar per request (an action: create, resize, the timer's confirm_resize, pause…)
  from the request to its outcome, labelled with who asked; failures in red;
- a mark per hypervisor call with its name and duration; failed calls in red;
- a table of the requests: when, who, cause, outcome (faults in full), the status they
  led to, each hypervisor call with its duration and error, and the request id;
- the ledger's plain-words explanation.

The horizontal axis keeps the order of events and compresses time: each event takes a
step, and the time between two events adds width growing with its logarithm, so that a
burst of agent steps and a day of idleness both stay readable; long gaps are labelled
("+2 h"). Every text comes from the log and is HTML-escaped.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from html import escape
from typing import Any

from vmledger.api.timeline_style import CSS
from vmledger.audit.ledger import LedgerEntry
from vmledger.domain.server import AGENT, TIMER, Server

__all__ = ["Step", "render_timeline"]


@dataclass(frozen=True)
class Step:
    """One event of the server and its status right after it."""

    entry: LedgerEntry
    status: str
    vm_state: str
    task_state: str | None


#: colours of the statuses (others get a colour from their name)
STATUS_COLORS: dict[str, str] = {
    "BUILD": "#3b82f6",
    "ACTIVE": "#16a34a",
    "REBOOT": "#eab308",
    "HARD_REBOOT": "#ca8a04",
    "REBUILD": "#06b6d4",
    "RESIZE": "#f97316",
    "VERIFY_RESIZE": "#a855f7",
    "REVERT_RESIZE": "#fb923c",
    "MIGRATING": "#0ea5e9",
    "PAUSED": "#64748b",
    "SUSPENDED": "#475569",
    "SHUTOFF": "#334155",
    "ERROR": "#dc2626",
    "DELETED": "#111827",
    "SOFT_DELETED": "#374151",
    "SHELVED": "#78716c",
    "SHELVED_OFFLOADED": "#57534e",
    "RESCUE": "#db2777",
    "UNKNOWN": "#9ca3af",
}
OK_COLOR = "#334155"
FAIL_COLOR = "#dc2626"
PENDING_COLOR = "#d97706"
QUIET_COLOR = "#94a3b8"
CALL_COLOR = "#0f766e"

# geometry of the drawing (SVG user units = CSS pixels at 100 %)
WIDTH = 1160
GUTTER = 112          # left column with the lane names
RIGHT = 16
PLOT = WIDTH - GUTTER - RIGHT
CHAR = 6.9            # average width of a 12 px character, to place labels
LANE = 20             # a status band
ROW = 22              # a request or hypervisor row
MAX_CALL_ROWS = 3
#: with more requests than this, request bars are not labelled (the table names them)
MAX_LABELLED = 40


def status_color(status: str) -> str:
    known = STATUS_COLORS.get(status)
    if known is not None:
        return known
    hue = int(hashlib.sha256(status.encode()).hexdigest()[:4], 16) % 360
    return f"hsl({hue} 55% 45%)"


# --- reading the events ----------------------------------------------------------------

@dataclass
class HvCall:
    index: int
    name: str
    driver: str
    host: str
    duration_ms: float | None
    error: str | None
    at: datetime


@dataclass
class Action:
    """One request as the page shows it."""

    request_id: str
    name: str
    detail: str
    who: str
    cause: str
    first: int
    last: int
    outcome: str = "recorded"
    fault: str | None = None
    status_after: str = ""
    calls: list[HvCall] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.outcome == "failed" or any(c.error for c in self.calls)


def _who(entry: LedgerEntry) -> str:
    if entry.cause == TIMER:
        return "timer (automatic)"
    if entry.cause == AGENT:
        return "host agent"
    who = entry.user_id or "unknown user"
    return f"{who} ({entry.project_id})" if entry.project_id else who


def _name_and_detail(entry: LedgerEntry) -> tuple[str, str]:
    p = entry.payload
    if entry.event == "Requested":
        flavor = (p.get("flavor") or {}).get("name")
        image = (p.get("image") or {}).get("name")
        return "create", f"{flavor}, {image}"
    if entry.event == "ActionRequested":
        action = str(p.get("action"))
        params = dict(p.get("params") or {})
        if isinstance(params.get("flavor"), dict):
            return action, f"to {params['flavor'].get('name')}"
        if isinstance(params.get("image"), dict):
            return action, f"with {params['image'].get('name')}"
        return action, ""
    if entry.event == "LockChanged":
        reason = p.get("locked_reason")
        return str(p.get("action")), f"reason: {reason}" if reason else ""
    if entry.event == "StateReset":
        return "reset_state", f"to {p.get('vm_state')}"
    if entry.event == "Updated":
        return "update", ", ".join(sorted(dict(p.get("changes") or {})))
    if entry.event == "DriftObserved":
        return "power sync", f"{p.get('previous_vm_state')} → {p.get('vm_state')}"
    return str(p.get("action") or entry.event), ""


def _actions(steps: Sequence[Step], server: Server) -> list[Action]:
    actions: dict[str, Action] = {}
    cut_short: dict[str, str] = {}
    for i, step in enumerate(steps):
        e = step.entry
        action = actions.get(e.request_id)
        if action is None:
            name, detail = _name_and_detail(e)
            action = actions[e.request_id] = Action(e.request_id, name, detail, _who(e),
                                                    e.cause, i, i)
        action.last = i
        action.status_after = step.status
        p = e.payload
        for key in ("supersedes", "superseded"):
            if p.get(key):
                cut_short[str(p[key])] = e.request_id
        if e.event == "HypervisorCalled":
            duration = p.get("duration_ms")
            action.calls.append(HvCall(
                i, str(p.get("call")), str(p.get("driver")), str(p.get("host")),
                float(duration) if isinstance(duration, int | float) else None,
                str(p["error"]) if p.get("error") else None, e.timestamp))
        elif e.event == "ActionCompleted":
            action.outcome = "completed"
        elif e.event == "ActionFailed":
            fault = dict(p.get("fault") or {})
            action.outcome = "failed"
            action.fault = f"{fault.get('code')}: {fault.get('message')}"
            if p.get("rollback"):
                action.fault += " (rolled back)"
    for action in actions.values():
        opened = steps[action.first].entry.event in ("Requested", "ActionRequested")
        if action.outcome != "recorded" or not opened:
            continue
        if server.pending_request_id == action.request_id:
            action.outcome = "in progress"
        elif action.request_id in cut_short:
            action.outcome = "cut short"
            action.fault = f"by request {cut_short[action.request_id]}"
        else:
            action.outcome = "unfinished"
    return list(actions.values())


# --- formatting ------------------------------------------------------------------------

def _duration(ms: float | None) -> str:
    if ms is None:
        return "?"
    if ms < 1:
        return f"{ms:.2f} ms"
    if ms < 1000:
        return f"{ms:.0f} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{int(seconds // 60)} min {int(seconds % 60)} s"


def _gap(seconds: float) -> str:
    if seconds < 60:
        return f"+{seconds:.0f} s"
    if seconds < 3600:
        return f"+{seconds / 60:.0f} min"
    if seconds < 86400:
        hours, rest = divmod(seconds, 3600)
        minutes = round(rest / 60)
        return f"+{hours:.0f} h" + (f" {minutes} min" if minutes else "")
    days, rest = divmod(seconds, 86400)
    hours = round(rest / 3600)
    return f"+{days:.0f} d" + (f" {hours} h" if hours else "")


def _when(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S")


def _short(request_id: str) -> str:
    """``req-…5f9e2c1a``: the prefix and the (most distinctive) tail of a long id."""
    if len(request_id) <= 14:
        return request_id
    prefix, dash, _ = request_id.partition("-")
    return (prefix + dash if dash and len(prefix) <= 4 else "") + "…" + request_id[-8:]


def _attrs(**values: Any) -> str:
    return " ".join(f'{k.rstrip("_").replace("_", "-")}="{escape(str(v))}"'
                    for k, v in values.items())


# --- the drawing -----------------------------------------------------------------------

def _positions(steps: Sequence[Step], end: datetime, deleted: bool) -> tuple[list[float],
                                                                              float]:
    """x of every step and of the right end, in pixels."""
    raw: list[float] = []
    x = 0.0
    for i, step in enumerate(steps):
        if i:
            gap = max(0.0, (step.entry.timestamp - steps[i - 1].entry.timestamp
                            ).total_seconds())
            x += 1.0 + 1.6 * math.log10(1.0 + gap)
            if step.entry.request_id != steps[i - 1].entry.request_id:
                x += 1.0
        raw.append(x)
    tail = 0.0 if deleted or not steps else max(
        0.0, (end - steps[-1].entry.timestamp).total_seconds())
    total = x + 1.5 + 1.6 * math.log10(1.0 + tail)
    scale = PLOT / total
    return [GUTTER + r * scale for r in raw], GUTTER + total * scale


def _pack(spans: Sequence[tuple[float, float]], max_rows: int | None = None) -> list[int]:
    """A row for each (start, end) so that spans in one row do not overlap (-1: none)."""
    ends: list[float] = []
    rows: list[int] = []
    for start, stop in spans:
        for row, last in enumerate(ends):
            if start > last + 6:
                ends[row] = stop
                rows.append(row)
                break
        else:
            if max_rows is not None and len(ends) >= max_rows:
                rows.append(-1)
                continue
            ends.append(stop)
            rows.append(len(ends) - 1)
    return rows


def _pack_any(spans: Sequence[tuple[float, float]], max_rows: int) -> list[int]:
    """Like :func:`_pack` for spans in any order (earlier spans get the rows first)."""
    taken: list[list[tuple[float, float]]] = []
    rows: list[int] = []
    for start, stop in spans:
        for row, used in enumerate(taken):
            if all(stop + 6 < a or start > b + 6 for a, b in used):
                used.append((start, stop))
                rows.append(row)
                break
        else:
            if len(taken) < max_rows:
                taken.append([(start, stop)])
                rows.append(len(taken) - 1)
            else:
                rows.append(-1)
    return rows


def _label_span(x0: float, x1: float, text: str) -> tuple[float, float, float, str]:
    """Where a bar's label goes: (span start, span end, text x, anchor)."""
    width = len(text) * CHAR
    if x1 + 6 + width <= WIDTH - RIGHT:
        return x0, x1 + 6 + width, x1 + 6, "start"
    return x0 - 6 - width, x1, x0 - 6, "end"


def _svg(steps: Sequence[Step], actions: Sequence[Action], end: datetime,
         deleted: bool) -> str:
    xs, x_end = _positions(steps, end, deleted)
    parts: list[str] = []
    y = 4

    # time: gaps between events and the clock time of each request
    same_day = len({s.entry.timestamp.date() for s in steps}) <= 1
    gap_texts: list[str] = []
    last_label = -1e9
    for i in range(1, len(steps)):
        seconds = (steps[i].entry.timestamp - steps[i - 1].entry.timestamp).total_seconds()
        if seconds >= 60:
            mid = (xs[i - 1] + xs[i]) / 2
            gap_texts.append(f'<line class="gap" x1="{mid:.1f}" x2="{mid:.1f}" y1="{y + 14}" '
                             f'y2="@BOTTOM@"/>')
            text = _gap(seconds)
            if mid - len(text) * CHAR / 2 > last_label + 4:
                gap_texts.append(f'<text class="gaplabel" x="{mid:.1f}" y="{y + 10}" '
                                 f'text-anchor="middle">{escape(text)}</text>')
                last_label = mid + len(text) * CHAR / 2
    parts += gap_texts
    y += 30
    last_label = -1e9
    for action in actions:
        x = xs[action.first]
        at = steps[action.first].entry.timestamp
        text = at.strftime("%H:%M:%S") if same_day else at.strftime("%m-%d %H:%M")
        parts.append(f'<line class="tick" x1="{x:.1f}" x2="{x:.1f}" y1="{y + 4}" '
                     f'y2="@BOTTOM@"/>')
        if x > last_label + 6 and x + len(text) * CHAR <= WIDTH:
            parts.append(f'<text class="time" x="{x:.1f}" y="{y}">{escape(text)}</text>')
            last_label = x + len(text) * CHAR
    y += 10

    # a band per status
    statuses = list(dict.fromkeys(s.status for s in steps))
    parts.append(f'<text class="section" x="4" y="{y + 14}">status</text>')
    for lane, status in enumerate(statuses):
        top = y + lane * (LANE + 4)
        parts.append(f'<text class="lane" x="{GUTTER - 8}" y="{top + 14}" '
                     f'text-anchor="end">{escape(status)}</text>')
        parts.append(f'<rect class="track" x="{GUTTER}" y="{top}" width="{PLOT}" '
                     f'height="{LANE}"/>')
    i = 0
    while i < len(steps):
        j = i
        while j + 1 < len(steps) and steps[j + 1].status == steps[i].status:
            j += 1
        x0 = xs[i]
        x1 = xs[j + 1] if j + 1 < len(steps) else x_end
        status = steps[i].status
        top = y + statuses.index(status) * (LANE + 4)
        until = (_when(steps[j + 1].entry.timestamp) if j + 1 < len(steps)
                 else "deleted" if deleted else "now")
        tasks = sorted({s.task_state for s in steps[i:j + 1] if s.task_state})
        tip = f"{status} from {_when(steps[i].entry.timestamp)} until {until}"
        if tasks:
            tip += f" (tasks: {', '.join(tasks)})"
        parts.append(f'<rect class="band" x="{x0:.1f}" y="{top}" '
                     f'width="{max(x1 - x0, 2):.1f}" height="{LANE}" rx="3" '
                     f'fill="{status_color(status)}"><title>{escape(tip)}</title></rect>')
        i = j + 1
    for k, step in enumerate(steps):  # failures, marked where they happened
        if step.entry.event != "ActionFailed":
            continue
        fault = dict(step.entry.payload.get("fault") or {})
        top = y + statuses.index(step.status) * (LANE + 4)
        x = xs[k]
        tip = (f"{step.entry.payload.get('action')} failed at {_when(step.entry.timestamp)}: "
               f"{fault.get('code')} {fault.get('message')}")
        parts.append(f'<g class="failure"><title>{escape(tip)}</title>'
                     f'<circle cx="{x:.1f}" cy="{top + LANE / 2}" r="8"/>'
                     f'<text x="{x:.1f}" y="{top + LANE / 2 + 4}" '
                     f'text-anchor="middle">!</text></g>')
    y += len(statuses) * (LANE + 4) + 10

    # a bar per request
    parts.append(f'<line class="rule" x1="4" x2="{WIDTH - RIGHT}" y1="{y - 5}" '
                 f'y2="{y - 5}"/>')
    parts.append(f'<text class="section" x="4" y="{y + 14}">requests</text>')
    placed: list[tuple[float, float, float, str, str]] = []
    for action in actions:
        x0 = xs[action.first]
        x1 = max(xs[action.last], x0 + 6)
        label = f"{action.name}{' ' + action.detail if action.detail else ''} · {action.who}"
        if action.outcome == "failed":
            label += f" · FAILED {action.fault}"
        elif action.outcome in ("in progress", "cut short", "unfinished"):
            label += f" · {action.outcome}"
        if len(actions) > MAX_LABELLED:  # too many to name: bars (with tooltips) only
            label = ""
        s0, s1, tx, anchor = _label_span(x0, x1, label) if label else (x0, x1, x1, "start")
        placed.append((s0, s1, tx, anchor, label))
    rows = _pack([(p[0], p[1]) for p in placed])
    for action, (_, _, tx, anchor, label), row in zip(actions, placed, rows, strict=True):
        top = y + row * ROW
        x0 = xs[action.first]
        x1 = max(xs[action.last], x0 + 6)
        color = {"failed": FAIL_COLOR, "completed": OK_COLOR, "in progress": PENDING_COLOR,
                 }.get(action.outcome, QUIET_COLOR)
        tip = (f"{action.name} {action.detail}\nby {action.who} (cause {action.cause}) at "
               f"{_when(steps[action.first].entry.timestamp)}\n{action.outcome}"
               f"{': ' + action.fault if action.fault else ''}\nrequest {action.request_id}")
        css = "action failed" if action.failed else "action"
        parts.append(f'<g class="{css}"><title>{escape(tip)}</title>'
                     f'<rect x="{x0:.1f}" y="{top + 3}" width="{x1 - x0:.1f}" height="14" '
                     f'rx="3" fill="{color}"/>'
                     f'<text x="{tx:.1f}" y="{top + 14}" text-anchor="{anchor}">'
                     f'{escape(label)}</text></g>')
    y += (max(rows) + 1 if rows else 1) * ROW + 10

    # a mark per hypervisor call, and as many labels as fit below the marks
    calls = [c for a in actions for c in a.calls]
    parts.append(f'<line class="rule" x1="4" x2="{WIDTH - RIGHT}" y1="{y - 5}" '
                 f'y2="{y - 5}"/>')
    parts.append(f'<text class="section" x="4" y="{y + 13}">hypervisor</text>')
    for call in calls:
        tip = (f"{call.driver}.{call.name} on {call.host} at {_when(call.at)}: "
               f"{_duration(call.duration_ms)}"
               + (f"\nfailed: {call.error}" if call.error else "\nok"))
        css = "call failed" if call.error else "call"
        parts.append(f'<g class="{css}"><title>{escape(tip)}</title>'
                     f'<rect x="{xs[call.index] - 3:.1f}" y="{y + 2}" width="6" height="14" '
                     f'rx="1"/></g>')
    # failures first, then the operations, then the observations
    order = sorted(range(len(calls)), key=lambda k: (
        not calls[k].error, calls[k].name == "observe", k))
    labels = {k: f"{calls[k].name} {_duration(calls[k].duration_ms)}"
              + (" ✕" if calls[k].error else "") for k in order}
    places = [_label_span(xs[calls[k].index] + 3, xs[calls[k].index] - 3, labels[k])
              for k in order]  # right of the mark, or left of it at the right edge
    label_rows = _pack_any([(p[0], p[1]) for p in places], MAX_CALL_ROWS)
    for k, (_, _, tx, anchor), row in zip(order, places, label_rows, strict=True):
        if row < 0:
            continue
        call = calls[k]
        x = xs[call.index]
        top = y + 18 + row * (ROW - 4)
        css = "call failed" if call.error else "call"
        parts.append(f'<g class="{css}"><line x1="{x:.1f}" x2="{x:.1f}" y1="{y + 16}" '
                     f'y2="{top + 12}"/><text x="{tx:.1f}" y="{top + 13}" '
                     f'text-anchor="{anchor}">{escape(labels[k])}</text></g>')
    y += 18 + (max([*label_rows, -1]) + 1) * (ROW - 4) + 8
    body = "\n".join(parts).replace("@BOTTOM@", str(y - 4))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" role="img" '
            f'aria-label="timeline of the server" viewBox="0 0 {WIDTH} {y}" '
            f'width="{WIDTH}" height="{y}">\n{body}\n</svg>')


# --- the page --------------------------------------------------------------------------

def _table(steps: Sequence[Step], actions: Sequence[Action]) -> str:
    rows: list[str] = []
    for a in actions:
        calls = "".join(
            f'<li class="{"failed" if c.error else "ok"}"><code>{escape(c.name)}</code> '
            f'{escape(_duration(c.duration_ms))}'
            f'{" — failed: " + escape(c.error) if c.error else ""}</li>'
            for c in a.calls)
        result = a.outcome + (f": {a.fault}" if a.fault else "")
        css = ' class="failed"' if a.failed else ""
        # data-label: each cell's heading, shown beside it where the table becomes cards
        rows.append(
            f'<tr{css}><td data-label="When (UTC)">'
            f"{escape(_when(steps[a.first].entry.timestamp))}</td>"
            f'<td data-label="Action"><code>{escape(a.name)}</code> {escape(a.detail)}</td>'
            f'<td data-label="Who">{escape(a.who)}</td>'
            f'<td data-label="Cause">{escape(a.cause)}</td>'
            f'<td data-label="Result" class="result'
            f'{" failed" if a.outcome == "failed" else ""}">{escape(result)}</td>'
            f'<td data-label="Status after"><span class="badge" '
            f'style="background:{status_color(a.status_after)}">'
            f"{escape(a.status_after)}</span></td>"
            f'<td data-label="Hypervisor calls">'
            f"{'<ul>' + calls + '</ul>' if calls else '—'}</td>"
            f'<td data-label="Request" class="mono" title="{escape(a.request_id)}">'
            f"{escape(_short(a.request_id))}</td></tr>")
    return ("<table><thead><tr><th>When (UTC)</th><th>Action</th><th>Who</th><th>Cause</th>"
            "<th>Result</th><th>Status after</th><th>Hypervisor calls</th><th>Request</th>"
            "</tr></thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table>")


def render_timeline(server: Server, steps: Sequence[Step], *, generated_at: datetime,
                    explanation: Sequence[str] = (), omitted: int = 0) -> str:
    """The HTML page of ``server``'s timeline from its ``steps`` (oldest first);
    ``omitted`` earlier events are left out (said on the page)."""
    name = escape(server.name)
    status = server.status
    deleted = server.vm_state == "deleted"
    actions = _actions(steps, server)
    failures = sum(1 for a in actions if a.failed)
    flavor = (server.flavor or {}).get("name", "?")
    image = (server.image or {}).get("name", "?")
    why = next((line for line in reversed(explanation) if line.startswith("Why: ")), "")
    meta = (f"server <code>{escape(str(server.id))}</code> · project "
            f"{escape(server.project_id)} · user {escape(server.user_id)} · flavor "
            f"{escape(str(flavor))} · image {escape(str(image))} · host "
            f"{escape(server.host)}")
    counts = f"{server.version} events, {len(actions)} requests shown"
    if omitted:
        counts += f" (the first {omitted} events are not drawn)"
    if failures:
        counts += f' · <span class="alert">{failures} failed</span>'
    legend = (f'<span style="background:{OK_COLOR}"></span>request completed'
              f'<span style="background:{FAIL_COLOR}"></span>failed'
              f'<span style="background:{PENDING_COLOR}"></span>in progress'
              f'<span style="background:{QUIET_COLOR}"></span>other'
              f'<span style="background:{CALL_COLOR}"></span>hypervisor call'
              f'<span style="background:{FAIL_COLOR}"></span>failed call')
    chart = (_svg(steps, actions, generated_at, deleted) if steps
             else "<p>No events.</p>")
    story = escape("\n".join(explanation))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{name} — timeline — vmledger</title>
<style>{CSS}</style>
</head>
<body>
<header>
<h1>{name} <span class="badge" style="background:{status_color(status)}">{escape(status)}</span>
</h1>
<p class="meta">{meta}</p>
<p class="meta">{counts}</p>
{f'<p class="why">{escape(why)}</p>' if why else ""}
</header>
<main>
<section class="chart">
<div class="chart-scroll">{chart}</div>
<p class="legend">{legend}</p>
</section>
<section>
<h2>Requests</h2>
{_table(steps, actions)}
</section>
<details>
<summary>The ledger's explanation</summary>
<pre>{story}</pre>
</details>
</main>
<footer>Drawn from the vmledger event log at {escape(_when(generated_at))} UTC; times in
UTC; the time axis is compressed (each event takes a step; long gaps are labelled).</footer>
</body>
</html>
"""

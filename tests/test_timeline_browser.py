"""The timeline page in a real browser: headless Chromium loads
``/ledger/v1/servers/{id}/timeline`` from the app served by uvicorn on 127.0.0.1, takes a
screenshot (which must show a picture, not a blank page) and dumps the DOM (which must
name every action of the server's life). At 600 px wide the page is measured in the
browser: nothing wider than the window, no text cut off, the chart at full size.

Needs Debian's ``chromium`` package (``apt-get install -y chromium``); skipped, with that
reason, without it. The screenshot in the documentation comes from the same scenario:

    .venv/bin/python -m tests.test_timeline_browser docs/timeline.png
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from tests.engines import counter_ids, counter_request_ids
from tests.test_ledger_http import ledger_app, served
from vmledger import Engine, FakeClock, Simulator
from vmledger.api.ledger import PREFIX
from vmledger.api.testing import ApiClient

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")
CHROMIUM_TIMEOUT = 120.0
WINDOW = (1200, 800)
#: how long each hypervisor operation takes in the scenario (simulated seconds)
LATENCY = {"observe": 0.04, "spawn": 8.2, "resize": 21.5, "confirm_resize": 1.3,
           "pause": 0.6, "reboot": 12.4, "destroy": 2.1}
ACTIONS = ("create", "resize", "confirm_resize", "pause", "reboot_soft")


def chromium() -> str | None:
    for candidate in CHROMIUM_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def chromium_skip_reason() -> str | None:
    if chromium() is None:
        return ("headless Chromium not found (install Debian's package: "
                "apt-get install -y chromium); the timeline browser test needs it")
    return None


def run_chromium(args: Sequence[str], workdir: Path, timeout: float = CHROMIUM_TIMEOUT
                 ) -> subprocess.CompletedProcess[bytes]:
    """Run headless Chromium with a throwaway profile; kill its process group (only it)
    if it hangs."""
    binary = chromium()
    assert binary is not None
    argv = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
            "--hide-scrollbars", f"--user-data-dir={workdir / 'profile'}", *args]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        raise AssertionError(f"chromium did not finish in {timeout} s: {err[-2000:]!r}"
                             ) from None
    return subprocess.CompletedProcess(argv, process.returncode, out, err)


# --- the scenario: create, resize, auto-confirm, a failed pause, a reboot --------------

@dataclass
class Pictured:
    engine: Engine
    server_id: str


def realistic_server() -> Pictured:
    """An engine whose clock moves as the hypervisor works, so that durations and
    timestamps look real, and a server that lived through a day and a half."""
    clock = FakeClock()

    def work(seconds: float) -> None:
        clock.advance(timedelta(seconds=seconds))

    sim = Simulator(seed=7, latency=LATENCY, sleep=work)
    engine = Engine("memory", clock=clock, hypervisor=sim, host="compute-1",
                    confirm_window=timedelta(hours=24), seed=7, id_factory=counter_ids(7),
                    request_id_factory=counter_request_ids("req"),
                    stopwatch=lambda: clock.now().timestamp())
    alice = engine.context(user_id="alice", project_id="web-team", is_admin=False)
    server = engine.create_server("web-1", "m1.small", "debian-12-genericcloud-amd64",
                                  ctx=alice)
    clock.advance(seconds=2)
    engine.run_until_idle()
    clock.advance(hours=3, minutes=12)
    engine.resize(server.id, "m1.medium", ctx=alice)
    clock.advance(seconds=1)
    engine.run_until_idle()
    clock.advance(hours=24, minutes=1)  # nobody confirms: the timer does
    engine.run_until_idle()
    clock.advance(hours=5, minutes=40)
    sim.inject("pause", "fail")
    engine.pause(server.id, ctx=alice)
    clock.advance(seconds=1)
    engine.run_until_idle()
    clock.advance(minutes=7)
    engine.reboot(server.id, ctx=alice)
    clock.advance(seconds=1)
    engine.run_until_idle()
    clock.advance(hours=2)
    return Pictured(engine, server.id)


# --- is it a picture? --------------------------------------------------------------------

@dataclass(frozen=True)
class PixelStats:
    width: int
    height: int
    colors: int
    #: the share of the most common colour (1.0: a blank image)
    dominant: float


def _png_rows(data: bytes) -> tuple[int, int, int, list[bytes]]:
    """Decode an 8-bit, non-interlaced RGB or RGBA PNG (what Chromium writes)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, chunks = 8, []
    width = height = depth = color_type = interlace = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, color_type, _, _, interlace = struct.unpack(">IIBBBBB",
                                                                              body)
        elif kind == b"IDAT":
            chunks.append(body)
        elif kind == b"IEND":
            break
    if depth != 8 or interlace or color_type not in (2, 6):
        raise ValueError(f"unsupported PNG (depth {depth}, colour type {color_type}, "
                         f"interlace {interlace})")
    bpp = 3 if color_type == 2 else 4
    raw = zlib.decompress(b"".join(chunks))
    stride = width * bpp
    previous = bytearray(stride)
    rows: list[bytes] = []
    at = 0
    for _ in range(height):
        kind_of_filter = raw[at]
        line = bytearray(raw[at + 1:at + 1 + stride])
        at += 1 + stride
        if kind_of_filter == 1:
            for x in range(bpp, stride):
                line[x] = (line[x] + line[x - bpp]) & 255
        elif kind_of_filter == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, previous, strict=True))
        elif kind_of_filter in (3, 4):
            for x in range(stride):
                a = line[x - bpp] if x >= bpp else 0
                b = previous[x]
                if kind_of_filter == 3:
                    line[x] = (line[x] + ((a + b) >> 1)) & 255
                    continue
                c = previous[x - bpp] if x >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                predictor = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[x] = (line[x] + predictor) & 255
        rows.append(bytes(line))
        previous = line
    return width, height, bpp, rows


def pixel_stats(path: Path) -> PixelStats:
    """How varied the pixels of a PNG are (with Pillow if installed, else by hand)."""
    try:
        from PIL import Image  # type: ignore[import-not-found]
    except ImportError:
        width, height, bpp, rows = _png_rows(path.read_bytes())
        counts: Counter[bytes] = Counter()
        for row in rows:
            counts.update(row[x:x + 3] for x in range(0, len(row), bpp))
    else:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
            width, height = rgb.size
            counts = Counter(rgb.getdata())
    return PixelStats(width, height, len(counts),
                      counts.most_common(1)[0][1] / (width * height))


def screenshot(url: str, out: Path, window: tuple[int, int] = WINDOW) -> None:
    with tempfile.TemporaryDirectory(prefix="vmledger-chromium-") as workdir:
        done = run_chromium([f"--screenshot={out}", f"--window-size={window[0]},{window[1]}",
                             url], Path(workdir))
    assert done.returncode == 0, done.stderr[-2000:]
    assert out.is_file(), done.stderr[-2000:]


# --- the test ----------------------------------------------------------------------------

@pytest.mark.skipif(chromium_skip_reason() is not None, reason=str(chromium_skip_reason()))
def test_the_timeline_renders_in_headless_chromium(tmp_path: Path) -> None:
    pictured = realistic_server()
    try:
        with served(ledger_app(pictured.engine, auth="noauth")) as base:
            url = f"{base}{PREFIX}/servers/{pictured.server_id}/timeline"
            shot = tmp_path / "timeline.png"
            screenshot(url, shot)
            dumped = run_chromium(["--dump-dom", url], tmp_path)
    finally:
        pictured.engine.close()
    # a picture, not a blank page: big enough and with many colours, none dominating
    assert shot.stat().st_size > 20_000
    stats = pixel_stats(shot)
    assert (stats.width, stats.height) == WINDOW
    assert stats.colors > 200, stats
    assert stats.dominant < 0.9, stats
    # the DOM the browser built names every action, the failure and the hypervisor calls
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = dumped.stdout.decode()
    assert "<svg" in dom and "</table>" in dom
    for text in (*ACTIONS, "web-1", "timer (automatic)", "alice (web-team)",
                 "Injected failure in pause", "spawn 8.2 s", "resize 21.5 s",
                 "VERIFY_RESIZE", "REBOOT"):
        assert text in dom, text


#: the narrow window the page must stay legible in
NARROW = 600
#: appended to the timeline page (served without its CSP, which forbids scripts and
#: frames) to write what the browser measured into the DOM (``--dump-dom`` prints it)
MEASURE_SCRIPT = """<script>
function measure() {
  const width = document.documentElement.clientWidth;
  const scrolls = (el) => ["auto", "scroll"].includes(getComputedStyle(el).overflowX);
  const inScroller = (el) => {
    for (let p = el.parentElement; p && p !== document.body; p = p.parentElement)
      if (scrolls(p)) return true;
    return false;
  };
  const out = {width, scrollWidth: document.documentElement.scrollWidth, outside: [],
               clipped: [], chartScale: null, chartScrolls: false};
  const svg = document.querySelector("svg");
  if (svg) {
    out.chartScale = svg.getBoundingClientRect().width / svg.viewBox.baseVal.width;
    out.chartScrolls = inScroller(svg);
  }
  for (const el of document.body.querySelectorAll("*")) {
    if (el.closest("svg") || el.tagName === "SCRIPT" || inScroller(el)) continue;
    const style = getComputedStyle(el);
    const box = el.getBoundingClientRect();
    const text = (el.textContent || "").trim().slice(0, 50);
    if (box.width > 0 && (box.right > width + 0.5 || box.left < -0.5))
      out.outside.push(el.tagName + " " + Math.round(box.right) + ": " + text);
    if (style.overflowX !== "visible" && !scrolls(el) && el.scrollWidth > el.clientWidth + 1)
      out.clipped.push(el.tagName + ": " + text);
  }
  return out;
}
window.addEventListener("load", () => {
  let result;
  try { result = JSON.stringify(measure()); } catch (e) { result = "error: " + e; }
  const pre = document.createElement("pre");
  pre.id = "measured";
  pre.textContent = result;
  document.body.appendChild(pre);
});
</script>"""


def measure_page(url: str, workdir: Path, width: int = NARROW) -> dict[str, object]:
    """What Chromium measures of the page at ``url`` (ending with MEASURE_SCRIPT) in a
    ``width``-pixel-wide window."""
    done = run_chromium(["--virtual-time-budget=10000", f"--window-size={width},900",
                         "--dump-dom", url], workdir)
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'<pre id="measured">(.*?)</pre>', done.stdout.decode(), re.S)
    assert found is not None, done.stdout[-2000:]
    text = html.unescape(found.group(1))
    assert not text.startswith("error"), text
    measured: dict[str, object] = json.loads(text)
    return measured


@pytest.mark.skipif(chromium_skip_reason() is not None, reason=str(chromium_skip_reason()))
def test_the_timeline_is_legible_600_px_wide(tmp_path: Path) -> None:
    pictured = realistic_server()
    try:
        app = ledger_app(pictured.engine, auth="noauth")
        path = f"{PREFIX}/servers/{pictured.server_id}/timeline"
        page = ApiClient(app).get(path).text
        assert "</body>" in page

        async def measured_page(request: Request) -> HTMLResponse:
            return HTMLResponse(page.replace("</body>", MEASURE_SCRIPT + "</body>"))

        app.router.routes.insert(0, Route("/measure", measured_page))
        with served(app) as base:
            measured = measure_page(f"{base}/measure", tmp_path)
            shot = tmp_path / "narrow.png"
            screenshot(f"{base}{path}", shot, (NARROW, 900))
    finally:
        pictured.engine.close()
    assert measured["width"] == NARROW, measured
    # nothing wider than the window: no sideways scrolling of the page
    assert measured["scrollWidth"] == NARROW, measured
    assert measured["outside"] == [], measured["outside"]
    # no text cut off by a box too narrow for it
    assert measured["clipped"] == [], measured["clipped"]
    # the chart keeps its size (its 11 px labels stay 11 px), scrolling within its box
    assert measured["chartScale"] == 1, measured
    assert measured["chartScrolls"] is True, measured
    stats = pixel_stats(shot)
    assert (stats.width, stats.colors > 100, stats.dominant < 0.95) == (NARROW, True, True), (
        stats)


def main(argv: Sequence[str]) -> int:
    """Write the documentation's screenshot: ``python -m tests.test_timeline_browser
    docs/timeline.png [WIDTHxHEIGHT]``."""
    if len(argv) not in (1, 2):
        print(main.__doc__, file=sys.stderr)
        return 2
    reason = chromium_skip_reason()
    if reason is not None:
        print(reason, file=sys.stderr)
        return 1
    size = tuple(int(n) for n in argv[1].split("x")) if len(argv) == 2 else (1200, 900)
    pictured = realistic_server()
    try:
        with served(ledger_app(pictured.engine, auth="noauth")) as base:
            url = f"{base}{PREFIX}/servers/{pictured.server_id}/timeline"
            screenshot(url, Path(argv[0]).resolve(), (size[0], size[1]))
    finally:
        pictured.engine.close()
    print(f"wrote {argv[0]}: {pixel_stats(Path(argv[0]))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Drives the attention editor's page the way an expert does: real pointer and keyboard events in Chromium
(Playwright), coordinates in pixels of the image, whatever the zoom.

The page's stable handles (ids unless said otherwise):
- sign in: #token, #signin-button; signed in as #expert-name; #signout
- queue: #next (Open next, N), #refresh, #filter-model, #filter-label (select), list #queue > li.queue-item[data-id];
  #progress ("14 left · 6 done today")
- tools (radio inputs): #tool-attend (A), #tool-ignore (I), #tool-ignore-box (R, a rectangle);
  #brush-size (range over radii in image pixels; the value shown in #brush-size-value), #brush-edge (select)
- class: #class-list (role radiogroup) of input[name=label][value=CLASS] (number keys choose by position),
  #use-predicted ("Use predicted: 7")
- #confirm-map ("The map is right"), #try, #skip (S), #submit (Ctrl+Enter), #auto-next (open the next after a submit)
- messages: #status, #error-message; a question: dialog #ask with #ask-yes, #ask-no
- My corrections: #tab-mine, #mine-list > li.mine-item[data-id] (button.withdraw), #mine-totals; #tab-queue
- window.editorState(): itemId, imageWidth/imageHeight, width/height (the map sent), tool, size, label,
  confirmed, decided (pixels), unsaved, busy; window.editorClientPoint(x, y): the screen point of image pixel
  (x, y).
"""

import json
import time

import numpy as np
from playwright.sync_api import Browser, Page, Request, Response

from handlers import wire
from handlers.stubs.abn.v1 import feedback_pb2
from serving.client import Client
from serving.editor.gateway import EditorConfig, EditorServer

WIDE = {"width": 1400, "height": 900}


def poll(page: Page, script: str, timeout: float = 30.0):
    """Wait until script (evaluated in the page) is truthy, and return its value. Playwright's wait_for_function
    needs eval, which the page's Content-Security-Policy forbids, so poll."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = page.evaluate(script)
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {script}")


def watch_files(page: Page, url: str) -> list[str]:
    """The page's own files (scripts, styles, icons: same origin, not the API, whose refusals tests provoke) that
    fail to load from now on, as "status url" or "failure url", in a list that grows."""
    origin = url.rstrip("/") + "/"
    missing: list[str] = []

    def own_file(request: Request) -> bool:
        return request.url.startswith(origin) and not request.url.startswith(origin + "api/")

    def answered(response: Response) -> None:
        if response.status >= 400 and own_file(response.request):
            missing.append(f"{response.status} {response.url}")

    def failed(request: Request) -> None:  # e.g. net::ERR_ABORTED: a style answered 404 in JSON, refused unread
        if own_file(request):
            missing.append(f"{request.failure} {request.url}")

    page.on("response", answered)
    page.on("requestfailed", failed)
    return missing


class Editor:
    """One expert's page."""

    def __init__(self, browser: Browser, url: str, token: str, viewport: dict | None = None):
        self.page = browser.new_context(viewport=viewport or WIDE).new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.missing = watch_files(self.page, url)
        self.page.goto(url)
        self.page.fill("#token", token)
        self.page.click("#signin-button")
        self.page.wait_for_selector("#queue")
        poll(self.page, "document.querySelector('#expert-name').textContent.trim() !== '…'")
        # the page's scripts, styles and icons have loaded by now: its script filled in the expert's name
        assert not self.missing, f"the page's own files that did not load: {self.missing}"

    def state(self) -> dict:
        return self.page.evaluate("window.editorState()")

    def idle(self) -> None:
        poll(self.page, "!window.editorState().busy")

    def open_next(self) -> str:
        """Open the next item (the page asks nothing: call after a submit or on a fresh page); its review id."""
        before = self.state()["itemId"]
        self.page.click("#next")
        return poll(self.page, f"window.editorState().itemId !== {json.dumps(before)} && window.editorState().itemId")

    def point(self, x: float, y: float) -> tuple[float, float]:
        p = self.page.evaluate(f"window.editorClientPoint({x}, {y})")
        if p is None:
            raise AssertionError("no item is open on the page")
        return p["x"], p["y"]

    def stroke(self, points: list[tuple[float, float]], tool: str = "attend", radius: float | None = None) -> None:
        """A pointer stroke through image pixels with tool "attend" or "ignore" (brush radius in image pixels:
        one of the page's sizes), or "box" from the first point to the last."""
        self.page.check({"attend": "#tool-attend", "ignore": "#tool-ignore", "box": "#tool-ignore-box"}[tool])
        if radius is not None:
            self.set_radius(radius)
        xy = [self.point(x, y) for x, y in points]
        self.page.mouse.move(*xy[0])
        self.page.mouse.down()
        for p in xy[1:]:
            self.page.mouse.move(*p, steps=6)
        self.page.mouse.up()

    def set_radius(self, radius: float) -> None:
        sizes = self.page.evaluate(
            "(() => { const s = document.querySelector('#brush-size'), out = []; const v = s.value;"
            " for (let i = +s.min; i <= +s.max; i++) { s.value = i; s.dispatchEvent(new Event('input'));"
            " out.push(window.editorState().size); } s.value = v; s.dispatchEvent(new Event('input')); return out; })()"
        )
        if radius not in sizes:
            raise ValueError(f"radius {radius}: the page offers {sizes}")
        self.page.fill("#brush-size", str(sizes.index(radius)))

    def choose_class(self, label: str) -> None:
        self.page.click(f"#class-list input[value='{label}'] >> xpath=..")

    def submit(self) -> None:
        """Submit and wait until the page says it was stored."""
        self.page.click("#submit")
        poll(self.page, "document.querySelector('#status').textContent.includes('stored')")
        self.idle()

    def correct_next(self, strokes: list[tuple[str, list[tuple[float, float]]]], label: str) -> str:
        """Open the next item, paint strokes [(tool, points)], choose label and submit; the item's id."""
        item = self.open_next()
        for tool, points in strokes:
            self.stroke(points, tool)
        self.choose_class(label)
        self.submit()
        return item


def start_editor(serve, feedback: str, classes: dict, **options) -> tuple[EditorServer, Client]:
    """The editor's gateway on a free loopback port, in front of TorchServe (serve: its ServeConfig) and the
    feedback service; with the client it calls them through, which holds no service token: it acts with the
    experts' own. Stop both when done."""
    client = Client.for_services(serve, feedback)
    config = EditorConfig(address="127.0.0.1:0", target=serve.target, feedback=feedback, classes=classes, **options)
    return EditorServer(config, client), client


# What a stored correction holds, and where strokes should have landed in it


def decided_of(f: feedback_pb2.Feedback) -> np.ndarray:
    """The stored mask (h x w bool); all True when the correction decided every pixel."""
    m = wire.mask_from_bytes(f.decided, (f.attention.height, f.attention.width))
    return np.ones((f.attention.height, f.attention.width), bool) if m is None else m


def map_of(f: feedback_pb2.Feedback) -> np.ndarray:
    return wire.map_from_proto(f.attention)


def capsule(shape: tuple[int, int], points: list[tuple[float, float]], radius: float, scale: float) -> np.ndarray:
    """Each working-map pixel's distance beyond radius from a stroke through image pixels' centres (scale: map
    pixels per image pixel); <= 0 inside the stroke."""
    ys, xs = np.mgrid[: shape[0], : shape[1]] + 0.5
    dist = np.full(shape, np.inf)
    ends = [((x + 0.5) * scale, (y + 0.5) * scale) for x, y in points]
    for (x0, y0), (x1, y1) in zip(ends, ends[1:] or ends):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((xs - x0) * dx + (ys - y0) * dy) / max(dx * dx + dy * dy, 1e-9), 0, 1)
        dist = np.minimum(dist, np.hypot(xs - (x0 + t * dx), ys - (y0 + t * dy)))
    return dist - radius * scale


def assert_decided_matches(mask: np.ndarray, beyond: np.ndarray, margin: float = 1.5) -> None:
    """Every pixel well inside the strokes was decided, and none well outside them."""
    assert mask[beyond <= -margin].all(), "a pixel under a stroke was not decided"
    assert not mask[beyond >= margin].any(), "a pixel off every stroke was decided"

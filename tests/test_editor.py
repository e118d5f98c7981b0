"""The attention editor, for real: a TorchServe, a feedback service and the editor's gateway on loopback, driven
by Debian's Chromium (headless, through Playwright) with real pointer and keyboard events.

ABN_UPDATE_SCREENSHOT=1 also copies the screenshot of a painted map to docs/img/editor.png.
"""

import base64
import dataclasses
import http.client
import json
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page, sync_playwright

from finetune import decoy_digits, train
from finetune.gate import GateConfig
from handlers.stubs.abn.v1 import review_pb2
from serving import retraining, review
from serving.client import Client
from serving.editor.gateway import EditorConfig, EditorServer, create_app
from serving.feedback import experts
from serving.feedback.server import FeedbackServer, write_token
from serving.feedback.service import known_classes
from serving.feedback.store import SQLiteStore
from serving.torchserve import archive
from serving.torchserve.config import ServeConfig, free_port
from serving.torchserve.process import TorchServe

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs Java 17"),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)"),
]
REPO = Path(__file__).resolve().parent.parent
QUEUED = 6


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("editor")
    train.train(train.TrainConfig(out=str(root / "model"), epochs=2))
    ckpt = root / "model" / "checkpoint.pt"
    archive.build(ckpt, root / "store", name="abn")
    cfg = ServeConfig.on_free_ports(root / "serve", root / "store", {"abn": "abn.v1.mar"})
    store = SQLiteStore(root / "feedback.db")
    classes = known_classes([ckpt])
    feedback = FeedbackServer(store, "127.0.0.1:0", write_token(root / "token"), classes=classes)
    feedback_target = f"127.0.0.1:{feedback.port}"
    tokens = {name: experts.add(store, name) for name in ("ana", "bo")}
    images = root / "queue"
    images.mkdir()
    split = decoy_digits.build("test")
    for i in range(QUEUED):
        digit = (split.images[i, 0].numpy() * 255).round().astype("uint8")
        Image.fromarray(digit).resize((128, 128), Image.Resampling.NEAREST).save(images / f"{i}.png")
    with TorchServe(cfg), sync_playwright() as p:
        admin = Client.for_services(cfg, feedback_target, root / "token")
        assert review.add_folder(admin, review.QueueConfig(str(images)))["queued"] == QUEUED
        gateway_client = Client.for_services(cfg, feedback_target)  # no service token: it acts with experts'
        editor = EditorServer(
            EditorConfig(address="127.0.0.1:0", target=cfg.target, feedback=feedback_target, classes=classes),
            gateway_client,
        )
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield {
            "url": f"http://127.0.0.1:{editor.port}",
            "admin": admin,
            "tokens": tokens,
            "browser": browser,
            "cfg": cfg,
            "root": root,
            "store": store,
        }
        browser.close()
        editor.stop()
        gateway_client.close()
        admin.close()
    feedback.stop(grace=5)
    store.close()


def poll(page: Page, script: str, timeout: float = 30.0):
    """Wait until script (evaluated in the page) is truthy. Playwright's wait_for_function needs eval, which
    the page's Content-Security-Policy forbids, so poll."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = page.evaluate(script)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {script}")


def sign_in(stack, expert: str) -> Page:
    page = stack["browser"].new_context(viewport={"width": 1400, "height": 900}).new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "Failed to load" not in m.text else 0)
    page.goto(stack["url"])
    page.fill("#token", stack["tokens"][expert])
    page.click("#signin-button")
    page.wait_for_selector("#queue")
    poll(page, "document.querySelector('#expert-name').textContent.trim() !== '…'")
    assert page.text_content("#expert-name").strip() == expert
    page.errors = errors  # type: ignore[attr-defined]
    return page


def stroke(page: Page, points: list[tuple[int, int]]) -> None:
    """A real pointer stroke through working-map pixels (x, y)."""
    state = page.evaluate("window.editorState()")
    box = page.locator("#canvas").bounding_box()
    sx, sy = box["width"] / state["width"], box["height"] / state["height"]
    xy = [(box["x"] + (x + 0.5) * sx, box["y"] + (y + 0.5) * sy) for x, y in points]
    page.mouse.move(*xy[0])
    page.mouse.down()
    for p in xy[1:]:
        page.mouse.move(*p, steps=8)
    page.mouse.up()


def map_at(page: Page, x: int, y: int) -> float:
    return page.evaluate(f"window.editorMapAt({x}, {y})")


def test_an_expert_paints_tries_and_submits_and_a_second_expert_never_sees_the_claim(stack, tmp_path):
    ana, bo = sign_in(stack, "ana"), sign_in(stack, "bo")
    assert len(ana.query_selector_all("li.queue-item")) == QUEUED
    unlabelled = ana.evaluate(
        "[...document.querySelectorAll('input, select, button')].filter(e => !(e.labels && e.labels.length)"
        " && !e.getAttribute('aria-label') && !e.textContent.trim()).map(e => e.id)"
    )
    assert unlabelled == []  # every control has a label a screen reader can say
    ana.click("#next")
    item_id = poll(ana, "window.editorState().itemId")
    state = ana.evaluate("window.editorState()")
    assert (state["width"], state["height"]) == (256, 256)
    top = stack["admin"].feedback.review_items()
    assert item_id not in [i.id for i in top]  # claimed: out of the listing for everybody else

    # the second expert, signed in at the same time, never sees the claimed item
    bo.click("#refresh")
    poll(bo, f"document.querySelectorAll('li.queue-item').length === {QUEUED - 1}")
    assert item_id not in [li.get_attribute("data-id") for li in bo.query_selector_all("li.queue-item")]
    bo.click("#next")
    assert poll(bo, "window.editorState().itemId") != item_id

    # an ignore stroke over the top-left corner, an attend stroke across the middle, hard-edged, 12 px
    ana.select_option("#brush-edge", "hard")
    ana.keyboard.press("i")
    stroke(ana, [(20, 20), (60, 20), (60, 60)])
    ana.keyboard.press("a")
    stroke(ana, [(100, 128), (156, 128)])
    assert map_at(ana, 40, 20) == 0 and map_at(ana, 128, 128) == 1
    assert ana.evaluate("window.editorState().undoDepth") == 2

    ana.keyboard.press("Control+z")  # undo the attend stroke, then redo it
    assert map_at(ana, 128, 128) != 1 and ana.evaluate("window.editorState().redoDepth") == 1
    ana.keyboard.press("Control+Shift+z")
    assert map_at(ana, 128, 128) == 1

    ana.click("#try")  # predict again with the painted map
    poll(ana, "document.querySelectorAll('#scores-new li').length > 0")
    assert ana.query_selector_all("#scores-old li")

    ana.screenshot(path=str(tmp_path / "editor.png"))
    if os.environ.get("ABN_UPDATE_SCREENSHOT"):
        shutil.copy(tmp_path / "editor.png", REPO / "docs" / "img" / "editor.png")

    ana.select_option("#label", "7")
    ana.dblclick("#submit")  # a double click stores one correction
    poll(ana, "document.querySelector('#status').textContent.includes('stored')")

    stored = [f for f in stack["admin"].list_feedback() if f.author == "ana"]
    assert len(stored) == 1
    f = stored[0]
    m = np.asarray(f.attention.values, np.float32).reshape(f.attention.height, f.attention.width)
    assert m.shape == (256, 256) and f.label == "7" and f.model_name == "abn" and f.prediction_id
    assert m[15:26, 25:56].max() < 0.01  # under the ignore stroke
    assert m[123:134, 105:151].min() > 0.99  # under the attend stroke
    assert stack["admin"].feedback.review_item(item_id).state == review_pb2.REVIEW_STATE_DONE
    assert item_id not in [i.id for i in stack["admin"].feedback.review_items()]

    # bo corrects his item too (for the retraining test): one stroke, keyboard submit
    bo.keyboard.press("a")
    stroke(bo, [(100, 100), (150, 150)])
    bo.keyboard.press("Control+Enter")
    poll(bo, "document.querySelector('#status').textContent.includes('stored')")
    assert [f.author for f in stack["admin"].list_feedback()].count("bo") == 1
    assert not ana.errors and not bo.errors  # type: ignore[attr-defined]


def test_without_a_valid_token_there_is_only_the_sign_in_page(stack):
    page = stack["browser"].new_context().new_page()
    page.goto(stack["url"])
    assert page.query_selector("#token") and not page.query_selector("#canvas")
    page.fill("#token", "not-a-token")
    page.click("#signin-button")
    poll(page, "document.querySelector('#signin-error').textContent.length > 0")
    assert "not an expert" in page.text_content("#signin-error")
    for path in ("/api/queue", "/api/me", "/api/models", "/api/openapi.json"):
        assert page.request.get(stack["url"] + path).status == 401
    answer = page.request.post(stack["url"] + "/api/predict", data={"image": ""})
    assert answer.status == 401 and "Sign in" in answer.json()["detail"]


def test_the_gateway_refuses_cross_origin_writes_large_bodies_and_the_service_token(stack):
    url = stack["url"]

    def post(path: str, body: bytes, headers: dict) -> tuple[int, dict]:
        request = urllib.request.Request(url + path, body, {"Content-Type": "application/json", **headers})
        try:
            with urllib.request.urlopen(request) as answer:
                return answer.status, {}
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    token = json.dumps({"token": stack["tokens"]["ana"]}).encode()
    assert post("/api/session", token, {"Origin": "http://evil.example"})[0] == 403
    assert post("/api/session", token, {"Content-Type": "text/plain"})[0] == 415
    # a body declared larger than the bound is answered 413 before it is read
    connection = http.client.HTTPConnection(url.removeprefix("http://"))
    connection.putrequest("POST", "/api/session")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(33 * 2**20))
    connection.endheaders()
    answer = connection.getresponse()
    assert answer.status == 413 and "too large" in json.loads(answer.read())["detail"]
    connection.close()
    # and a chunked body, whose length nobody declared, when it passes the bound
    connection = http.client.HTTPConnection(url.removeprefix("http://"))
    chunks = (b"x" * 2**20 for _ in range(30))
    connection.request("POST", "/api/session", chunks, {"Content-Type": "application/json"}, encode_chunked=True)
    answer = connection.getresponse()
    assert answer.status == 413 and "too large" in json.loads(answer.read())["detail"]
    connection.close()
    service_token = (stack["root"] / "token").read_text().strip()
    status, body = post("/api/session", json.dumps({"token": service_token}).encode(), {})
    assert status == 401 and "not an expert's" in body["detail"]
    assert post("/api/session", token, {})[0] == 204
    with urllib.request.urlopen(url + "/") as answer:
        csp = answer.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp


def test_a_corrupt_upload_shows_its_error_on_the_page(stack, tmp_path):
    page = sign_in(stack, "ana")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    page.set_input_files("#upload", str(bad))
    poll(page, "document.querySelector('#error-message').textContent.trim().length > 0")
    assert "image" in page.text_content("#error-message").lower()
    assert page.evaluate("window.editorState().itemId") is None
    good = tmp_path / "digit.png"
    Image.fromarray(np.full((64, 48), 200, np.uint8)).save(good)
    page.set_input_files("#upload", str(good))
    poll(page, "window.editorState().source === 'upload'")
    assert page.evaluate("[window.editorState().width, window.editorState().height]") == [192, 256]


def test_a_service_that_is_down_is_said_in_plain_words(stack):
    down = f"127.0.0.1:{free_port()}"  # nothing listens there
    with Client.for_services(stack["cfg"], down) as client:
        editor = EditorServer(EditorConfig(address="127.0.0.1:0", target=stack["cfg"].target, feedback=down), client)
        try:
            page = stack["browser"].new_context().new_page()
            page.goto(f"http://127.0.0.1:{editor.port}")
            page.fill("#token", stack["tokens"]["ana"])
            page.click("#signin-button")
            poll(page, "document.querySelector('#signin-error').textContent.length > 0")
            assert "cannot reach the feedback service" in page.text_content("#signin-error")
        finally:
            editor.stop()


def test_a_key_the_model_server_refuses_does_not_sign_the_expert_out(stack, tmp_path):
    keys = json.loads(stack["cfg"].target.key_file.read_text())
    keys["inference"]["key"] = "stale"
    (tmp_path / "key_file.json").write_text(json.dumps(keys))
    target = dataclasses.replace(
        stack["cfg"].target, key_file=tmp_path / "key_file.json", management_url=f"http://127.0.0.1:{free_port()}"
    )
    feedback = stack["admin"].feedback
    with Client.for_target(target, feedback.target) as client:
        editor = EditorServer(EditorConfig(address="127.0.0.1:0", target=target, feedback=feedback.target), client)
        try:
            url = f"http://127.0.0.1:{editor.port}"
            session = signed_in_session(url, stack["tokens"]["ana"])
            image = base64.b64encode((stack["root"] / "queue" / "0.png").read_bytes()).decode()
            status, body = call(url, "POST", "/api/predict", session, {"image": image})
            assert status == 503 and "refuses the editor's key" in body["detail"]
            assert call(url, "GET", "/api/me", session)[0] == 200  # still signed in
        finally:
            editor.stop()


def signed_in_session(url: str, token: str) -> str:
    status, _, cookie = _request(url, "POST", "/api/session", "", {"token": token})
    assert status == 204
    return cookie


def call(url: str, method: str, path: str, cookie: str, body: dict | None = None) -> tuple[int, dict]:
    status, answer, _ = _request(url, method, path, cookie, body)
    return status, answer


def _request(url: str, method: str, path: str, cookie: str, body: dict | None) -> tuple[int, dict, str]:
    connection = http.client.HTTPConnection(url.removeprefix("http://"))
    headers = {"Cookie": cookie, "Content-Type": "application/json"}
    connection.request(method, path, json.dumps(body) if body is not None else None, headers)
    answer = connection.getresponse()
    data = answer.read()
    cookie = (answer.headers["Set-Cookie"] or "").split(";")[0]
    connection.close()
    return answer.status, json.loads(data) if data else {}, cookie


def test_corrections_from_the_editor_are_consumed_by_retraining(stack):
    """After the first test stored two corrections: retraining consumes them and version 2 answers."""
    cfg = stack["cfg"]
    pending = [f for f in stack["admin"].list_feedback(pending=True) if f.author in ("ana", "bo")]
    assert len(pending) == 2
    job = retraining.for_services(
        cfg,
        store=str(stack["root"] / "feedback.db"),
        workdir=str(stack["root"] / "retrain"),
        min_feedback=2,
        gate=GateConfig(max_drop=1.0, attention_tolerance=1.0),  # two corrections: the gate is not under test
    )
    job.tune.epochs = 1
    report = retraining.run_once(job)
    assert report["outcome"] == "promoted", report
    assert not list(stack["admin"].list_feedback(pending=True))
    image = (stack["root"] / "queue" / "0.png").read_bytes()
    assert stack["admin"].predict(image).model_version == "2"


def test_the_http_api_is_documented():
    app = create_app(EditorConfig(), Client())
    documented = (REPO / "docs" / "api.md").read_text()
    for path, operations in app.openapi()["paths"].items():
        for method in operations:
            assert f"`{method.upper()} {path}`" in documented, f"docs/api.md does not list {method.upper()} {path}"

"""The attention editor, for real: a TorchServe, a feedback service and the editor's gateway on loopback, driven
by Debian's Chromium (headless, through Playwright) with real pointer and keyboard events; what the page sent is
checked in the store. tests/editor_driver.py lists the page's handles for scripts that drive it.

ABN_UPDATE_SCREENSHOT=1 also copies the screenshot of a painted map beside "My corrections" to docs/img/editor.png.
"""

import base64
import dataclasses
import http.client
import io
import json
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from editor_driver import Editor, assert_decided_matches, capsule, decided_of, map_of, poll, start_editor, watch_files
from PIL import Image
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

from finetune import decoy_digits, train
from finetune.gate import GateConfig
from handlers.stubs.abn.v1 import feedback_pb2, review_pb2
from serving import retraining, review
from serving.client import Client
from serving.editor.gateway import EditorConfig, EditorServer, InputShape, _unlike, create_app, known_inputs, plain
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
QUEUED = 10
SIDE = 128  # the queued images' side: a working map of 256, 2 map pixels per image pixel
EXPERTS = ("ana", "bo", "cy", "dee", "eve")


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
    tokens = {name: experts.add(store, name) for name in EXPERTS}
    images = root / "queue"
    images.mkdir()
    split = decoy_digits.build("test")
    for i in range(QUEUED):
        digit = (split.images[i, 0].numpy() * 255).round().astype("uint8")
        Image.fromarray(digit).resize((SIDE, SIDE), Image.Resampling.NEAREST).save(images / f"{i}.png")
    with TorchServe(cfg), sync_playwright() as p:
        admin = Client.for_services(cfg, feedback_target, root / "token")
        assert review.add_folder(admin, review.QueueConfig(str(images)))["queued"] == QUEUED
        editor, gateway_client = start_editor(cfg, feedback_target, classes, inputs=known_inputs([ckpt]))
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield {
            "url": f"http://127.0.0.1:{editor.port}",
            "admin": admin,
            "tokens": tokens,
            "browser": browser,
            "cfg": cfg,
            "root": root,
            "store": store,
            "labels": {(images / f"{i}.png").read_bytes(): str(int(split.labels[i])) for i in range(QUEUED)},
        }
        browser.close()
        editor.stop()
        gateway_client.close()
        admin.close()
    feedback.stop(grace=5)
    store.close()


def sign_in(stack, expert: str, viewport: dict | None = None) -> Editor:
    return Editor(stack["browser"], stack["url"], stack["tokens"][expert], viewport)


def stored(stack, author: str) -> list[feedback_pb2.Feedback]:
    return [f for f in stack["admin"].list_feedback() if f.author == author]


def wait_until_waiting(stack, review_id: str, timeout: float = 10.0) -> None:
    """Until the page's release (sent without waiting for its answer) has put the item back."""
    deadline = time.time() + timeout
    while stack["admin"].feedback.review_item(review_id).state != review_pb2.REVIEW_STATE_WAITING:
        assert time.time() < deadline, f"review item {review_id} was not given back"
        time.sleep(0.1)


def test_ctrl_enter_on_a_freshly_opened_item_stores_nothing_and_says_why(stack):
    """The map and class the model gave are not a correction: nothing is taken without the expert's gesture."""
    page = sign_in(stack, "bo").page
    before = len(list(stack["admin"].list_feedback()))
    page.click("#next")
    item_id = poll(page, "window.editorState().itemId")
    page.keyboard.press("Control+Enter")
    page.wait_for_timeout(1500)  # a submission would have been stored by now
    assert len(list(stack["admin"].list_feedback())) == before, "a fresh item was stored as a correction"
    said = poll(page, "(document.querySelector('#error-message').textContent || '').trim()")
    assert "paint" in said.lower() and "choose the class" in said
    assert page.is_disabled("#submit")
    assert stack["admin"].feedback.review_item(item_id).state == review_pb2.REVIEW_STATE_CLAIMED
    assert page.evaluate("window.editorState().label") is None  # no class is preselected


def test_an_expert_paints_partial_strokes_and_the_store_keeps_what_was_decided(stack, tmp_path):
    ana, bo = sign_in(stack, "ana"), sign_in(stack, "bo")
    page = ana.page
    offered = len(page.query_selector_all("li.queue-item"))
    assert offered == QUEUED - 1  # bo holds one
    assert page.text_content("#progress").startswith(f"{QUEUED - 1} left")
    unlabelled = page.evaluate(
        "[...document.querySelectorAll('input, select, button')].filter(e => !(e.labels && e.labels.length)"
        " && !e.getAttribute('aria-label') && !e.textContent.trim()).map(e => e.id)"
    )
    assert unlabelled == []  # every control has a label a screen reader can say
    item_id = ana.open_next()
    state = ana.state()
    assert (state["imageWidth"], state["width"]) == (SIDE, 256)
    assert item_id not in [i.id for i in stack["admin"].feedback.review_items()]  # claimed: out of every listing
    bo.page.click("#refresh")
    poll(bo.page, f"document.querySelectorAll('li.queue-item').length === {QUEUED - 1}")  # bo's own, not ana's
    assert item_id not in [li.get_attribute("data-id") for li in bo.page.query_selector_all("li.queue-item")]

    # shortcuts work while a list or a slider has the focus: I picks the ignore brush, a number key the class
    page.select_option("#brush-edge", "hard")
    page.focus("#brush-edge")
    page.keyboard.press("i")
    assert ana.state()["tool"] == "ignore" and page.input_value("#brush-edge") == "hard"
    ignore, attend = [(4, 6), (24, 6), (24, 20)], [(50, 70), (80, 70)]
    ana.stroke(ignore, "ignore", 5)
    ana.stroke(attend, "attend", 8)
    assert "choose the class" in page.text_content("#submit-note") and page.is_disabled("#submit")
    page.keyboard.press("Control+z")  # undo the attend stroke, then redo it
    assert ana.state()["redoDepth"] == 1
    page.keyboard.press("Control+Shift+z")
    page.screenshot(path=str(tmp_path / "painting.png"))  # partial strokes, one undone and redone: look at it
    page.focus("#brush-size")
    page.keyboard.press("7")
    assert ana.state()["label"] == "7" and ana.state()["size"] == 8  # the slider kept its value
    page.click("#try")  # predict again with the painted map
    poll(page, "document.querySelectorAll('#scores-new li').length > 0")
    page.dblclick("#submit")  # a double click stores one correction
    poll(page, "document.querySelector('#status').textContent.includes('stored')")
    ana.idle()

    [f] = stored(stack, "ana")
    mask, m = decided_of(f), map_of(f)
    assert m.shape == mask.shape == (256, 256) and f.label == "7" and not f.confirmed and f.prediction_id
    near_ignore, near_attend = capsule(m.shape, ignore, 5, 2), capsule(m.shape, attend, 8, 2)
    assert_decided_matches(mask, np.minimum(near_ignore, near_attend))
    assert m[near_ignore <= -1].max() == 0 and m[near_attend <= -1].min() == 1
    assert 0.01 < mask.mean() < 0.2  # partial: the rest is "don't care"
    assert stack["admin"].feedback.review_item(item_id).state == review_pb2.REVIEW_STATE_DONE
    # "then open the next item" is on: the next one is open, and the day's count moved
    assert poll(page, "window.editorState().itemId") != item_id
    poll(page, "document.querySelector('#progress').textContent.includes('1 done today')")

    # bo corrects an item too (for the retraining test), by keyboard: N, A, a stroke, the class, Ctrl+Enter
    bo.page.keyboard.press("n")
    poll(bo.page, "window.editorState().itemId")
    bo.page.keyboard.press("a")
    bo.stroke([(40, 40), (70, 70)])
    bo.page.keyboard.press("3")
    bo.page.keyboard.press("Control+Enter")
    poll(bo.page, "document.querySelector('#status').textContent.includes('stored')")
    assert [f.label for f in stored(stack, "bo")] == ["3"]
    assert not ana.errors and not bo.errors


def test_the_map_is_right_is_a_confirmation_and_its_author_can_withdraw_it(stack, tmp_path):
    editor = sign_in(stack, "cy")
    page = editor.page
    editor.open_next()
    predicted = page.text_content("#use-predicted").split(": ")[1]
    page.click("#confirm-map")
    page.click("#use-predicted")  # the predicted class, one click away but never taken without one
    assert page.get_attribute("#confirm-map", "aria-pressed") == "true" and not page.is_disabled("#submit")
    page.uncheck("#auto-next")
    page.keyboard.press("Control+Enter")
    poll(page, "document.querySelector('#status').textContent.includes('stored')")
    [f] = stored(stack, "cy")
    assert f.confirmed and f.decided == b"" and f.label == predicted
    assert stack["admin"].feedback.stats().confirmations == 1
    assert editor.state()["itemId"] is None  # not opened the next: the option is off

    page.click("#tab-mine")
    poll(page, "document.querySelectorAll('#mine-list li.mine-item').length === 1")
    assert "Waiting for the next retraining run" in page.text_content("#mine-list")
    assert "1 correction: 1 waiting" in page.text_content("#mine-totals")
    page.click("#mine-list button.withdraw")
    page.click("#ask-yes")
    poll(page, "document.querySelector('#mine-list').textContent.includes('Withdrawn by you')")
    assert stack["admin"].feedback.get(f.id).state == feedback_pb2.FEEDBACK_STATE_WITHDRAWN
    assert "1 withdrawn" in page.text_content("#mine-totals") and not page.query_selector("button.withdraw")
    page.screenshot(path=str(tmp_path / "mine.png"))


def test_strokes_from_outside_the_picture_and_the_soft_brush_decide_what_the_cursor_shows(stack):
    editor = sign_in(stack, "dee")
    page = editor.page
    editor.open_next()
    assert page.text_content("#brush-size-value").endswith(" px")
    assert "pixels of the image" in page.text_content("#tools")
    page.focus("#class-0")  # a class has the focus: letters are still shortcuts
    page.keyboard.press("i")
    assert editor.state()["tool"] == "ignore"
    # a stroke that starts left of the picture paints from its edge (map pixels 80-81 are image row 40)
    editor.stroke([(-6, 40), (20, 40)], "attend", 3)
    assert page.evaluate("[window.editorDecidedAt(0, 81), window.editorMapAt(0, 81)]") == [1, 1]
    # the soft brush decides the circle its cursor shows, and paints it more than halfway: a click at (90, 100)
    page.select_option("#brush-edge", "soft")
    editor.stroke([(90, 100)], "ignore", 8)
    page.mouse.move(*editor.point(90, 100))
    shown = page.evaluate("document.querySelector('#brush-cursor').getBoundingClientRect().width")
    per_image_pixel = page.evaluate("document.querySelector('#canvas').getBoundingClientRect().width") / SIDE
    assert shown == pytest.approx(2 * 8 * per_image_pixel, rel=0.02)
    centre, radius = 90.5 * 2, 8 * 2  # in map pixels
    inside, outside = f"{int(centre + 0.85 * radius)}, 201", f"{int(centre + 1.15 * radius)}, 201"
    assert page.evaluate(f"[window.editorDecidedAt({inside}), window.editorDecidedAt({outside})]") == [1, 0]
    assert page.evaluate(f"window.editorMapAt({inside})") < 0.5
    # Clear (and Reset) decide the whole map; undo takes that back
    painted = editor.state()["decided"]
    page.click("#clear")
    assert editor.state()["decided"] == 256 * 256 and page.evaluate("window.editorMapAt(128, 128)") == 0
    page.keyboard.press("Control+z")
    assert editor.state()["decided"] == painted
    # an error banner floats over the picture: it does not move it
    before = page.locator("#canvas").bounding_box()
    page.keyboard.press("Control+Enter")  # no class chosen: refused, said
    poll(page, "!document.querySelector('#error').hidden")
    assert page.locator("#canvas").bounding_box() == before
    assert not editor.errors


def test_leaving_painting_asks_switching_releases_and_a_skip_hides(stack):
    editor = sign_in(stack, "dee")  # dee's item of the test before is still claimed: it lists as "yours"
    page = editor.page
    first = editor.open_next()
    editor.stroke([(30, 30), (60, 60)])
    waiting = page.query_selector_all("li.queue-item:not(.current):not(:has(.badge))")  # not held by dee
    other = waiting[0].get_attribute("data-id")
    page.click(f"li.queue-item[data-id='{other}'] button")
    page.wait_for_selector("#ask[open]")
    page.click("#ask-no")  # keep painting: nothing changes
    assert editor.state()["itemId"] == first and editor.state()["unsaved"]
    page.click(f"li.queue-item[data-id='{other}'] button")
    page.click("#ask-yes")
    poll(page, f"window.editorState().itemId === '{other}'")
    # the item left is released, not skipped: it waits, and Open next may give it again
    wait_until_waiting(stack, first)
    poll(page, f"!!document.querySelector(\"li.queue-item[data-id='{first}']\")")

    # a skip gives the item to the others and hides it from this expert's list and count ("left" never counts
    # the item open)
    left = stack["store"].review_offered("dee")
    page.keyboard.press("s")
    poll(page, f"!document.querySelector(\"li.queue-item[data-id='{other}']\") && !window.editorState().itemId")
    assert stack["store"].review_offered("dee") == left and stack["store"].review_offered("bo") == left + 1
    poll(page, f"document.querySelector('#progress').textContent.startsWith('{left} left')")
    assert stack["admin"].feedback.review_item(other).state == review_pb2.REVIEW_STATE_WAITING
    # with a class filter, the list and Open next agree: it opens the list's first item
    label = stack["admin"].feedback.review_item(first).prediction.scores[0].label
    page.select_option("#filter-label", label)
    poll(page, "document.querySelector('#progress').textContent.includes('with these filters')")
    listed = [li.get_attribute("data-id") for li in page.query_selector_all("li.queue-item")]
    assert listed and all(stack["admin"].feedback.review_item(i).prediction.scores[0].label == label for i in listed)
    assert editor.open_next() == listed[0]

    # a reload with painting asks first: "stay" keeps the painting; "leave" reloads, and the page that went
    # gave its item back
    editor.stroke([(30, 30), (60, 60)])
    held = editor.state()["itemId"]
    asked: list[str] = []
    page.on("dialog", lambda d: (asked.append(d.type), d.dismiss() if len(asked) == 1 else d.accept()))
    with pytest.raises(PlaywrightTimeout):
        page.reload(timeout=2000)
    assert asked == ["beforeunload"] and editor.state()["itemId"] == held and editor.state()["unsaved"]
    page.reload()
    assert asked == ["beforeunload"] * 2
    wait_until_waiting(stack, held)


def test_at_800_by_600_the_picture_and_its_tools_come_first_and_a_skip_link_leads_to_them(stack, tmp_path):
    editor = sign_in(stack, "eve", {"width": 800, "height": 600})
    page = editor.page
    page.keyboard.press("n")
    poll(page, "window.editorState().itemId")
    canvas, tools, queue = (page.locator(f"#{i}").bounding_box() for i in ("canvas", "tools", "queue-panel"))
    assert canvas["y"] >= 0 and canvas["y"] + canvas["height"] <= 600 and canvas["x"] + canvas["width"] <= 800
    assert tools["y"] < 600 and tools["x"] + tools["width"] <= 800 and queue["y"] >= 600
    for button in ("#submit", "#confirm-map"):
        box = page.locator(button).bounding_box()
        assert box["y"] + box["height"] <= 600, f"{button} is not in view"
    page.screenshot(path=str(tmp_path / "800x600.png"))
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "skip-to-tools"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "tools"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "tool-attend"
    # a service's refusal reaches the expert without server class names or ids
    held = next(e.id for e in stack["store"].review_items(viewer="ana") if e.claimed_by == "ana")
    answer = page.request.post(f"{stack['url']}/api/queue/{held}/claim", data={})
    detail = answer.json()["detail"]
    assert answer.status == 409 and "claimed by 'ana'" in detail and held not in detail, detail


def test_a_large_greyscale_picture_zooms_pans_takes_window_level_and_an_ignore_box(stack, tmp_path):
    """512 x 512: the map is painted in image pixels whatever the zoom; a box ignores a ruler."""
    digit = decoy_digits.build("test").images[3, 0].numpy()
    picture = np.asarray(Image.fromarray((digit * 140).astype("uint8")).resize((512, 512)), np.uint8) + 40
    picture[470:490, 20:400] = 250  # a ruler
    Image.fromarray(picture).save(tmp_path / "large.png")
    editor = sign_in(stack, "eve")
    page = editor.page
    page.set_input_files("#upload", str(tmp_path / "large.png"))
    poll(page, "window.editorState().source === 'upload'")
    state = editor.state()
    assert (state["width"], state["height"], state["grey"]) == (512, 512, True)
    warning = poll(page, "document.querySelector('#error-message').textContent")
    assert "512x512, much larger" in warning and "32x32" in warning  # unlike the model's inputs: said plainly
    # window and level: the ruler's 250 stays white, the background's 40 goes black
    assert page.evaluate("window.editorBaseAt(100, 100)") == 40
    page.click("#contrast-auto")
    assert page.evaluate("window.editorBaseAt(100, 100)") == 0 and page.evaluate("window.editorBaseAt(100, 480)") == 255
    for _ in range(4):
        page.click("#zoom-in")
    assert editor.state()["zoom"] > 2.4
    assert page.evaluate("(v => v.scrollWidth > v.clientWidth)(document.querySelector('#viewport'))")
    # zoomed: a stroke of radius 10 is 10 pixels of the image
    editor.stroke([(256, 250), (276, 250)], "attend", 10)
    attend = capsule((512, 512), [(256, 250), (276, 250)], 10, 1)
    # Space and drag moves the picture
    scrolled = page.evaluate("document.querySelector('#viewport').scrollLeft")
    page.keyboard.down(" ")
    x, y = editor.point(256, 256)
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 120, y, steps=4)
    page.mouse.up()
    page.keyboard.up(" ")
    assert page.evaluate("document.querySelector('#viewport').scrollLeft") == pytest.approx(scrolled - 120, abs=2)
    assert editor.state()["undoDepth"] == 1  # panning painted nothing
    page.keyboard.press("f")
    editor.stroke([(10, 460), (410, 500)], "box")
    page.keyboard.press("1")
    editor.submit()
    [f] = stored(stack, "eve")
    mask, m = decided_of(f), map_of(f)
    assert mask.shape == (512, 512) and f.label == "1"
    box = np.zeros((512, 512), bool)
    box[460:501, 10:411] = True
    assert (m[box] == 0).all() and mask[box].all()
    assert_decided_matches(mask & ~box, np.where(box, np.inf, attend), margin=2)
    assert m[attend <= -1].min() > 0.5 and m[attend <= -0.4 * 10 - 1].min() == 1  # soft: full in its core
    assert not editor.errors


def test_uploads_unlike_the_models_inputs_are_warned_of_plainly():
    grey_32 = InputShape(32, 32, grey=True)
    assert _unlike(Image.new("L", (64, 64), 90), grey_32) == []  # grey, twice the size: as the model sees
    red = _unlike(Image.new("RGB", (32, 32), (200, 30, 30)), grey_32)
    assert "in colour, but the model was trained on 32x32 greyscale images" in red[0]
    assert "another shape" in _unlike(Image.new("L", (96, 32)), grey_32)[0]
    assert "greyscale, but" in _unlike(Image.new("RGB", (32, 32), (90, 90, 90)), InputShape(32, 32, grey=False))[0]


def test_messages_lose_server_class_names_and_ids():
    assert plain("org.pytorch.serve.http.BadRequestException: Parameter data is required") == (
        "Parameter data is required"
    )
    ids = "0a1b2c3d4e5f60718293a4b5c6d7e8f9", "9f8e7d6c5b4a39281706f5e4d3c2b1a0"
    said = plain(f"review item {ids[0]} was closed already, by correction {ids[1]}")
    assert said == "this item was closed already, by the correction"
    assert plain("retrain run 20261127T153000Z refused it") == "retrain run 20261127T153000Z refused it"


def test_without_a_valid_token_there_is_only_the_sign_in_page(stack):
    page = stack["browser"].new_context().new_page()
    missing = watch_files(page, stack["url"])
    page.goto(stack["url"])
    assert page.query_selector("#token") and not page.query_selector("#canvas")
    page.fill("#token", "not-a-token")
    page.click("#signin-button")
    poll(page, "document.querySelector('#signin-error').textContent.length > 0")
    assert "not an expert" in page.text_content("#signin-error") and not missing
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
    page = sign_in(stack, "ana").page
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


def test_corrections_from_the_editor_are_consumed_by_retraining_and_their_authors_see_it(stack, tmp_path):
    """The tests before stored partial strokes (ana, bo), a 512 x 512 upload (eve) and a withdrawn confirmation
    (cy): retraining consumes the three, version 2 answers, and ana's "My corrections" says so."""
    cfg = stack["cfg"]
    pending = sorted(f.author for f in stack["admin"].list_feedback(pending=True))
    assert pending == ["ana", "bo", "eve"]
    job = retraining.for_services(
        cfg,
        store=str(stack["root"] / "feedback.db"),
        workdir=str(stack["root"] / "retrain"),
        min_feedback=2,
        gate=GateConfig(max_drop=1.0, attention_tolerance=1.0),  # three corrections: the gate is not under test
    )
    job.tune.epochs = 1
    report = retraining.run_once(job)
    assert report["outcome"] == "promoted", report
    assert not list(stack["admin"].list_feedback(pending=True))
    image = (stack["root"] / "queue" / "0.png").read_bytes()
    assert stack["admin"].predict(image).model_version == "2"

    # ana paints the next item (an Ignore stroke over the corner glyph, an Attend stroke on the digit) and looks
    # at what became of her first correction
    ana = sign_in(stack, "ana")
    page = ana.page
    page.click("#next")
    item = stack["admin"].feedback.review_item(poll(page, "window.editorState().itemId"))
    picture, glyph = np.asarray(Image.open(io.BytesIO(item.image))), SIDE // 4  # the glyph: 8 of 32 pixels
    x, y = max(((x, y) for x in (0, SIDE - glyph) for y in (0, SIDE - glyph)),
               key=lambda c: picture[c[1] : c[1] + glyph, c[0] : c[0] + glyph].sum())  # fmt: skip
    ana.stroke([(x + 4, y + 4), (x + glyph - 5, y + glyph - 5)], "ignore", 8)
    ys, xs = np.nonzero(picture > 128)
    on_digit = [(px, py) for px, py in zip(xs, ys) if not (x <= px < x + glyph and y <= py < y + glyph)]
    by_height = sorted(on_digit, key=lambda p: p[1])
    ana.stroke([by_height[0], by_height[len(by_height) // 2], by_height[-1]], "attend", 5)
    page.keyboard.press(stack["labels"][item.image])  # the digit's own class
    page.click("#try")
    poll(page, "document.querySelectorAll('#scores-new li').length > 0")
    page.click("#tab-mine")
    poll(page, "document.querySelector('#mine-list').textContent.includes('now in version 2')")
    assert "1 used" in page.text_content("#mine-totals") and "1 done today" in page.text_content("#progress")
    page.mouse.move(*ana.point(64, 60))
    page.screenshot(path=str(tmp_path / "editor.png"))
    if os.environ.get("ABN_UPDATE_SCREENSHOT"):
        shutil.copy(tmp_path / "editor.png", REPO / "docs" / "img" / "editor.png")


def test_the_http_api_is_documented():
    app = create_app(EditorConfig(), Client())
    documented = (REPO / "docs" / "api.md").read_text()
    for path, operations in app.openapi()["paths"].items():
        for method in operations:
            assert f"`{method.upper()} {path}`" in documented, f"docs/api.md does not list {method.upper()} {path}"

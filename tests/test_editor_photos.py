"""Photographs, for real: a 224-input ResNet-18 ABN (14x14 maps, as ResNet-50's at 224) served by TorchServe (ONNX
Runtime, the default backend), a feedback service and the editor's gateway on loopback, driven by Debian's
Chromium with real pointer and keyboard events. Colour photo-like pictures (gradients and shapes) of 224x224 and
640x480 are shown with the model's 14x14 map, painted in each map style, and the stored corrections are checked
where the strokes were painted; the serving path answers a 14x14 map and the model's own scores.

The screenshots of each map style are left in the test's tmp folder (colours.png, outline.png, hue.png).
"""

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from editor_driver import Editor, assert_decided_matches, capsule, decided_of, map_of, poll, start_editor
from PIL import Image
from playwright.sync_api import sync_playwright

from finetune import checkpoint
from finetune.images import image_tensor, normalize, open_image, resize_map, resize_mask
from finetune.model import create_model
from handlers import wire
from serving import review
from serving.client import Client
from serving.editor.gateway import known_inputs
from serving.feedback import experts
from serving.feedback.server import FeedbackServer, write_token
from serving.feedback.service import known_classes
from serving.feedback.store import SQLiteStore
from serving.torchserve import archive
from serving.torchserve.archive import ArchiveConfig
from serving.torchserve.config import ServeConfig
from serving.torchserve.process import TorchServe

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs Java 17"),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)"),
]
CLASSES = ["beach", "field", "forest", "street", "room"]
SIDE, MAP = 224, (14, 14)
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # ImageNet's, as a photo model's
EXPERTS = ("fay", "gus")


def photo(width: int, height: int, seed: int) -> np.ndarray:
    """A colour picture with a photograph's kinds of content: a sky and a ground in gradients, a sun, a red
    box, a dark green tree, a blue lake and some grain (height x width x 3, uint8)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:height, :width] / np.array([height, width])[:, None, None]
    horizon = 0.55 + 0.05 * np.sin(6 * x + seed)
    sky = np.stack([0.35 + 0.4 * y, 0.55 + 0.35 * y, 0.95 - 0.1 * y], -1)
    ground = np.stack([0.45 - 0.2 * y, 0.6 - 0.15 * y, 0.2 + 0.0 * y], -1)
    img = np.where((y < horizon)[..., None], sky, ground)
    aspect = width / height
    img[(x - 0.8) ** 2 * aspect**2 + (y - 0.2) ** 2 < 0.08**2] = (1.0, 0.85, 0.2)  # the sun
    img[(0.1 < x) & (x < 0.3) & (0.6 < y) & (y < 0.85)] = (0.8, 0.1, 0.1)  # a red box
    trunk = (0.62 < x) & (x < 0.66) & (0.45 < y) & (y < 0.75)
    img[trunk] = (0.35, 0.2, 0.1)
    img[(np.abs(x - 0.64) < (y - 0.2) * 0.35) & (y < 0.55)] = (0.1, 0.4, 0.15)  # the tree's crown
    img[((x - 0.4) / 0.18) ** 2 + ((y - 0.85) / 0.07) ** 2 < 1] = (0.15, 0.35, 0.8)  # a lake
    img = img + rng.normal(0, 0.03, img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def encoded(picture: np.ndarray, form: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.fromarray(picture).save(out, form, **({"quality": 92} if form == "JPEG" else {}))
    return out.getvalue()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    torch.manual_seed(0)
    model = create_model("abn_resnet18", len(CLASSES))
    model.train()  # BatchNorm statistics of photo-like pictures, so that the map spreads over [0, 1]
    with torch.no_grad():
        warm = np.stack([photo(SIDE, SIDE, seed) for seed in range(10, 18)])
        model(normalize(torch.from_numpy(warm).permute(0, 3, 1, 2).float() / 255, MEAN, STD))
    model.eval()
    meta = checkpoint.metadata(model, "abn_resnet18", CLASSES, (SIDE, SIDE), MEAN, STD, {"data": "test"}, name="abn")
    assert tuple(meta["map_size"]) == MAP
    ckpt = root / "checkpoint.pt"
    checkpoint.save(ckpt, model, meta)
    archive.build(ckpt, root / "store", ArchiveConfig(backend="onnx", batch_size=1, batch_sizes=(1,)), name="abn")
    cfg = ServeConfig.on_free_ports(root / "serve", root / "store", {"abn": "abn.v1.mar"})
    store = SQLiteStore(root / "feedback.db")
    classes = known_classes([ckpt])
    feedback = FeedbackServer(store, "127.0.0.1:0", write_token(root / "token"), classes=classes)
    feedback_target = f"127.0.0.1:{feedback.port}"
    tokens = {name: experts.add(store, name) for name in EXPERTS}
    (root / "queue").mkdir()
    (root / "queue" / "photo.png").write_bytes(encoded(photo(SIDE, SIDE, 1)))
    with TorchServe(cfg), sync_playwright() as p:
        admin = Client.for_services(cfg, feedback_target, root / "token")
        assert review.add_folder(admin, review.QueueConfig(str(root / "queue")))["queued"] == 1
        editor, gateway_client = start_editor(cfg, feedback_target, classes, inputs=known_inputs([ckpt]))
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield {
            "url": f"http://127.0.0.1:{editor.port}",
            "admin": admin,
            "tokens": tokens,
            "browser": browser,
            "model": model,
        }
        browser.close()
        editor.stop()
        gateway_client.close()
        admin.close()
    feedback.stop(grace=5)
    store.close()


def stored_by(photos, author: str):
    [f] = [f for f in photos["admin"].list_feedback() if f.author == author]
    return f


def drawn(page) -> None:
    """Until the page has drawn what changed: it draws on the next animation frame."""
    page.evaluate("new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")


def canvas_and_picture_at(page, x: float, y: float) -> tuple[list[int], list[int]]:
    """The canvas's RGB and the picture's under it at working-map pixel (x, y), as drawn."""
    drawn(page)
    return page.evaluate(
        f"[[...document.querySelector('#canvas').getContext('2d').getImageData({x}, {y}, 1, 1).data].slice(0, 3),"
        f" window.editorPictureAt({x}, {y})]"
    )


def test_a_224_colour_photo_from_the_queue_gets_a_14x14_map_and_strokes_land_where_painted(photos):
    editor = Editor(photos["browser"], photos["url"], photos["tokens"]["fay"])
    page = editor.page
    with page.expect_response(lambda r: r.url.endswith("/api/queue/next")) as answer:
        page.click("#next")
    attention = answer.value.json()["attention"]
    assert (attention["height"], attention["width"], len(attention["values"])) == (*MAP, 14 * 14)
    poll(page, "window.editorState().itemId")
    state = editor.state()
    # painted finer than the picture (256 working pixels for 224), the model's map kept at 14x14, in colour
    assert (state["imageWidth"], state["imageHeight"], state["width"], state["height"]) == (SIDE, SIDE, 256, 256)
    assert (state["modelHeight"], state["modelWidth"], state["grey"]) == (*MAP, False)
    assert page.is_hidden("#contrast-panel")
    assert not page.is_visible("#error")  # a 224 colour photo is what the model was trained on: no warning

    ignore, attend = [(20, 40), (100, 40)], [(150, 168), (200, 168)]
    editor.stroke(ignore, "ignore", 16)
    editor.stroke(attend, "attend", 16)
    page.keyboard.press("2")  # the third class
    page.click("#try")  # the painted map goes to TorchServe at 14x14
    poll(page, "document.querySelectorAll('#scores-new li').length > 0")
    assert "did not use" not in page.text_content("#scores-new-note")
    page.uncheck("#auto-next")  # the queue's only item: nothing to open next
    editor.submit()

    f = stored_by(photos, "fay")
    mask, m = decided_of(f), map_of(f)
    assert m.shape == mask.shape == (256, 256) and f.label == CLASSES[2] and not f.confirmed
    assert Image.open(io.BytesIO(f.image)).size == (SIDE, SIDE)
    scale = 256 / SIDE  # working pixels per image pixel
    near_ignore, near_attend = capsule(m.shape, ignore, 16, scale), capsule(m.shape, attend, 16, scale)
    assert_decided_matches(mask, np.minimum(near_ignore, near_attend))
    core = -0.4 * 16 * scale - 1  # the soft brush paints fully to 0.6 r
    assert m[near_ignore <= core].max() == 0 and m[near_attend <= core].min() == 1
    assert 0.01 < mask.mean() < 0.3  # partial: the rest is "don't care"
    # at the model's resolution, as training takes it: the strokes fall in the 14x14 cells under them
    small = resize_map(torch.from_numpy(m)[None, None], MAP)[0, 0].numpy()
    decided_small = resize_mask(torch.from_numpy(mask)[None, None].float(), MAP)[0, 0].numpy() > 0.5
    cell = SIDE / MAP[0]  # image pixels per map cell; the soft brush's core (0.6 r) covers these cells whole
    (ix, iy), (ax, ay) = (int(60 / cell), int(40 / cell)), (int(175 / cell), int(168 / cell))
    assert small[iy, ix] == 0 and small[ay, ax] == 1 and decided_small[iy, ix] and decided_small[ay, ax]
    assert not decided_small[12, 1] and not decided_small[1, 12]  # corners far from both strokes
    assert not editor.errors


def test_a_640x480_photo_is_painted_in_every_map_style_and_the_style_is_remembered(photos, tmp_path):
    picture = photo(640, 480, 2)
    (tmp_path / "photo.jpg").write_bytes(encoded(picture, "JPEG"))
    editor = Editor(photos["browser"], photos["url"], photos["tokens"]["gus"])
    page = editor.page
    page.set_input_files("#upload", str(tmp_path / "photo.jpg"))
    poll(page, "window.editorState().source === 'upload'")
    state = editor.state()
    assert (state["imageWidth"], state["imageHeight"], state["width"], state["height"]) == (640, 480, 640, 480)
    assert (state["modelHeight"], state["modelWidth"], state["grey"]) == (*MAP, False)
    warning = poll(page, "document.querySelector('#error-message').textContent")
    assert "640x480, another shape" in warning and "squeezed to 224x224" in warning
    page.click("#error-dismiss")
    assert state["mapStyle"] == "colours" and page.get_attribute("#legend", "data-style") == "colours"

    strokes = {  # style -> (tool, points in image pixels, radius)
        "colours": ("ignore", [(80, 330), (200, 380)], 24),
        "outline": ("attend", [(400, 100), (420, 260)], 20),
        "hue": ("attend", [(520, 380), (600, 400)], 16),
    }
    cover = {}

    def paint_and_look(style: str) -> None:
        assert editor.state()["mapStyle"] == style and page.is_checked(f"#style-{style}")
        assert page.get_attribute("#legend", "data-style") == style
        tool, points, radius = strokes[style]
        before = editor.state()["decided"]
        editor.stroke(points, tool, radius)
        assert editor.state()["decided"] > before  # painting works in this style
        (x, y), target = points[0], 0 if tool == "ignore" else 1
        assert page.evaluate(f"[window.editorDecidedAt({x}, {y}), window.editorMapAt({x}, {y})]") == [1, target]
        page.mouse.move(*editor.point(320, 20))  # the brush's circle off the strokes
        drawn(page)
        cover[style] = page.evaluate("window.editorMapCover()")
        page.screenshot(path=str(tmp_path / f"{style}.png"))

    paint_and_look("colours")
    page.click("label:has(#style-outline)")  # the pointer
    paint_and_look("outline")
    page.keyboard.press("o")  # the shortcut: the next style
    paint_and_look("hue")

    # colours tint the whole picture; the outline leaves it as it is but for its lines; the hue only where the
    # map is high
    assert cover["colours"] > 0.9 and 0.005 < cover["outline"] < 0.3 and cover["hue"] < cover["colours"]
    ignored, attended = (140, 355), (410, 180)  # inside the ignore stroke (map 0), the outline's attend stroke (1)
    shown, under = canvas_and_picture_at(page, *ignored)
    assert np.abs(np.subtract(shown, under)).max() <= 2  # hue: where the map is 0 the picture is untouched
    shown, under = canvas_and_picture_at(page, *attended)
    assert shown[0] > under[0] + 20 and shown[1] < under[1] - 20  # ...and magenta where it is 1

    page.focus("#style-hue")
    page.keyboard.press("ArrowLeft")  # the radio group's own keys
    assert editor.state()["mapStyle"] == "outline" and page.get_attribute("#legend", "data-style") == "outline"
    shown, under = canvas_and_picture_at(page, *attended)
    assert np.abs(np.subtract(shown, under)).max() <= 2  # outline: inside the attended region, the picture itself

    page.keyboard.press("1")
    editor.submit()
    f = stored_by(photos, "gus")
    mask, m = decided_of(f), map_of(f)
    assert m.shape == mask.shape == (480, 640) and f.label == CLASSES[1]
    assert Image.open(io.BytesIO(f.image)).size == (640, 480)
    near = {style: capsule(m.shape, points, radius, 1.0) for style, (_, points, radius) in strokes.items()}
    assert_decided_matches(mask, np.minimum.reduce(list(near.values())))
    core = {style: -0.4 * radius - 1 for style, (_, _, radius) in strokes.items()}  # painted fully to 0.6 r
    assert m[near["colours"] <= core["colours"]].max() == 0
    assert m[near["outline"] <= core["outline"]].min() == 1 and m[near["hue"] <= core["hue"]].min() == 1

    # the style chosen last is this browser's from now on
    again = page.context.new_page()
    again.goto(photos["url"])
    poll(again, "window.editorState && window.editorState().mapStyle === 'outline'")
    assert again.is_checked("#style-outline") and again.get_attribute("#legend", "data-style") == "outline"
    assert not editor.errors


def test_a_224_colour_photo_through_torchserve_gets_a_14x14_map_and_the_models_scores(photos):
    """The served ONNX model answers as the PyTorch model in process, for a PNG, a JPEG and a larger photo of
    another shape (squeezed to 224x224, as the model sees it), and uses a supplied 14x14 map."""
    admin, model = photos["admin"], photos["model"]

    def in_process(image: bytes, attention: np.ndarray | None = None):
        x = normalize(image_tensor(open_image(image), (SIDE, SIDE))[None], MEAN, STD)
        with torch.no_grad():
            out = model(x, attention=None if attention is None else torch.from_numpy(attention)[None, None])
        return torch.softmax(out.logits, 1)[0].numpy(), out.attention[0, 0].numpy()

    def probabilities(prediction) -> np.ndarray:
        return np.array([s.probability for s in sorted(prediction.scores, key=lambda s: s.index)])

    images = [encoded(photo(SIDE, SIDE, 3)), encoded(photo(SIDE, SIDE, 3), "JPEG"), encoded(photo(640, 480, 4))]
    for image in images:
        prediction = admin.predict(image, top_k=len(CLASSES))
        own = wire.map_from_proto(prediction.attention)
        expected_p, expected_map = in_process(image)
        assert own.shape == MAP and not prediction.attention_supplied
        assert [s.label for s in prediction.scores] == [CLASSES[s.index] for s in prediction.scores]
        assert np.abs(probabilities(prediction) - expected_p).max() <= 1e-4
        assert np.abs(own - expected_map).max() <= 1e-4

    supplied = np.zeros(MAP, np.float32)
    supplied[2:7, 8:13] = 1  # the sun's quarter
    prediction = admin.predict(images[0], top_k=len(CLASSES), attention=supplied)
    assert prediction.attention_supplied
    assert np.abs(probabilities(prediction) - in_process(images[0], supplied)[0]).max() <= 1e-4

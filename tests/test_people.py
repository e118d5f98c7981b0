"""People in the loop, end to end: three experts with uneven workloads correct queued test images in the real
editor (Chromium, real pointer and keyboard events), painting the way people paint -- an Ignore stroke over the
decoy glyph, one to three Attend strokes on the digit, the rest untouched, with the slips people make -- and one
`abn retrain` with its defaults takes what they decided into the next version.

The model is trained on decoy-digits, where a glyph in a corner gives the class away; the queued test images
carry glyphs of random classes, so the served model is mostly wrong on them. What the experts decide must
repair it: the test prints the figures and asks for a rise of at least 50 points on the test images nobody
corrected.
"""

import shutil
from pathlib import Path

import numpy as np
import pytest
from editor_driver import Editor, poll
from PIL import Image
from playwright.sync_api import sync_playwright

from finetune import checkpoint, decoy_digits, train
from finetune.data import TensorSet
from finetune.evaluate import evaluate
from serving import retraining, review
from serving.client import Client
from serving.editor.gateway import EditorConfig, EditorServer
from serving.feedback import experts
from serving.feedback.server import FeedbackServer, write_token
from serving.feedback.service import known_classes
from serving.feedback.store import SQLiteStore
from serving.torchserve import archive
from serving.torchserve.config import ServeConfig
from serving.torchserve.process import TorchServe

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs Java 17"),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)"),
]
QUEUED = 44
# who opens the next item, in turn: about 60 / 30 / 10 % of the work
TURNS = ["ana", "bo", "ana", "ana", "bo", "ana", "cy", "ana", "bo", "ana"]
RADIUS = 2.0  # of the Attend brush, in image pixels
IGNORE_RADIUS = 4.0  # as wide as the glyph: one pass covers it, as a person paints over a tag


def _digit_strokes(mask: np.ndarray, count: int, rng: np.random.Generator) -> list[list[tuple[float, float]]]:
    """count horizontal strokes across the digit, each through the middle row of a band of its height."""
    ys, xs = np.nonzero(mask)
    strokes = []
    for band in np.array_split(np.unique(ys), count):
        y = int(band[len(band) // 2])
        row = xs[ys == y]
        strokes.append([(float(row.min()), y + rng.normal(0, 0.4)), (float(row.max()), y + rng.normal(0, 0.4))])
    return strokes


def _decoy_stroke(decoy: np.ndarray, rng: np.random.Generator, sloppy: bool) -> list[tuple[float, float]]:
    """One stroke across the glyph's middle, starting just outside the picture where the glyph touches its
    edge; a sloppy one lands a few pixels towards the centre."""
    ys, xs = np.nonzero(decoy)
    side = decoy.shape[-1]
    y = (ys.min() + ys.max()) / 2 + (rng.choice([-1, 1]) * 3 if sloppy else rng.normal(0, 0.5))
    left, right = float(xs.min()), float(xs.max())
    if left == 0:
        left = -2.0  # starts outside the picture: it must paint from the edge
    if right == side - 1:
        right = side + 1.0
    return [(left, y), (right, y)]


def test_three_experts_painting_strokes_repair_the_model(tmp_path):
    rng = np.random.default_rng(7)
    train.train(train.TrainConfig(out=str(tmp_path / "model"), epochs=6))
    ckpt = tmp_path / "model" / "checkpoint.pt"
    archive.build(ckpt, tmp_path / "store", name="abn")
    cfg = ServeConfig.on_free_ports(tmp_path / "serve", tmp_path / "store", {"abn": "abn.v1.mar"})
    db = tmp_path / "feedback.db"
    store = SQLiteStore(db)
    classes = known_classes([ckpt])
    feedback = FeedbackServer(store, "127.0.0.1:0", write_token(tmp_path / "token"), classes=classes)
    target = f"127.0.0.1:{feedback.port}"
    tokens = {name: experts.add(store, name) for name in ("ana", "bo", "cy")}

    test = decoy_digits.build("test")
    folder = tmp_path / "queue"
    folder.mkdir()
    index_of = {}
    for i in range(QUEUED):
        path = folder / f"{i:03d}.png"
        Image.fromarray((test.images[i, 0].numpy() * 255).round().astype("uint8")).save(path)
        index_of[path.read_bytes()] = i

    done: dict[str, list[int]] = {"ana": [], "bo": [], "cy": []}
    with TorchServe(cfg), sync_playwright() as p:
        admin = Client.for_services(cfg, target, tmp_path / "token")
        assert review.add_folder(admin, review.QueueConfig(str(folder)))["queued"] == QUEUED
        gateway_client = Client.for_services(cfg, target)
        editor = EditorServer(
            EditorConfig(address="127.0.0.1:0", target=cfg.target, feedback=target, classes=classes), gateway_client
        )
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        pages = {name: Editor(browser, f"http://127.0.0.1:{editor.port}", token) for name, token in tokens.items()}
        for page in pages.values():  # each opens the next item when ready: none sits claimed by an idle page
            page.page.uncheck("#auto-next")
        slips = {"sloppy ignore stroke": 0, "submit before choosing the class": 0}
        for turn in range(QUEUED):
            name = TURNS[turn % len(TURNS)]
            page = pages[name]
            item = page.open_next()
            i = index_of[admin.feedback.review_item(item).image]
            sloppy = rng.random() < 0.15
            slips["sloppy ignore stroke"] += sloppy
            page.stroke(_decoy_stroke(test.decoys[i, 0].numpy() > 0, rng, sloppy), "ignore", IGNORE_RADIUS)
            for points in _digit_strokes(test.masks[i, 0].numpy() > 0, int(rng.integers(1, 4)), rng):
                page.stroke(points, "attend", RADIUS)
            if rng.random() < 0.1:  # Ctrl+Enter before choosing the class: nothing is stored, the page says why
                slips["submit before choosing the class"] += 1
                page.page.keyboard.press("Control+Enter")
                poll(page.page, "document.querySelector('#error-message').textContent.includes('Nothing was stored')")
            page.choose_class(str(int(test.labels[i])))
            page.submit()
            done[name].append(i)
        for page in pages.values():
            assert not [e for e in page.errors if "Failed to load" in e or "Uncaught" in e], page.errors
        browser.close()
        editor.stop()
        gateway_client.close()

        stored = list(store.items(state="pending"))
        assert len(stored) == QUEUED and not any(item.confirmed for item in stored)
        shares = [
            1.0 if item.decided is None else float(item.decided.mean()) for item in stored
        ]  # partial: most of each map left undecided
        assert max(shares) < 0.6, shares
        print(f"corrections by expert: { {n: len(v) for n, v in done.items()} }; slips: {slips}")
        print(f"share of each map decided: {min(shares):.2f} to {max(shares):.2f}, mean {np.mean(shares):.2f}")

        report = retraining.run_once(retraining.for_services(cfg, store=str(db), workdir=str(tmp_path / "retrain")))
        admin.close()
    feedback.stop(grace=5)
    store.close()

    for c in report["gate"]["criteria"]:
        print(f"{'PASS' if c['passed'] else 'FAIL'} {c['name']}: {c['detail']}")
    assert report["outcome"] == "promoted", report.get("reason") or report["gate"]["decided_by"]

    corrected = {i for v in done.values() for i in v}
    rest = [i for i in range(len(test.labels)) if i not in corrected]
    untouched = TensorSet(test.images[rest], test.labels[rest])
    old, meta = checkpoint.load(ckpt)
    new, _ = checkpoint.load(tmp_path / "retrain" / report["run"] / "checkpoint.pt")
    before, after = (evaluate(m, untouched, meta["mean"], meta["std"])["accuracy"] for m in (old, new))
    print(
        f"accuracy on {len(rest)} random-decoy test images nobody corrected: version 1 {before:.1%}, "
        f"version {report['promoted_version']} {after:.1%} ({(after - before) * 100:+.1f} points)"
    )
    assert after >= before + 0.5

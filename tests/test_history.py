"""The editor's Models page, for real: a TorchServe, the feedback service and the editor's gateway on loopback, two
real retraining runs (one the gate refuses, one promoted into the TorchServe), and Debian's Chromium (headless,
through Playwright) clicking the page as an operator and as an expert. What the page shows is checked against the
store; what an operator does is checked in TorchServe and the store, with its audit.

The model is trained on a small image folder (400 training images with their decoys) so that training and both
runs, which replay that folder, take seconds. ABN_UPDATE_SCREENSHOT=1 also copies the page's screenshot to
docs/img/models.png. Below them, the store's side on SQLite and PostgreSQL: an older store migrated in place, and
what the operators' queries change, refuse and audit.
"""

import dataclasses
import io
import json
import os
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import png
from editor_driver import WIDE, poll, start_editor, watch_files
from old_stores import write_old_store
from PIL import Image
from playwright.sync_api import sync_playwright

from finetune import decoy_digits, train
from finetune.data import DataConfig
from finetune.gate import GateConfig
from finetune.knowledge import TuneConfig
from serving import retraining
from serving.client import Client
from serving.feedback import experts
from serving.feedback.server import FeedbackServer, write_token
from serving.feedback.service import known_classes
from serving.feedback.store import (
    Action,
    Expert,
    NotFoundError,
    Run,
    SQLiteStore,
    StateError,
    open_store,
    token_hash,
)
from serving.torchserve import archive
from serving.torchserve.config import ServeConfig
from serving.torchserve.process import TorchServe

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
_stack_marks = [
    pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs Java 17"),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)"),
]


def needs_stack(test):
    for mark in _stack_marks:
        test = mark(test)
    return test


REPO = Path(__file__).resolve().parent.parent
TRAINING = 400  # training images in the model's folder (a tenth is its validation split)
CORRECTIONS = 10  # per run: 8 to fine-tune on, 2 kept back


def image_folder(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / decoy_digits.CLASSES[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image[0] * 255).round().astype("uint8")).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("history")
    split = decoy_digits.build("train")
    folder = image_folder(root / "images", split.images[:TRAINING].numpy(), split.labels[:TRAINING].numpy())
    train.train(train.TrainConfig(out=str(root / "model"), data=DataConfig(data=str(folder)), epochs=3))
    ckpt = root / "model" / "checkpoint.pt"
    archive.build(ckpt, root / "store", name="abn")
    cfg = ServeConfig.on_free_ports(root / "serve", root / "store", {"abn": "abn.v1.mar"})
    store = SQLiteStore(root / "feedback.db")
    classes = known_classes([ckpt])
    feedback = FeedbackServer(store, "127.0.0.1:0", write_token(root / "token"), classes=classes)
    feedback_target = f"127.0.0.1:{feedback.port}"
    tokens = {"olga": experts.add(store, "olga", "operator"), "ana": experts.add(store, "ana")}
    with TorchServe(cfg), sync_playwright() as p:
        admin = Client.for_services(cfg, feedback_target, root / "token")
        job = retraining.for_services(
            cfg, store=str(root / "feedback.db"), workdir=str(root / "retrain"), min_feedback=CORRECTIONS
        )

        def correct(first: int, wrong: bool) -> None:
            """CORRECTIONS training images not in the model's folder, their maps on the digit; wrong: each with
            the next class instead of its own."""
            for i in range(first, first + CORRECTIONS):
                label = (int(split.labels[i]) + wrong) % 10
                digit = split.masks[i, 0].numpy().astype(np.float32)
                admin.submit_feedback(png(split.images[i, 0].numpy()), digit, label=str(label), author="ana",
                                      model_name="abn")  # fmt: skip

        # wrong classes, learnt with a learning rate that wrecks the model: the gate refuses on accuracy
        correct(TRAINING, wrong=True)
        refused = retraining.run_once(
            dataclasses.replace(job, tune=TuneConfig(epochs=1, lr=2.0, freeze_features=False))
        )
        assert refused["outcome"] == "refused", refused
        # right classes, one gentle epoch: promoted as version 2 into the TorchServe
        correct(TRAINING + CORRECTIONS, wrong=False)
        promoted = retraining.run_once(
            dataclasses.replace(job, tune=TuneConfig(epochs=1), gate=GateConfig(max_drop=0.2))
        )
        assert promoted["outcome"] == "promoted", promoted

        editor, gateway_client = start_editor(cfg, feedback_target, classes, model_store=str(root / "store"))
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield {
            "url": f"http://127.0.0.1:{editor.port}",
            "admin": admin,
            "tokens": tokens,
            "browser": browser,
            "store": store,
            "runs": {"refused": refused["run"], "promoted": promoted["run"]},
            "sample": png(split.images[0, 0].numpy()),
        }
        browser.close()
        editor.stop()
        gateway_client.close()
        admin.close()
    feedback.stop(grace=5)
    store.close()


class ModelsPage:
    """One signed-in person's Models page; outside: every request the page made off its own origin."""

    def __init__(self, stack, who: str):
        self.url = stack["url"]
        self.page = stack["browser"].new_context(viewport=WIDE).new_page()
        self.outside: list[str] = []
        self.page.on(
            "request",
            lambda r: self.outside.append(r.url) if not r.url.startswith((self.url, "data:")) else None,
        )
        self.missing = watch_files(self.page, self.url)
        self.page.goto(self.url + "/models")  # no session yet: the sign-in page, which then shows the Models page
        self.page.fill("#token", stack["tokens"][who])
        self.page.click("#signin-button")
        self.page.wait_for_selector("#runs")
        self.loaded(1)
        assert not self.missing, f"the page's own files that did not load: {self.missing}"

    def loaded(self, n: int) -> None:
        poll(self.page, f"Number(document.body.dataset.loads || 0) >= {n}")

    def loads(self) -> int:
        return int(self.page.evaluate("Number(document.body.dataset.loads || 0)"))

    def run(self, run: str):
        return self.page.locator(f"#runs li.run[data-run='{run}']")

    def confirm(self, button, yes: bool) -> None:
        """Press button, then answer its confirmation; wait for the page to load again after a yes."""
        before = self.loads()
        button.click()
        self.page.wait_for_selector("#confirm[open]")
        self.page.click("#confirm-yes" if yes else "#confirm-no")
        if yes:
            self.loaded(before + 1)
        else:
            assert not self.page.locator("#confirm[open]").count()

    def post(self, path: str) -> int:
        """The status of a POST from the page (as its own script would send it)."""
        script = (
            "fetch(%s, {method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify("
            "{served_version: '2'})}).then(r => r.status)"
        )
        return self.page.evaluate(script % json.dumps(path))


@needs_stack
def test_the_page_shows_every_run_with_its_figures_and_what_is_served(stack):
    olga = ModelsPage(stack, "olga")
    page = olga.page
    assert page.text_content("#served-version") == "Version 2 of abn"
    assert page.is_visible("#operator-badge") and page.text_content("#rollback") == "Roll back to version 1"
    recorded = {r.run: r for r in stack["store"].runs("abn")}
    assert set(recorded) == set(stack["runs"].values())
    for outcome, run_id in stack["runs"].items():
        row, run = olga.run(run_id), recorded[run_id]
        assert row.get_attribute("data-outcome") == outcome == run.outcome
        summary = row.locator(".run-summary").text_content()
        assert f"Fine-tuned on {run.corrections_used} corrections, checked on {run.corrections_kept_back}" in summary
        assert run.decided_by in summary
        assert row.locator("time").text_content()  # when it ended
        criteria = run.gate["criteria"]
        assert row.locator("tr.criterion").count() == len(criteria)
        for c in criteria:
            cells = row.locator(f"tr.criterion[data-name='{c['name']}']")
            assert cells.locator("td.verdict").text_content() == ("pass" if c["passed"] else "FAIL")
            assert cells.locator("td.samples").text_content() == str(c["samples"])
            if c["name"].startswith("accuracy"):  # shown in percent, to a tenth
                for side in ("served", "candidate"):
                    assert cells.locator(f"td.{side}").text_content() == f"{100 * c[side]:.1f}%"
        # its report image, from the store, drawn by the browser
        image = row.locator("img.report")
        poll(page, f"document.querySelector(\"li.run[data-run='{run_id}'] img.report\").naturalWidth > 0")
        assert image.evaluate("i => i.naturalWidth") == Image.open(io.BytesIO(stack["store"].run_report(run_id))).width
    assert "version 1 → 2" in olga.run(stack["runs"]["promoted"]).locator(".run-versions").text_content()
    refused = recorded[stack["runs"]["refused"]]
    assert refused.decided_by.startswith("accuracy on")
    failed = olga.run(stack["runs"]["refused"]).locator("tr.criterion.failed th.name")
    assert failed.first.text_content() == refused.decided_by
    assert "10 rejected" in olga.run(stack["runs"]["refused"]).locator(".run-corrections").text_content()
    assert "10 consumed" in olga.run(stack["runs"]["promoted"]).locator(".run-corrections").text_content()

    # the charts: a served and a candidate point per judged run on each criterion, drawn in the page
    names = [c["name"] for c in refused.gate["criteria"]]
    assert page.eval_on_selector_all("#charts figure.chart", "fs => fs.map(f => f.dataset.name)") == names
    validation = page.locator("#charts figure.chart[data-name='accuracy on validation split'] circle.point")
    assert validation.count() == 4
    candidate = page.locator(f"#charts circle.point.candidate[data-run='{refused.run}']").first.get_attribute(
        "data-value"
    )
    assert float(candidate) == pytest.approx(refused.gate["criteria"][0]["candidate"])
    assert olga.outside == [] and not olga.missing  # nothing loaded from elsewhere, nothing missing


@needs_stack
def test_an_expert_sees_the_history_but_cannot_change_it(stack):
    ana = ModelsPage(stack, "ana")
    page = ana.page
    assert page.text_content("#served-version") == "Version 2 of abn"
    assert not page.is_visible("#rollback") and not page.is_visible("#operator-badge")
    assert page.locator("button.requeue, button.reject").count() == 0
    refused = stack["runs"]["refused"]
    # the API says no to her, and so does the service behind it, to her own token
    assert ana.post("/api/models/abn/rollback") == 403
    assert ana.post(f"/api/runs/{refused}/requeue") == 403
    assert ana.post(f"/api/runs/{refused}/reject") == 403
    as_ana = stack["admin"].feedback.with_token(stack["tokens"]["ana"])
    with pytest.raises(grpc.RpcError) as refusal:
        as_ana.set_served_version("abn", "abn.v1.mar", "1", "2")
    assert refusal.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "--role operator" in refusal.value.details()
    with pytest.raises(grpc.RpcError) as refusal:
        as_ana.requeue_run(refused)
    assert refusal.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert stack["admin"].predict(stack["sample"]).model_version == "2"
    assert stack["store"].served("abn").version == "2"
    assert stack["store"].stats("abn")["by_state"] == {"consumed": CORRECTIONS, "rejected": CORRECTIONS}
    assert stack["store"].actions() == []
    assert page.url == stack["url"] + "/models"  # refused, and still signed in


@needs_stack
def test_an_operator_requeues_and_rejects_a_runs_corrections_after_confirming(stack):
    olga = ModelsPage(stack, "olga")
    refused = stack["runs"]["refused"]
    olga.confirm(olga.run(refused).locator("button.requeue"), yes=False)
    assert stack["store"].stats("abn")["by_state"]["rejected"] == CORRECTIONS
    olga.confirm(olga.run(refused).locator("button.requeue"), yes=True)
    assert olga.page.text_content("#status") == f"10 corrections of run {refused} are pending again."
    assert stack["store"].stats("abn")["by_state"] == {"consumed": CORRECTIONS, "pending": CORRECTIONS}
    assert "10 pending" in olga.run(refused).locator(".run-corrections").text_content()

    olga.confirm(olga.run(refused).locator("button.reject"), yes=True)
    rejected = list(stack["store"].items(with_data=False, rejected=True))
    assert len(rejected) == CORRECTIONS and {i.rejected_by for i in rejected} == {"operator olga"}
    assert [(a.actor, a.action, a.run) for a in stack["store"].actions("abn")] == [
        ("olga", "reject", refused),
        ("olga", "requeue", refused),
    ]
    assert olga.page.locator("#actions li.action").count() == 2


@needs_stack
def test_an_operator_rolls_back_after_confirming(stack, tmp_path):
    olga = ModelsPage(stack, "olga")
    page = olga.page
    olga.confirm(page.locator("#rollback"), yes=False)
    assert stack["admin"].predict(stack["sample"]).model_version == "2"
    olga.confirm(page.locator("#rollback"), yes=True)
    assert page.text_content("#status") == "Version 1 of abn is the default again (was 2)."
    # TorchServe answers with version 1, and the record every replica follows names it
    assert stack["admin"].predict(stack["sample"]).model_version == "1"
    served = stack["store"].served("abn")
    assert (served.archive, served.version) == ("abn.v1.mar", "1")
    action = stack["store"].actions("abn")[0]
    assert (action.actor, action.action) == ("olga", "serve")
    assert action.detail.startswith("version 2 -> 1 (abn.v1.mar)")
    assert page.text_content("#served-version") == "Version 1 of abn"
    assert page.is_disabled("#rollback") and "No earlier version" in page.text_content("#rollback-note")
    assert "olga" in page.locator("#actions li.action").first.text_content()

    page.screenshot(path=str(tmp_path / "models.png"), full_page=True)
    if os.environ.get("ABN_UPDATE_SCREENSHOT"):
        shutil.copy(tmp_path / "models.png", REPO / "docs" / "img" / "models.png")


# ---- the store: an older one migrated in place, and what the operators' queries refuse


def _store_before_roles(url: str, path: Path) -> None:
    """A store as the version before roles and the audit left it (six migrations): an expert, two corrections."""
    insert = "INSERT INTO feedback (id, image_sha256, map_height, map_width, map_values, created)"
    insert += " VALUES (?, ?, ?, ?, ?, ?)"
    rows = [(insert, (f"c{i}", "sha-1", 2, 2, np.ones((2, 2), "<f4").tobytes(), float(i))) for i in (1, 2)]
    expert = ("INSERT INTO experts VALUES (?, ?, ?)", ("ana", token_hash("ana's token"), 1.0))
    write_old_store(url, path, 6, [expert, ("INSERT INTO images VALUES (?, ?)", ("sha-1", b"png")), *rows])


def test_an_older_store_gains_roles_run_reports_and_the_audit(url, tmp_path):
    _store_before_roles(url, tmp_path / "feedback.db")
    store = open_store(url)
    try:
        assert store.expert_by_token(token_hash("ana's token")) == Expert("ana", 1.0, "expert")
        store.add_expert("olga", token_hash("olga's token"), "operator")
        assert store.expert_by_token(token_hash("olga's token")).role == "operator"
        with pytest.raises(ValueError, match="role: 'admin' is not one of expert, operator"):
            store.add_expert("root", token_hash("x"), "admin")

        run = Run("r1", "abn", 10.0, 20.0, "refused", "accuracy on validation split", "", {"criteria": []}, 1, 1, "1")
        store.record_run(run, b"the report", ["c1", "c2"])
        store.mark_rejected(["c1", "c2"], "r1", "refused by run r1")
        assert store.runs() == [run] and store.run_report("r1") == b"the report" and store.run_report("r2") is None
        assert store.reported_runs(["r1", "r2"]) == {"r1"} and store.run_corrections("r1") == {"rejected": 2}

        # each operation applies to the run's corrections in one state, and says so when there are none
        with pytest.raises(StateError, match="run r1 has no pending corrections to reject"):
            store.reject_run("r1", "olga")
        assert store.requeue_run("r1", "olga") == 2 and store.run_corrections("r1") == {"pending": 2}
        with pytest.raises(StateError, match="run r1 has no rejected corrections to requeue"):
            store.requeue_run("r1", "olga")
        assert store.reject_run("r1", "olga") == 2
        assert {i.rejected_by for i in store.items(with_data=False)} == {"operator olga"}
        with pytest.raises(NotFoundError, match="no retraining run 'r9'"):
            store.requeue_run("r9", "olga")

        # the record changes only where it still names what the operator saw served
        store.set_served("abn", "abn.v2.mar", "2")
        with pytest.raises(StateError, match="names version 2 of abn as served, not 3"):
            store.replace_served("abn", "abn.v1.mar", "1", "3", Action("olga", "serve", "abn"))
        assert store.served("abn").version == "2"
        store.replace_served("abn", "abn.v1.mar", "1", "2", Action("olga", "serve", "abn", detail="2 -> 1"))
        assert (store.served("abn").archive, store.served("abn").version) == ("abn.v1.mar", "1")

        actions = store.actions("abn")
        assert [(a.actor, a.action, a.run) for a in actions] == [
            ("olga", "serve", ""),
            ("olga", "reject", "r1"),
            ("olga", "requeue", "r1"),
        ]
        assert actions[0].detail == "2 -> 1" and actions[0].at >= actions[-1].at > 0
        assert store.actions("other") == [] and len(store.actions(limit=1)) == 1
    finally:
        store.close()

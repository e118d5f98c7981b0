"""The whole loop, end to end: serve a decoy-trained model, collect corrected maps over gRPC, retrain,
promote; and the faults on the way: a failure at any step leaves version 1 serving and the feedback
pending, and the next run succeeds."""

import dataclasses
import json
import re
import shutil
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import png
from PIL import Image

from finetune import candidate, checkpoint, data, decoy_digits, expert, train
from finetune.data import DataConfig, TensorSet
from finetune.evaluate import evaluate
from finetune.images import resize_map
from finetune.model import create_model
from handlers import wire
from serving import cli, retraining
from serving.client import Client
from serving.feedback.server import FeedbackServer, write_token
from serving.feedback.store import Item, SQLiteStore
from serving.torchserve import archive, served
from serving.torchserve.archive import ArchiveConfig
from serving.torchserve.config import ServeConfig, free_port
from serving.torchserve.process import TorchServe
from serving.torchserve.served import ServedRecord

FEEDBACK = 120
needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs Java 17")


@needs_java
def test_the_loop_repairs_a_served_model_and_survives_faults(tmp_path):
    run = tmp_path / "decoy"
    train.train(train.TrainConfig(out=str(run), epochs=6))
    archive.build(run / "checkpoint.pt", tmp_path / "store", name="abn")
    cfg = ServeConfig.on_free_ports(tmp_path / "serve", tmp_path / "store", {"abn": "abn.v1.mar"})
    store = SQLiteStore(tmp_path / "feedback.db")
    token = write_token(tmp_path / "token")
    feedback = FeedbackServer(store, "127.0.0.1:0", token)
    record = ServedRecord(store, tmp_path / "store", "abn")
    with TorchServe(cfg):
        client = Client.for_services(cfg, f"127.0.0.1:{feedback.port}", tmp_path / "token")
        # a gate folder representative of real use: test digits with their decoys anywhere
        data.export(DataConfig(), "test", tmp_path / "gate")
        job = retraining.for_services(
            cfg,
            store=str(tmp_path / "feedback.db"),
            workdir=str(tmp_path / "retrain"),
            min_feedback=20,
            gate_data=str(tmp_path / "gate" / "images"),
        )

        def run_with(**changes):
            return retraining.run_once(dataclasses.replace(job, **changes))

        def default_version():
            return client.predict(png(np.zeros((32, 32))), model="abn").model_version

        # too little feedback: a clean stop
        assert run_with()["outcome"] == "stopped"

        # a second run while one holds the lock exits cleanly, saying so in its report
        with store.exclusive("retrain") as held:
            assert held and run_with() is None
        assert "holds the retraining lock" in last_report(tmp_path / "retrain")["reason"]

        # corrections, as an expert would send them: predict, correct the map, submit
        split = decoy_digits.build("train")
        for i in range(FEEDBACK):
            image = png(split.images[i, 0].numpy())
            prediction = client.predict(image)
            served_map = resize_map(torch.from_numpy(wire.map_from_proto(prediction.attention))[None], (32, 32))[0]
            corrected = expert.correct(split.masks[i, 0].numpy() > 0, served_map.numpy(), seed=i)
            client.submit_feedback(image, corrected, prediction=prediction, author="expert")
        assert store.stats("abn")["by_state"] == {"pending": FEEDBACK}

        # a failure at a step before the archive: nothing changes
        with pytest.raises(retraining.StepFailure):
            run_with(fail_at="finetune")
        assert default_version() == "1" and store.stats("abn")["by_state"] == {"pending": FEEDBACK}
        assert not (tmp_path / "retrain" / "pending.json").exists()

        # a failure after the new version became the default: version 1 is the default again, the archive is kept
        with pytest.raises(retraining.StepFailure, match="live_check"):
            run_with(fail_at="live_check")
        assert (tmp_path / "retrain" / "pending.json").exists() and (tmp_path / "store" / "abn.v2.mar").exists()
        assert default_version() == "1" and store.stats("abn")["by_state"] == {"pending": FEEDBACK}
        assert record.archive() is None  # a restart serves version 1

        # TorchServe unreachable at promotion: its management address a port nothing listens on
        dead = dataclasses.replace(job.target, management=f"127.0.0.1:{free_port()}")
        with pytest.raises(retraining.StepFailure, match=f"TorchServe at {dead.management} did not take abn.v2.mar"):
            run_with(target=dead)
        assert (tmp_path / "retrain" / "pending.json").exists() and (tmp_path / "store" / "abn.v2.mar").exists()
        assert default_version() == "1" and store.stats("abn")["by_state"] == {"pending": FEEDBACK}
        assert record.archive() is None
        failed = last_report(tmp_path / "retrain")
        assert failed["outcome"] == "failed" and "the next run promotes it" in failed["reason"]

        # the next run promotes the archive it built before, without training again
        report = run_with()
        assert report["outcome"] == "promoted" and report["promoted_version"] == "2"
        assert report["steps"].count("finetune") == 1
        assert default_version() == "2"
        assert store.stats("abn")["by_state"] == {"consumed": FEEDBACK}
        assert {i.promoted_version for i in store.items(with_data=False)} == {"2"}
        assert not (tmp_path / "retrain" / "pending.json").exists()
        assert record.archive() == tmp_path / "store" / "abn.v2.mar"  # and after

        # the run's report says what the store and the data hold
        folder = tmp_path / "retrain" / report["run"]
        assert json.loads((folder / "report.json").read_text()).items() <= report.items()
        used, checked = report["feedback_used"], report["feedback_checked"]
        assert used + checked == report["distinct_images"] == FEEDBACK == report["consumed"]
        assert checked == round(FEEDBACK * job.holdout)
        assert {i.consumed_by for i in store.items(with_data=False)} == {report["run"]}
        assert [h["epoch"] for h in report["history"]] == list(range(1, job.tune.epochs + 1))
        kept_back = report["figures"]["check_feedback"]
        assert kept_back["served"]["mapped_samples"] == kept_back["candidate"]["mapped_samples"] == checked
        assert kept_back["candidate"]["map_iou"] > kept_back["served"]["map_iou"]
        assert report["gate"]["promote"] and report["gate"]["decided_by"] == "every criterion passed"
        _, own_val = candidate.own_data(checkpoint.read_metadata(run / "checkpoint.pt"))
        seen = {c["name"]: c["samples"] for c in report["gate"]["criteria"] if c["passed"]}
        assert seen == {
            "accuracy on validation split": len(own_val),
            "accuracy on gate folder": len(list((tmp_path / "gate" / "images").rglob("*.png"))),
            "attention on ignore pixels of kept-back corrections": checked,
            "attention on attend pixels of kept-back corrections": checked,
        }
        with Image.open(folder / "report.png") as drawn:  # a row per kept-back correction shown (6 at most), 5 panels
            assert drawn.format == "PNG" and drawn.size == (5 * 180, min(6, checked) * 180)
            assert np.asarray(drawn.convert("L")).std() > 10  # drawn on, not blank

        # the promoted version scores higher on the test split than the one it replaced
        test = decoy_digits.build("test")
        test_set = TensorSet(test.images, test.labels)
        old, meta = checkpoint.load(run / "checkpoint.pt")
        new, new_meta = checkpoint.load(tmp_path / "retrain" / report["run"] / "checkpoint.pt")
        before, after = (evaluate(m, test_set, meta["mean"], meta["std"])["accuracy"] for m in (old, new))
        print(f"test accuracy: version 1 {before:.4f}, version 2 {after:.4f}")
        assert after > before + 0.1
        assert new_meta["version"] == 2 and new_meta["parent_version"] == 1
        tuned_on = {"feedback": used, "run": report["run"], "config": dataclasses.asdict(job.tune)}
        assert new_meta["trained_on"]["finetuned_on"] == tuned_on

        # nothing pending any more: the next run stops early
        assert run_with()["outcome"] == "stopped"

        # an image counts once: 5,000 copies of one correction are one corrected image
        image = png(split.images[FEEDBACK, 0].numpy())
        copy = split.masks[FEEDBACK, 0].numpy().astype(np.float32)
        with ThreadPoolExecutor(16) as pool:
            list(
                pool.map(
                    lambda _: client.submit_feedback(image, copy, label="3", author="copier", model_name="abn"),
                    range(5000),
                )
            )
        stats = store.stats("abn")
        assert stats["by_state"]["pending"] == 5000 and stats["pending_images"] == 1
        report = run_with(min_feedback=2)
        assert report["outcome"] == "stopped" and report["distinct_images"] == 1
        assert report["superseded"] == 4999
        assert cli.main(["feedback", "reject", "--author", "copier", "--store", str(tmp_path / "feedback.db")]) == 0
        assert store.stats("abn")["by_state"]["rejected"] == 5000

        # 200 wrong labels on distinct training images: refused on a trusted set (the validation split rewards the
        # decoy shortcut, which hides the damage; the gate folder, where only the digit tells, shows it), set aside
        for i in range(FEEDBACK + 1, FEEDBACK + 201):
            wrong = str((int(split.labels[i]) + 1) % 10)
            digit = split.masks[i, 0].numpy().astype(np.float32)  # the right place, the wrong class
            client.submit_feedback(
                png(split.images[i, 0].numpy()), digit, label=wrong, author="mallory", model_name="abn"
            )
        report = run_with()
        assert report["outcome"] == "refused" and report["gate"]["decided_by"].startswith("accuracy on")
        refusing = next(c for c in report["gate"]["criteria"] if c["name"] == report["gate"]["decided_by"])
        assert not refusing["passed"] and refusing["drop"] > job.gate.max_drop and refusing["interval"][0] > 0
        assert report["rejected"] == 200 and default_version() == "2"
        assert store.stats("abn")["by_state"] == {"consumed": FEEDBACK, "rejected": 5200}
        refused = {i.reason for i in store.items(with_data=False, rejected=True) if i.rejected_by == report["run"]}
        assert len(refused) == 1 and refused.pop().startswith(f"refused by run {report['run']}: accuracy on")
        assert run_with()["outcome"] == "stopped"  # not tried again
        requeue = ["feedback", "requeue", "--run", report["run"], "--store", str(tmp_path / "feedback.db")]
        assert cli.main(requeue) == 0 and store.stats("abn")["by_state"]["pending"] == 200

        # rollback: version 1 is the default again, and the record a restart of `abn up` serves says so
        assert served.rollback(client.torchserve, record) == ("2", "1")
        assert default_version() == "1" and record.archive() == tmp_path / "store" / "abn.v1.mar"
        client.close()
    feedback.stop(grace=5)
    store.close()


def last_report(workdir) -> dict:
    return json.loads(max(workdir.glob("*/report.json"), key=lambda p: p.parent.name).read_text())


@pytest.fixture(scope="module")
def model_store(tmp_path_factory):
    """A model store with version 1 of abn (untrained; a torch archive, quick to build): enough for the runs that
    stop before fine-tuning, which read only its classes."""
    root = tmp_path_factory.mktemp("served")
    model = create_model("abn_small", 10).eval()
    meta = checkpoint.metadata(
        model, "abn_small", decoy_digits.CLASSES, (32, 32), [0.2] * 3, [0.3] * 3, {"data": data.BUILTIN[0]}, name="abn"
    )
    checkpoint.save(root / "checkpoint.pt", model, meta)
    archive.build(root / "checkpoint.pt", root / "store", ArchiveConfig(backend="torch"), name="abn")
    return root / "store"


@pytest.fixture
def job(tmp_path, model_store):
    """A publishing run's configuration (no TorchServe) on a fresh store that records version 1 as served."""
    store = SQLiteStore(tmp_path / "feedback.db")
    store.set_served("abn", "abn.v1.mar", "1")
    yield (
        store,
        retraining.RetrainConfig(
            store=str(tmp_path / "feedback.db"),
            model_store=str(model_store),
            workdir=str(tmp_path / "retrain"),
            publish=True,
        ),
    )
    store.close()


def correct(store, images, author, label="3", model="abn", decided=None) -> list[str]:
    """A correction of each of these images (by number), as the service stores it."""
    attention = np.zeros((8, 8), np.float32)
    attention[2:6, 2:6] = 1
    return [
        store.submit(
            Item(
                image=png(np.random.default_rng(i).random((32, 32))),
                attention=attention,
                label=label,
                model_name=model,
                author=author,
                decided=decided,
            )
        )[0]
        for i in images
    ]


def pending_in(output: str) -> int:
    """The pending count a run or the dry run printed."""
    found = re.search(r"(\d+) corrected images? pending for abn", output)
    assert found, output
    return int(found.group(1))


def test_a_colleagues_single_correction_does_not_empty_the_run(job, capsys):
    """20 corrected images from one expert and 1 from a colleague, the defaults: the run takes all 21 (it
    used to cut the expert's to 1 and stop with 2). Made to fail at fine-tuning: nothing is trained here."""
    store, cfg = job
    correct(store, range(20), "ana")
    correct(store, [20], "bo")
    with pytest.raises(retraining.StepFailure, match="finetune"):
        retraining.run_once(dataclasses.replace(cfg, fail_at="finetune"))
    out = capsys.readouterr().out
    assert "takes 21: 17 to fine-tune on, 4 kept back to check" in out
    assert "images and weight per author: ana 20 (weight 1.00), bo 1 (weight 1.00)" in out
    report = last_report(Path(cfg.workdir))
    assert report["outcome"] == "failed" and report["distinct_images"] == 21 and "finetune" in report["reason"]
    assert report["authors"] == {"ana": {"images": 20, "weight": 1.0}, "bo": {"images": 1, "weight": 1.0}}
    assert store.stats("abn")["by_state"] == {"pending": 21}


def test_the_dry_run_the_run_and_stats_agree_on_the_count(job, capsys):
    """A store with second thoughts, a conflict, several authors, a class the model lacks, a withdrawn, a rejected,
    a consumed correction and another model's: `abn feedback stats`, a run and the dry run count the same pending
    images, and the dry run says where each went without changing anything."""
    store, cfg = job
    correct(store, range(12), "ana")
    correct(store, range(3), "ana")  # second thoughts: the same images again
    correct(store, [*range(12, 15), 5], "bo", label="4")  # image 5 otherwise than ana: a conflict, bo's is later
    correct(store, [15], "cyd")
    correct(store, [16], "dee", label="cat")  # not a class of the model
    store.withdraw(correct(store, [17], "eve")[0], "eve")
    store.mark_rejected(correct(store, [18], "fay"), "operator")
    correct(store, [19], "ana", model="other")
    store.mark_consumed(correct(store, [20], "ana"), "earlier", "1")
    stats = store.stats("abn")
    assert stats["pending_images"] == 17 and stats["conflicting_images"] == 1

    report = retraining.run_once(cfg)
    out = capsys.readouterr().out
    assert pending_in(out) == stats["pending_images"], out
    assert report["outcome"] == "stopped" and last_report(Path(cfg.workdir)).items() <= report.items()
    assert report["reason"] == "16 corrected images to take for abn, fewer than --min-feedback 20"
    assert report["pending_images"] == 17 and report["distinct_images"] == 16 and report["unknown_class_images"] == 1
    assert report["authors"] == {a: {"images": n, "weight": 1.0} for a, n in (("ana", 11), ("bo", 4), ("cyd", 1))}
    reasons = {i.id: i.reason for i in store.items(with_data=False)}
    assert sum(r.startswith("waiting for more: 16 corrected images") for r in reasons.values()) == 20
    assert sum("not one of version 1 of abn's" in r for r in reasons.values()) == 1

    assert cli.main(["feedback", "stats", "--model", "abn", "--store", cfg.store]) == 0
    assert json.loads(capsys.readouterr().out)["pending_images"] == stats["pending_images"]

    runs = sorted(Path(cfg.workdir).iterdir())
    with store.exclusive("retrain") as held:  # the dry run needs no lock
        argv = ["retrain", "--dry-run", "--publish", "--store", cfg.store, "--model-store", cfg.model_store]
        assert held and cli.main([*argv, "--workdir", cfg.workdir]) == 0
    out = capsys.readouterr().out
    assert pending_in(out) == stats["pending_images"], out
    for said in (
        "takes 16: 13 to fine-tune on, 3 kept back to check (--holdout 0.2); images and weight per author: ana 11 "
        "(weight 1.00), bo 4 (weight 1.00), cyd 1 (weight 1.00)",
        "4 earlier corrections of the same images superseded by the latest",
        "leaves 1 image pending: the latest correction names a class that version 1 of abn lacks (cat)",
        "1 image corrected differently by different authors",
        "not counted: 1 corrections withdrawn by their authors; 1 rejected by a run or an operator",
        "a run would stop: 16 corrected images to take for abn, fewer than --min-feedback 20",
    ):
        assert said in out, out
    assert sorted(Path(cfg.workdir).iterdir()) == runs  # nothing written, nothing changed
    assert {i.id: i.reason for i in store.items(with_data=False)} == reasons
    assert retraining.dry_run(dataclasses.replace(cfg, min_feedback=16))["stop"] == ""


def test_author_weights():
    """Nobody is held back; an author beyond the share pulls as hard as the larger of their share and a minimal
    run's worth."""
    weights = retraining.author_weights
    assert weights(Counter(ana=20, bo=1), 0.5, 20) == {"ana": 1.0, "bo": 1.0}  # a colleague's one: nothing changes
    assert weights(Counter(ana=100, bo=5), 0.5, 20) == {"ana": 0.2, "bo": 1.0}  # ana pulls as 20 corrections
    assert weights(Counter(ana=100, bo=40, cyd=20), 0.5, 20) == {"ana": 0.6, "bo": 1.0, "cyd": 1.0}  # 60 vs 60
    assert weights(Counter(ana=100), 0.5, 20) == {"ana": 1.0}  # alone
    assert weights(Counter(ana=100, bo=5), 1.0, 20) == {"ana": 1.0, "bo": 1.0}  # no limit


def test_corrections_carry_the_decided_pixels_and_their_weight(job):
    store, cfg = job
    decided = np.zeros((8, 8), bool)
    decided[1:3] = True
    correct(store, [0], "ana", decided=decided)
    correct(store, [1], "bo")
    selection = retraining.select(list(store.items(consumed=False)), None, 0.5, 20)
    first, second = retraining._corrections(selection.chosen, {"ana": 0.5, "bo": 1.0})
    assert (first.decided == decided).all() and first.weight == 0.5
    assert second.decided is None and second.weight == 1.0


def test_a_run_that_finds_the_lock_held_says_so(job, capsys):
    store, cfg = job
    with store.exclusive("retrain") as held:
        assert held and retraining.run_once(cfg) is None
    report = last_report(Path(cfg.workdir))
    assert report["outcome"] == "stopped" and "another run holds the retraining lock" in report["reason"]
    assert report["reason"] in capsys.readouterr().out


def test_the_console_says_how_each_author_is_weighted(job, capsys):
    store, cfg = job
    correct(store, range(25), "ana")
    correct(store, [25, 26], "bo")
    report = retraining.dry_run(cfg)
    out = capsys.readouterr().out
    assert report["authors"] == {"ana": {"images": 25, "weight": 0.8}, "bo": {"images": 2, "weight": 1.0}}
    assert "images and weight per author: ana 25 (weight 0.80), bo 2 (weight 1.00)" in out, out
    assert "ana: more than --max-author-share 0.5 of the images" in out, out
    assert "a run would fine-tune, judge and promote on these" in out, out

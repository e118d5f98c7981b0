"""The whole loop, end to end: serve a decoy-trained model, collect corrected maps over gRPC, retrain,
promote; and the faults on the way: a failure at any step leaves version 1 serving and the feedback
pending, and the next run succeeds."""

import dataclasses
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from conftest import png

from finetune import checkpoint, data, decoy_digits, expert, train
from finetune.data import DataConfig, TensorSet
from finetune.evaluate import evaluate
from finetune.images import resize_map
from handlers import wire
from serving import cli, retraining
from serving.client import Client
from serving.feedback.server import FeedbackServer, write_token
from serving.feedback.store import SQLiteStore
from serving.torchserve import archive, served
from serving.torchserve.config import ServeConfig
from serving.torchserve.process import TorchServe
from serving.torchserve.served import ServedRecord

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs Java 17")
FEEDBACK = 120


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
        assert run_with()["outcome"] == "too_little_feedback"

        # a second run while one holds the lock exits cleanly
        with store.exclusive("retrain") as held:
            assert held and run_with() is None

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

        # TorchServe unreachable at promotion (here: made to fail at registering): the archive is kept
        with pytest.raises(retraining.StepFailure):
            run_with(fail_at="register")
        assert (tmp_path / "retrain" / "pending.json").exists() and (tmp_path / "store" / "abn.v2.mar").exists()
        assert default_version() == "1" and store.stats("abn")["by_state"] == {"pending": FEEDBACK}
        assert record.archive() is None  # a restart serves version 1

        # a failure after the new version became the default: version 1 is the default again
        with pytest.raises(retraining.StepFailure):
            run_with(fail_at="live_check")
        assert default_version() == "1" and store.stats("abn")["by_state"] == {"pending": FEEDBACK}

        # the next run promotes the archive it built before, without training again
        report = run_with()
        assert report["outcome"] == "promoted" and report["promoted_version"] == "2"
        assert report["steps"].count("finetune") == 1
        assert default_version() == "2"
        assert store.stats("abn")["by_state"] == {"consumed": FEEDBACK}
        assert not (tmp_path / "retrain" / "pending.json").exists()
        assert record.archive() == tmp_path / "store" / "abn.v2.mar"  # and after
        assert (tmp_path / "retrain" / report["run"] / "report.png").stat().st_size > 0
        kept_back = report["figures"]["check_feedback"]
        assert kept_back["candidate"]["map_iou"] > kept_back["served"]["map_iou"]
        assert report["gate"]["promote"] and report["gate"]["decided_by"] == "every criterion passed"
        assert [c["name"] for c in report["gate"]["criteria"]] == [
            "accuracy on validation split",
            "accuracy on gate folder",
            "attention IoU on kept-back corrections",
            "attention share inside on kept-back corrections",
        ]

        # the promoted version scores higher on the test split than the one it replaced
        test = decoy_digits.build("test")
        test_set = TensorSet(test.images, test.labels)
        old, meta = checkpoint.load(run / "checkpoint.pt")
        new, new_meta = checkpoint.load(tmp_path / "retrain" / report["run"] / "checkpoint.pt")
        before, after = (evaluate(m, test_set, meta["mean"], meta["std"])["accuracy"] for m in (old, new))
        print(f"test accuracy: version 1 {before:.4f}, version 2 {after:.4f}")
        assert after > before + 0.1
        assert new_meta["version"] == 2 and new_meta["parent_version"] == 1

        # nothing pending any more: the next run stops early
        assert run_with()["outcome"] == "too_little_feedback"

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
        assert report["outcome"] == "too_little_feedback" and report["distinct_images"] == 1
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
        assert report["rejected"] == 200 and default_version() == "2"
        assert store.stats("abn")["by_state"] == {"consumed": FEEDBACK, "rejected": 5200}
        assert run_with()["outcome"] == "too_little_feedback"  # not tried again
        requeue = ["feedback", "requeue", "--run", report["run"], "--store", str(tmp_path / "feedback.db")]
        assert cli.main(requeue) == 0 and store.stats("abn")["by_state"]["pending"] == 200

        # rollback: version 1 is the default again, and the record a restart of `abn up` serves says so
        assert served.rollback(client.torchserve, record) == ("2", "1")
        assert default_version() == "1" and record.archive() == tmp_path / "store" / "abn.v1.mar"
        client.close()
    feedback.stop(grace=5)
    store.close()

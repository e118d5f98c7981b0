"""The walkthrough: the whole loop on built-in data, with readable output.

train a model on decoy-digits (it learns the decoy) -> serve it -> predict the test split over gRPC ->
a simulated expert corrects the maps of training images the model attends to wrongly -> send them to the
feedback service -> retrain -> promote -> predict the test split again. Runs its own TorchServe and
feedback service on free loopback ports, so it does not disturb `abn up`. Writes into --out: demo.json
(every figure), demo.png (test images with the maps of version 1 and version 2) and the retraining run's
report under retrain/.
"""

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from finetune import decoy_digits, expert, train
from finetune.evaluate import attention_agreement
from finetune.images import resize_map
from finetune.progress import track
from finetune.visualize import map_rows
from handlers import wire
from serving import retraining, settings
from serving.client import Client
from serving.feedback.server import FeedbackServer, write_token
from serving.feedback.store import SQLiteStore
from serving.torchserve import archive
from serving.torchserve.config import ServeConfig
from serving.torchserve.process import TorchServe


@dataclass
class DemoConfig:
    out: str = f"{settings.RUNS}/walkthrough"  # folder for the models, services and reports
    epochs: int = train.TrainConfig.epochs  # of the first model
    corrections: int = 300  # most training images the expert corrects
    test_images: int = 540  # test images predicted before and after


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((array * 255).round().astype("uint8")).save(buf, "PNG")
    return buf.getvalue()


def _served_map(prediction, size: tuple[int, int]) -> torch.Tensor:
    return resize_map(torch.from_numpy(wire.map_from_proto(prediction.attention))[None], size)


def _predict_split(client: Client, split: decoy_digits.Split, n: int, what: str) -> tuple[float, list]:
    """Accuracy over gRPC on the first n images, and the predictions."""
    predictions = [
        client.predict(_png(split.images[i, 0].numpy()), top_k=1)
        for i in track(range(n), desc=what, unit="img", leave=False)
    ]
    correct = sum(p.scores[0].index == int(split.labels[i]) for i, p in enumerate(predictions))
    return correct / n, predictions


def run(cfg: DemoConfig) -> dict:
    out = Path(cfg.out)
    started = time.time()
    print(f"1. training a model on decoy-digits, where a glyph in a corner gives the class away ({out / 'model'})")
    train.train(train.TrainConfig(out=str(out / "model"), epochs=cfg.epochs, resume=True))
    store_dir = out / "model_store"
    for old in store_dir.glob("*.mar"):
        old.unlink()
    archive.build(out / "model" / "checkpoint.pt", store_dir, name=settings.MODEL_NAME)

    serve = ServeConfig.on_free_ports(out / "serve", store_dir, {settings.MODEL_NAME: "abn.v1.mar"})
    db = out / "feedback.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    store = SQLiteStore(db)
    feedback = FeedbackServer(store, f"{settings.LOOPBACK}:0", write_token(out / "feedback_token"))
    test, training = decoy_digits.build("test"), decoy_digits.build("train")
    n = min(cfg.test_images, len(test.labels))
    print("2. serving it: TorchServe and the feedback service on loopback", flush=True)
    with TorchServe(serve):
        client = Client.for_services(serve, f"{settings.LOOPBACK}:{feedback.port}", out / "feedback_token")
        before, first = _predict_split(client, test, n, "predicting, version 1")
        print(f"3. version 1 over gRPC: {before:.1%} right on {n} test images, whose decoys show random classes")

        sent = looked = 0
        for i in track(range(len(training.labels)), desc="expert", unit="img", leave=False):
            if sent == cfg.corrections:
                break
            looked += 1
            image = _png(training.images[i, 0].numpy())
            prediction = client.predict(image)
            served = _served_map(prediction, (32, 32))
            on_digit, _ = attention_agreement(served[None], training.masks[i : i + 1])
            if on_digit.item() >= 0.5:
                continue  # attends to the digit already: nothing to correct
            corrected = expert.correct(training.masks[i, 0].numpy() > 0, served[0].numpy(), seed=i)
            client.submit_feedback(image, corrected, prediction=prediction, author="simulated expert")
            sent += 1
        print(
            f"4. a simulated expert looked at {looked} training images and corrected the {sent} whose "
            "attention lay mostly off the digit"
        )

        job = retraining.for_services(serve, store=str(db), workdir=str(out / "retrain"))
        t = time.time()
        report = retraining.run_once(job)
        if report is None:
            raise RuntimeError(f"another retraining run holds {job.workdir}; try again when it is done")
        retrain_seconds = time.time() - t
        print(
            f"5. retraining: {report['outcome']} in {retrain_seconds:.0f} s; version "
            f"{report.get('promoted_version', '1')} is served"
        )

        after, second = _predict_split(client, test, n, "predicting, version 2")
        print(f"6. version 2 over gRPC: {after:.1%} right on the same test images (version 1: {before:.1%})")
        share = {
            v: float(
                attention_agreement(torch.stack([_served_map(p, (32, 32)) for p in preds]), test.masks[:n])[0].mean()
            )
            for v, preds in (("1", first), ("2", second))
        }
        rows = [
            (
                test.images[i].expand(3, -1, -1),
                [None, _served_map(first[i], (16, 16)), _served_map(second[i], (16, 16))],
            )
            for i in range(8)
        ]
        map_rows(rows, ["test image", "version 1", "version 2"], out / "demo.png")
        client.close()
    feedback.stop(grace=5)
    store.close()
    result = {
        "test_accuracy": {"1": before, "2": after},
        "attention_on_digit": share,
        "corrections": sent,
        "looked_at": looked,
        "retrain_seconds": retrain_seconds,
        "retrain": report,
        "seconds": time.time() - started,
    }
    (out / "demo.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"   share of attention on the digit: {share['1']:.1%} -> {share['2']:.1%}")
    print(
        f"wrote {out / 'demo.json'} and {out / 'demo.png'} (maps before and after); the retraining report is in "
        f"{out / 'retrain' / report['run']}"
    )
    return result

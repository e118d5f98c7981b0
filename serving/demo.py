"""The walkthrough: the whole loop on built-in data, with readable output.

train a model on decoy-digits (it learns the decoy) -> serve it -> predict the test split over gRPC ->
a simulated expert corrects the maps of training images the model attends to wrongly -> send them to the
feedback service -> retrain -> promote -> predict the test split again. Runs its own TorchServe and
feedback service on free loopback ports, so it does not disturb `abn up`. Writes into --out: demo.json
(every figure), demo.png (test images with the maps of version 1 and version 2) and the retraining run's
report under retrain/.
"""

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from finetune import decoy_digits, expert, retrain, train
from finetune.evaluate import attention_agreement
from finetune.images import resize_map
from finetune.visualize import map_rows
from serving import package, wire
from serving.client import Client
from serving.feedback_server import make_server, write_token
from serving.feedback_store import SQLiteStore
from serving.torchserve import ServeConfig, TorchServe


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/walkthrough", help="folder for the models, services and reports")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of the first model")
    parser.add_argument("--corrections", type=int, default=300, help="most training images the expert corrects")
    parser.add_argument("--test-images", type=int, default=540, help="test images predicted before and after")


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((array * 255).round().astype("uint8")).save(buf, "PNG")
    return buf.getvalue()


def _served_map(prediction, size: tuple[int, int]) -> torch.Tensor:
    return resize_map(torch.from_numpy(wire.map_from_proto(prediction.attention))[None], size)


def _predict_split(client: Client, split: decoy_digits.Split, n: int, what: str) -> tuple[float, list]:
    """Accuracy over gRPC on the first n images, and the predictions."""
    predictions = [client.predict(_png(split.images[i, 0].numpy()), top_k=1)
                   for i in tqdm(range(n), desc=what, unit="img", leave=False)]
    correct = sum(p.scores[0].index == int(split.labels[i]) for i, p in enumerate(predictions))
    return correct / n, predictions


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    started = time.time()
    print(f"1. training a model on decoy-digits, where a glyph in a corner gives the class away ({out / 'model'})")
    train.train(train.default_args(out=str(out / "model"), epochs=args.epochs, resume=True))
    store_dir = out / "model_store"
    for old in store_dir.glob("*.mar"):
        old.unlink()
    package.build(out / "model" / "checkpoint.pt", store_dir, name="abn")

    cfg = ServeConfig.on_free_ports(out / "serve", store_dir, {"abn": "abn.v1.mar"})
    db = out / "feedback.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    store = SQLiteStore(db)
    feedback, port = make_server(store, "127.0.0.1:0", write_token(out / "feedback_token"))
    test, training = decoy_digits.build("test"), decoy_digits.build("train")
    n = min(args.test_images, len(test.labels))
    print("2. serving it: TorchServe and the feedback service on loopback", flush=True)
    with TorchServe(cfg):
        client = Client(cfg.inference_target, cfg.key_file, cfg.http_management_url,
                        management_target=cfg.management_target, feedback_target=f"127.0.0.1:{port}",
                        feedback_token_file=out / "feedback_token")
        before, first = _predict_split(client, test, n, "predicting, version 1")
        print(f"3. version 1 over gRPC: {before:.1%} right on {n} test images, whose decoys show random classes")

        sent = looked = 0
        for i in tqdm(range(len(training.labels)), desc="expert", unit="img", leave=False):
            if sent == args.corrections:
                break
            looked += 1
            image = _png(training.images[i, 0].numpy())
            prediction = client.predict(image)
            served = _served_map(prediction, (32, 32))
            on_digit, _ = attention_agreement(served[None], training.masks[i:i + 1])
            if on_digit.item() >= 0.5:
                continue  # attends to the digit already: nothing to correct
            corrected = expert.correct(training.masks[i, 0].numpy() > 0, served[0].numpy(), seed=i)
            client.submit_feedback(image, corrected, prediction=prediction, author="simulated expert")
            sent += 1
        print(f"4. a simulated expert looked at {looked} training images and corrected the {sent} whose "
              "attention lay mostly off the digit")

        job = retrain.for_services(cfg, store=str(db), workdir=str(out / "retrain"))
        t = time.time()
        report = retrain.run_once(job)
        retrain_seconds = time.time() - t
        print(f"5. retraining: {report['outcome']} in {retrain_seconds:.0f} s; version "
              f"{report.get('promoted_version', '1')} is served")

        after, second = _predict_split(client, test, n, "predicting, version 2")
        print(f"6. version 2 over gRPC: {after:.1%} right on the same test images (version 1: {before:.1%})")
        share = {v: float(attention_agreement(torch.stack([_served_map(p, (32, 32)) for p in preds]),
                                              test.masks[:n])[0].mean())
                 for v, preds in (("1", first), ("2", second))}
        rows = [(test.images[i].expand(3, -1, -1), [None, _served_map(first[i], (16, 16)),
                                                      _served_map(second[i], (16, 16))]) for i in range(8)]
        map_rows(rows, ["test image", "version 1", "version 2"], out / "demo.png")
        client.close()
    feedback.stop(grace=5).wait()
    store.close()
    result = {"test_accuracy": {"1": before, "2": after}, "attention_on_digit": share,
              "corrections": sent, "looked_at": looked, "retrain_seconds": retrain_seconds, "retrain": report,
              "seconds": time.time() - started}
    (out / "demo.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"   share of attention on the digit: {share['1']:.1%} -> {share['2']:.1%}")
    print(f"wrote {out / 'demo.json'} and {out / 'demo.png'} (maps before and after); the retraining report is in "
          f"{out / 'retrain' / report['run']}")
    return result

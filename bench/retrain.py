"""Benchmark: how long one retraining run takes, and what it gains (not a test).

Trains a decoy-digits model (the shortcut the loop repairs), serves it, sends
simulated-expert corrections of --feedback training images through the
feedback service, then times `abn retrain` from lock to promotion. Prints the
run's steps, its duration and the test accuracy before and after; writes
retrain.json into --out.

    .venv/bin/python -m bench.retrain --feedback 500 --out runs/bench-retrain
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

from finetune import checkpoint, decoy_digits, expert, retrain, train
from finetune.data import TensorSet
from finetune.evaluate import evaluate
from finetune.images import resize_map
from serving import package, wire
from serving.client import Client
from serving.feedback_server import make_server, write_token
from serving.feedback_store import SQLiteStore
from serving.torchserve import ServeConfig, TorchServe


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((array * 255).round().astype("uint8")).save(buf, "PNG")
    return buf.getvalue()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench-retrain")
    p.add_argument("--feedback", type=int, default=500, help="corrections sent before the run (at most 1077)")
    p.add_argument("--train-epochs", type=int, default=30)
    args = p.parse_args()
    out = Path(args.out)
    train.train(train.default_args(out=str(out / "decoy"), epochs=args.train_epochs, resume=True))
    store_dir = out / "store"
    for old in store_dir.glob("*.mar"):
        old.unlink()
    package.build(out / "decoy" / "checkpoint.pt", store_dir, name="abn")
    cfg = ServeConfig.on_free_ports(out / "serve", store_dir, {"abn": "abn.v1.mar"})
    db = out / "feedback.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    store = SQLiteStore(db)
    server, port = make_server(store, "127.0.0.1:0", write_token(out / "token"))
    with TorchServe(cfg):
        client = Client(cfg.inference_target, cfg.key_file, cfg.http_management_url,
                        management_target=cfg.management_target, feedback_target=f"127.0.0.1:{port}",
                        feedback_token_file=out / "token")
        split = decoy_digits.build("train")
        for i in tqdm(range(args.feedback), desc="corrections", unit="img"):
            image = png(split.images[i, 0].numpy())
            prediction = client.predict(image)
            served = resize_map(torch.from_numpy(wire.map_from_proto(prediction.attention))[None], (32, 32))[0]
            client.submit_feedback(image, expert.correct(split.masks[i, 0].numpy() > 0, served.numpy(), seed=i),
                                   prediction=prediction)
        parser = argparse.ArgumentParser()
        retrain.add_arguments(parser)
        job = parser.parse_args(["--store", str(db), "--model-store", str(store_dir), "--workdir",
                                 str(out / "retrain"), "--key-file", str(cfg.key_file), "--inference",
                                 cfg.inference_target, "--management", cfg.management_target,
                                 "--management-url", cfg.http_management_url])
        started = time.perf_counter()
        report = retrain.run_once(job)
        seconds = time.perf_counter() - started
        client.close()
    server.stop(grace=5).wait()
    store.close()

    test = decoy_digits.build("test")
    test_set = TensorSet(test.images, test.labels)
    old, meta = checkpoint.load(out / "decoy" / "checkpoint.pt")
    new, _ = checkpoint.load(out / "retrain" / report["run"] / "checkpoint.pt")
    before, after = (evaluate(m, test_set, meta["mean"], meta["std"])["accuracy"] for m in (old, new))
    result = {"feedback": args.feedback, "run_seconds": seconds, "outcome": report["outcome"],
              "test_accuracy_before": before, "test_accuracy_after": after, "report": report}
    print(f"{args.feedback} corrections: run took {seconds:.1f} s ({report['outcome']}); "
          f"test accuracy {before:.4f} -> {after:.4f}")
    (out / "retrain.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out / 'retrain.json'}")


if __name__ == "__main__":
    main()

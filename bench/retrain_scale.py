"""Benchmark: one retraining run on 5,000 corrections of distinct images, from lock to promotion (not a test).

A decoy-digits model (trained here, 6 epochs, unless --checkpoint names one) served by a real TorchServe, a
real feedback service on SQLite; 5,000 corrections of distinct images (the training split drawn with several
seeds: other shifts and decoys) with their object masks as corrected maps, sent through the client at
concurrency 16; then `abn retrain`'s run with its defaults. Prints the seconds of each phase and writes
retrain_scale.json into --out.

    .venv/bin/python -m bench.retrain_scale --out runs/bench-retrain-scale
"""

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench.load import png
from finetune import decoy_digits, train
from serving import retraining
from serving.client import Client
from serving.feedback.server import FeedbackServer, write_token
from serving.feedback.store import SQLiteStore
from serving.torchserve import archive
from serving.torchserve.config import ServeConfig
from serving.torchserve.process import TorchServe


def corrections(n: int) -> list[tuple[bytes, np.ndarray, str]]:
    """n corrections of distinct images: (PNG, map, label)."""
    result, seen, seed = [], set(), 0
    while len(result) < n:
        split = decoy_digits.build("train", seed=seed)
        for image, mask, label in zip(split.images[:, 0], split.masks[:, 0], split.labels):
            data = png(image.numpy())
            if data not in seen and len(result) < n:
                seen.add(data)
                result.append((data, mask.numpy().astype(np.float32), decoy_digits.CLASSES[int(label)]))
        seed += 1
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench-retrain-scale")
    p.add_argument("--corrections", type=int, default=5000)
    p.add_argument("--checkpoint", help="the model to serve (default: one trained here)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figures: dict = {"corrections": args.corrections}
    ckpt = Path(args.checkpoint) if args.checkpoint else out / "model" / "checkpoint.pt"
    if not ckpt.exists():
        train.train(train.TrainConfig(out=str(ckpt.parent), epochs=6))
    store_dir = out / "store"
    for old in store_dir.glob("*"):
        old.unlink()
    archive.build(ckpt, store_dir, name="abn")
    cfg = ServeConfig.on_free_ports(out / "serve", store_dir, {"abn": "abn.v1.mar"})
    db = out / "feedback.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    store = SQLiteStore(db)
    feedback = FeedbackServer(store, "127.0.0.1:0", write_token(out / "token"))
    with TorchServe(cfg):
        client = Client.for_services(cfg, f"127.0.0.1:{feedback.port}", out / "token")
        made = corrections(args.corrections)
        started = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            list(
                pool.map(
                    lambda c: client.submit_feedback(c[0], c[1], label=c[2], author="expert", model_name="abn"), made
                )
            )
        figures["submit_seconds"] = time.perf_counter() - started
        job = retraining.for_services(cfg, store=str(db), workdir=str(out / "retrain"))
        report = retraining.run_once(job)
        assert report is not None
        figures.update(
            retrain_seconds=report["seconds"],
            outcome=report["outcome"],
            distinct_images=report.get("distinct_images"),
            gate=report.get("gate", {}).get("decided_by"),
        )
        client.close()
    feedback.stop()
    store.close()
    text = (
        f"{args.corrections} corrections: submitted in {figures['submit_seconds']:.1f} s (16 clients); retraining "
        f"run {figures['retrain_seconds']:.1f} s from lock to {figures['outcome']} ({figures['gate']})"
    )
    print(text)
    (out / "retrain_scale.json").write_text(json.dumps({**figures, "text": text}, indent=2) + "\n")
    print(f"wrote {out / 'retrain_scale.json'}")


if __name__ == "__main__":
    main()

"""Benchmark: where TorchServe's time goes at concurrency 1, beside in-process ONNX Runtime (not a test).

One TorchServe, one run, the same images (abn_resnet18 at 224x224 by default,
fp32, untrained: speed does not depend on the weights), one request at a time:
  onnxruntime        in-process: decode, preprocess as the handler does, run
  batching           TorchServe gRPC, the archive's defaults (batches of up to 8,
                     waiting up to max_batch_delay ms to fill one)
  batching-10ms      batches of up to 8, waiting up to 10 ms
  no-batching        the same model archived with batch size 1 (no wait)
  threads-1          batch size 1, one ONNX Runtime thread (the other core left
                     to TorchServe's Java frontend)
  floor              TorchServe gRPC to a trivial handler that answers at once:
                     what TorchServe itself costs, without our handler
  floor-batching     the same handler batched as the archive's defaults batch
Prints p50/p95, requests/s and each path's p50 over in-process ONNX Runtime's
at each --concurrency (1 by default; more shows what the batch delay buys under
load); writes overhead.json into --out.

    .venv/bin/python -m bench.overhead --out runs/bench-overhead
"""

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import torch

from bench.load import measure, noise_pngs, onnx_of
from bench.serving import in_process, make_checkpoint
from finetune import checkpoint
from handlers.backends import OnnxBackend, threads_per_worker
from serving.torchserve import archive
from serving.torchserve.client import TorchServeClient
from serving.torchserve.config import ServeConfig
from serving.torchserve.process import TorchServe

TRIVIAL = '''
def handle(data, context):
    """Answers every request of a batch at once, with nothing."""
    return [b"" for _ in data] if data else []
'''


def trivial_archive(store: Path, work: Path, name: str = "trivial", like: archive.ArchiveConfig | None = None) -> str:
    """A .mar whose handler does no work: TorchServe's own floor; batched as like is, if given."""
    handler = work / "trivial_handler.py"
    handler.write_text(TRIVIAL)
    archiver = str(Path(sys.executable).parent / "torch-model-archiver")
    command = [archiver, "--model-name", name, "--version", "1", "--handler", str(handler),
               "--export-path", str(store), "--force"]  # fmt: skip
    if like:
        config = work / f"{name}.yaml"
        config.write_text(f"batchSize: {like.batch_size}\nmaxBatchDelay: {like.max_batch_delay}\n")
        command += ["--config-file", str(config)]
    subprocess.run(command, check=True)
    return f"{name}.mar"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench-overhead")
    p.add_argument("--arch", default="abn_resnet18")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--requests", type=int, default=150)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1])
    args = p.parse_args()
    out = Path(args.out)
    store = out / "store"
    store.mkdir(parents=True, exist_ok=True)
    ckpt = make_checkpoint(args.arch, args.size, out)
    _, meta = checkpoint.load(ckpt)
    name = meta["name"]
    torch.set_num_threads(1)  # the in-process path preprocesses with torch on one thread, as the worker does
    default = archive.ArchiveConfig(device="cpu")  # on the CPU wherever this runs, as the in-process path
    variants = {
        name: default,
        f"{name}-d10": dataclasses.replace(default, max_batch_delay=10),
        f"{name}-b1": dataclasses.replace(default, batch_size=1),
        f"{name}-t1": dataclasses.replace(default, batch_size=1, threads=1),
    }
    models = {
        **{model: archive.build(ckpt, store, cfg, name=model).name for model, cfg in variants.items()},
        "trivial": trivial_archive(store, out),
        "trivial-batching": trivial_archive(store, out, "trivial-batching", default),
    }
    onnx_path = onnx_of(store / models[name], out / f"{args.arch}.onnx")  # the file TorchServe serves
    data = noise_pngs(64, args.size)
    cfg = ServeConfig.on_free_ports(out / "serve", store, models)
    results = []
    with TorchServe(cfg), TorchServeClient(cfg.target) as client:
        calls = {
            "onnxruntime": in_process(OnnxBackend(onnx_path, threads_per_worker(1)), meta),
            "batching": lambda im: client.predict(im, model=name),
            "batching-10ms": lambda im: client.predict(im, model=f"{name}-d10"),
            "no-batching": lambda im: client.predict(im, model=f"{name}-b1"),
            "threads-1": lambda im: client.predict(im, model=f"{name}-t1"),
            "floor": lambda im: client.predictions({"data": im}, model="trivial"),
            "floor-batching": lambda im: client.predictions({"data": im}, model="trivial-batching"),
        }
        for c in args.concurrency:
            for path, call in calls.items():
                r = measure(lambda i, call=call: call(data[i % len(data)]), c, args.requests, warmup=max(10, c))
                results.append({"path": path, **r})
    lines = [f"{args.arch} at {args.size}x{args.size}, archive default max_batch_delay {default.max_batch_delay} ms"]
    lines.append(f"{'path':>14} {'conc':>5} {'p50 ms':>8} {'p95 ms':>8} {'req/s':>8} {'p50 / onnxruntime':>18}")
    for r in results:
        base = next(b for b in results if b["path"] == "onnxruntime" and b["concurrency"] == r["concurrency"])
        lines.append(
            f"{r['path']:>14} {r['concurrency']:>5} {r['p50_ms']:>8.2f} {r['p95_ms']:>8.2f} {r['per_second']:>8.1f} "
            f"{r['p50_ms'] / base['p50_ms']:>17.2f}x"
        )
    text = "\n".join(lines)
    print(text)
    (out / "overhead.json").write_text(json.dumps({"results": results, "settings": vars(args), "text": text}, indent=2))
    print(f"wrote {out / 'overhead.json'}")


if __name__ == "__main__":
    main()

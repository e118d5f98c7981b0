"""Benchmark on one GPU: the fp32 and fp16 builds of abn_resnet50 at 224, checked, then timed (not a test).

Trains the model briefly on the built-in decoy-digits set at 224 (so that the builds' parity check has a
model with real decisions to agree with), builds fp32 (ONNX Runtime CUDA) and fp16 (TensorRT) archives,
each checked against the fp32 PyTorch model, then measures images per second at batch 1, 8 and 64 for
PyTorch eager on CUDA, ONNX Runtime CUDA (fp32) and TensorRT (fp16, through ONNX Runtime), and TorchServe
over gRPC serving the fp16 archive at concurrency 1, 8 and 64. Writes gpu.json and gpu.md (the table) to --out.

    bench/gpu.sh                       # the run, on a machine with a CUDA GPU (within 8 minutes)
    bench/gpu.sh --dry-run             # abn_small on the CPU: builds and checks, no timing (CI runs this)
"""

import argparse
import json
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from bench.load import measure, noise_pngs, rate
from finetune import checkpoint, decoy_digits
from finetune.builds import BuildConfig
from finetune.data import DataConfig, builtin_split
from finetune.images import normalize
from finetune.model import create_model
from finetune.parity import ParityConfig
from handlers.backends import OnnxBackend
from serving.client import Client
from serving.torchserve import archive
from serving.torchserve.config import ServeConfig
from serving.torchserve.process import TorchServe


def trained_checkpoint(arch: str, size: int, steps: int, device: str, out: Path) -> Path:
    """A checkpoint of arch after a few steps on decoy-digits at size (both heads' cross-entropy)."""
    torch.manual_seed(0)
    train = builtin_split(DataConfig(), "train", (size, size))
    mean, std = [float(train.images.mean())] * 3, [float(train.images.std())] * 3
    model = create_model(arch, len(decoy_digits.CLASSES)).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    done = 0
    while done < steps:
        for batch in DataLoader(train, batch_size=32, shuffle=True):
            x = normalize(batch["image"], mean, std).to(device)
            y = batch["label"].to(device)
            o = model(x)
            loss = F.cross_entropy(o.logits, y) + F.cross_entropy(o.attention_logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            if done == steps:
                break
    model = model.cpu().eval()
    source = {"data": "decoy-digits", "decoy": "glyph", "decoy_size": None, "data_seed": 0}
    meta = checkpoint.metadata(model, arch, decoy_digits.CLASSES, (size, size), mean, std, source, name="abn")
    path = out / f"{arch}.pt"
    checkpoint.save(path, model, meta)
    return path


def onnx_of(mar: Path, out: Path) -> Path:
    with zipfile.ZipFile(mar) as z:
        out.write_bytes(z.read("model.onnx"))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench-gpu")
    p.add_argument("--dry-run", action="store_true", help="abn_small on the CPU: build and check, no timing")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--steps", type=int, default=120, help="training steps before building")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    arch, size, device = ("abn_small", 32, "cpu") if args.dry_run else ("abn_resnet50", 224, "cuda")
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py needs a CUDA GPU (or --dry-run)")
    ckpt = trained_checkpoint(arch, size, args.steps, device, out)
    store, parity = out / "store", ParityConfig(check_images=200 if args.dry_run else 1000)
    builds = {}
    for build, serve_on in (("fp32", "cuda"), ("fp16", "tensorrt")):
        cfg = archive.ArchiveConfig(
            batch_size=max(args.batches),
            max_batch_delay=5,
            build=BuildConfig(build=build),
            parity=parity,
            device="cpu" if args.dry_run else serve_on,
        )
        mar = archive.build(ckpt, store, cfg, name=f"abn_{build}")
        builds[build] = archive.describe(mar)["build"]
        print(f"{build}: {builds[build]}", flush=True)
    results: list[dict] = []
    if not args.dry_run:
        results = timings(ckpt, store, out, args.batches)
    lines = ["| path | batch / concurrency | images/s |", "|---|---|---|"]
    lines += [f"| {r['path']} | {r['batch']} | {r['per_second']:.1f} |" for r in results]
    text = "\n".join([f"{arch} at {size}; builds: {json.dumps(builds)}", "", *lines])
    print(text)
    (out / "gpu.md").write_text(text + "\n")
    (out / "gpu.json").write_text(json.dumps({"builds": builds, "results": results, "dry_run": args.dry_run}) + "\n")


def timings(ckpt: Path, store: Path, out: Path, batches: list[int]) -> list[dict]:
    """Untested here (no GPU where it was written): eager CUDA, ORT CUDA, TensorRT, TorchServe gRPC."""
    model, meta = checkpoint.load(ckpt)
    model = model.cuda().eval()
    h, w = meta["map_size"]
    fp32 = onnx_of(store / archive.archive_name("abn_fp32", 1), out / "fp32.onnx")
    fp16 = onnx_of(store / archive.archive_name("abn_fp16", 1), out / "fp16.onnx")
    paths = {
        "onnxruntime-cuda-fp32": OnnxBackend(fp32, 1, 0, "cuda", "fp32"),
        "tensorrt-fp16": OnnxBackend(fp16, 1, 0, "tensorrt", "fp16"),
    }
    results = []
    for b in batches:
        x = np.random.default_rng(0).standard_normal((b, 3, *meta["input_size"])).astype(np.float32)
        maps, supplied = np.zeros((b, 1, h, w), np.float32), np.zeros(b, bool)
        xt = torch.from_numpy(x).cuda()

        def eager(xt=xt):
            with torch.inference_mode():
                o = model(xt)
                o.logits.cpu(), o.attention.cpu()  # the answer leaves the GPU, as the others' do

        results.append({"path": "pytorch-eager-cuda", "batch": b, "per_second": rate(eager, b)})
        for name, backend in paths.items():
            run = lambda backend=backend, x=x, maps=maps, supplied=supplied: backend.run(x, maps, supplied)  # noqa: E731
            results.append({"path": name, "batch": b, "per_second": rate(run, b)})
        print(results[-3:], flush=True)
    cfg = ServeConfig.on_free_ports(out / "serve", store, {"abn_fp16": "abn_fp16.v1.mar"})
    images = noise_pngs(64, meta["input_size"][0])
    with TorchServe(cfg):
        client = Client.for_services(cfg)
        for c in batches:
            r = measure(lambda i: client.predict(images[i % len(images)], model="abn_fp16"), c, 20 * c, warmup=c)
            results.append({"path": "torchserve-grpc-fp16", "batch": c, "per_second": r["per_second"]})
        client.close()
    return results


if __name__ == "__main__":
    main()

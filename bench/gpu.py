"""Benchmark on one GPU: the fp32 and fp16 builds of abn_resnet50 at 224, checked, then timed (not a test).

Trains the model briefly on the built-in decoy-digits set at 224 (so that the builds' parity check has a
model with real decisions to agree with), builds fp32 and fp16 archives, each checked against the fp32
PyTorch model, then on the GPU:
  - checks each ONNX Runtime path against eager fp32 CUDA on validation images (top-1 agreement, mean
    |attention difference|): the archive's check runs on the CPU, this one on the arithmetic that serves;
  - measures images per second at batch 1, 8 and 64 for PyTorch eager on CUDA (fp32, and fp16 under
    autocast), ONNX Runtime CUDA (fp32 and fp16 builds) and TensorRT (fp16, through ONNX Runtime; a row says
    why when its libraries are not installed);
  - serves the fp16 archive (device cuda) from TorchServe and measures gRPC predictions at concurrency 1, 8
    and 64 (PNG in, top-k and map out): once with the default ONNX Runtime threads (one on a GPU), once
    with a pool of one thread per core.
Writes gpu.json and gpu.md (the tables) to --out, and prints each stage's time as it goes.

    bench/gpu.sh                       # the run, on a machine with a CUDA GPU (within 8 minutes)
    bench/gpu.sh --dry-run             # abn_small on the CPU: builds and checks, no timing (CI runs this)
"""

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from bench.load import measure, noise_pngs, onnx_of, rate
from finetune import checkpoint, decoy_digits
from finetune.builds import BuildConfig
from finetune.data import DataConfig, builtin_split
from finetune.images import normalize
from finetune.model import create_model
from finetune.parity import ParityConfig
from handlers.backends import DeviceError, OnnxBackend
from serving.client import Client
from serving.torchserve import archive
from serving.torchserve.config import ServeConfig
from serving.torchserve.process import TorchServe

START = time.monotonic()
# (archive, build, ONNX Runtime intra-op threads per worker: None is the archive default, one on a GPU);
# abn_fp16_pool serves as the default did before it was one thread, for the comparison
SERVED = [("abn_fp32", "fp32", None), ("abn_fp16", "fp16", None), ("abn_fp16_pool", "fp16", os.cpu_count())]


def progress(what: str) -> None:
    print(f"[{time.monotonic() - START:6.1f} s] {what}", flush=True)


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench-gpu")
    p.add_argument("--dry-run", action="store_true", help="abn_small on the CPU: build and check, no timing")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--steps", type=int, default=120, help="training steps before building")
    p.add_argument("--check-images", type=int, default=500, help="validation images each parity check uses")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    arch, size, device = ("abn_small", 32, "cpu") if args.dry_run else ("abn_resnet50", 224, "cuda")
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py needs a CUDA GPU (or --dry-run)")
    ckpt = trained_checkpoint(arch, size, args.steps, device, out)
    progress(f"trained {arch} for {args.steps} steps on {device}")
    store, parity = out / "store", ParityConfig(check_images=args.check_images)
    builds = {}
    for name, build, threads in SERVED[:2] if args.dry_run else SERVED:  # the pool matters to timing only
        cfg = archive.ArchiveConfig(
            batch_size=max(args.batches),
            max_batch_delay=5,
            threads=threads,
            build=BuildConfig(build=build),
            parity=parity,
            device="cpu" if args.dry_run else "cuda",
        )
        mar = archive.build(ckpt, store, cfg, name=name)
        builds[name] = archive.describe(mar)["build"]
        progress(f"{name}: {builds[name]}")
    report: dict = {"builds": builds, "dry_run": args.dry_run, "arch": arch, "size": size}
    if not args.dry_run:
        report |= environment() | in_process(ckpt, store, out, args.batches, args.check_images)
        write(report, out)  # kept should TorchServe fail
        report["torchserve"] = through_torchserve(store, out, args.batches)
    print(write(report, out))


def write(report: dict, out: Path) -> str:
    text = table(report)
    (out / "gpu.md").write_text(text + "\n")
    (out / "gpu.json").write_text(json.dumps(report, indent=1) + "\n")
    return text


def environment() -> dict:
    return {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
    }


def in_process(ckpt: Path, store: Path, out: Path, batches: list[int], check_images: int) -> dict:
    """Parity on the GPU and images per second of each path, in this process."""
    model, meta = checkpoint.load(ckpt)
    model = model.cuda().eval()
    h, w = meta["map_size"]
    fp32 = onnx_of(store / archive.archive_name("abn_fp32", 1), out / "fp32.onnx")
    fp16 = onnx_of(store / archive.archive_name("abn_fp16", 1), out / "fp16.onnx")
    paths, unavailable = {}, {}
    for name, path, device, build in (
        ("onnxruntime-cuda-fp32", fp32, "cuda", "fp32"),
        ("onnxruntime-cuda-fp16", fp16, "cuda", "fp16"),
        ("tensorrt-fp16", fp16, "tensorrt", "fp16"),
    ):
        try:
            paths[name] = OnnxBackend(path, 1, 0, device, build)
        except DeviceError as e:  # TensorRT's libraries are a separate install: say so, time the rest
            unavailable[name] = f"{type(e).__name__}: {e}"[:300]
            progress(f"{name} unavailable: {unavailable[name]}")
    val = builtin_split(DataConfig(), "val", tuple(meta["input_size"]))
    x_val = normalize(val.images[:check_images], meta["mean"], meta["std"]).numpy()
    parity = {name: gpu_parity(model, backend, x_val, (h, w)) for name, backend in paths.items()}
    progress(f"parity on the GPU against eager fp32: {parity}")
    results = []
    for b in batches:
        x = np.random.default_rng(0).standard_normal((b, 3, *meta["input_size"])).astype(np.float32)
        maps, supplied = np.zeros((b, 1, h, w), np.float32), np.zeros(b, bool)

        def eager(x=x, half=False):
            # from host memory and back, as ONNX Runtime's I/O binding does and as a served batch must
            with torch.inference_mode(), torch.autocast("cuda", torch.float16, enabled=half):
                o = model(torch.from_numpy(x).cuda())
                o.logits.cpu(), o.attention.cpu()

        results.append({"path": "pytorch-eager-cuda-fp32", "batch": b, "per_second": rate(eager, b)})
        results.append({"path": "pytorch-eager-cuda-fp16", "batch": b, "per_second": rate(lambda: eager(half=True), b)})
        for name, backend in paths.items():
            run = lambda backend=backend, x=x, maps=maps, supplied=supplied: backend.run(x, maps, supplied)  # noqa: E731
            results.append({"path": name, "batch": b, "per_second": rate(run, b)})
        progress(f"batch {b}: " + ", ".join(f"{r['path']} {r['per_second']:.0f}/s" for r in results if r["batch"] == b))
    return {"parity_on_gpu": parity, "unavailable": unavailable, "results": results}


def through_torchserve(store: Path, out: Path, concurrency: list[int]) -> list[dict]:
    """gRPC predictions of the fp16 archives (device cuda) served by one TorchServe, one model after the
    other: PNG in, top-k and map out."""
    torch.cuda.empty_cache()  # the workers' ONNX Runtime shares the GPU with this process
    models = [name for name, build, _ in SERVED if build == "fp16"]
    cfg = ServeConfig.on_free_ports(out / "serve", store, {m: archive.archive_name(m, 1) for m in models})
    meta = archive.describe(store / archive.archive_name(models[0], 1))["checkpoint"]
    images = noise_pngs(64, meta["input_size"][0])
    served = []
    with TorchServe(cfg):
        progress(f"TorchServe answers with {models} on cuda")
        client = Client.for_services(cfg)
        for model in models:
            call = lambda i, m=model: client.predict(images[i % len(images)], model=m)  # noqa: E731
            for c in concurrency:
                r = measure(call, c, 20 * c, warmup=2 * c)
                served.append({"model": model} | r)
                progress(f"TorchServe gRPC, {model}, concurrency {c}: {r}")
        client.close()
    return served


@torch.inference_mode()
def gpu_parity(model, backend: OnnxBackend, x: np.ndarray, map_size: tuple[int, int], batch: int = 64) -> dict:
    """Top-1 agreement and mean |attention difference| of backend against eager fp32 CUDA on x."""
    same, diff = 0, 0.0
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        o = model(torch.from_numpy(xb).cuda())
        maps, supplied = np.zeros((len(xb), 1, *map_size), np.float32), np.zeros(len(xb), bool)
        probs, attention = backend.run(xb, maps, supplied)
        same += int((probs.argmax(1) == o.logits.argmax(1).cpu().numpy()).sum())
        diff += float(np.abs(attention - o.attention[:, 0].cpu().numpy()).sum())
    return {"agreement": same / len(x), "attention_mad": diff / (len(x) * map_size[0] * map_size[1])}


def table(report: dict) -> str:
    lines = [f"{report['arch']} at {report['size']}; builds (checked on the CPU): {json.dumps(report['builds'])}"]
    if report["dry_run"]:
        return "\n".join(lines)
    lines += [f"GPU {report['gpu']}, torch {report['torch']}, onnxruntime {report['onnxruntime']}", ""]
    batches = sorted({r["batch"] for r in report["results"]})
    eager = {r["batch"]: r["per_second"] for r in report["results"] if r["path"] == "pytorch-eager-cuda-fp32"}
    lines += ["| path | " + " | ".join(f"batch {b}: images/s (× eager fp32)" for b in batches) + " |"]
    lines += ["|---|" + "---|" * len(batches)]
    for path in dict.fromkeys(r["path"] for r in report["results"]):
        row = {r["batch"]: r["per_second"] for r in report["results"] if r["path"] == path}
        lines += [f"| {path} | " + " | ".join(f"{row[b]:.0f} ({row[b] / eager[b]:.2f}×)" for b in batches) + " |"]
    lines += [f"| {name} | not run: {why} |" for name, why in report["unavailable"].items()]
    lines += ["", "| path on the GPU | top-1 agreement with eager fp32 CUDA | mean abs attention difference |"]
    lines += ["|---|---|---|"]
    lines += [f"| {n} | {p['agreement']:.4f} | {p['attention_mad']:.5f} |" for n, p in report["parity_on_gpu"].items()]
    if "torchserve" not in report:
        return "\n".join(lines)
    threads = {name: t or "default" for name, _, t in SERVED}
    lines += ["", "| TorchServe gRPC on cuda | intra-op threads | concurrency | p50 ms | p95 ms | requests/s |"]
    lines += ["|---|---|---|---|---|---|"]
    lines += [
        f"| {r['model']} | {threads[r['model']]} | {r['concurrency']} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} "
        f"| {r['per_second']:.1f} |"
        for r in report["torchserve"]
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

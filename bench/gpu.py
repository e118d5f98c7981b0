"""Benchmark on one GPU: abn_resnet50 at 224, fp32 and fp16, served by TorchServe against in-process (not a test).

Trains the model briefly on the built-in decoy-digits set at 224 (so that every parity check has a model with
real decisions to agree with), then:
  1. builds the fp32 and fp16 archives with `--backend auto`: on this GPU every way to run each build
     (ONNX Runtime with its cuDNN search HEURISTIC or EXHAUSTIVE after warm-up, cudnn_conv_use_max_workspace,
     prefer_nhwc and CUDA graphs each changed alone; torch eager, with and without CUDA graphs, fp16 for the
     fp16 build) is checked against the fp32 PyTorch model and timed at batch 64; the fastest that passed is
     served, and the table shows every one;
  2. in process, model only, host memory to host memory: images/s at batch 1, 8 and 64 of eager fp32 and of
     each archive's chosen path;
  3. in process, the handler itself (PNG decoding on its threads, padding, the chosen path, the answers) on
     batches of min(concurrency, 64), one after another: images/s, p50 and p99, per stage;
  4. served: both archives from one TorchServe over gRPC at concurrency 1, 8, 64 and 256 (PNG in, top-k and
     map out) with one worker each: requests/s, p50 and p99, a per-stage breakdown (queue: TorchServe's own
     figure; decode, host-to-device, run, device-to-host: the worker's) and the GPU's utilisation sampled with
     nvidia-smi; then each further --workers count (the model scaled to that many workers on the one GPU, each
     decoding on its own threads) at the --worker-levels (per-stage figures there: the queue only, since a
     describe reaches one worker of several).
Writes gpu.json, gpu.md (the tables) and gpu.png (throughput and p99 against concurrency, served and in
process) to --out, and prints each step's time as it goes. A step, or a level within one, that fails is
recorded (its error in the table) and the rest run.

    bench/gpu.sh                       # the run, on a machine with a CUDA GPU (within 8 minutes)
    bench/gpu.sh --dry-run             # abn_small on the CPU, every step, few requests (CI runs this)
"""

import argparse
import json
import math
import re
import statistics
import subprocess
import threading
import time
import traceback
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader
from ts.context import Context

from bench.load import measure, noise_pngs, rate
from finetune import checkpoint, decoy_digits
from finetune.builds import BuildConfig
from finetune.data import DataConfig, builtin_split
from finetune.images import normalize
from finetune.model import create_model
from finetune.parity import ParityConfig
from handlers import backends, batching
from handlers.abn_handler import ABNHandler
from handlers.backends import GpuOptions
from serving.client import Client
from serving.torchserve import archive
from serving.torchserve.client import read_keys
from serving.torchserve.config import ServeConfig
from serving.torchserve.process import TorchServe

START = time.monotonic()
BUILDS = {"abn_fp32": "fp32", "abn_fp16": "fp16"}


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


def step(report: dict, out: Path, name: str, run):
    """report[name] = run(), or the error, written out at once either way."""
    start = time.monotonic()
    try:
        report[name] = run()
    except Exception as e:  # one failing step must not cost the run the others' figures
        traceback.print_exc()
        report.setdefault("errors", {})[name] = f"{type(e).__name__}: {e}"[:2000]
    report.setdefault("seconds", {})[name] = time.monotonic() - start
    progress(f"{name} done")
    write(report, out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench-gpu")
    p.add_argument("--dry-run", action="store_true", help="abn_small on the CPU, every step, few requests")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64], help="model-only batch sizes")
    p.add_argument("--concurrency", type=int, nargs="+", help="served levels (default 1 8 64 256; dry run 1 8)")
    p.add_argument("--seconds", type=float, help="most seconds per served level (default 10; dry run 2)")
    p.add_argument("--workers", type=int, nargs="+", help="workers per model served (default 1 4; dry run 1 2)")
    p.add_argument("--worker-levels", type=int, nargs="+", help="served levels with more than one worker "
                   "(default 64 256; dry run 8)")  # fmt: skip
    p.add_argument("--steps", type=int, default=120, help="training steps before building")
    p.add_argument("--check-images", type=int, default=180, help="validation images each parity check uses")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dry = args.dry_run
    arch, size, device = ("abn_small", 32, "cpu") if dry else ("abn_resnet50", 224, "cuda")
    levels = args.concurrency or ([1, 8] if dry else [1, 8, 64, 256])
    seconds = args.seconds or (2.0 if dry else 10.0)
    workers = args.workers or ([1, 2] if dry else [1, 4])
    worker_levels = args.worker_levels or ([8] if dry else [64, 256])
    batch = 8 if dry else max(args.batches)
    if dry:  # a briefly trained model's denormal weights slow the CPU's eager runs a hundredfold
        torch.set_flush_denormal(True)
    if not dry and not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py needs a CUDA GPU (or --dry-run)")
    report: dict = {"dry_run": dry, "arch": arch, "size": size, "batch": batch, "levels": levels}
    report["environment"] = environment()
    ckpt = trained_checkpoint(arch, size, args.steps, device, out)
    progress(f"trained {arch} for {args.steps} steps on {device}")
    store, parity = out / "store", ParityConfig(check_images=args.check_images)
    for name, build in BUILDS.items():
        cfg = archive.ArchiveConfig(
            backend="auto",
            batch_size=batch,
            build=BuildConfig(build=build),
            parity=parity,
            device="cpu" if dry else "cuda",
        )
        step(report, out, f"archive {name}", lambda cfg=cfg, name=name: packaged(ckpt, store, cfg, name))
    archives = [name for name in BUILDS if f"archive {name}" in report]
    step(report, out, "model only", lambda: model_only(ckpt, store, archives, args.batches, dry))
    images = noise_pngs(64, size)
    step(report, out, "in process", lambda: in_process(store, out, archives, images, levels, batch, seconds, dry))
    scaled = {w: worker_levels for w in workers if w != 1}
    step(report, out, "served", lambda: served(store, out, archives, images, levels, scaled, seconds))
    step(report, out, "plot", lambda: plot(report, out / "gpu.png"))
    print(write(report, out))


def environment() -> dict:
    found = {"torch": torch.__version__, "onnxruntime": ort.__version__, "providers": ort.get_available_providers()}
    if torch.cuda.is_available():
        found["gpu"] = torch.cuda.get_device_name(0)
    found["cpus"] = torch.get_num_threads()
    return found


def packaged(ckpt: Path, store: Path, cfg: archive.ArchiveConfig, name: str) -> dict:
    """An auto archive: what it serves, why, and every candidate's figures."""
    mar = archive.build(ckpt, store, cfg, name=name)
    with zipfile.ZipFile(mar) as z:
        abn = yaml.safe_load(z.read("model-config.yaml"))["abn"]
    return {"build": abn["build"], "backend": abn["backend"], "gpu": abn["gpu"], "choice": abn["choice"]}


def model_dir(store: Path, name: str) -> Path:
    """The archive's files, as a worker's model folder holds them."""
    folder = store.parent / "models" / name
    if not folder.exists():
        with zipfile.ZipFile(store / archive.archive_name(name, 1)) as z:
            z.extractall(folder)
    return folder


def settings(store: Path, name: str) -> dict:
    return yaml.safe_load((model_dir(store, name) / "model-config.yaml").read_text())


def model_only(ckpt: Path, store: Path, archives: list[str], batches: list[int], dry: bool) -> list[dict]:
    """Images/s, host memory to host memory, of eager fp32 and of each archive's chosen path."""
    model, meta = checkpoint.load(ckpt)
    gpu = None if dry else 0
    model = model.to("cpu" if dry else "cuda").eval()
    h, w = meta["map_size"]
    paths = {}
    for name in archives:
        abn = settings(store, name)["abn"]
        options = GpuOptions(**abn["gpu"])
        threads = backends.default_threads(abn["backend"], abn["device"], abn["build"]["build"], gpu, 1)
        paths[f"{name} {abn['backend']}"] = backends.load(
            abn["backend"], model_dir(store, name), threads, gpu, abn["device"], abn["build"]["build"], options
        )
    results = []
    for b in batches:
        x = np.random.default_rng(0).standard_normal((b, 3, *meta["input_size"])).astype(np.float32)
        maps, supplied = np.zeros((b, 1, h, w), np.float32), np.zeros(b, bool)

        def eager(x=x):
            with torch.inference_mode():
                o = model(torch.from_numpy(x).to(next(model.parameters()).device))
                o.logits.cpu(), o.attention.cpu()

        results.append({"path": "pytorch eager fp32", "batch": b, "per_second": rate(eager, b, 1.0)})
        for path, backend in paths.items():
            run = lambda backend=backend, x=x, maps=maps, supplied=supplied: backend.run(x, maps, supplied)  # noqa: E731
            results.append({"path": path, "batch": b, "per_second": rate(run, b, 1.0)})
        progress(f"batch {b}: " + ", ".join(f"{r['path']} {r['per_second']:.0f}/s" for r in results if r["batch"] == b))
    return results


def in_process(store: Path, out: Path, archives: list[str], images: list[bytes], levels: list[int], batch: int,
               seconds: float, dry: bool) -> list[dict]:  # fmt: skip
    """The handler in this process on batches of min(c, batch) PNGs, one batch after another: at concurrency c
    above batch, c / batch batches wait in turn, so latency is that many batch times."""
    results: list[dict] = []
    for name in archives:
        config = settings(store, name) | {"handler": {"profile": False}}  # TorchServe's timers need its metrics
        context = Context(name, str(model_dir(store, name)), {"model": {"modelName": name}}, batch,
                          None if dry else 0, "0.12", model_yaml_config=config)  # fmt: skip
        handler = ABNHandler()
        try:
            handler.initialize(context)
        except Exception as e:
            failed(results, "in process", {"model": name, "concurrency": levels[0]}, e)
            continue
        handler.context = context
        for c in levels:
            try:
                r = in_process_level(handler, name, images, c, batch, seconds)
            except Exception as e:
                failed(results, "in process", {"model": name, "concurrency": c}, e)
                continue
            results.append(r)
            progress(f"in process {name} c={c}: {r['per_second']:.0f}/s, p50 {r['p50_ms']:.1f} ms")
        del handler
        if not dry:
            torch.cuda.empty_cache()
    return results


def in_process_level(handler: ABNHandler, name: str, images: list[bytes], c: int, batch: int, seconds: float):
    """One level: the handler's stages on batches of min(c, batch), one after another, for about seconds."""
    n, waves = min(c, batch), math.ceil(c / batch)
    data = [{"data": images[i % len(images)]} for i in range(n)]
    before = json.loads(handler.describe_handle())["serving"]
    latencies: list[float] = []
    start = time.perf_counter()
    while len(latencies) < 3 or time.perf_counter() - start < min(seconds, 3.0):
        t = time.perf_counter()
        handler.postprocess(handler.inference(handler.preprocess(data)))
        latencies.append(time.perf_counter() - t)
    after = json.loads(handler.describe_handle())["serving"]
    r = {"model": name, "concurrency": c, "batch": n, "per_second": n * len(latencies) / sum(latencies)}
    return r | quantiles([waves * t for t in latencies]) | {"stages_ms": stages(before, after, {})}


def failed(results: list[dict], kind: str, where: dict, error: Exception) -> None:
    """A level that failed, recorded with its error in results' place for it: the other levels still run."""
    traceback.print_exc()
    results.append(where | {"error": f"{type(error).__name__}: {error}"[:2000]})
    progress(f"{kind} {where} failed: {str(error).splitlines()[0][:300] if str(error) else type(error).__name__}")


def quantiles(seconds: list[float]) -> dict:
    q = statistics.quantiles(seconds, n=100) if len(seconds) > 1 else seconds * 99
    return {"p50_ms": 1000 * statistics.median(seconds), "p99_ms": 1000 * q[98]}


def stages(before: dict, after: dict, queue: dict) -> dict:
    """Mean ms per request of each stage between two of the worker's records (and TorchServe's queue)."""
    requests = max(1, after["requests"] - before["requests"])
    found = {"queue": queue.get("ms")} if queue else {}
    found |= {k: 1000 * (after["seconds"][k] - before["seconds"][k]) / requests for k in after["seconds"]}
    batches = after["batches"] - before["batches"]
    found["requests_per_batch"] = requests / max(1, batches)
    found["padding_rows_per_batch"] = (after["padding_rows"] - before["padding_rows"]) / max(1, batches)
    return found


class GpuSampler:
    """nvidia-smi's utilisation and memory, sampled every 100 ms while in a with block (nothing without it)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []

    def __enter__(self) -> "GpuSampler":
        try:
            query = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]
            self.process: subprocess.Popen | None = subprocess.Popen(
                query + ["-lms", "100"], stdout=subprocess.PIPE, text=True
            )
        except FileNotFoundError:
            self.process = None
            return self
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        return self

    def _read(self) -> None:
        for line in self.process.stdout:  # type: ignore[union-attr]
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 2 and all(re.fullmatch(r"[\d.]+", p) for p in parts):
                self.samples.append((float(parts[0]), float(parts[1])))

    def __exit__(self, *exc) -> None:
        if self.process:
            self.process.terminate()
            self.process.wait()

    def summary(self) -> dict:
        if not self.samples:
            return {"gpu_util_mean": None, "gpu_util_max": None, "gpu_memory_mib_max": None}
        util = [u for u, _ in self.samples]
        return {
            "gpu_util_mean": statistics.fmean(util),
            "gpu_util_max": max(util),
            "gpu_memory_mib_max": max(m for _, m in self.samples),
            "gpu_samples": len(util),
        }


def queue_totals(metrics_url: str, model: str) -> tuple[float, float]:
    """TorchServe's summed queue time (microseconds) and request count for model, from its Prometheus page."""
    with urllib.request.urlopen(metrics_url, timeout=10) as answer:
        text = answer.read().decode()
    totals = {}
    for metric in ("ts_queue_latency_microseconds", "ts_inference_requests_total"):
        pattern = rf'^{metric}\{{[^}}]*model_name="{re.escape(model)}"[^}}]*\}} ([\d.eE+-]+)'
        totals[metric] = sum(float(v) for v in re.findall(pattern, text, re.M))
    return totals["ts_queue_latency_microseconds"], totals["ts_inference_requests_total"]


def served(store: Path, out: Path, archives: list[str], images: list[bytes], levels: list[int],
           scaled: dict[int, list[int]], seconds: float) -> list[dict]:  # fmt: skip
    """gRPC predictions of each archive from one TorchServe, one model after the other: at levels with the
    archive's one worker, then scaled to each count of workers in scaled at its levels."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the workers share the GPU with this process
    cfg = ServeConfig.on_free_ports(out / "serve", store, {m: archive.archive_name(m, 1) for m in archives})
    results: list[dict] = []
    with TorchServe(cfg):
        progress(f"TorchServe answers with {archives}")
        client = Client.for_services(cfg)
        for model in archives:
            for workers, at in [(1, levels), *scaled.items()]:
                if workers != 1:
                    try:
                        scale(cfg, model, workers)
                    except Exception as e:
                        failed(results, "served", {"model": model, "workers": workers, "concurrency": at[0]}, e)
                        continue
                    progress(f"{model} scaled to {workers} workers")
                for c in at:
                    try:
                        r = served_level(client, cfg, model, images, c, workers, seconds)
                    except Exception as e:
                        failed(results, "served", {"model": model, "workers": workers, "concurrency": c}, e)
                        continue
                    results.append(r)
                    progress(f"served {model} x{workers} c={c}: {r['per_second']:.0f}/s, p50 {r['p50_ms']:.1f} ms, "
                             f"{r['stages_ms']}")  # fmt: skip
        client.close()
    return results


def served_level(client: Client, cfg: ServeConfig, model: str, images: list[bytes], c: int, workers: int,
                 seconds: float) -> dict:  # fmt: skip
    """One level: the load, TorchServe's queue and, with one worker, the worker's stages."""
    call = lambda i: client.predict(images[i % len(images)], model=model)  # noqa: E731

    def serving() -> dict:
        return client.torchserve.describe(model, customized=True)[0]["customizedMetadata"]["serving"]

    before = serving() if workers == 1 else None
    queued = queue_totals(cfg.metrics_url, model)
    with GpuSampler() as sampler:
        r = measure(call, c, 1_000_000, warmup=min(2 * c, 32), seconds=seconds)
    now = queue_totals(cfg.metrics_url, model)
    counted = now[1] - queued[1]  # none: TorchServe did not publish the figure
    queue = {"ms": (now[0] - queued[0]) / 1000 / counted if counted else None}
    found = stages(before, serving(), queue) if before else {"queue": queue["ms"]}
    return {"model": model, "workers": workers} | r | {"stages_ms": found} | sampler.summary()


def scale(cfg: ServeConfig, model: str, workers: int) -> None:
    """TorchServe's model scaled to this many workers, waiting until they have started (and warmed up)."""
    key = read_keys(cfg.key_file)["management"]
    request = urllib.request.Request(
        f"{cfg.target.management_url}/models/{model}?min_worker={workers}&max_worker={workers}&synchronous=true",
        method="PUT",
        headers={"Authorization": f"Bearer {key}"},
    )
    with urllib.request.urlopen(request, timeout=180) as answer:
        answer.read()


def plot(report: dict, path: Path) -> str:
    """Throughput and p99 against concurrency, served and in process, for each archive."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    for kind, style in (("served", "-o"), ("in process", "--s")):
        for model in BUILDS:
            done = [r for r in report.get(kind, []) if r["model"] == model and "error" not in r]
            for workers in sorted({r.get("workers", 1) for r in done}):
                rows = [r for r in done if r.get("workers", 1) == workers]
                label = f"{model}, {kind}" + (f", {workers} workers" if workers != 1 else "")
                c = [r["concurrency"] for r in rows]
                top.plot(c, [r["per_second"] for r in rows], style if workers == 1 else ":^", label=label)
                bottom.plot(c, [r["p99_ms"] for r in rows], style if workers == 1 else ":^", label=label)
    top.set_ylabel("images/s")
    bottom.set_ylabel("p99 ms")
    bottom.set_xlabel("concurrency")
    for ax in (top, bottom):
        ax.set_xscale("log", base=2)
        ax.grid(True, alpha=0.3)
    bottom.set_yscale("log")
    top.legend(fontsize=8)
    top.set_title(f"{report['arch']} at {report['size']}, {report['environment'].get('gpu', 'CPU')}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def write(report: dict, out: Path) -> str:
    text = table(report)
    (out / "gpu.md").write_text(text + "\n")
    (out / "gpu.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    return text


def table(report: dict) -> str:
    env = report["environment"]
    lines = [f"{report['arch']} at {report['size']}; {env.get('gpu', 'CPU')}, torch {env['torch']}, "
             f"onnxruntime {env['onnxruntime']}", ""]  # fmt: skip
    for name in BUILDS:
        built = report.get(f"archive {name}")
        if not built:
            continue
        choice = built["choice"]
        lines += [f"{name} (build {built['build']}): serves {choice['why']}", ""]
        lines += [
            f"| way to run ({name}) | images/s at batch {choice['batch']} | parity | passed |",
            "|---|---|---|---|",
        ]
        for c in choice["candidates"]:
            figures = c["error"] or ", ".join(f"{k} {v:.4g}" for k, v in c["figures"].items())
            lines += [f"| {c['label']} | {c['per_second']:.0f} | {figures} | {c['passed'] and not c['error']} |"]
        lines += [""]
    if report.get("model only"):
        batches = sorted({r["batch"] for r in report["model only"]})
        lines += ["| model only, host to host | " + " | ".join(f"batch {b}: images/s" for b in batches) + " |"]
        lines += ["|---|" + "---|" * len(batches)]
        for path in dict.fromkeys(r["path"] for r in report["model only"]):
            row = {r["batch"]: r["per_second"] for r in report["model only"] if r["path"] == path}
            lines += [f"| {path} | " + " | ".join(f"{row[b]:.0f}" for b in batches) + " |"]
        lines += [""]
    head = "| {} | model | workers | c | images/s | p50 ms | p99 ms | queue | decode | h2d | run | d2h | per batch "
    head += "| GPU % |"
    for kind in ("in process", "served"):
        if not report.get(kind):
            continue
        lines += [head.format(kind), "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in report[kind]:
            where = f"| {kind} | {r['model']} | {r.get('workers', '-')} | {r['concurrency']} |"
            if "error" in r:
                lines += [f"{where} failed: {r['error'].splitlines()[0][:200]} |"]
                continue
            s = r["stages_ms"]
            ms = " | ".join("-" if s.get(k) is None else f"{s[k]:.2f}" for k in ("queue", *batching.STAGES))
            util, per_batch = r.get("gpu_util_mean"), s.get("requests_per_batch")
            lines += [
                f"{where} {r['per_second']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {ms} | "
                f"{'-' if per_batch is None else f'{per_batch:.1f}'} | {'-' if util is None else f'{util:.0f}'} |"
            ]
        lines += [""]
    lines += ["stage columns: mean ms per request (a batch's time shared among its requests; queue: TorchServe's)"]
    for name, error in report.get("errors", {}).items():
        lines += [f"step {name} failed: {error.splitlines()[0][:300]}"]
    lines += [f"seconds per step: {json.dumps({k: round(v, 1) for k, v in report.get('seconds', {}).items()})}"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

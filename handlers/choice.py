"""`--backend auto`: the fastest way to run a model on this device among those that serve as the model does.

Each candidate (ONNX Runtime with its build, or torch; on a GPU also the provider settings and CUDA graphs of
handlers.backends.GpuOptions) is first checked as strictly as a build is (finetune.parity's bar: top-1
agreement and mean attention difference against the fp32 PyTorch model on the validation images, computed on
this device's arithmetic), then timed on batches of the largest fixed size. The fastest that passed wins; one
that failed, or could not start, is never chosen. Every figure goes into the archive with the choice.
"""

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from finetune.images import normalize
from finetune.model import ABN
from finetune.parity import ParityConfig
from handlers import backends
from handlers.backends import GpuOptions


@dataclass
class Candidate:
    backend: str  # onnx | torch
    options: GpuOptions = GpuOptions()
    passed: bool = False
    figures: dict = field(default_factory=dict)  # parity: agreement, attention_mad, checked_on
    per_second: float = 0.0  # images per second at the largest batch
    error: str = ""  # why it could not run here

    @property
    def label(self) -> str:
        changed = {k: v for k, v in dataclasses.asdict(self.options).items() if getattr(GpuOptions(), k) != v}
        return self.backend + "".join(f" {k}={v}" for k, v in changed.items())


def candidates(on_gpu: bool, build: str) -> list[Candidate]:
    """What auto tries for a build: on the CPU, ONNX Runtime (and torch for fp32); on a GPU, ONNX Runtime with
    the default settings and each one changed alone, and torch (fp16 for an fp16 build) with and without CUDA
    graphs."""
    if not on_gpu:
        return [Candidate("onnx")] + ([Candidate("torch")] if build == "fp32" else [])
    base = GpuOptions()
    onnx = [
        base,
        dataclasses.replace(base, cudnn_search="EXHAUSTIVE"),
        dataclasses.replace(base, cudnn_max_workspace=not base.cudnn_max_workspace),
        dataclasses.replace(base, prefer_nhwc=not base.prefer_nhwc),
        dataclasses.replace(base, cuda_graph=True),
    ]
    half = build == "fp16"
    torch_options = [GpuOptions(half=half), GpuOptions(half=half, cuda_graph=True)]
    return [Candidate("onnx", o) for o in onnx] + [Candidate("torch", o) for o in torch_options]


def pick(found: list[Candidate]) -> Candidate:
    """The fastest candidate that passed its check; ValueError, with every candidate's outcome, if none did."""
    passed = [c for c in found if c.passed and not c.error]
    if not passed:
        outcomes = "; ".join(f"{c.label}: {c.error or f'parity {c.figures}'}" for c in found)
        raise ValueError(f"backend auto: no way to run this model passed its check here ({outcomes})")
    return max(passed, key=lambda c: c.per_second)


def why(chosen: Candidate, found: list[Candidate]) -> str:
    others = [c for c in found if c is not chosen]
    return f"{chosen.label}: {chosen.per_second:.1f} images/s, the fastest that passed its check; " + "; ".join(
        f"{c.label}: {c.error or (f'{c.per_second:.1f}/s' if c.passed else 'failed parity ' + str(c.figures))}"
        for c in others
    )


def _batches(model: ABN, meta: dict, data: Dataset, cfg: ParityConfig, size: int):
    """The first cfg.check_images validation images, normalised, in batches of size (the last padded with
    zeros), each with the number of real rows and the fp32 PyTorch model's answers (on the CPU)."""
    n = len(data) if cfg.check_images is None else min(cfg.check_images, len(data))  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("no validation images to check the backends on")
    model.eval()
    for batch in DataLoader(Subset(data, range(n)), batch_size=size):
        x = normalize(batch["image"], meta["mean"], meta["std"])
        with torch.no_grad():
            expected = model(x)
        rows = len(x)
        padded = np.zeros((size, *x.shape[1:]), np.float32)
        padded[:rows] = x.numpy()
        yield padded, rows, expected.logits.argmax(1).numpy(), expected.attention[:, 0].numpy()


def evaluate(candidate: Candidate, backend, meta: dict, checks: list, cfg: ParityConfig, seconds: float) -> None:
    """Fill in candidate's parity figures and speed, measured with backend (one of handlers.backends)."""
    h, w = meta["map_size"]
    same, diff, cells, n = 0, 0.0, 0, 0
    for x, rows, labels, attention in checks:
        maps, supplied = np.zeros((len(x), 1, h, w), np.float32), np.zeros(len(x), bool)
        probabilities, found = backend.run(x, maps, supplied)
        same += int((probabilities[:rows].argmax(1) == labels).sum())
        diff += float(np.abs(found[:rows].astype(np.float64) - attention).sum())
        cells, n = cells + attention.size, n + rows
    candidate.figures = {"agreement": same / n, "attention_mad": diff / cells, "checked_on": n}
    candidate.passed = candidate.figures["agreement"] >= cfg.min_agreement and (
        candidate.figures["attention_mad"] <= cfg.max_attention_mad
    )
    x = checks[0][0]
    maps, supplied = np.zeros((len(x), 1, h, w), np.float32), np.zeros(len(x), bool)
    for _ in range(3):  # the search, the capture
        backend.run(x, maps, supplied)
    runs, start = 0, time.perf_counter()
    while runs < 2 or time.perf_counter() - start < seconds:
        backend.run(x, maps, supplied)
        runs += 1
    candidate.per_second = runs * len(x) / (time.perf_counter() - start)


def choose(
    model_dir: Path,
    model: ABN,
    meta: dict,
    val: Dataset,
    cfg: ParityConfig,
    batch: int,
    device: str,
    build: str,
    threads: int,
    seconds: float = 1.0,
) -> tuple[Candidate, list[Candidate]]:
    """Check and time every candidate for the model in model_dir (checkpoint.pt, model.onnx) on device; the
    chosen one and all of them."""
    gpu_id = 0 if backends.gpu_available() else None
    on_gpu = backends.choose(device, build, gpu_id) != "cpu"
    checks = list(_batches(model, meta, val, cfg, batch))
    found = candidates(on_gpu, build)
    for candidate in found:
        try:
            backend = backends.load(
                candidate.backend, model_dir, threads, gpu_id if on_gpu else None, device, build, candidate.options
            )
            evaluate(candidate, backend, meta, checks, cfg, seconds)
        except Exception as e:  # a setting this device or runtime refuses (e.g. a CUDA graph it cannot capture)
            candidate.error = f"{type(e).__name__}: {str(e)[:300]}"
        finally:
            backend = None
            if on_gpu:
                torch.cuda.empty_cache()
    return pick(found), found

"""Build a TorchServe archive (.mar) of one model version from a checkpoint.

The archive holds the handler, the checkpoint (weights + metadata), for the
ONNX backend the ONNX export (checked against PyTorch first), a
model-config.yaml with the batching and backend settings, and the product code
the handler runs (the packages finetune/ and handlers/, as they were when the
archive was built). A worker runs that code, not whatever version of the
product is installed beside TorchServe, so an archive keeps working, and
behaving as it was checked, after the product is upgraded or rolled back.
It is written to <model store>/<name>.v<version>.mar.

A build (fp32, int8 for the CPU, fp16 for the GPU; finetune.builds) other than fp32 is checked against the
fp32 PyTorch model on the validation images (finetune.parity) and refused, with its figures, when it misses;
model-config.yaml records the build, the device it serves on and those figures under `abn`, and how a worker
serves: the fixed batch sizes, its decoding threads, the GPU settings (handlers.batching, handlers.backends).
With backend auto the archive serves the fastest way to run the model on this machine that passed its check
(handlers.choice); the archive records every way tried, and the choice is printed with its reason.
"""

import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import yaml

import finetune
import handlers
from finetune import builds, checkpoint, onnx_export, parity
from finetune.builds import BuildConfig
from finetune.parity import ParityConfig
from handlers import backends, batching, choice
from handlers.backends import GpuOptions

HANDLER = Path(handlers.__path__[0]).resolve() / "abn_handler.py"
BUNDLED = (finetune, handlers)  # the packages the handler imports, carried inside every archive
BACKENDS = ("onnx", "torch", "auto")


@dataclass(frozen=True)
class ArchiveConfig:
    """How an archive serves: retraining builds version N+1 with the settings of version N."""

    backend: str = "onnx"  # one of BACKENDS; auto: chosen by measurement when the archive is built
    batch_size: int = 8  # largest batch TorchServe forms
    # ms TorchServe waits to fill a batch: a lone request waits all of it, while under load the queue fills
    # batches anyway (bench/overhead.py: 2 ms serves concurrency 8 and 32 as fast as 10 ms, and 1 with 10 ms less)
    max_batch_delay: int = 2
    workers: int = 1  # worker processes for this model
    threads: int | None = None  # intra-op threads per worker; None: one on a GPU, else cores / workers
    build: BuildConfig = BuildConfig()  # fp32, int8 (CPU) or fp16 (GPU), and int8's calibration
    parity: ParityConfig = ParityConfig()  # the bar an int8 or fp16 build must clear
    device: str = backends.DEFAULT_DEVICE  # where the worker runs the ONNX model: one of handlers.backends.DEVICES
    # batches are padded to these (those below batch_size, and batch_size), each warmed at the worker's start;
    # empty: every batch runs at its own size
    batch_sizes: tuple[int, ...] = batching.DEFAULT_SIZES
    decode_threads: int | None = None  # threads decoding a batch's images; None: cores / workers
    gpu: GpuOptions = GpuOptions()  # how the model runs on a GPU (set by auto's measurement with backend auto)


def archive_name(name: str, version: int | str) -> str:
    return f"{name}.v{version}.mar"


def versions_in(model_store: str | Path, name: str) -> list[int]:
    """The versions of name whose archives the model store holds, in order."""
    found = (p.name.removeprefix(f"{name}.v").removesuffix(".mar") for p in Path(model_store).glob(f"{name}.v*.mar"))
    return sorted(int(v) for v in found if v.isdigit())


def _stage_code(dest: Path) -> None:
    """Copies of the bundled packages in dest, without caches."""
    for package in BUNDLED:
        source = Path(package.__path__[0]).resolve()
        shutil.copytree(source, dest / source.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def build(
    ckpt: str | Path, model_store: str | Path, cfg: ArchiveConfig = ArchiveConfig(), name: str | None = None
) -> Path:
    """Write the .mar and return its path."""
    if cfg.backend not in BACKENDS:
        raise ValueError(f"unknown backend {cfg.backend!r}; choose one of {', '.join(BACKENDS)}")
    if cfg.build.build not in builds.BUILDS:
        raise ValueError(f"unknown build {cfg.build.build!r}; choose one of {', '.join(builds.BUILDS)}")
    if cfg.backend == "torch" and cfg.build.build != "fp32":
        raise ValueError(f"the {cfg.build.build} build is an ONNX model: it needs the onnx backend (or auto)")
    sizes = batching.sizes_for(cfg.batch_size, cfg.batch_sizes)
    model, meta = checkpoint.load(ckpt)
    name = name or meta["name"]
    store = Path(model_store)
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        extra = [tmp / "checkpoint.pt", tmp / "code"]
        shutil.copy(ckpt, extra[0])
        _stage_code(extra[1])
        record: dict = {"build": "fp32"}
        backend, gpu, chosen = cfg.backend, cfg.gpu, None
        if cfg.backend != "torch":
            extra.append(tmp / "model.onnx")
            record = _build_onnx(model, meta, cfg, tmp, extra[-1])
        if cfg.backend == "auto":
            chosen = _choose(model, meta, cfg, tmp, max(sizes or (cfg.batch_size,)))
            backend, gpu = chosen["backend"], GpuOptions(**chosen["gpu"])
        config = {
            "batchSize": cfg.batch_size,
            "maxBatchDelay": cfg.max_batch_delay,
            "minWorkers": cfg.workers,
            "maxWorkers": cfg.workers,
            "responseTimeout": 120,
            "handler": {"profile": True},  # TorchServe's @timed: a timing metric per handler stage
            "abn": {
                "backend": backend,
                **({"threads": cfg.threads} if cfg.threads else {}),
                "device": cfg.device,
                "build": record,
                "build_settings": {**dataclasses.asdict(cfg.build), **dataclasses.asdict(cfg.parity)},
                "batch_sizes": list(sizes),  # what the worker pads to
                "batch_sizes_asked": list(cfg.batch_sizes),
                **({"decode_threads": cfg.decode_threads} if cfg.decode_threads else {}),
                "gpu": dataclasses.asdict(gpu),
                **({"choice": chosen} if chosen else {}),
            },
        }
        (tmp / "model-config.yaml").write_text(yaml.safe_dump(config))
        subprocess.run(
            [
                str(Path(sys.executable).parent / "torch-model-archiver"),
                "--model-name",
                name,
                "--version",
                str(meta["version"]),
                "--handler",
                str(HANDLER),
                "--extra-files",
                ",".join(map(str, extra)),
                "--config-file",
                str(tmp / "model-config.yaml"),
                "--export-path",
                str(tmp),
                "--force",
            ],
            check=True,
        )
        target = store / archive_name(name, meta["version"])
        shutil.move(tmp / f"{name}.mar", target)
    return target


def _build_onnx(model, meta: dict, cfg: ArchiveConfig, tmp: Path, out: Path) -> dict:
    """Export, make cfg's build at out and check it; what the archive records of the build."""
    fp32 = tmp / "fp32.onnx"
    onnx_export.export(model, meta, fp32)
    diffs = onnx_export.check(model, meta, fp32)
    if cfg.build.build == "fp32":  # checked element by element above, a stricter bar than the parity check
        shutil.move(fp32, out)
        return {"build": "fp32", "max_abs_difference": max(diffs.values())}
    train, val = builds.data(meta, cfg.build)
    builds.make(fp32, out, meta, cfg.build, train)
    fp32.unlink()
    found = parity.check(model, meta, out, val, cfg.parity, what=f"the {cfg.build.build} build")
    return {"build": cfg.build.build, **found}


def _choose(model, meta: dict, cfg: ArchiveConfig, tmp: Path, batch: int) -> dict:
    """Backend auto: every candidate checked and timed here (handlers.choice), the fastest that passed; what
    the archive records of it."""
    _, val = builds.data(meta, cfg.build)
    gpu_id = 0 if backends.gpu_available() else None
    threads = cfg.threads or backends.default_threads("onnx", cfg.device, cfg.build.build, gpu_id, cfg.workers)
    chosen, found = choice.choose(tmp, model, meta, val, cfg.parity, batch, cfg.device, cfg.build.build, threads)
    reason = choice.why(chosen, found)
    print(f"backend auto: {reason}", flush=True)
    return {
        "backend": chosen.backend,
        "gpu": dataclasses.asdict(chosen.options),
        "why": reason,
        "batch": batch,
        "candidates": [
            {"label": c.label, "backend": c.backend, "gpu": dataclasses.asdict(c.options), "passed": c.passed,
             "figures": c.figures, "per_second": c.per_second, "error": c.error}
            for c in found
        ],
    }  # fmt: skip


def _config_of(archive: str | Path) -> dict:
    with zipfile.ZipFile(archive) as z:
        return yaml.safe_load(z.read("model-config.yaml"))


def settings_of(archive: str | Path) -> ArchiveConfig:
    """The settings an archive was built with (archives from before builds: fp32 on any device)."""
    config = _config_of(archive)
    kept = config["abn"].get("build_settings", {})
    abn = config["abn"]
    return ArchiveConfig(
        backend="auto" if "choice" in abn else abn["backend"],
        batch_size=config["batchSize"],
        max_batch_delay=config["maxBatchDelay"],
        workers=config["minWorkers"],
        threads=config["abn"].get("threads"),
        build=BuildConfig(**{f.name: kept[f.name] for f in dataclasses.fields(BuildConfig) if f.name in kept}),
        parity=ParityConfig(**{f.name: kept[f.name] for f in dataclasses.fields(ParityConfig) if f.name in kept}),
        device=config["abn"].get("device", backends.DEFAULT_DEVICE),
        batch_sizes=tuple(abn.get("batch_sizes_asked", batching.DEFAULT_SIZES)),
        decode_threads=abn.get("decode_threads"),
        gpu=GpuOptions() if "choice" in abn else GpuOptions(**abn.get("gpu", {})),  # auto chooses again
    )


def describe(archive: str | Path) -> dict:
    """What `abn info` shows of an archive: its name, version, settings, build and the build's figures."""
    with zipfile.ZipFile(archive) as z:
        model = json.loads(z.read("MAR-INF/MANIFEST.json"))["model"]
    config = _config_of(archive)
    return {
        "name": model["modelName"],
        "version": model["modelVersion"],
        "settings": dataclasses.asdict(settings_of(archive)),
        "build": config["abn"].get("build", {"build": "fp32"}),
        "checkpoint": checkpoint.read_metadata(checkpoint_of(archive)),
    }


def carries_code(archive: str | Path) -> bool:
    """Whether an archive carries the product code its handler runs (archives built before it did do not)."""
    with zipfile.ZipFile(archive) as z:
        return "handlers/abn_handler.py" in z.namelist()


def rebuild(archive: str | Path) -> Path:
    """Build an archive again in its folder, from its own checkpoint, name and settings, with this version's
    code: the upgrade of an archive that does not carry its code."""
    archive = Path(archive)
    with zipfile.ZipFile(archive) as z:
        name = json.loads(z.read("MAR-INF/MANIFEST.json"))["model"]["modelName"]
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "checkpoint.pt"
        ckpt.write_bytes(checkpoint_of(archive))
        return build(ckpt, archive.parent, settings_of(archive), name)


def checkpoint_of(archive: str | Path) -> bytes:
    """The checkpoint an archive serves, as bytes."""
    with zipfile.ZipFile(archive) as z:
        return z.read("checkpoint.pt")

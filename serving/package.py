"""Build a TorchServe archive (.mar) of one model version from a checkpoint.

The archive holds the handler, the checkpoint (weights + metadata), for the
ONNX backend the ONNX export (checked against PyTorch first), and a
model-config.yaml with the batching and backend settings. It is written to
<model store>/<name>.v<version>.mar.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import yaml

from finetune import checkpoint, onnx_export

HANDLER = Path(__file__).resolve().parent.parent / "handlers" / "abn_handler.py"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint")
    parser.add_argument("--model-store", default="runs/model_store", help="folder the .mar is written to")
    parser.add_argument("--backend", choices=("onnx", "torch"), default="onnx")
    parser.add_argument("--name", help="model name in TorchServe (default: the checkpoint's)")
    parser.add_argument("--batch-size", type=int, default=8, help="largest batch TorchServe forms")
    parser.add_argument("--max-batch-delay", type=int, default=10, help="ms TorchServe waits to fill a batch")
    parser.add_argument("--workers", type=int, default=1, help="worker processes for this model")
    parser.add_argument("--threads", type=int, help="intra-op threads per worker (default: cores / workers)")


def archive_name(name: str, version: int | str) -> str:
    return f"{name}.v{version}.mar"


def build(ckpt: str | Path, model_store: str | Path, backend: str = "onnx", name: str | None = None,
          batch_size: int = 8, max_batch_delay: int = 10, workers: int = 1, threads: int | None = None) -> Path:
    """Write the .mar and return its path."""
    model, meta = checkpoint.load(ckpt)
    name = name or meta["name"]
    store = Path(model_store)
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        extra = [tmp / "checkpoint.pt"]
        shutil.copy(ckpt, extra[0])
        if backend == "onnx":
            extra.append(tmp / "model.onnx")
            onnx_export.export(model, meta, extra[1])
            onnx_export.check(model, meta, extra[1])
        config = {"batchSize": batch_size, "maxBatchDelay": max_batch_delay, "minWorkers": workers,
                  "maxWorkers": workers, "responseTimeout": 120,
                  "abn": {"backend": backend, **({"threads": threads} if threads else {})}}
        (tmp / "model-config.yaml").write_text(yaml.safe_dump(config))
        subprocess.run([str(Path(sys.executable).parent / "torch-model-archiver"), "--model-name", name,
                        "--version", str(meta["version"]), "--handler", str(HANDLER),
                        "--extra-files", ",".join(map(str, extra)), "--config-file", str(tmp / "model-config.yaml"),
                        "--export-path", str(tmp), "--force"], check=True)
        target = store / archive_name(name, meta["version"])
        shutil.move(tmp / f"{name}.mar", target)
    return target


def settings_of(archive: str | Path) -> dict:
    """The build arguments an archive was made with (backend, batching, workers, threads)."""
    with zipfile.ZipFile(archive) as z:
        config = yaml.safe_load(z.read("model-config.yaml"))
    return {"backend": config["abn"]["backend"], "batch_size": config["batchSize"],
            "max_batch_delay": config["maxBatchDelay"], "workers": config["minWorkers"],
            "threads": config["abn"].get("threads")}


def _served_record(model_store: str | Path, name: str) -> Path:
    return Path(model_store) / f"{name}.served"


def record_served(model_store: str | Path, name: str, archive: str) -> None:
    """Remember the archive that retraining made the default, so that a restart serves it again."""
    path = _served_record(model_store, name)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(archive + "\n")
    tmp.replace(path)


def served_archive(model_store: str | Path, name: str) -> Path | None:
    """The archive record_served named last, when it is still in the model store."""
    path = _served_record(model_store, name)
    if not path.exists():
        return None
    archive = Path(model_store) / path.read_text().strip()
    return archive if archive.exists() else None

"""Checkpoints: weights plus a JSON metadata record, in one file.

The file is a torch.save of {"format", "metadata" (a JSON string), "state_dict"}
and is always read with weights_only=True, so loading one never unpickles code.
The metadata says everything needed to rebuild and feed the model:

    architecture, classes, input_size [H, W], map_size [h, w], mean, std,
    name, version, parent_version, trained_on, created, pretrained

pretrained is where the starting weights came from ({"file", "sha256"} of the
file `abn train --pretrained` read; null: random), and a model derived from
another (fine-tuned, retrained) keeps it.
"""

import io
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import torch

from finetune.model import ABN, create_model

FORMAT = 1
REQUIRED = ("architecture", "classes", "input_size", "map_size", "mean", "std", "name", "version")


def metadata(
    model: ABN,
    architecture: str,
    classes: list[str],
    input_size: tuple[int, int],
    mean: list[float],
    std: list[float],
    trained_on: dict,
    name: str = "abn",
    version: int = 1,
    parent_version: int | None = None,
    pretrained: dict | None = None,
) -> dict:
    return {
        "architecture": architecture,
        "classes": list(classes),
        "input_size": list(input_size),
        "map_size": list(model.map_size(input_size)),
        "mean": list(mean),
        "std": list(std),
        "name": name,
        "version": version,
        "parent_version": parent_version,
        "trained_on": trained_on,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "pretrained": pretrained,
    }


def next_version(meta: dict, trained_on: dict, version: int | None = None) -> dict:
    """The metadata of a model derived from the one described by meta: version meta's + 1 unless given."""
    return {
        **meta,
        "version": version or meta["version"] + 1,
        "parent_version": meta["version"],
        "trained_on": trained_on,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def atomic_save(obj: object, path: str | Path) -> None:
    """torch.save through a temporary file, so a crash never leaves half a file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save(path: str | Path, model: ABN, meta: dict) -> None:
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise ValueError(f"checkpoint metadata lacks {', '.join(missing)}")
    # from the CPU, in the default memory format, whatever the model trained on (finetune.compute); the weights
    # are fp32 there, mixed precision or not, since autocast never changes them
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_save({"format": FORMAT, "metadata": json.dumps(meta), "state_dict": state}, path)


def _read(source: str | Path | bytes) -> dict:
    """A checkpoint from a file, or from its bytes (e.g. read out of a .mar)."""
    f: IO[bytes]
    if isinstance(source, bytes):
        name, f = "checkpoint bytes", io.BytesIO(source)
    else:
        name = str(source)
        if not Path(source).is_file():
            raise FileNotFoundError(f"checkpoint {source} does not exist")
        f = open(source, "rb")  # noqa: SIM115 (closed below)
    with f:
        obj = torch.load(f, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError(f"{name} is not a checkpoint of format {FORMAT}")
    return obj


def read_metadata(source: str | Path | bytes) -> dict:
    return json.loads(_read(source)["metadata"])


def load(source: str | Path | bytes) -> tuple[ABN, dict]:
    """The model (in eval mode, on the CPU) and its metadata, from a file or its bytes."""
    obj = _read(source)
    meta = json.loads(obj["metadata"])
    model = create_model(meta["architecture"], len(meta["classes"]))
    model.load_state_dict(obj["state_dict"])
    return model.eval(), meta

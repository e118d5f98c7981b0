"""Start an ABN from ImageNet weights: a torchvision ResNet-18/34/50 state dict, read from a file.

Nothing is downloaded: the file is one torchvision publishes (README, "Starting from ImageNet weights") or any
state dict with its names. timm's ResNets use the same names (conv1, bn1, layer1..4, fc); what differs in
other files is mapped first: a classifier saved as head.fc or classifier, names prefixed by model. or module.
(a wrapped or DataParallel model), and a training checkpoint that holds the weights under state_dict or model.
Where each tensor goes is finetune.model.RESNET_NAMES.

A tensor whose shape differs from the model's is an error naming both (the file is another architecture's);
fc is the exception: an ImageNet classifier (1000 classes) is left out when the model has another number of
classes. What was missing from the file or unexpected in it is reported, not refused.
"""

import hashlib
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from finetune.model import ABN, RESNET_NAMES, RESNETS

PREFIXES = ("module.", "model.")  # what wrapping a model puts before every name
HEADS = {"head.fc.": "fc.", "classifier.": "fc."}  # classifier spellings of timm's models
WRAPPERS = ("state_dict", "model")  # keys a training checkpoint keeps the weights under
SHOWN = 8  # names listed per kind in the summary


@dataclass
class Loaded:
    """What loading a file did: origin (file name and SHA-256, as the checkpoint records it), the model's
    tensors it filled, and what it could not place."""

    origin: dict
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # the model's ResNet tensors the file lacks
    unexpected: list[str] = field(default_factory=list)  # the file's tensors that go nowhere
    skipped: list[str] = field(default_factory=list)  # sentences: what was left out on purpose

    def summary(self) -> str:
        origin = f"{self.origin['file']} (sha256 {self.origin['sha256']})"
        lines = [f"pretrained: {len(self.loaded)} of the model's tensors filled from {origin}"]
        lines += [f"  {s}" for s in self.skipped]
        if self.missing:
            lines.append(f"  missing from the file (left at their random start): {_listed(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected in the file (ignored): {_listed(self.unexpected)}")
        return "\n".join(lines)


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read(path: str | Path) -> dict[str, Tensor]:
    """The file's tensors under torchvision's names."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights {path} do not exist")
    if path.suffix == ".safetensors":
        raise ValueError(
            f"{path}: .safetensors files are not read here (the safetensors package is not a dependency); "
            "use torchvision's .pth file, or save the weights with torch.save(state_dict, 'weights.pth')"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        # torch names the class it refused to unpickle an "Unsupported global"; other failures: another kind of file
        if "Unsupported global" in str(e):
            raise ValueError(
                f"{path} holds pickled objects beside tensors (a whole model?), which are not loaded, since "
                "loading them runs code: save model.state_dict() instead"
            ) from None
        raise ValueError(f"{path} is not a file torch.save wrote: a state dict (.pth, .pt) is expected") from None
    for key in WRAPPERS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not any(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path} holds no state dict (a mapping of tensor names to tensors)")
    return {_torchvision_name(k): v for k, v in obj.items() if isinstance(v, Tensor)}


def _torchvision_name(name: str) -> str:
    while name.startswith(PREFIXES):
        name = name.split(".", 1)[1]
    for theirs, ours in HEADS.items():
        if name.startswith(theirs):
            return ours + name[len(theirs) :]
    return name


def load(model: ABN, arch: str, path: str | Path) -> Loaded:
    """Fill model (an arch ABN) from the ResNet weights in path; ValueError naming the tensor whose shape
    differs, or when nothing in the file fits."""
    if arch not in RESNETS:
        raise ValueError(
            f"--pretrained starts {', '.join(RESNETS)} from a torchvision ResNet's weights; {arch} has no "
            "ImageNet counterpart"
        )
    path = Path(path)
    theirs = read(path)
    ours = model.state_dict()
    result = Loaded({"file": path.name, "sha256": sha256(path)})
    new: dict[str, Tensor] = {}
    placed: set[str] = set()
    for name, tensor in theirs.items():
        targets = [t for t in _targets(name) if t in ours]
        if not targets:
            result.unexpected.append(name)
            continue
        placed.add(name)
        for target in targets:
            if ours[target].shape == tensor.shape:
                new[target] = tensor
            elif name.startswith("fc.") and tensor.shape[0] != model.num_classes:
                note = (
                    f"fc not loaded: the file's classifier has {tensor.shape[0]} classes, this model "
                    f"{model.num_classes}; it starts untrained"
                )
                if note not in result.skipped:
                    result.skipped.append(note)
            else:
                raise ValueError(
                    f"{path.name}: {name} has shape {_shape(tensor)}, but {arch}'s {target} needs "
                    f"{_shape(ours[target])}: is the file a {RESNETS[arch]}'s?"
                )
    if all(target.startswith("fc.") for target in new):
        raise ValueError(
            f"{path.name} has none of a ResNet's backbone tensors (conv1, bn1, layer1..4); its names begin "
            f"{', '.join(list(theirs)[:3])}"
        )
    result.loaded = sorted(new)
    # counters are not weights: a file without them (torchvision's older ones) misses nothing
    needed = {_source(name) for name in ours if not name.endswith("num_batches_tracked")}
    result.missing = sorted(n for n in needed - placed if n is not None)
    model.load_state_dict({**ours, **new})
    return result


def _targets(name: str) -> tuple[str, ...]:
    """The model's names for the file's tensor name (none: it goes nowhere)."""
    for prefix, targets in RESNET_NAMES.items():
        if name.startswith(prefix):
            return tuple(t + name[len(prefix) :] for t in targets)
    return ()


def _source(name: str) -> str | None:
    """The file's name for the model's tensor name (None: no ResNet tensor fills it)."""
    for prefix, targets in RESNET_NAMES.items():
        for target in targets:
            if name.startswith(target):
                return prefix + name[len(target) :]
    return None


def _shape(t: Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"

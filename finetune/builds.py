"""Builds of a model's ONNX export: fp32 as exported, int8 for the CPU, fp16 for the GPU.

int8: ONNX Runtime's static quantization in QDQ format, weights int8 per output channel, activations
calibrated (min-max) on images of the model's own training data (or a folder given instead). fp16: ONNX
Runtime's float16 conversion with float32 inputs and outputs kept, so a handler feeds every build the same
arrays. Every build is one graph with the attention map among its outputs, and is checked against the fp32
PyTorch model (finetune.parity) before it is used.
"""

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from onnxruntime.transformers.float16 import convert_float_to_float16
from torch.utils.data import DataLoader, Dataset, Subset

from finetune.candidate import own_data
from finetune.images import normalize
from finetune.onnx_export import INPUTS, own_map_inputs

BUILDS = ("fp32", "int8", "fp16")


@dataclass(frozen=True)
class BuildConfig:
    build: str = "fp32"  # one of BUILDS
    calibration_images: int = 256  # int8: training images the activation ranges are measured on
    calibration_data: str | None = None  # image folder for calibration and the check; None: the model's own data
    calibration_batch: int = 16  # images per calibration run


def data(meta: dict, cfg: BuildConfig) -> tuple[Dataset, Dataset]:
    """(train, val) the build is calibrated and checked on: the model's own data, or cfg.calibration_data."""
    return own_data(meta, cfg.calibration_data)


class _Calibration(CalibrationDataReader):
    """Batches of n training images spread evenly over the set, normalised, with no supplied map."""

    def __init__(self, dataset: Dataset, meta: dict, n: int, batch_size: int):
        total = len(dataset)  # type: ignore[arg-type]
        picked = np.linspace(0, total - 1, min(n, total)).round().astype(int).tolist()
        self.batches = iter(DataLoader(Subset(dataset, picked), batch_size=batch_size))
        self.meta = meta

    def get_next(self) -> dict | None:
        batch = next(self.batches, None)
        if batch is None:
            return None
        return own_map_inputs(normalize(batch["image"], self.meta["mean"], self.meta["std"]).numpy(), self.meta)


def _kept_float(model: onnx.ModelProto) -> list[str]:
    """Nodes an int8 build keeps in float: the convolution that reads the image (8 bits of a normalised image
    cost most of the top-1 agreement, for a small share of the arithmetic) and the attention map's own head
    (the convolution feeding its sigmoid), whose output is served as it is."""
    producer = {o: n for n in model.graph.node for o in n.output}
    kept = [n.name for n in model.graph.node if INPUTS[0] in n.input]
    for n in model.graph.node:
        if n.op_type == "Sigmoid" and n.input[0] in producer:
            kept += [producer[n.input[0]].name, n.name]
    return kept


def make(fp32_path: str | Path, out: str | Path, meta: dict, cfg: BuildConfig, train: Dataset | None = None) -> None:
    """Write cfg.build of the fp32 export at fp32_path to out; int8 needs train (calibration images)."""
    if cfg.build not in BUILDS:
        raise ValueError(f"unknown build {cfg.build!r}; choose one of {', '.join(BUILDS)}")
    out = Path(out)
    if cfg.build == "fp32":
        out.write_bytes(Path(fp32_path).read_bytes())
    elif cfg.build == "fp16":
        model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
        onnx.save(model, str(out))
    else:
        if train is None:
            raise ValueError("an int8 build needs calibration images")
        with tempfile.TemporaryDirectory() as tmp:
            # shape inference and graph fusion first, as ONNX Runtime advises for static quantization
            prepared = Path(tmp) / "prepared.onnx"
            quant_pre_process(str(fp32_path), str(prepared))
            kept = _kept_float(onnx.load(str(prepared)))
            quantize_static(
                str(prepared),
                str(out),
                _Calibration(train, meta, cfg.calibration_images, cfg.calibration_batch),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=kept,
            )

"""Benchmark: the CPU builds side by side (not a test).

One model (abn_resnet18 at 224x224 by default, randomly initialised: speed does
not depend on the weights), batch 8, all on this machine's cores in one run:
PyTorch eager fp32, ONNX Runtime fp32, ONNX Runtime int8 (static QDQ,
per-channel, calibrated on built-in training images). Prints images/s and the
ratios, and the share of the CPU's peak that each fp32 path reaches:

    operations per image: FLOPs of one forward pass (torch.utils.flop_counter;
        a multiply-add counts 2), and those of the exported graph's convolutions
        from their shapes, the work ONNX Runtime is given
    peak: cores x FMA units per core x fp32 lanes per vector x 2 x clock
        (lanes from /proc/cpuinfo's flags: 16 with avx512f, 8 with avx2,
        4 otherwise; 2 FMA units, as the x86-64 cores of these machines have;
        the clock /proc/cpuinfo reports), and, since a virtual machine's cores
        may run above the clock it reports, what a 2048x2048 fp32 matrix
        product reaches on the same threads

Writes builds.json into --out.

    .venv/bin/python -m bench.builds --out runs/bench-builds
"""

import argparse
import json
import os
import re
from pathlib import Path

import numpy as np
import onnx
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.load import rate
from bench.serving import make_checkpoint
from finetune import builds, checkpoint, onnx_export
from finetune.builds import BuildConfig
from finetune.data import DataConfig, builtin_split
from handlers.backends import OnnxBackend, TorchBackend

FMA_UNITS = 2


def cpu_peak(cores: int) -> tuple[float, str]:
    """fp32 FLOP/s of the cores' vector units, and how it was computed."""
    info = Path("/proc/cpuinfo").read_text()
    flags = set(re.search(r"^flags\s*:(.*)$", info, re.M).group(1).split())
    mhz = max(float(m) for m in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", info, re.M))
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    fma = FMA_UNITS if "fma" in flags else 1
    peak = cores * fma * lanes * 2 * mhz * 1e6
    return peak, f"{cores} cores x {fma} FMA units x {lanes} fp32 lanes x 2 x {mhz:.0f} MHz"


def graph_conv_flops(path: Path) -> float:
    """FLOPs of one image through the ONNX graph's convolutions, from their shapes (a multiply-add counts 2):
    the work ONNX Runtime is given, to set beside torch's count of the eager model's."""
    model = onnx.shape_inference.infer_shapes(onnx.load(path))
    values = [*model.graph.value_info, *model.graph.output]
    dims = {v.name: [d.dim_value or 1 for d in v.type.tensor_type.shape.dim] for v in values}
    weights = {w.name: list(w.dims) for w in model.graph.initializer}
    convs = (n for n in model.graph.node if n.op_type == "Conv")
    return float(sum(2 * np.prod(dims[n.output[0]]) * np.prod(weights[n.input[1]][1:]) for n in convs))


def sgemm_rate(threads: int, n: int = 2048, seconds: float = 5.0) -> float:
    """fp32 FLOP/s of torch's matrix product on threads threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    return rate(lambda: a @ b, 1, seconds) * 2 * n**3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench-builds")
    p.add_argument("--arch", default="abn_resnet18")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0, help="per path")
    p.add_argument("--calibration-images", type=int, default=128)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0))
    ckpt = make_checkpoint(args.arch, args.size, out)
    model, meta = checkpoint.load(ckpt)
    size = (args.size, args.size)
    onnx_export.export(model, meta, out / "fp32.onnx")
    train = builtin_split(DataConfig(), "train", size)
    builds.make(
        out / "fp32.onnx",
        out / "int8.onnx",
        meta,
        BuildConfig(build="int8", calibration_images=args.calibration_images),
        train,
    )

    x = np.random.default_rng(0).standard_normal((args.batch, 3, *size)).astype(np.float32)
    maps, supplied = np.zeros((args.batch, 1, *meta["map_size"]), np.float32), np.zeros(args.batch, bool)
    paths = {
        "PyTorch eager fp32": TorchBackend(ckpt, cores),
        "ONNX Runtime fp32": OnnxBackend(out / "fp32.onnx", cores, None, "cpu"),
        "ONNX Runtime int8": OnnxBackend(out / "int8.onnx", cores, None, "cpu", "int8"),
    }
    speed = {name: rate(lambda b=b: b.run(x, maps, supplied), args.batch, args.seconds) for name, b in paths.items()}
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(torch.from_numpy(x[:1]))
    flops = counter.get_total_flops()
    graph_flops = graph_conv_flops(out / "fp32.onnx")
    peak, how = cpu_peak(cores)
    sgemm = sgemm_rate(cores)
    eager, fp32, int8 = speed.values()
    lines = [f"{args.arch} at {args.size}x{args.size}, batch {args.batch}, {cores} threads"]
    lines += [f"{name:>20}: {v:8.1f} images/s" for name, v in speed.items()]
    lines += [
        f"int8 / eager fp32: {int8 / eager:.2f}x   int8 / ONNX Runtime fp32: {int8 / fp32:.2f}x   "
        f"ONNX Runtime fp32 / eager: {fp32 / eager:.2f}x",
        f"{flops / 1e9:.2f} GFLOP per image (the ONNX graph's convolutions: {graph_flops / 1e9:.2f}); "
        f"peak {peak / 1e9:.0f} GFLOP/s ({how}); "
        f"a matrix product reaches {sgemm / 1e9:.0f} GFLOP/s",
        f"share of peak: eager fp32 {eager * flops / peak:.1%}, ONNX Runtime fp32 {fp32 * flops / peak:.1%}; "
        f"of the matrix product's: {eager * flops / sgemm:.1%}, {fp32 * flops / sgemm:.1%}",
    ]
    text = "\n".join(lines)
    print(text)
    result = {"images_per_s": speed, "flops_per_image": flops, "graph_conv_flops": graph_flops, "peak_flops": peak,
              "peak_from": how, "sgemm_flops": sgemm, "text": text}  # fmt: skip
    (out / "builds.json").write_text(json.dumps({**result, "settings": vars(args)}, indent=2) + "\n")
    print(f"wrote {out / 'builds.json'}")


if __name__ == "__main__":
    main()

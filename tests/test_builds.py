"""Builds of the served ONNX model (fp32, int8, fp16), their parity check, and the device setting."""

import json
import subprocess
import zipfile

import numpy as np
import onnx
import pytest
import torch
from figures import assert_figure
from torch.utils.flop_counter import FlopCounterMode

from bench.builds import graph_conv_flops
from bench.gpu import trained_checkpoint
from finetune import checkpoint, onnx_export
from finetune.builds import BuildConfig
from finetune.parity import ParityConfig, ParityError
from handlers import backends
from serving import cli
from serving.torchserve import archive
from serving.torchserve.archive import ArchiveConfig

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


needs_tensorrt = pytest.mark.skipif(not backends.tensorrt_installed(), reason="needs TensorRT's libraries")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """abn_small briefly trained on decoy-digits: its own data is the built-in set, found from its metadata."""
    return trained_checkpoint("abn_small", 32, 30, "cpu", tmp_path_factory.mktemp("model"))


def served_onnx(mar) -> onnx.ModelProto:
    with zipfile.ZipFile(mar) as z:
        return onnx.load_from_string(z.read("model.onnx"))


def test_int8_build_is_checked_recorded_and_kept(ckpt, tmp_path):
    # the tiny, briefly trained model's maps move more under int8 than the default bar allows: a looser one
    # (top-1 agreement 0.9889 on one x86 machine here, at least 0.99 on another: int8 kernels depend on the CPU)
    cfg = ArchiveConfig(build=BuildConfig(build="int8", calibration_images=128), parity=ParityConfig(0.98, 0.05))
    mar = archive.build(ckpt, tmp_path, cfg)
    found = archive.describe(mar)["build"]
    assert found["build"] == "int8" and found["checked_on"] == 180  # the built-in set's validation split
    assert found["agreement"] >= 0.98 and 0 < found["attention_mad"] <= 0.05
    assert archive.settings_of(mar) == cfg  # what retraining builds the next version with
    model = served_onnx(mar)
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in model.graph.node}
    assert [o.name for o in model.graph.output] == ["logits", "attention_logits", "attention"]  # one graph


def test_fp16_build_keeps_float32_inputs_and_outputs(ckpt, tmp_path, capsys):
    mar = archive.build(ckpt, tmp_path, ArchiveConfig(build=BuildConfig(build="fp16")))
    model = served_onnx(mar)
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    assert [i.type.tensor_type.elem_type for i in model.graph.input][:2] == [onnx.TensorProto.FLOAT] * 2
    assert {o.type.tensor_type.elem_type for o in model.graph.output} == {onnx.TensorProto.FLOAT}
    assert cli.main(["info", str(mar)]) == 0
    shown = capsys.readouterr().out
    assert '"build": "fp16"' in shown and '"agreement": 1.0' in shown and '"checked_on": 180' in shown


def test_a_build_that_misses_the_bar_is_refused_with_its_figures(ckpt, tmp_path):
    cfg = ArchiveConfig(build=BuildConfig(build="int8", calibration_images=64), parity=ParityConfig(0.99, 0.0))
    with pytest.raises(ParityError) as refused:
        archive.build(ckpt, tmp_path / "store", cfg)
    message = str(refused.value)
    assert "the int8 build misses the fp32 model on 180 validation images" in message
    assert f"top-1 agreement {refused.value.figures['agreement']:.4f} (needs >= 0.99)" in message
    assert f"attention map mean |difference| {refused.value.figures['attention_mad']:.4f} (needs <= 0.0)" in message
    assert not list((tmp_path / "store").glob("*.mar"))


@no_gpu
@pytest.mark.parametrize("device", ["cuda", "tensorrt"])
def test_a_gpu_device_is_refused_up_front_without_one(ckpt, tmp_path, capsys, device):
    store = tmp_path / "store"
    assert cli.main(["package", str(ckpt), "--model-store", str(store), "--device", device]) == 2
    assert f"abn package: error: device {device} needs a CUDA GPU and this machine has none" in capsys.readouterr().err
    assert not store.exists() or not list(store.iterdir())


@no_gpu
def test_the_worker_refuses_a_gpu_device_and_auto_takes_the_cpu(ckpt, tmp_path, monkeypatch):
    mar = archive.build(ckpt, tmp_path, ArchiveConfig())
    with zipfile.ZipFile(mar) as z:
        z.extract("model.onnx", tmp_path)
    with pytest.raises(backends.DeviceError, match="device cuda needs a CUDA GPU"):
        backends.OnnxBackend(tmp_path / "model.onnx", 1, gpu_id=0, device="cuda")
    assert backends.choose("auto", "fp16", gpu_id=0) == "cpu"
    assert backends.OnnxBackend(tmp_path / "model.onnx", 1, gpu_id=0, device="auto").device == "CPUExecutionProvider"
    # idle ONNX Runtime threads sleep rather than take the cores from TorchServe's frontend
    options = backends.OnnxBackend(tmp_path / "model.onnx", 2, device="cpu").session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    # the CPU's threads are the cores shared among the workers; a GPU asked for and missing is refused here too
    monkeypatch.setattr(backends.os, "cpu_count", lambda: 8)
    assert backends.default_threads("onnx", "auto", "fp16", 0, 2) == 4
    with pytest.raises(backends.DeviceError):
        backends.default_threads("onnx", "cuda", "fp16", 0, 1)


@needs_gpu
@pytest.mark.parametrize("device", ["cuda", pytest.param("tensorrt", marks=needs_tensorrt)])
def test_the_fp16_build_on_the_gpu_matches_the_cpu(ckpt, tmp_path, device):
    mar = archive.build(ckpt, tmp_path, ArchiveConfig(build=BuildConfig(build="fp16"), device=device))
    with zipfile.ZipFile(mar) as z:
        z.extract("model.onnx", tmp_path)
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    maps, supplied = np.zeros((4, 1, 16, 16), np.float32), np.zeros(4, bool)
    assert backends.default_threads("onnx", device, "fp16", 0, 4) == 1  # the GPU runs the kernels
    on_gpu = backends.OnnxBackend(tmp_path / "model.onnx", 1, 0, device, "fp16").run(x, maps, supplied)
    on_cpu = backends.OnnxBackend(tmp_path / "model.onnx", 1, None, "cpu", "fp16").run(x, maps, supplied)
    for a, b in zip(on_gpu, on_cpu):
        assert np.abs(a - b).max() < 1e-2


def test_the_gpu_benchmark_dry_run_runs_every_step_on_the_cpu(tmp_path):
    command = ["bench/gpu.sh", "--dry-run", "--steps", "10", "--check-images", "64", "--seconds", "1"]
    done = subprocess.run([*command, "--out", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert "errors" not in report, report["errors"]
    assert not [r for kind in ("in process", "served") for r in report[kind] if "error" in r]
    served = [(r["model"], r["workers"], r["concurrency"]) for r in report["served"]]
    assert served == [(m, w, c) for m in ("abn_fp32", "abn_fp16") for w, c in ((1, 1), (1, 8), (2, 8))]
    assert [r["concurrency"] for r in report["in process"]] == [1, 8, 1, 8]
    assert all(r["per_second"] > 0 for r in report["served"])
    assert all(r["stages_ms"]["decode"] > 0 for r in report["served"] if r["workers"] == 1)
    assert report["archive abn_fp16"]["choice"]["candidates"][0]["passed"]
    assert "| served | abn_fp16 | 2 | 8 |" in done.stdout
    assert_figure(tmp_path / "gpu.png", (700, 700))  # throughput and p99 against concurrency


def test_the_graphs_convolution_flops_are_the_eager_models(ckpt, tmp_path):
    model, meta = checkpoint.load(ckpt)
    onnx_export.export(model, meta, tmp_path / "model.onnx")
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(torch.zeros(1, 3, *meta["input_size"]))
    convolutions = counter.get_flop_counts()["Global"][torch.ops.aten.convolution]
    assert graph_conv_flops(tmp_path / "model.onnx") == convolutions > 0


def test_tensorrt_without_its_libraries_is_refused_and_auto_takes_cuda(monkeypatch):
    # a GPU machine without TensorRT, which this machine (no GPU) can only stand in for
    monkeypatch.setattr(backends, "gpu_available", lambda: True)
    monkeypatch.setattr(backends, "tensorrt_installed", lambda: False)
    with pytest.raises(backends.DeviceError, match=r"device tensorrt needs TensorRT 10's libraries"):
        backends.check_device("tensorrt")
    assert backends.choose("auto", "fp16", gpu_id=0) == "cuda"
    assert backends.default_threads("onnx", "auto", "fp16", 0, 4) == 1

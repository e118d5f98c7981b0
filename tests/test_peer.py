"""The parts of the peer benchmark (bench/peer.py, bench/peer_kserve.py) that run without KServe: the peer's
preprocessing and model run against the product's, and the reuse of its virtual environment. KServe itself is
installed and run only by the benchmark."""

import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import peer, peer_kserve
from bench.serving import in_process, make_checkpoint
from finetune import checkpoint, onnx_export
from finetune.images import image_tensor, normalize, open_image
from handlers.backends import OnnxBackend

SETTINGS = {"input_size": [24, 32], "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}


def encoded(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def images() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    sideways = Image.fromarray(rng.integers(0, 256, (20, 50, 3), dtype=np.uint8))
    exif = Image.new("RGB", (1, 1)).getexif()
    exif[0x0112] = 6  # turn a quarter for display
    return {
        "rgb, resized": encoded(Image.fromarray(rng.integers(0, 256, (60, 45, 3), dtype=np.uint8))),
        "rgb, the model's size": encoded(Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))),
        "grey": encoded(Image.fromarray(rng.integers(0, 256, (30, 30), dtype=np.uint8))),
        "rgba": encoded(Image.fromarray(rng.integers(0, 256, (16, 16, 4), dtype=np.uint8))),
        "16-bit grey": encoded(Image.fromarray(rng.integers(0, 65536, (40, 40), dtype=np.uint16))),
        "exif orientation": encoded(sideways, exif=exif.tobytes()),
    }


@pytest.mark.parametrize("kind", list(images()))
def test_the_peer_preprocesses_an_image_as_the_handler_does(kind):
    data = images()[kind]
    ours = normalize(image_tensor(open_image(data), tuple(SETTINGS["input_size"]))[None], SETTINGS["mean"],
                     SETTINGS["std"]).numpy()  # fmt: skip
    theirs = peer_kserve.preprocess(data, SETTINGS)
    assert theirs.shape == ours.shape == (1, 3, 24, 32) and theirs.dtype == np.float32
    np.testing.assert_allclose(theirs, ours, atol=1e-6)


def test_the_peer_answers_as_the_onnx_backend_for_the_settings_the_benchmark_writes(tmp_path):
    ckpt = make_checkpoint("abn_small", 32, tmp_path)
    model, meta = checkpoint.load(ckpt)
    onnx = tmp_path / "model.onnx"
    onnx_export.export(model, meta, onnx)
    path = peer.write_settings(meta, 1, onnx_export.INPUTS, onnx_export.OUTPUTS, tmp_path / "peer.json")
    settings = json.loads(path.read_text())
    data = images()["rgb, resized"]
    probabilities, attention = peer_kserve.Runner(onnx, settings).run(peer_kserve.preprocess(data, settings))
    want_probabilities, want_attention = in_process(OnnxBackend(onnx, 1), meta)(data)
    np.testing.assert_allclose(probabilities, want_probabilities, atol=1e-6)
    np.testing.assert_allclose(attention, want_attention, atol=1e-6)


@pytest.fixture
def installs(monkeypatch):
    """The commands ensure_venv runs, recorded instead of run; making the environment makes its python."""
    commands: list[list[str]] = []

    def run(command, check):
        commands.append(command)
        if command[1:3] == ["-m", "venv"]:
            (Path(command[-1]) / "bin").mkdir(parents=True, exist_ok=True)
            (Path(command[-1]) / "bin" / "python").touch()
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(peer.subprocess, "run", run)
    return commands


def test_the_peer_environment_is_made_once_and_remade_when_its_requirements_change(tmp_path, installs):
    venv, requirements = tmp_path / "venv", tmp_path / "requirements.txt"
    requirements.write_text("kserve==1.0\n")
    py = peer.ensure_venv(venv, requirements)
    assert py == venv / "bin" / "python"
    assert [c[1:3] for c in installs] == [["-m", "venv"], ["-m", "pip"]]
    assert installs[1][-2:] == ["-r", str(requirements)]

    installs.clear()
    assert peer.ensure_venv(venv, requirements) == py
    assert installs == []  # reused

    requirements.write_text("kserve==2.0\n")
    peer.ensure_venv(venv, requirements)
    assert [c[1:3] for c in installs] == [["-m", "venv"], ["-m", "pip"]]
    assert "--clear" in installs[0]


def test_an_install_cut_short_is_redone(tmp_path, installs, monkeypatch):
    venv, requirements = tmp_path / "venv", tmp_path / "requirements.txt"
    requirements.write_text("kserve==1.0\n")
    recorded = peer.subprocess.run

    def failing_pip(command, check):
        recorded(command, check)
        if command[1:3] == ["-m", "pip"]:
            raise subprocess.CalledProcessError(1, command)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(peer.subprocess, "run", failing_pip)
    with pytest.raises(subprocess.CalledProcessError):
        peer.ensure_venv(venv, requirements)
    monkeypatch.setattr(peer.subprocess, "run", recorded)
    installs.clear()
    peer.ensure_venv(venv, requirements)
    assert [c[1:3] for c in installs] == [["-m", "venv"], ["-m", "pip"]]

"""The worker's batches, in process: fixed shapes warmed at start, parallel decoding, and backend auto."""

import threading
import time
import zipfile

import numpy as np
import pytest
import torch
import yaml
from conftest import png
from ts.context import Context

from bench.gpu import trained_checkpoint
from finetune import checkpoint, decoy_digits
from finetune.images import normalize
from finetune.model import create_model
from finetune.parity import ParityConfig
from handlers import abn_handler, backends, batching, requests
from handlers.abn_handler import ABNHandler
from handlers.backends import GpuOptions
from handlers.choice import Candidate, pick
from handlers.stubs.abn.v1.prediction_pb2 import Prediction
from serving.torchserve import archive
from serving.torchserve.archive import ArchiveConfig


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("batching")
    torch.manual_seed(0)
    model = create_model("abn_small", 10).eval()
    meta = checkpoint.metadata(
        model, "abn_small", decoy_digits.CLASSES, (32, 32), [0.2] * 3, [0.3] * 3, {"data": "test"}, name="abn"
    )
    checkpoint.save(root / "checkpoint.pt", model, meta)
    return root / "checkpoint.pt"


@pytest.fixture(scope="module")
def model_dir(ckpt, tmp_path_factory):
    """An archive's files (ONNX backend on the CPU, batches of up to 8), as a worker's model folder holds them."""
    root = tmp_path_factory.mktemp("model")
    mar = archive.build(ckpt, root / "store", ArchiveConfig(batch_size=8, device="cpu"))
    with zipfile.ZipFile(mar) as z:
        z.extractall(root / "model")
    return root / "model"


def handler(model_dir, **abn) -> ABNHandler:
    config = yaml.safe_load((model_dir / "model-config.yaml").read_text())
    config["abn"].update(abn)
    config["handler"] = {"profile": False}
    context = Context("abn", str(model_dir), {"model": {"modelName": "abn"}}, 8, None, "0.12", model_yaml_config=config)
    h = ABNHandler()
    h.initialize(context)
    h.context = context
    return h


@pytest.fixture(scope="module")
def images():
    test = decoy_digits.build("test").images
    return [png(test[i, 0].numpy()) for i in range(8)]


def answer(h: ABNHandler, data: list[dict]) -> list[Prediction]:
    return [Prediction.FromString(a) for a in h.postprocess(h.inference(h.preprocess(data)))]


def probabilities(p: Prediction) -> dict[int, float]:
    return {s.index: s.probability for s in p.scores}


@pytest.fixture
def runs(monkeypatch):
    """The batch sizes the ONNX Runtime backend runs, in order."""
    found: list[int] = []
    run = backends.OnnxBackend.run

    def recorded(self, images, maps, supplied):
        found.append(len(images))
        return run(self, images, maps, supplied)

    monkeypatch.setattr(backends.OnnxBackend, "run", recorded)
    return found


def test_each_fixed_size_runs_when_the_worker_starts(model_dir, runs):
    h = handler(model_dir)
    assert h.sizes == (1, 2, 4, 8)  # the default sizes up to the archive's batch size
    assert runs == [s for s in (1, 2, 4, 8) for _ in range(abn_handler.WARM_RUNS)]
    assert list(h.warmed) == [1, 2, 4, 8]
    runs.clear()
    assert handler(model_dir, batch_sizes=[]).warmed == {} and runs == []  # unpadded: nothing to warm


def test_a_batch_is_padded_and_each_request_gets_its_own_answer(model_dir, images, runs):
    h = handler(model_dir)
    alone = [answer(h, [{"data": im, "top_k": "10"}])[0] for im in images[:5]]
    runs.clear()
    batched = answer(h, [{"data": im, "top_k": str(k)} for im, k in zip(images[:3], (3, 10, 5))])
    assert runs == [4]  # 3 requests run as the next fixed size; the padding row's answer is dropped
    assert [len(p.scores) for p in batched] == [3, 10, 5]
    for got, want in zip(batched, alone):
        for i, p in probabilities(got).items():
            assert p == pytest.approx(probabilities(want)[i], abs=1e-6)
        assert np.allclose(got.attention.values, want.attention.values, atol=1e-6)
    answer(h, [{"data": im} for im in images[:5]])
    assert runs == [4, 8]
    served = h.timings.record(h.backend.stages.seconds)
    assert served["padding_rows"] == 1 + 3 + 0 and served["batch_sizes_run"] == {"1": 5, "4": 1, "8": 1}
    runs.clear()
    unpadded = handler(model_dir, batch_sizes=[])
    answer(unpadded, [{"data": im} for im in images[:3]])
    assert runs == [3]


def test_a_refused_request_in_a_padded_batch_is_answered_with_its_own_status(model_dir, images):
    h = handler(model_dir)
    answers = h.postprocess(h.inference(h.preprocess([{"data": images[0]}, {"data": b"not an image"}])))
    assert Prediction.FromString(answers[0]).scores
    assert b"cannot be decoded" in answers[1]


def test_a_batch_is_decoded_on_several_threads_in_order(model_dir, images, monkeypatch):
    threads, parse = set(), requests.parse

    def parse_recorded(request, meta, max_image_bytes):
        threads.add(threading.get_ident())
        time.sleep(0.02)  # long enough that the pool's threads share the batch
        return parse(request, meta, max_image_bytes)

    monkeypatch.setattr(requests, "parse", parse_recorded)
    h = handler(model_dir, decode_threads=4)
    assert h.decoder.threads == 4
    alone = [answer(h, [{"data": im, "top_k": "10"}])[0] for im in images]
    threads.clear()
    batched = answer(h, [{"data": im, "top_k": str(k + 1)} for k, im in enumerate(images)])
    assert len(threads) > 1
    assert [len(p.scores) for p in batched] == list(range(1, 9))  # each answer in its request's place
    for got, want in zip(batched, alone):
        assert np.allclose(got.attention.values, want.attention.values, atol=1e-6)


def test_an_image_is_normalised_into_its_row_as_finetune_normalises_it():
    image = torch.rand(3, 32, 32)
    row = np.full((3, 32, 32), np.nan, np.float32)
    batching.Normalizer([0.2, 0.4, 0.6], [0.3, 0.2, 0.1]).into(row, image.numpy())
    want = normalize(image[None], [0.2, 0.4, 0.6], [0.3, 0.2, 0.1])[0].numpy()
    assert np.allclose(row, want, atol=1e-5)


def test_auto_picks_the_fastest_that_passed_and_never_one_that_failed():
    slow, fast = Candidate("onnx", passed=True, per_second=100.0), Candidate("torch", passed=True, per_second=300.0)
    failed = Candidate("onnx", GpuOptions(cuda_graph=True), passed=False, per_second=900.0, figures={"agreement": 0.5})
    broken = Candidate("torch", GpuOptions(half=True), passed=True, per_second=1000.0, error="RuntimeError: no GPU")
    assert pick([slow, failed, fast, broken]) is fast
    with pytest.raises(ValueError, match="no way to run this model passed its check here.*cuda_graph=True"):
        pick([failed, broken])


def test_an_auto_archive_serves_the_fastest_backend_that_passed_here(tmp_path, capsys):
    ckpt = trained_checkpoint("abn_small", 32, 5, "cpu", tmp_path)  # checked on its data's validation images
    cfg = ArchiveConfig(backend="auto", device="cpu", parity=ParityConfig(check_images=64))
    mar = archive.build(ckpt, tmp_path, cfg)
    with zipfile.ZipFile(mar) as z:
        abn = yaml.safe_load(z.read("model-config.yaml"))["abn"]
    tried = abn["choice"]["candidates"]
    assert [c["backend"] for c in tried] == ["onnx", "torch"]  # on the CPU, for an fp32 build
    assert all(c["passed"] and c["figures"]["checked_on"] == 64 and c["per_second"] > 0 for c in tried)
    fastest = max(tried, key=lambda c: c["per_second"])
    assert abn["backend"] == fastest["backend"] and f"backend auto: {fastest['label']}:" in capsys.readouterr().out
    assert archive.settings_of(mar) == cfg  # retraining chooses again

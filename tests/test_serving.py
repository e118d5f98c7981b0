"""The serving path, for real: a TorchServe on loopback ports, talked to over gRPC."""

import base64
import io
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from conftest import dds, png
from PIL import Image

from finetune import checkpoint, decoy_digits, onnx_export
from finetune.images import image_tensor, normalize, open_image, resize_map
from finetune.model import create_model
from handlers import wire
from handlers.stubs.torchserve import inference_pb2, inference_pb2_grpc
from serving import protos, settings
from serving.client import Client
from serving.editor.gateway import EditorConfig, EditorServer
from serving.feedback import experts
from serving.feedback.server import FeedbackServer, write_token
from serving.feedback.store import SQLiteStore
from serving.torchserve import archive
from serving.torchserve.archive import ArchiveConfig
from serving.torchserve.client import decode_prediction, read_keys
from serving.torchserve.config import ServeConfig, free_port
from serving.torchserve.process import TorchServe

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs Java 17")
TOKEN_MINUTES = 0.25  # short, so that the client's renewal is exercised


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    torch.manual_seed(0)
    model = create_model("abn_small", 10)
    model.train()
    with torch.no_grad():  # a few batches so that BatchNorm statistics are not the identity
        for _ in range(3):
            model(torch.rand(32, 3, 32, 32))
    model.eval()
    meta = checkpoint.metadata(
        model, "abn_small", decoy_digits.CLASSES, (32, 32), [0.2] * 3, [0.3] * 3, {"data": "test"}, name="abn"
    )
    ckpt = root / "checkpoint.pt"
    checkpoint.save(ckpt, model, meta)
    store = root / "store"
    archive.build(ckpt, store, ArchiveConfig(backend="onnx", batch_size=8, max_batch_delay=50), name="abn")
    archive.build(ckpt, store, ArchiveConfig(backend="torch", batch_size=8, max_batch_delay=50), name="abn_torch")
    cfg = ServeConfig.on_free_ports(
        root / "serve",
        store,
        {"abn": "abn.v1.mar", "abn_torch": "abn_torch.v1.mar"},
        token_expiration_min=TOKEN_MINUTES,
    )
    with TorchServe(cfg) as server:
        client = Client.for_services(cfg)
        yield {"client": client, "model": model, "meta": meta, "cfg": cfg, "server": server}
        client.close()


def in_process(model, meta, image: bytes, attention: np.ndarray | None = None):
    x = normalize(image_tensor(open_image(image), tuple(meta["input_size"]))[None], meta["mean"], meta["std"])
    m = None if attention is None else resize_map(torch.from_numpy(attention)[None, None], tuple(meta["map_size"]))
    with torch.no_grad():
        out = model(x, attention=m)
    return torch.softmax(out.logits, 1)[0].numpy(), out.attention[0, 0].numpy()


def probabilities(prediction) -> np.ndarray:
    p = np.zeros(len(prediction.scores), np.float32)
    for s in prediction.scores:
        p[s.index] = s.probability
    return p


def sample_images(n: int) -> list[bytes]:
    images = decoy_digits.build("test").images
    return [png(images[i, 0].numpy()) for i in range(n)]


@pytest.mark.parametrize("model_name", ["abn", "abn_torch"])
def test_prediction_matches_the_model_in_process(served, model_name):
    client, model, meta = served["client"], served["model"], served["meta"]
    for image in sample_images(4):
        pred = client.predict(image, top_k=10, model=model_name)
        expected_p, expected_map = in_process(model, meta, image)
        assert pred.model_name == model_name and pred.model_version == "1"
        assert len(pred.prediction_id) == 32 and not pred.attention_supplied
        assert [s.label for s in pred.scores] == [meta["classes"][s.index] for s in pred.scores]
        assert np.abs(probabilities(pred) - expected_p).max() <= 1e-4
        got_map = wire.map_from_proto(pred.attention)
        assert got_map.shape == (16, 16) and np.abs(got_map - expected_map).max() <= 1e-4
    top3 = client.predict(image, top_k=3, model=model_name)
    assert len(top3.scores) == 3
    assert top3.scores[0].probability >= top3.scores[1].probability >= top3.scores[2].probability


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(served):
    client, model, meta = served["client"], served["model"], served["meta"]
    images = sample_images(24)
    log = served["cfg"].workdir / "logs" / "model_log.log"
    start = log.stat().st_size  # what the module's other cases logged comes before
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda im: client.predict(im, top_k=10), images))
    for image, pred in zip(images, answers):
        assert np.abs(probabilities(pred) - in_process(model, meta, image)[0]).max() <= 1e-4
    assert len({p.prediction_id for p in answers}) == len(images)
    # TorchServe handed abn's handler more than one of these requests at once; the worker's lines reach the log
    # through TorchServe a moment after the answers
    batched = re.compile(r"W-\d+-abn_1-stdout MODEL_LOG - batch of ")
    deadline = time.monotonic() + 30
    while not batched.search(logged_since(log, start)):
        assert time.monotonic() < deadline, logged_since(log, start)[-3000:]
        time.sleep(0.1)


def logged_since(log: Path, offset: int) -> str:
    with open(log, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


@pytest.mark.parametrize("model_name", ["abn", "abn_torch"])
def test_a_supplied_map_changes_the_prediction_as_in_process(served, model_name):
    client, model, meta = served["client"], served["model"], served["meta"]
    image = sample_images(1)[0]
    edit = np.zeros((32, 32), np.float32)
    edit[8:24, 8:24] = 1.0  # at image size: resized to the model's 16x16
    pred = client.predict(image, top_k=10, attention=edit, model=model_name)
    own = client.predict(image, top_k=10, model=model_name)
    expected_p, expected_map = in_process(model, meta, image, edit)
    assert pred.attention_supplied
    assert np.abs(probabilities(pred) - expected_p).max() <= 1e-4
    assert np.abs(wire.map_from_proto(pred.attention) - expected_map).max() <= 1e-4
    assert np.abs(probabilities(pred) - probabilities(own)).max() > 1e-3


def raw_predict(client: Client, inputs: dict, model: str = "abn"):
    return client.torchserve.predictions(inputs, model)


GOOD = b"<the sample image>"


def float_tiff() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).random((32, 32), dtype=np.float32)).save(buf, "TIFF")
    return buf.getvalue()


def huge_png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (8000, 8000)).save(buf, "PNG")  # 64 megapixels in a few kilobytes
    return buf.getvalue()


@pytest.mark.parametrize(
    "inputs,message",
    [
        ({"data": b"\x89PNG\r\n\x1a\n broken"}, "data: image cannot be decoded"),
        ({"data": b""}, "data: image is empty"),
        ({"data": huge_png()}, "data: image is 8000x8000, above the limit of 50000000 pixels"),
        ({"top_k": b"3"}, "data: missing"),
        ({"data": GOOD, "attention": b"\xff\xff not a message"}, "attention: not a serialized abn.v1.AttentionMap"),
        (
            {"data": GOOD, "attention": wire.map_to_proto(np.full((4, 4), 1.5)).SerializeToString()},
            "attention: values must lie in [0, 1]",
        ),
        (
            {"data": GOOD, "attention": wire.map_to_proto(np.full((1, 4), 0.5)).SerializeToString()},
            "attention: height and width must be between 2 and 1024",
        ),
        ({"data": GOOD, "attention": b"\x08\x04\x10\x04\x1a\x04\x00\x00\x00\x00"}, "4x4 map needs 16 values, got 1"),
        ({"data": GOOD, "top_k": b"0"}, "top_k: must be a whole number from 1 to 10"),
        ({"data": GOOD, "format": b"xml"}, "format: must be proto or json"),
        ({"data": GOOD, "top_k": "²".encode()}, "top_k: must be a whole number from 1 to 10"),
        ({"data": GOOD, "top_k": b"9" * 5000}, "top_k: must be a whole number from 1 to 10"),
        ({"data": dds()}, "data: image cannot be decoded"),
        ({"data": float_tiff()}, "data: image has mode F"),
    ],
)
def test_bad_input_gets_a_clear_error_and_the_server_keeps_serving(served, inputs, message):
    client = served["client"]
    good = sample_images(1)[0]
    with pytest.raises(grpc.RpcError) as e:
        raw_predict(client, {k: good if v is GOOD else v for k, v in inputs.items()})
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in e.value.details()
    assert client.predict(good).scores  # still serving


def test_a_bad_request_batched_with_good_ones(served):
    """Whatever a request holds, the others of its batch are answered as if it were not there."""
    client = served["client"]
    jobs = [({"data": im}, None) for im in sample_images(8)]
    bad = [
        ({"data": b"not an image"}, "cannot be decoded"),
        ({"data": dds()}, "cannot be decoded"),
        ({"data": sample_images(1)[0], "top_k": "²".encode()}, "top_k: must be a whole number"),
        ({"data": sample_images(1)[0], "top_k": b"9" * 5000}, "top_k: must be a whole number"),
    ]
    jobs += bad * 2

    def send(job):
        try:
            return decode_prediction(client.torchserve.predictions(job[0]).prediction)
        except grpc.RpcError as e:
            return e

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(send, jobs))
    for (_, failure), result in zip(jobs, results):
        if failure is None:
            assert not isinstance(result, Exception) and result.scores
        else:
            assert isinstance(result, grpc.RpcError) and result.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert failure in result.details()


def test_a_request_above_torchserves_limit(served):
    """The client refuses to send it; sent anyway over a raw channel, TorchServe drops it; it serves on."""
    client, cfg = served["client"], served["cfg"]
    big = b"\x00" * (settings.TORCHSERVE_MAX_MESSAGE_BYTES + 1024)
    with pytest.raises(grpc.RpcError) as e:
        client.predict(big)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    key = read_keys(cfg.key_file)["inference"]
    with grpc.insecure_channel(cfg.target.inference, options=[("grpc.max_send_message_length", -1)]) as raw:
        stub = inference_pb2_grpc.InferenceAPIsServiceStub(raw)
        request = inference_pb2.PredictionsRequest(model_name="abn", input={"data": big})
        with pytest.raises(grpc.RpcError) as e:
            stub.Predictions(request, metadata=[("authorization", f"Bearer {key}")], timeout=60)
    print(f"TorchServe answers a request above its limit with {e.value.code().name}: {e.value.details()}")
    assert e.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert client.predict(sample_images(1)[0]).scores


def test_a_batch_of_bad_requests_answers_each_with_its_own_error(served):
    client = served["client"]
    jobs = [({"data": b"not an image"}, "cannot be decoded"), ({"data": dds()}, "cannot be decoded"),
            ({"data": sample_images(1)[0], "top_k": b"0"}, "top_k: must be a whole number")] * 4  # fmt: skip

    def send(job):
        try:
            decode_prediction(client.torchserve.predictions(job[0]).prediction)
        except grpc.RpcError as e:
            return e

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(send, jobs))
    for (_, failure), error in zip(jobs, results):
        assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert failure in error.details() and ";" not in error.details()  # its own message, no other caller's


def test_json_answer_for_rest_users(served):
    answer = raw_predict(served["client"], {"data": sample_images(1)[0], "format": b"json", "top_k": b"2"})
    body = json.loads(answer.prediction)
    assert body["model_name"] == "abn" and len(body["scores"]) == 2
    assert body["attention"]["height"] == 16 and len(body["attention"]["values"]) == 256


def refusal(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value


def test_torchserves_refusals_reach_callers_plainly(served):
    """TorchServe appends Java class names to its messages and answers an unknown model or version of a
    prediction as INTERNAL: the client says what is wrong, with NOT_FOUND naming what is served."""
    client = served["client"]
    image = sample_images(1)[0]
    bad = refusal(lambda: client.predict(b"not an image"))
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad.details() == "data: image cannot be decoded: not in an image format Pillow reads"
    for call in (lambda: client.predict(image, model="nope"), lambda: client.torchserve.describe("nope")):
        unknown = refusal(call)
        assert unknown.code() == grpc.StatusCode.NOT_FOUND, unknown.details()
        said, served_models = unknown.details().split("; the models served: ")
        assert said == "model 'nope' is not served here" and sorted(served_models.split(", ")) == ["abn", "abn_torch"]
    version_7 = (
        lambda: client.predict(image, model="abn", version="7"),
        lambda: client.torchserve.describe("abn", "7"),
    )
    for call in version_7:
        unknown = refusal(call)
        assert unknown.code() == grpc.StatusCode.NOT_FOUND
        assert unknown.details() == "model 'abn' has no version '7'; its versions: 1"
    missing = refusal(lambda: client.torchserve.register("missing.mar"))
    assert missing.code() == grpc.StatusCode.NOT_FOUND and missing.details() == "Model not found at: missing.mar"
    assert client.predict(image).scores  # still serving


def test_the_editor_answers_an_unknown_model_not_found_and_a_bad_image_plainly(served, tmp_path):
    """The gateway's answers to TorchServe's refusals, through a real feedback service (to sign in) and the
    gateway on loopback: the expert reads what to do, never a Java class name."""
    store = SQLiteStore(tmp_path / "feedback.db")
    feedback = FeedbackServer(store, "127.0.0.1:0", write_token(tmp_path / "token"))
    token = experts.add(store, "ana")
    client = Client.for_services(served["cfg"], f"127.0.0.1:{feedback.port}")
    editor = EditorServer(EditorConfig(address="127.0.0.1:0", target=served["cfg"].target, model="nope"), client)
    url = f"http://127.0.0.1:{editor.port}"

    def post(path: str, body: dict, cookie: str = "") -> tuple[int, dict, str]:
        headers = {"Content-Type": "application/json", "Cookie": cookie}
        request = urllib.request.Request(url + path, json.dumps(body).encode(), headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                return answer.status, {}, answer.headers.get("Set-Cookie", "")
        except urllib.error.HTTPError as e:
            return e.code, json.load(e), ""

    try:
        status, _, cookie = post("/api/session", {"token": token})
        assert status == 204
        cookie = cookie.split(";")[0]
        image = base64.b64encode(sample_images(1)[0]).decode()
        status, answer, _ = post("/api/predict", {"image": image}, cookie)
        assert status == 404, answer
        assert answer["detail"].startswith("The model server cannot predict with it: model 'nope' is not served here")
        assert "abn_torch" in answer["detail"]
        status, answer, _ = post("/api/predict", {"image": base64.b64encode(b"not an image").decode()}, cookie)
        assert status == 400 and "org." not in answer["detail"] and "Exception" not in answer["detail"]
    finally:
        editor.stop()
        client.close()
        feedback.stop(grace=5)
        store.close()


def test_a_call_without_the_token_is_refused(served):
    cfg = served["cfg"]
    assert oct(cfg.workdir.stat().st_mode & 0o777) == "0o700"  # the keys' folder is its owner's only
    with grpc.insecure_channel(cfg.target.inference) as channel:
        stub = inference_pb2_grpc.InferenceAPIsServiceStub(channel)
        request = inference_pb2.PredictionsRequest(model_name="abn", input={"data": sample_images(1)[0]})
        with pytest.raises(grpc.RpcError) as e:
            stub.Predictions(request, timeout=30)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as e:
            stub.Predictions(request, metadata=[("authorization", "Bearer wrong")], timeout=30)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_stale_copy_of_the_key_file_gets_the_refusal_not_a_connection_error(served, tmp_path):
    """A client away from TorchServe's machine: its copied keys are stale and it cannot reach port 8081."""
    cfg = served["cfg"]
    keys = json.loads(cfg.key_file.read_text())
    keys["inference"]["key"] = "stale"
    (tmp_path / "keys.json").write_text(json.dumps(keys))
    with Client(cfg.target.inference, tmp_path / "keys.json", f"http://127.0.0.1:{free_port()}") as client:
        with pytest.raises(grpc.RpcError) as e:
            client.predict(sample_images(1)[0])
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_the_client_renews_an_expired_token(served):
    client, cfg = served["client"], served["cfg"]
    image = sample_images(1)[0]
    client.predict(image)
    before = read_keys(cfg.key_file)["inference"]
    time.sleep(TOKEN_MINUTES * 60 + 2)
    assert client.predict(image).scores  # refused once inside, renewed, repeated
    assert read_keys(cfg.key_file)["inference"] != before


def test_an_archive_tells_the_settings_it_was_built_with(served):
    store = served["cfg"].model_store
    assert archive.settings_of(store / "abn_torch.v1.mar") == ArchiveConfig(
        backend="torch", batch_size=8, max_batch_delay=50, workers=1, threads=None
    )
    assert archive.settings_of(store / "abn.v1.mar").backend == "onnx"


def test_an_archive_carries_the_product_code_its_handler_runs(served, tmp_path):
    """Unpacked as TorchServe unpacks it, with its folder first on the import path as TorchServe puts it, the
    handler imports the archive's own copies of the product's packages, not the installed ones."""
    mar = served["cfg"].model_store / "abn.v1.mar"
    with zipfile.ZipFile(mar) as z:
        names = set(z.namelist())
        z.extractall(tmp_path / "model")
    for name in (
        "abn_handler.py",
        "finetune/model.py",
        "finetune/checkpoint.py",
        "handlers/wire.py",
        "handlers/backends.py",
        "handlers/stubs/abn/v1/prediction_pb2.py",
    ):
        assert name in names, name
    assert not any("__pycache__" in n for n in names)
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); import abn_handler, finetune.model, handlers.wire, "
        "handlers.stubs.abn.v1.prediction_pb2 as p; "
        "print('\\n'.join(m.__file__ for m in (abn_handler, finetune.model, handlers.wire, p)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path / "model")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for path in result.stdout.split():
        assert Path(path).resolve().is_relative_to((tmp_path / "model").resolve()), path
    # in TorchServe: the worker says where its product code came from: an archive as TorchServe unpacked it
    # (its manifest beside the code), neither this checkout nor an installed copy
    log = (served["cfg"].workdir / "logs" / "model_log.log").read_text()
    origins = [Path(o) for o in re.findall(r"product code from (\S+)", log)]
    assert origins and all((o / "MAR-INF" / "MANIFEST.json").is_file() for o in origins), origins


def test_an_archive_of_an_earlier_version_without_its_code_is_built_again(served, tmp_path):
    """What `abn up` does with an archive made before archives carried their code: the same model, name,
    version and settings, with this version's code."""
    original = served["cfg"].model_store / "abn_torch.v1.mar"
    old = tmp_path / "abn_torch.v1.mar"
    with zipfile.ZipFile(original) as source, zipfile.ZipFile(old, "w") as target:
        for entry in source.infolist():
            if not entry.filename.startswith(("finetune/", "handlers/")):
                target.writestr(entry, source.read(entry))
    assert archive.carries_code(original) and not archive.carries_code(old)
    rebuilt = archive.rebuild(old)
    assert rebuilt == old and archive.carries_code(rebuilt)
    assert archive.settings_of(rebuilt) == archive.settings_of(original)
    assert archive.checkpoint_of(rebuilt) == archive.checkpoint_of(original)
    with zipfile.ZipFile(rebuilt) as z:
        assert json.loads(z.read("MAR-INF/MANIFEST.json"))["model"]["modelName"] == "abn_torch"


def test_the_handler_keeps_torchserves_metrics(served):
    """HandlerTime (BaseHandler.handle) and a timing per stage (@timed) reach TorchServe's Prometheus
    endpoint."""
    served["client"].predict(sample_images(1)[0])
    deadline = time.monotonic() + 30
    while True:
        with urllib.request.urlopen(served["cfg"].metrics_url, timeout=10) as answer:
            text = answer.read().decode()
        found = {
            name
            for name in ("HandlerTime", "ts_handler_preprocess", "ts_handler_inference", "ts_handler_postprocess")
            if re.search(rf'^{name}\{{[^}}]*="abn"', text, re.M)
        }
        if len(found) == 4 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(found) == 4, [line for line in text.splitlines() if "Handler" in line or "ts_handler" in line]


def test_stubs_are_current():
    assert protos.stale() == [], "run: python -m serving.protos"


def test_the_api_reference_is_the_protos():
    reference = protos.API_DOC.read_text().split(protos.DOC_MARKER, 1)[1]
    assert protos.DOC_MARKER + reference == protos.render_api(), "run: python -m serving.protos --docs"
    for name in (
        "abn.v1.FeedbackService",
        "abn.v1.Prediction",
        "abn.v1.AttentionMap",
        "org.pytorch.serve.grpc.inference.PredictionsRequest",
    ):
        assert f"`{name}`" in reference


def test_protos_pass_buf_lint():
    buf = Path(sys.executable).parent / "buf"
    result = subprocess.run([str(buf), "lint"], cwd=protos.REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_onnx_export_matches_pytorch(tmp_path):
    model = create_model("abn_small", 10).eval()
    meta = {"input_size": [32, 32], "map_size": [16, 16]}
    onnx_export.export(model, meta, tmp_path / "m.onnx")
    diffs = onnx_export.check(model, meta, tmp_path / "m.onnx", batch=7)
    assert set(diffs) == {"logits", "attention_logits", "attention"} and max(diffs.values()) <= 1e-4


def test_the_customized_describe_shows_the_build_served(served):
    described = served["client"].torchserve.describe("abn", customized=True)[0]
    build = described["customizedMetadata"]  # TorchServe parses the handler's JSON
    assert build["build"] == "fp32" and build["max_abs_difference"] <= 1e-4
    assert build["device"] == "CPUExecutionProvider"

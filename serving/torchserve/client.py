"""A client of TorchServe's gRPC APIs: predictions (inference) and model versions (management).

The client reads TorchServe's tokens from its key file. Tokens expire (60
minutes by default) while the service runs on: when a call is refused as
unauthenticated, the client takes the key file's newer token, or asks
TorchServe for one with the API key, and repeats the call once.

Every refusal reaches the caller as a TorchServeError (plain_error): TorchServe
appends its Java exception's class name to each message, and answers an unknown
model or version of a prediction as INTERNAL; the caller gets the message
without the class name, and NOT_FOUND naming the models or versions served.
"""

import json
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
from google.protobuf import empty_pb2
from google.protobuf.message import DecodeError
from google.rpc import status_pb2

from handlers import wire
from handlers.stubs.abn.v1.prediction_pb2 import Prediction
from handlers.stubs.torchserve import inference_pb2, inference_pb2_grpc, management_pb2, management_pb2_grpc
from serving import settings
from serving.torchserve.config import Target

CHANNEL_OPTIONS = settings.message_limits(settings.TORCHSERVE_MAX_MESSAGE_BYTES)
REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
# What a service that is not up yet (or its half-written key file) raises.
NOT_UP = (grpc.RpcError, urllib.error.URLError, KeyError, OSError, ValueError)
# A Java class name in a message (TorchServe's "...\norg.pytorch.serve.http.InternalServerException"): it means
# nothing to the person who reads the message.
CLASS_NAME = re.compile(r"\b(?:[a-z_][\w$]*\.)+[A-Z][\w$]*(?:Exception|Error)\b:?\s*")
# The exceptions TorchServe raises for a model or a version it does not serve, by what is unknown.
UNKNOWN = re.compile(r"\.Model(Version)?NotFoundException\b")
LIST_LIMIT = 100  # the most models TorchServe lists in one answer


class TorchServeError(grpc.RpcError):
    """A call TorchServe or the handler refused, as a status and a message a person can act on."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self._code, self._details = code, message

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def without_class_names(message: str) -> str:
    """message without the server class names (org.pytorch.serve....Exception) in it."""
    return CLASS_NAME.sub("", message).strip()


def plain_error(
    e: grpc.RpcError, served: Callable[[str], list[str]], model: str = "", version: str = ""
) -> TorchServeError:
    """TorchServe's refusal e as a TorchServeError: its message without class names; a model or version it
    does not serve as NOT_FOUND, naming those served (served(""): the models; served(model): its versions;
    either may raise NOT_UP, and then the message names none). model, version: what the call asked for."""
    said = e.details() or ""
    unknown = UNKNOWN.search(said)
    if unknown is None or not model:
        return TorchServeError(e.code(), without_class_names(said))
    if unknown.group(1):
        message, what, of = f"model {model!r} has no version {version!r}", "its versions", model
    else:
        message, what, of = f"model {model!r} is not served here", "the models served", ""
    try:
        names = served(of)
    except NOT_UP:
        names = []
    return TorchServeError(grpc.StatusCode.NOT_FOUND, f"{message}; {what}: {', '.join(names)}" if names else message)


def decode_prediction(data: bytes) -> Prediction:
    """A handler's answer: a Prediction, or a google.rpc.Status raised as TorchServeError (a request refused
    inside a batch that TorchServe answered as OK)."""
    try:
        prediction = Prediction.FromString(data)
        if prediction.prediction_id:
            return prediction
    except DecodeError:
        pass
    status = status_pb2.Status.FromString(data)
    code = next((c for c in grpc.StatusCode if c.value[0] == status.code), grpc.StatusCode.INTERNAL)
    raise TorchServeError(code, without_class_names(status.message))


def read_keys(key_file: str | Path) -> dict:
    """{"inference": ..., "management": ..., "API": ...} from TorchServe's key file."""
    data = json.loads(Path(key_file).read_text())
    return {kind: data[kind]["key"] for kind in ("inference", "management", "API")}


class TorchServeClient:
    def __init__(
        self, target: Target = Target(), model: str = settings.MODEL_NAME, timeout: float = settings.CALL_TIMEOUT_S
    ):
        self.target, self.model, self.timeout = target, model, timeout
        self._channel = grpc.insecure_channel(target.inference, options=CHANNEL_OPTIONS)
        self._inference = inference_pb2_grpc.InferenceAPIsServiceStub(self._channel)
        self._management_channel = grpc.insecure_channel(target.management)
        self._management = management_pb2_grpc.ManagementAPIsServiceStub(self._management_channel)
        self._keys: dict = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self._channel.close()
        self._management_channel.close()

    def __enter__(self) -> "TorchServeClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _key(self, kind: str) -> str:
        with self._lock:
            if kind not in self._keys:
                self._keys = read_keys(self.target.key_file)
            return self._keys[kind]

    def _renew(self, kind: str, refused: str) -> None:
        """A fresh key of this kind: the key file's, if TorchServe has rotated it, else a new one."""
        with self._lock:
            keys = read_keys(self.target.key_file)
            if keys[kind] == refused:
                request = urllib.request.Request(
                    f"{self.target.management_url}/token?type={kind}",
                    method="GET",
                    headers={"Authorization": f"Bearer {keys['API']}"},
                )
                with urllib.request.urlopen(request, timeout=10) as answer:
                    answer.read()
                keys = read_keys(self.target.key_file)
            self._keys = keys

    def _call(self, method, request, kind: str):
        """method's answer to request; its refusal as plain_error's TorchServeError."""
        try:
            return self._authorized(method, request, kind)
        except grpc.RpcError as e:
            model, version = getattr(request, "model_name", ""), getattr(request, "model_version", "")
            raise plain_error(e, self.served, model, version) from e

    def _authorized(self, method, request, kind: str):
        key = self._key(kind)
        try:
            return method(request, metadata=[("authorization", f"Bearer {key}")], timeout=self.timeout)
        except grpc.RpcError as e:
            if e.code() not in REFUSED:
                raise
            try:
                self._renew(kind, key)
            except (urllib.error.URLError, OSError, KeyError, ValueError):
                raise e from None  # no fresh key to be had (a copied key file, no management port): the refusal
        return method(request, metadata=[("authorization", f"Bearer {self._key(kind)}")], timeout=self.timeout)

    def predictions(
        self, inputs: dict[str, bytes], model: str | None = None, version: str = ""
    ) -> inference_pb2.PredictionResponse:
        """TorchServe's Predictions call with these inputs, as they are; its answer undecoded."""
        request = inference_pb2.PredictionsRequest(model_name=model or self.model, model_version=version, input=inputs)
        return self._call(self._inference.Predictions, request, "inference")

    def predict(
        self,
        image: bytes,
        top_k: int = 5,
        attention: np.ndarray | None = None,
        model: str | None = None,
        version: str = "",
    ) -> Prediction:
        """Classify an encoded image; attention (h x w in [0, 1], any size) replaces the model's map."""
        inputs = {"data": image, "top_k": str(top_k).encode()}
        if attention is not None:
            inputs["attention"] = wire.map_to_proto(attention).SerializeToString()
        return decode_prediction(self.predictions(inputs, model, version).prediction)

    def ping(self) -> bool:
        """True when TorchServe answers its health check as healthy."""
        try:
            return "Healthy" in self._call(self._inference.Ping, empty_pb2.Empty(), "inference").health
        except NOT_UP:
            return False

    def describe(self, model: str | None = None, version: str = "", customized: bool = False) -> list[dict]:
        """TorchServe's description of a model; customized adds the handler's own (`customizedMetadata`: the
        build served, its parity figures and the device)."""
        request = management_pb2.DescribeModelRequest(
            model_name=model or self.model, model_version=version, customized=customized
        )
        return json.loads(self._call(self._management.DescribeModel, request, "management").msg)

    def served(self, model: str = "") -> list[str]:
        """The models TorchServe serves, or with model, that model's versions."""
        if model:
            return [d["modelVersion"] for d in self.describe(model, "all")]
        request = management_pb2.ListModelsRequest(limit=LIST_LIMIT)
        answer = json.loads(self._call(self._management.ListModels, request, "management").msg)
        return [m["modelName"] for m in answer["models"]]

    def register(self, archive: str, workers: int = 1) -> str:
        """Load an archive of the model store as a new version; returns TorchServe's message."""
        request = management_pb2.RegisterModelRequest(url=archive, initial_workers=workers, synchronous=True)
        return self._call(self._management.RegisterModel, request, "management").msg

    def unregister(self, model: str, version: str) -> str:
        request = management_pb2.UnregisterModelRequest(model_name=model, model_version=version)
        return self._call(self._management.UnregisterModel, request, "management").msg

    def set_default(self, model: str, version: str) -> str:
        request = management_pb2.SetDefaultRequest(model_name=model, model_version=version)
        return self._call(self._management.SetDefault, request, "management").msg

    def model_ready(self, model: str | None = None) -> bool:
        try:
            return any(w.get("status") == "READY" for d in self.describe(model) for w in d.get("workers", []))
        except NOT_UP:
            return False

"""Python client of the service: predictions over TorchServe's gRPC API, corrections to the feedback service.

    from serving.client import Client
    client = Client("127.0.0.1:7070", key_file="runs/serve/key_file.json",
                    feedback_token_file="runs/feedback_token")
    prediction = client.predict(open("digit.png", "rb").read(), top_k=3)
    client.submit_feedback(image, corrected_map, prediction=prediction, author="ana")

The client reads TorchServe's tokens from its key file. Tokens expire (60
minutes by default) while the service runs on: when a call is refused as
unauthenticated, the client takes the key file's newer token, or asks
TorchServe for one with the API key, and repeats the call once.
"""

import json
import threading
import uuid
from collections.abc import Iterator
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
from google.protobuf import empty_pb2
from google.protobuf.message import DecodeError
from google.rpc import status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving import wire
from serving.stubs.abn.v1 import feedback_pb2, feedback_pb2_grpc
from serving.stubs.abn.v1.prediction_pb2 import Prediction
from serving.stubs.torchserve import inference_pb2, inference_pb2_grpc, management_pb2, management_pb2_grpc
from serving.torchserve import MAX_MESSAGE_BYTES, read_keys

CHANNEL_OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


class PredictionError(grpc.RpcError):
    """A request refused by the handler inside a batch that TorchServe answered as OK."""

    def __init__(self, status: status_pb2.Status):
        super().__init__(status.message)
        self._code = next((c for c in grpc.StatusCode if c.value[0] == status.code), grpc.StatusCode.UNKNOWN)
        self._details = status.message

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def decode_prediction(data: bytes) -> Prediction:
    """A handler's answer: a Prediction, or a google.rpc.Status raised as PredictionError."""
    try:
        prediction = Prediction.FromString(data)
        if prediction.prediction_id:
            return prediction
    except DecodeError:
        pass
    raise PredictionError(status_pb2.Status.FromString(data))


def add_arguments(parser) -> None:
    """Where TorchServe is, for commands that call it."""
    parser.add_argument("--key-file", default="runs/serve/key_file.json", help="TorchServe's key file")
    parser.add_argument("--inference", default="127.0.0.1:7070", help="TorchServe gRPC inference address")
    parser.add_argument("--management", default="127.0.0.1:7071", help="TorchServe gRPC management address")
    parser.add_argument("--management-url", default="http://127.0.0.1:8081",
                        help="TorchServe HTTP management (token renewal)")


class Client:
    def __init__(self, target: str = "127.0.0.1:7070", key_file: str | Path = "runs/serve/key_file.json",
                 management_url: str = "http://127.0.0.1:8081", model: str = "abn",
                 management_target: str | None = None, timeout: float = 60.0,
                 feedback_target: str = "127.0.0.1:7072", feedback_token_file: str | Path | None = None,
                 feedback_ca: str | Path | None = None):
        self.key_file, self.management_url, self.model, self.timeout = Path(key_file), management_url, model, timeout
        credentials = grpc.ssl_channel_credentials(Path(feedback_ca).read_bytes()) if feedback_ca else None
        self._feedback_channel = (grpc.secure_channel(feedback_target, credentials, options=CHANNEL_OPTIONS)
                                  if credentials else grpc.insecure_channel(feedback_target, options=CHANNEL_OPTIONS))
        self._feedback = feedback_pb2_grpc.FeedbackServiceStub(self._feedback_channel)
        token = Path(feedback_token_file).read_text().strip() if feedback_token_file else None
        self._feedback_metadata = [("authorization", f"Bearer {token}")] if token else []
        self._channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._inference = inference_pb2_grpc.InferenceAPIsServiceStub(self._channel)
        host = target.rsplit(":", 1)[0]
        self._management_channel = grpc.insecure_channel(management_target or f"{host}:7071")
        self._management = management_pb2_grpc.ManagementAPIsServiceStub(self._management_channel)
        self._keys: dict = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        for channel in (self._channel, self._management_channel, self._feedback_channel):
            channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _key(self, kind: str) -> str:
        with self._lock:
            if kind not in self._keys:
                self._keys = read_keys(self.key_file)
            return self._keys[kind]

    def _renew(self, kind: str, refused: str) -> None:
        """A fresh key of this kind: the key file's, if TorchServe has rotated it, else a new one."""
        with self._lock:
            keys = read_keys(self.key_file)
            if keys[kind] == refused:
                request = urllib.request.Request(f"{self.management_url}/token?type={kind}", method="GET",
                                                 headers={"Authorization": f"Bearer {keys['API']}"})
                with urllib.request.urlopen(request, timeout=10) as answer:
                    answer.read()
                keys = read_keys(self.key_file)
            self._keys = keys

    def _call(self, method, request, kind: str):
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

    def predict(self, image: bytes, top_k: int = 5, attention: np.ndarray | None = None,
                model: str | None = None, version: str = "") -> Prediction:
        """Classify an encoded image; attention (h x w in [0, 1], any size) replaces the model's map."""
        inputs = {"data": image, "top_k": str(top_k).encode()}
        if attention is not None:
            inputs["attention"] = wire.map_to_proto(attention).SerializeToString()
        request = inference_pb2.PredictionsRequest(model_name=model or self.model, model_version=version,
                                                   input=inputs)
        answer = self._call(self._inference.Predictions, request, "inference")
        return decode_prediction(answer.prediction)

    def ping(self) -> bool:
        """True when TorchServe answers its health check as healthy."""
        try:
            return "Healthy" in self._call(self._inference.Ping, empty_pb2.Empty(), "inference").health
        except (grpc.RpcError, urllib.error.URLError, KeyError, OSError, ValueError):
            return False  # not up yet, or its key file half written

    def feedback_serving(self) -> bool:
        """True when the feedback service's standard health check answers SERVING."""
        try:
            answer = health_pb2_grpc.HealthStub(self._feedback_channel).Check(health_pb2.HealthCheckRequest(),
                                                                               timeout=self.timeout)
            return answer.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False

    def describe(self, model: str | None = None, version: str = "") -> list[dict]:
        request = management_pb2.DescribeModelRequest(model_name=model or self.model, model_version=version)
        return json.loads(self._call(self._management.DescribeModel, request, "management").msg)

    def register(self, archive: str, workers: int = 1) -> str:
        """Load an archive of the model store as a new version; returns TorchServe's message."""
        request = management_pb2.RegisterModelRequest(url=archive, initial_workers=workers, synchronous=True)
        return self._call(self._management.RegisterModel, request, "management").msg

    def set_default(self, model: str, version: str) -> str:
        request = management_pb2.SetDefaultRequest(model_name=model, model_version=version)
        return self._call(self._management.SetDefault, request, "management").msg

    def model_ready(self, model: str | None = None) -> bool:
        try:
            return any(w.get("status") == "READY" for d in self.describe(model) for w in d.get("workers", []))
        except (grpc.RpcError, urllib.error.URLError, KeyError, OSError, ValueError):
            return False  # not up yet, or its key file half written

    def submit_feedback(self, image: bytes, attention: np.ndarray, prediction: Prediction | None = None,
                        label: str = "", author: str = "", idempotency_key: str | None = None,
                        model_name: str = "", model_version: str = "",
                        predicted_label: str = "") -> feedback_pb2.SubmitFeedbackResponse:
        """Send a corrected map (h x w in [0, 1], the image's aspect ratio) for an image; label corrects the
        class. With prediction, the correction names the prediction, its model and its top class. Retried
        once when the service is unavailable, with the same idempotency key, so it is stored once."""
        request = feedback_pb2.SubmitFeedbackRequest(
            image=image, attention=wire.map_to_proto(attention), label=label, author=author,
            idempotency_key=idempotency_key or uuid.uuid4().hex, model_name=model_name, model_version=model_version,
            predicted_label=predicted_label)
        if prediction is not None:
            request.prediction_id = prediction.prediction_id
            request.model_name = request.model_name or prediction.model_name
            request.model_version = request.model_version or prediction.model_version
            request.predicted_label = request.predicted_label or (prediction.scores[0].label if prediction.scores else "")
        for attempt in range(2):
            try:
                return self._feedback.SubmitFeedback(request, metadata=self._feedback_metadata, timeout=self.timeout,
                                                     wait_for_ready=attempt > 0)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or attempt:
                    raise

    def get_feedback(self, feedback_id: str) -> feedback_pb2.Feedback:
        request = feedback_pb2.GetFeedbackRequest(id=feedback_id)
        return self._feedback.GetFeedback(request, metadata=self._feedback_metadata, timeout=self.timeout).feedback

    def list_feedback(self, since: float | None = None, pending: bool | None = None, model_name: str = "",
                      metadata_only: bool = False) -> Iterator[feedback_pb2.Feedback]:
        """Stored corrections, oldest first; since = unix seconds; pending True/False filters by state."""
        request = feedback_pb2.ListFeedbackRequest(model_name=model_name, metadata_only=metadata_only)
        if since is not None:
            request.since.FromNanoseconds(int(since * 1e9))
        if pending is not None:
            request.state = feedback_pb2.FEEDBACK_STATE_PENDING if pending else feedback_pb2.FEEDBACK_STATE_CONSUMED
        for answer in self._feedback.ListFeedback(request, metadata=self._feedback_metadata, timeout=self.timeout):
            yield answer.feedback

    def feedback_stats(self, model_name: str = "") -> feedback_pb2.GetFeedbackStatsResponse:
        request = feedback_pb2.GetFeedbackStatsRequest(model_name=model_name)
        return self._feedback.GetFeedbackStats(request, metadata=self._feedback_metadata, timeout=self.timeout)

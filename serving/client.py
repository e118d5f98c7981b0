"""Python client of the running services: predictions over TorchServe's gRPC API, corrections to the feedback
service. One object for both, built from where they listen:

    from serving.client import Client
    client = Client("127.0.0.1:7070", key_file="runs/serve/key_file.json",
                    feedback_token_file="runs/feedback_token")
    prediction = client.predict(open("digit.png", "rb").read(), top_k=3)
    client.submit_feedback(image, corrected_map, prediction=prediction, author="ana")

Its parts, client.torchserve (serving.torchserve.client) and client.feedback
(serving.feedback.client), can be used alone. A refused call raises grpc.RpcError
whose code() and details() say what is wrong in words (TorchServe's answers
through serving.torchserve.client.plain_error: an unknown model or version is
NOT_FOUND, naming those served).
"""

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from handlers.stubs.abn.v1 import feedback_pb2
from handlers.stubs.abn.v1.prediction_pb2 import Prediction
from serving import settings
from serving.feedback.client import FeedbackClient
from serving.torchserve.client import TorchServeClient
from serving.torchserve.config import ServeConfig, Target


class Client:
    def __init__(
        self,
        target: str = f"{settings.LOOPBACK}:{settings.INFERENCE_PORT}",
        key_file: str | Path = settings.KEY_FILE,
        management_url: str = f"http://{settings.LOOPBACK}:{settings.HTTP_MANAGEMENT_PORT}",
        model: str = settings.MODEL_NAME,
        management_target: str | None = None,
        timeout: float = settings.CALL_TIMEOUT_S,
        feedback_target: str = f"{settings.LOOPBACK}:{settings.FEEDBACK_PORT}",
        feedback_token_file: str | Path | None = None,
        feedback_ca: str | Path | None = None,
    ):
        host = target.rsplit(":", 1)[0]
        self.torchserve = TorchServeClient(
            Target(target, management_target or f"{host}:{settings.MANAGEMENT_PORT}", management_url, Path(key_file)),
            model=model,
            timeout=timeout,
        )
        self.feedback = FeedbackClient(feedback_target, feedback_token_file, feedback_ca, timeout)

    @classmethod
    def for_target(
        cls,
        t: Target,
        feedback_target: str = f"{settings.LOOPBACK}:{settings.FEEDBACK_PORT}",
        feedback_token_file: str | Path | None = None,
        **kw,
    ) -> "Client":
        """A client of the TorchServe at t and of the feedback service at feedback_target."""
        return cls(
            t.inference,
            t.key_file,
            t.management_url,
            management_target=t.management,
            feedback_target=feedback_target,
            feedback_token_file=feedback_token_file,
            **kw,
        )

    @classmethod
    def for_services(
        cls,
        cfg: ServeConfig,
        feedback_target: str = f"{settings.LOOPBACK}:{settings.FEEDBACK_PORT}",
        feedback_token_file: str | Path | None = None,
        **kw,
    ) -> "Client":
        """A client of the TorchServe cfg configures and of the feedback service at feedback_target."""
        return cls.for_target(cfg.target, feedback_target, feedback_token_file, **kw)

    def close(self) -> None:
        self.torchserve.close()
        self.feedback.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def predict(
        self,
        image: bytes,
        top_k: int = 5,
        attention: np.ndarray | None = None,
        model: str | None = None,
        version: str = "",
    ) -> Prediction:
        """Classify an encoded image; attention (h x w in [0, 1], any size) replaces the model's map."""
        return self.torchserve.predict(image, top_k, attention, model, version)

    def ping(self) -> bool:
        return self.torchserve.ping()

    def model_ready(self, model: str | None = None) -> bool:
        return self.torchserve.model_ready(model)

    def submit_feedback(
        self,
        image: bytes,
        attention: np.ndarray,
        prediction: Prediction | None = None,
        label: str = "",
        author: str = "",
        idempotency_key: str | None = None,
        model_name: str = "",
        model_version: str = "",
        predicted_label: str = "",
        review_id: str = "",
        decided: np.ndarray | None = None,
        confirmed: bool = False,
    ) -> feedback_pb2.SubmitFeedbackResponse:
        """A corrected map for an image (serving.feedback.client.FeedbackClient.submit)."""
        return self.feedback.submit(
            image,
            attention,
            prediction,
            label,
            author,
            idempotency_key,
            model_name,
            model_version,
            predicted_label,
            review_id,
            decided,
            confirmed,
        )

    def get_feedback(self, feedback_id: str) -> feedback_pb2.Feedback:
        return self.feedback.get(feedback_id)

    def list_feedback(
        self,
        since: float | None = None,
        pending: bool | None = None,
        model_name: str = "",
        metadata_only: bool = False,
        author: str = "",
    ) -> Iterator[feedback_pb2.Feedback]:
        return self.feedback.list(since, pending, model_name, metadata_only, author)

    def feedback_stats(self, model_name: str = "", author: str = "") -> feedback_pb2.GetFeedbackStatsResponse:
        return self.feedback.stats(model_name, author)

    def withdraw_feedback(self, feedback_id: str, author: str = "") -> feedback_pb2.Feedback:
        return self.feedback.withdraw(feedback_id, author)

    def feedback_serving(self) -> bool:
        return self.feedback.serving()

"""A client of the feedback service: send corrections, read them back, work the review queue, ask its health.

A submission the service answers UNAVAILABLE (its store unreachable, or the
service restarting) is sent again, a few times with growing pauses, with the
same idempotency key, so that it is stored once however many tries it takes.
"""

import copy
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from handlers import wire
from handlers.stubs.abn.v1 import (
    feedback_pb2,
    feedback_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    review_pb2,
    review_pb2_grpc,
)
from handlers.stubs.abn.v1.prediction_pb2 import Prediction
from serving import settings

CHANNEL_OPTIONS = settings.message_limits(settings.FEEDBACK_MAX_MESSAGE_BYTES)


class FeedbackClient:
    def __init__(
        self,
        target: str = f"{settings.LOOPBACK}:{settings.FEEDBACK_PORT}",
        token_file: str | Path | None = None,
        ca: str | Path | None = None,
        timeout: float = settings.CALL_TIMEOUT_S,
        retries: int = settings.FEEDBACK_RETRIES,
    ):
        self.target, self.timeout, self.retries = target, timeout, retries
        credentials = grpc.ssl_channel_credentials(Path(ca).read_bytes()) if ca else None
        self._channel = (
            grpc.secure_channel(target, credentials, options=CHANNEL_OPTIONS)
            if credentials
            else grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        )
        self._stub = feedback_pb2_grpc.FeedbackServiceStub(self._channel)
        self._review = review_pb2_grpc.ReviewServiceStub(self._channel)
        self._models = models_pb2_grpc.ModelsServiceStub(self._channel)
        token = Path(token_file).read_text().strip() if token_file else None
        self._metadata = [("authorization", f"Bearer {token}")] if token else []

    def with_token(self, token: str) -> "FeedbackClient":
        """A client on the same connection that calls with another token (an expert's); closing it closes both."""
        other = copy.copy(self)
        other._metadata = [("authorization", f"Bearer {token}")]
        return other

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "FeedbackClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def submit(
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
        """Send a corrected map (h x w in [0, 1], the image's aspect ratio) for an image; label corrects the
        class. With prediction, the correction names the prediction, its model and its top class. review_id
        closes the review item the author holds. decided (h x w bool): the pixels the expert decided, the rest
        being "don't care"; None: every pixel. confirmed: the map is the model's, confirmed as right."""
        request = feedback_pb2.SubmitFeedbackRequest(
            image=image,
            attention=wire.map_to_proto(attention),
            decided=wire.mask_to_bytes(decided),
            confirmed=confirmed,
            label=label,
            author=author,
            idempotency_key=idempotency_key or uuid.uuid4().hex,
            model_name=model_name,
            model_version=model_version,
            predicted_label=predicted_label,
            review_id=review_id,
        )
        if prediction is not None:
            request.prediction_id = prediction.prediction_id
            request.model_name = request.model_name or prediction.model_name
            request.model_version = request.model_version or prediction.model_version
            request.predicted_label = request.predicted_label or (
                prediction.scores[0].label if prediction.scores else ""
            )
        for attempt in range(self.retries):
            try:
                return self._stub.SubmitFeedback(
                    request, metadata=self._metadata, timeout=self.timeout, wait_for_ready=attempt > 0
                )
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or attempt == self.retries - 1:
                    raise
                time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def get(self, feedback_id: str) -> feedback_pb2.Feedback:
        request = feedback_pb2.GetFeedbackRequest(id=feedback_id)
        return self._stub.GetFeedback(request, metadata=self._metadata, timeout=self.timeout).feedback

    def list(
        self,
        since: float | None = None,
        pending: bool | None = None,
        model_name: str = "",
        metadata_only: bool = False,
        author: str = "",
    ) -> Iterator[feedback_pb2.Feedback]:
        """Stored corrections, oldest first; since = unix seconds; pending True/False filters by state; author:
        only theirs (an expert's token lists its expert's own only)."""
        request = feedback_pb2.ListFeedbackRequest(model_name=model_name, metadata_only=metadata_only, author=author)
        if since is not None:
            request.since.FromNanoseconds(int(since * 1e9))
        if pending is not None:
            request.state = feedback_pb2.FEEDBACK_STATE_PENDING if pending else feedback_pb2.FEEDBACK_STATE_CONSUMED
        for answer in self._stub.ListFeedback(request, metadata=self._metadata, timeout=self.timeout):
            yield answer.feedback

    def stats(self, model_name: str = "", author: str = "") -> feedback_pb2.GetFeedbackStatsResponse:
        request = feedback_pb2.GetFeedbackStatsRequest(model_name=model_name, author=author)
        return self._stub.GetFeedbackStats(request, metadata=self._metadata, timeout=self.timeout)

    def withdraw(self, feedback_id: str, author: str = "") -> feedback_pb2.Feedback:
        """Take back a pending correction of one's own; author names its author when the token is the service's.
        The correction as it is now, without image and map."""
        request = feedback_pb2.WithdrawFeedbackRequest(id=feedback_id, author=author)
        return self._call(self._stub.WithdrawFeedback, request).feedback

    def _call(self, method, request):
        return method(request, metadata=self._metadata, timeout=self.timeout)

    def add_review(
        self, image: bytes, prediction: Prediction, priority: float, reason: str = ""
    ) -> review_pb2.AddReviewItemResponse:
        """Queue an image with its prediction for the experts; higher priority is reviewed first."""
        request = review_pb2.AddReviewItemRequest(image=image, prediction=prediction, priority=priority, reason=reason)
        return self._call(self._review.AddReviewItem, request)

    def review_items(self, model_name: str = "", label: str = "", limit: int = 0) -> Sequence[review_pb2.ReviewItem]:
        """Items waiting for review, highest priority first, without images."""
        return list(self.review_listing(model_name, label, limit).items)

    def review_listing(
        self, model_name: str = "", label: str = "", limit: int = 0, hide_skipped: bool = False
    ) -> review_pb2.ListReviewItemsResponse:
        """The waiting items (hide_skipped: not those the caller skipped), and how many the caller would be
        offered (offered)."""
        request = review_pb2.ListReviewItemsRequest(
            model_name=model_name, label=label, limit=limit, hide_skipped=hide_skipped
        )
        return self._call(self._review.ListReviewItems, request)

    def review_item(self, review_id: str) -> review_pb2.ReviewItem:
        return self._call(self._review.GetReviewItem, review_pb2.GetReviewItemRequest(id=review_id)).item

    def claim(
        self, review_id: str = "", model_name: str = "", label: str = "", expert: str = ""
    ) -> review_pb2.ReviewItem:
        """Claim the item named, or the next one by priority; expert names who claims when the token is the
        service's."""
        request = review_pb2.ClaimReviewItemRequest(id=review_id, model_name=model_name, label=label, expert=expert)
        return self._call(self._review.ClaimReviewItem, request).item

    def release(self, review_id: str, expert: str = "", keep_offering: bool = False) -> None:
        """Give a claimed item back: a skip, or with keep_offering, put aside (it may be offered again)."""
        request = review_pb2.ReleaseReviewItemRequest(id=review_id, expert=expert, keep_offering=keep_offering)
        self._call(self._review.ReleaseReviewItem, request)

    def caller(self) -> str:
        """The expert this client's token belongs to; empty for the service token."""
        return self.identity().expert

    def identity(self) -> review_pb2.GetCallerResponse:
        """Who this client's token belongs to (expert: empty for the service token), and whether an operator."""
        return self._call(self._review.GetCaller, review_pb2.GetCallerRequest())

    def runs(self, model_name: str = "", limit: int = 0) -> Sequence[models_pb2.RetrainingRun]:
        """The recorded retraining runs, newest first, with the gate's figures."""
        request = models_pb2.ListRunsRequest(model_name=model_name, limit=limit)
        return list(self._call(self._models.ListRuns, request).runs)

    def run_report(self, run: str) -> bytes:
        """A run's report image (PNG)."""
        return self._call(self._models.GetRunReport, models_pb2.GetRunReportRequest(run=run)).png

    def served_version(self, model_name: str) -> models_pb2.GetServedVersionResponse:
        """The archive and version recorded as served."""
        return self._call(self._models.GetServedVersion, models_pb2.GetServedVersionRequest(model_name=model_name))

    def set_served_version(
        self, model_name: str, archive: str, version: str, previous_version: str, reason: str = ""
    ) -> None:
        """Record version (in archive) as served instead of previous_version; an operator's or the service's
        token."""
        request = models_pb2.SetServedVersionRequest(
            model_name=model_name, archive=archive, version=version, previous_version=previous_version, reason=reason
        )
        self._call(self._models.SetServedVersion, request)

    def requeue_run(self, run: str) -> int:
        """Make the run's rejected corrections pending again; how many."""
        return self._call(self._models.RequeueRun, models_pb2.RequeueRunRequest(run=run)).requeued

    def reject_run(self, run: str) -> int:
        """Set the run's pending corrections aside; how many."""
        return self._call(self._models.RejectRun, models_pb2.RejectRunRequest(run=run)).rejected

    def operator_actions(self, model_name: str = "", limit: int = 0) -> Sequence[models_pb2.OperatorAction]:
        """What operators did, newest first."""
        request = models_pb2.ListOperatorActionsRequest(model_name=model_name, limit=limit)
        return list(self._call(self._models.ListOperatorActions, request).actions)

    def serving(self) -> bool:
        """True when the service's standard health check answers SERVING."""
        try:
            answer = health_pb2_grpc.HealthStub(self._channel).Check(
                health_pb2.HealthCheckRequest(), timeout=self.timeout
            )
            return answer.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False

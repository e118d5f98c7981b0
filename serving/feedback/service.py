"""abn.v1.FeedbackService: each call validates its request, converts it, calls the store, converts back.

Errors are raised, never turned into statuses here: serving.feedback.server
maps them, in one place (bad input -> INVALID_ARGUMENT, and so on).
Everything is validated before anything is written.
"""

import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp

from finetune import checkpoint
from finetune.images import ImageError, check_aspect, open_image
from handlers import wire
from handlers.stubs.abn.v1 import feedback_pb2, feedback_pb2_grpc
from serving import settings
from serving.feedback.store import FeedbackStore, Item, is_plain_name

SERVICE = feedback_pb2.DESCRIPTOR.services_by_name["FeedbackService"].full_name
VERSION = re.compile(r"[0-9]+(\.[0-9]+)*")
# The text fields a correction carries, named alike in the request, the stored Item and the Feedback message.
TEXT_FIELDS = ("label", "predicted_label", "prediction_id", "model_name", "model_version", "author", "idempotency_key")


class NotFoundError(LookupError):
    """What a request names is not stored."""


def _timestamp(seconds: float) -> Timestamp:
    t = Timestamp()
    t.FromNanoseconds(int(seconds * 1e9))
    return t


def _message(item: Item, with_data: bool = True) -> feedback_pb2.Feedback:
    return feedback_pb2.Feedback(
        id=item.id,
        image=item.image if with_data else b"",
        image_sha256=item.image_sha256,
        attention=wire.map_to_proto(item.attention) if with_data else None,
        **{name: getattr(item, name) for name in TEXT_FIELDS},
        created_time=_timestamp(item.created),
        consumed_by=item.consumed_by or "",
        state=feedback_pb2.FEEDBACK_STATE_CONSUMED if item.consumed_by else feedback_pb2.FEEDBACK_STATE_PENDING,
    )


def known_classes(checkpoints: list[str] | list[Path]) -> dict[str, list[str]]:
    """Model name -> class names, from checkpoints' metadata."""
    metas = [checkpoint.read_metadata(p) for p in checkpoints]
    return {m["name"]: m["classes"] for m in metas}


def validate(r: feedback_pb2.SubmitFeedbackRequest, classes: dict[str, list[str]]) -> Item:
    """The item to store, or wire.WireError naming the field. classes: model name -> its class names, for the
    models whose labels are checked."""
    for name in TEXT_FIELDS:
        value = getattr(r, name)
        if len(value) > settings.MAX_TEXT:
            raise wire.WireError(f"{name}: longer than {settings.MAX_TEXT} characters")
        if any(unicodedata.category(c) == "Cc" for c in value):
            raise wire.WireError(f"{name}: control characters are not accepted")
    for name in ("label", "predicted_label", "model_name"):  # they become folder names when exported
        if not is_plain_name(getattr(r, name)):
            raise wire.WireError(f"{name}: {getattr(r, name)[:40]!r} is not a plain name (no / or \\, not . or ..)")
    if r.model_version and not VERSION.fullmatch(r.model_version):
        raise wire.WireError(
            f"model_version: {r.model_version[:40]!r} is not a version as TorchServe names them (1, 2, 1.5)"
        )
    if classes and r.model_name and r.model_name not in classes:
        raise wire.WireError(
            f"model_name: {r.model_name[:40]!r} is not a model this service knows ({', '.join(classes)}); "
            "leave it empty for another model"
        )
    try:
        image = open_image(r.image, "image")
    except ImageError as e:
        raise wire.WireError(str(e)) from e
    if not r.HasField("attention"):
        raise wire.WireError("attention: missing; send the corrected map")
    attention = wire.map_from_proto(r.attention, "attention")
    try:
        check_aspect((attention.shape[1], attention.shape[0]), image.size, "attention")
    except ImageError as e:
        raise wire.WireError(str(e)) from e
    known = classes.get(r.model_name)
    for name in ("label", "predicted_label"):
        value = getattr(r, name)
        if value and known is not None and value not in known:
            raise wire.WireError(f"{name}: {value!r} is not a class of model {r.model_name!r} ({', '.join(known)})")
    return Item(image=r.image, attention=attention, **{name: getattr(r, name) for name in TEXT_FIELDS})


class FeedbackService(feedback_pb2_grpc.FeedbackServiceServicer):
    def __init__(self, store: FeedbackStore, classes: dict[str, list[str]] | None = None):
        self.store = store
        self.classes = classes or {}  # model name -> class names, for the models this service knows

    def SubmitFeedback(self, request, context):
        feedback_id, created = self.store.submit(validate(request, self.classes))
        return feedback_pb2.SubmitFeedbackResponse(id=feedback_id, created=created)

    def GetFeedback(self, request, context):
        item = self.store.get(request.id) if request.id else None
        if item is None:
            raise NotFoundError(f"id: no feedback {request.id[:64]!r}")  # an echo stays short
        return feedback_pb2.GetFeedbackResponse(feedback=_message(item))

    def ListFeedback(self, request, context) -> Iterator[feedback_pb2.ListFeedbackResponse]:
        consumed = {feedback_pb2.FEEDBACK_STATE_PENDING: False, feedback_pb2.FEEDBACK_STATE_CONSUMED: True}
        try:
            since = request.since.ToNanoseconds() / 1e9 if request.HasField("since") else 0.0
        except ValueError as e:
            raise wire.WireError(f"since: {e}") from None
        for item in self.store.items(
            since, consumed.get(request.state), request.model_name, with_data=not request.metadata_only
        ):
            if not context.is_active():
                return
            yield feedback_pb2.ListFeedbackResponse(feedback=_message(item, not request.metadata_only))

    def GetFeedbackStats(self, request, context):
        s = self.store.stats(request.model_name)

        def counts(d: dict) -> list:
            return [feedback_pb2.Count(key=k, count=v) for k, v in d.items()]

        return feedback_pb2.GetFeedbackStatsResponse(
            total=s["total"],
            by_state=counts(s["by_state"]),
            by_label=counts(s["by_label"]),
            by_model_version=counts(s["by_model_version"]),
        )

"""abn.v1.FeedbackService and abn.v1.ReviewService: each call validates its request, converts it, calls the
store, converts back. Identities says who a call's token belongs to: the service, or an expert.

Errors are raised, never turned into statuses here: serving.feedback.server
maps them, in one place (bad input -> INVALID_ARGUMENT, and so on).
Everything is validated before anything is written.
"""

import math
import re
import secrets
import threading
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp

from finetune import checkpoint
from finetune.images import ImageError, check_aspect, open_image
from handlers import wire
from handlers.stubs.abn.v1 import feedback_pb2, feedback_pb2_grpc, review_pb2, review_pb2_grpc
from handlers.stubs.abn.v1.prediction_pb2 import Prediction
from serving import settings
from serving.feedback.store import (
    Expert,
    FeedbackStore,
    Item,
    NotAuthorError,
    NotFoundError,
    ReviewEntry,
    is_plain_name,
    token_hash,
)

SERVICE = feedback_pb2.DESCRIPTOR.services_by_name["FeedbackService"].full_name
REVIEW_SERVICE = review_pb2.DESCRIPTOR.services_by_name["ReviewService"].full_name
# What an expert's token may call: correct, list, count and withdraw their own corrections, and work the queue.
# Reading every correction, or filling the queue, takes the service's token.
EXPERT_METHODS = frozenset(
    f"/{service}/{method}"
    for service, method in (
        (SERVICE, "SubmitFeedback"),
        (SERVICE, "ListFeedback"),
        (SERVICE, "GetFeedbackStats"),
        (SERVICE, "WithdrawFeedback"),
        (REVIEW_SERVICE, "ListReviewItems"),
        (REVIEW_SERVICE, "GetReviewItem"),
        (REVIEW_SERVICE, "ClaimReviewItem"),
        (REVIEW_SERVICE, "ReleaseReviewItem"),
        (REVIEW_SERVICE, "GetCaller"),
    )
)


class NotSignedIn(PermissionError):
    """The call's token is no one's (any more): an expert removed while the call was on its way."""


VERSION = re.compile(r"[0-9]+(\.[0-9]+)*")
# The text fields a correction carries, named alike in the request, the stored Item and the Feedback message.
TEXT_FIELDS = ("label", "predicted_label", "prediction_id", "model_name", "model_version", "author", "idempotency_key")


def timestamp(seconds: float) -> Timestamp:
    t = Timestamp()
    t.FromNanoseconds(int(seconds * 1e9))
    return t


# The store's state names and the API's.
STATES = {
    "pending": feedback_pb2.FEEDBACK_STATE_PENDING,
    "consumed": feedback_pb2.FEEDBACK_STATE_CONSUMED,
    "rejected": feedback_pb2.FEEDBACK_STATE_REJECTED,
    "withdrawn": feedback_pb2.FEEDBACK_STATE_WITHDRAWN,
}
_STATE_NAMES = {number: name for name, number in STATES.items()}
NO_DECISION = (
    "decided: the correction decides no pixel: paint at least one stroke, or confirm that the map is right (confirmed)"
)


def _message(item: Item, with_data: bool = True) -> feedback_pb2.Feedback:
    return feedback_pb2.Feedback(
        id=item.id,
        image=item.image if with_data else b"",
        image_sha256=item.image_sha256,
        attention=wire.map_to_proto(item.attention) if with_data else None,
        decided=wire.mask_to_bytes(item.decided) if with_data else b"",
        confirmed=item.confirmed,
        **{name: getattr(item, name) for name in TEXT_FIELDS},
        created_time=timestamp(item.created),
        consumed_by=item.consumed_by or "",
        rejected_by=item.rejected_by or "",
        state=STATES[item.state],
        reason=item.reason,
        promoted_version=item.promoted_version,
    )


def known_classes(checkpoints: list[str] | list[Path]) -> dict[str, list[str]]:
    """Model name -> class names, from checkpoints' metadata."""
    metas = [checkpoint.read_metadata(p) for p in checkpoints]
    return {m["name"]: m["classes"] for m in metas}


def check_text(name: str, value: str) -> None:
    if len(value) > settings.MAX_TEXT:
        raise wire.WireError(f"{name}: longer than {settings.MAX_TEXT} characters")
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise wire.WireError(f"{name}: control characters are not accepted")


def check_plain(name: str, value: str) -> None:
    """Class and model names become folder names when exported."""
    if not is_plain_name(value):
        raise wire.WireError(f"{name}: {value[:40]!r} is not a plain name (no / or \\, not . or ..)")


def _check_model(name: str, classes: dict[str, list[str]]) -> None:
    if classes and name and name not in classes:
        raise wire.WireError(
            f"model_name: {name[:40]!r} is not a model this service knows ({', '.join(classes)}); "
            "leave it empty, and send no label, for another model"
        )


def _open(image: bytes):
    try:
        return open_image(image, "image")
    except ImageError as e:
        raise wire.WireError(str(e)) from e


def validate(r: feedback_pb2.SubmitFeedbackRequest, classes: dict[str, list[str]]) -> Item:
    """The item to store, or wire.WireError naming the field. classes: model name -> its class names, for the
    models whose labels are checked."""
    for name in (*TEXT_FIELDS, "review_id"):
        check_text(name, getattr(r, name))
    for name in ("label", "predicted_label", "model_name"):
        check_plain(name, getattr(r, name))
    if r.model_version and not VERSION.fullmatch(r.model_version):
        raise wire.WireError(
            f"model_version: {r.model_version[:40]!r} is not a version as TorchServe names them (1, 2, 1.5)"
        )
    _check_model(r.model_name, classes)
    image = _open(r.image)
    if not r.HasField("attention"):
        raise wire.WireError("attention: missing; send the corrected map")
    attention = wire.map_from_proto(r.attention, "attention")
    try:
        check_aspect((attention.shape[1], attention.shape[0]), image.size, "attention")
    except ImageError as e:
        raise wire.WireError(str(e)) from e
    decided = wire.mask_from_bytes(r.decided, attention.shape)
    if r.confirmed and decided is not None and not decided.all():
        raise wire.WireError(
            "decided: a confirmation (confirmed) decides every pixel as shown; send it without a mask, or send "
            "the strokes without confirmed"
        )
    if decided is not None and not decided.any():
        raise wire.WireError(NO_DECISION)
    known = classes.get(r.model_name)
    for name in ("label", "predicted_label"):
        value = getattr(r, name)
        if value and classes and not r.model_name:  # a class is a model's: without the model, none is checked
            raise wire.WireError(
                f"model_name: empty, but {name} is {value!r}: name the model it is a class of ({', '.join(classes)})"
            )
        if value and known is not None and value not in known:
            raise wire.WireError(f"{name}: {value!r} is not a class of model {r.model_name!r} ({', '.join(known)})")
    return Item(
        image=r.image,
        attention=attention,
        decided=decided,
        confirmed=r.confirmed,
        review_id=r.review_id,
        **{name: getattr(r, name) for name in TEXT_FIELDS},
    )


def validate_review(r: review_pb2.AddReviewItemRequest, classes: dict[str, list[str]]) -> ReviewEntry:
    """The entry to queue, or wire.WireError naming the field."""
    p = r.prediction
    if not r.HasField("prediction") or not p.scores:
        raise wire.WireError("prediction: missing, or without scores; send the prediction TorchServe returned")
    check_text("reason", r.reason)
    for name in ("model_name", "model_version", "prediction_id"):
        check_text(f"prediction.{name}", getattr(p, name))
    if not p.model_name:
        raise wire.WireError("prediction.model_name: empty; name the model the prediction came from")
    check_plain("prediction.model_name", p.model_name)
    _check_model(p.model_name, classes)
    known = classes.get(p.model_name)
    for i, score in enumerate(p.scores):
        check_text(f"prediction.scores[{i}].label", score.label)
        check_plain(f"prediction.scores[{i}].label", score.label)
        if known is not None and score.label not in known:
            raise wire.WireError(f"prediction.scores[{i}].label: {score.label!r} is not a class of {p.model_name!r}")
        if not 0 <= score.probability <= 1:
            raise wire.WireError(f"prediction.scores[{i}].probability: {score.probability} is not in [0, 1]")
    if not math.isfinite(r.priority):
        raise wire.WireError("priority: must be a finite number")
    if p.HasField("attention"):
        wire.map_from_proto(p.attention, "prediction.attention")
    _open(r.image)
    return ReviewEntry(
        image=r.image,
        prediction=p.SerializeToString(),
        model_name=p.model_name,
        predicted_label=p.scores[0].label,
        priority=r.priority,
        reason=r.reason,
    )


def _review_message(entry: ReviewEntry, with_data: bool = True) -> review_pb2.ReviewItem:
    prediction = Prediction.FromString(entry.prediction)
    if not with_data:
        prediction.ClearField("attention")
    claimed = entry.claimed_by is not None and (entry.lease_until or 0) >= time.time()
    state = (
        review_pb2.REVIEW_STATE_DONE
        if entry.feedback_id
        else review_pb2.REVIEW_STATE_CLAIMED
        if claimed
        else review_pb2.REVIEW_STATE_WAITING
    )
    item = review_pb2.ReviewItem(
        id=entry.id,
        image=entry.image if with_data else b"",
        image_sha256=entry.image_sha256,
        prediction=prediction,
        priority=entry.priority,
        reason=entry.reason,
        created_time=timestamp(entry.created),
        state=state,
        claimed_by=entry.claimed_by or "" if claimed or entry.feedback_id else "",
        feedback_id=entry.feedback_id or "",
    )
    if claimed:
        item.lease_expire_time.CopyFrom(timestamp(entry.lease_until or 0))
    return item


class Identities:
    """Who a call's token belongs to: "" for the service (its token; any caller when the service has none), an
    expert's name for a token whose hash the store knows, None for anyone else. Lookups are remembered for
    settings.EXPERT_CACHE_S, so a removed expert is refused within that time."""

    SERVICE = ""

    def __init__(self, store: FeedbackStore, token: str | None, ttl: float = settings.EXPERT_CACHE_S):
        self.store, self.ttl = store, ttl
        self._service = f"Bearer {token}".encode() if token else None
        self._cache: dict[str, tuple[Expert | None, float]] = {}
        self._lock = threading.Lock()

    def caller(self, context) -> str:
        """Who makes this call: "" for the service, else the expert; NotSignedIn for anyone else."""
        who = self.of(context.invocation_metadata())
        if who is None:
            raise NotSignedIn("missing or wrong token: send metadata `authorization: Bearer <token>`")
        return who

    def of(self, metadata) -> str | None:
        sent = dict(metadata or ()).get("authorization", "")
        if self._service is not None and secrets.compare_digest(sent.encode(), self._service):
            return self.SERVICE
        expert = self._expert(sent)
        if expert is not None:
            return expert.name
        return self.SERVICE if self._service is None else None

    def is_operator(self, metadata) -> bool:
        """The call's token is an operator's (an expert with the role operator)."""
        expert = self._expert(dict(metadata or ()).get("authorization", ""))
        return expert is not None and expert.role == "operator"

    def _expert(self, sent: str) -> Expert | None:
        """The expert whose token the authorization header sent carries."""
        if not sent.startswith("Bearer "):
            return None
        key, now = token_hash(sent.removeprefix("Bearer ")), time.monotonic()
        with self._lock:
            expert, until = self._cache.get(key, (None, 0.0))
        if until > now:
            return expert
        expert = self.store.expert_by_token(key)  # StoreUnavailable goes to the caller: UNAVAILABLE
        with self._lock:
            if len(self._cache) > settings.EXPERT_CACHE_MAX:  # wrong tokens are remembered too
                self._cache.clear()
            self._cache[key] = (expert, now + self.ttl)
        return expert


class FeedbackService(feedback_pb2_grpc.FeedbackServiceServicer):
    def __init__(self, store: FeedbackStore, identities: Identities, classes: dict[str, list[str]] | None = None):
        self.store, self.identities = store, identities
        self.classes = classes or {}  # model name -> class names, for the models this service knows

    def SubmitFeedback(self, request, context):
        item = validate(request, self.classes)
        item.author = self.identities.caller(context) or item.author  # an expert signs for what they send
        feedback_id, created = self.store.submit(item)
        return feedback_pb2.SubmitFeedbackResponse(id=feedback_id, created=created)

    def _author(self, request, context) -> str:
        """Whose corrections a call may see or withdraw: an expert's token, its expert's own only (another author
        named is refused); the service's, request.author's, or everyone's when it names none."""
        check_text("author", request.author)
        expert = self.identities.caller(context)
        if expert and request.author not in ("", expert):
            raise NotAuthorError(f"author: an expert's token acts on {expert!r}'s own corrections only")
        return expert or request.author

    def GetFeedback(self, request, context):
        item = self.store.get(request.id) if request.id else None
        if item is None:
            raise NotFoundError(f"id: no feedback {request.id[:64]!r}")  # an echo stays short
        return feedback_pb2.GetFeedbackResponse(feedback=_message(item))

    def ListFeedback(self, request, context) -> Iterator[feedback_pb2.ListFeedbackResponse]:
        author = self._author(request, context)
        if request.state and request.state not in _STATE_NAMES:
            raise wire.WireError(f"state: {request.state} is not a FeedbackState")
        try:
            since = request.since.ToNanoseconds() / 1e9 if request.HasField("since") else 0.0
        except ValueError as e:
            raise wire.WireError(f"since: {e}") from None
        for item in self.store.items(
            since,
            model_name=request.model_name,
            with_data=not request.metadata_only,
            author=author,
            state=_STATE_NAMES.get(request.state, ""),
        ):
            if not context.is_active():
                return
            yield feedback_pb2.ListFeedbackResponse(feedback=_message(item, not request.metadata_only))

    def GetFeedbackStats(self, request, context):
        s = self.store.stats(request.model_name, self._author(request, context))

        def counts(d: dict) -> list:
            return [feedback_pb2.Count(key=k, count=v) for k, v in d.items()]

        return feedback_pb2.GetFeedbackStatsResponse(
            total=s["total"],
            by_state=counts(s["by_state"]),
            by_label=counts(s["by_label"]),
            by_model_version=counts(s["by_model_version"]),
            pending_images=s["pending_images"],
            conflicting_images=s["conflicting_images"],
            by_author=counts(s["by_author"]),
            confirmations=s["confirmations"],
        )

    def WithdrawFeedback(self, request, context):
        check_text("id", request.id)
        author = self._author(request, context)  # an expert withdraws only their own
        if not author:
            raise wire.WireError("author: name the correction's author (a call with the service token acts for one)")
        if not request.id:
            raise wire.WireError("id: empty; send the id SubmitFeedback returned")
        item = self.store.withdraw(request.id, author)
        return feedback_pb2.WithdrawFeedbackResponse(feedback=_message(item, with_data=False))


class ReviewService(review_pb2_grpc.ReviewServiceServicer):
    def __init__(
        self,
        store: FeedbackStore,
        identities: Identities,
        classes: dict[str, list[str]] | None = None,
        lease_s: float = settings.REVIEW_LEASE_S,
    ):
        self.store, self.identities, self.lease_s = store, identities, lease_s
        self.classes = classes or {}

    def _expert(self, request, context) -> str:
        """The expert a claim is for: the token's, else the one the request names."""
        expert = self.identities.caller(context) or request.expert
        if not expert:
            raise wire.WireError("expert: name the expert (a call with the service token acts for one)")
        check_text("expert", expert)
        return expert

    def AddReviewItem(self, request, context):
        review_id, created = self.store.add_review(validate_review(request, self.classes))
        return review_pb2.AddReviewItemResponse(id=review_id, created=created)

    def ListReviewItems(self, request, context):
        for name in ("model_name", "label"):
            check_text(name, getattr(request, name))
        if request.limit > settings.REVIEW_LIST_MAX:
            raise wire.WireError(f"limit: at most {settings.REVIEW_LIST_MAX}, got {request.limit}")
        viewer = self.identities.caller(context)
        limit = request.limit or settings.REVIEW_LIST_DEFAULT
        entries = self.store.review_items(request.model_name, request.label, limit, viewer, request.hide_skipped)
        return review_pb2.ListReviewItemsResponse(
            items=[_review_message(e, with_data=False) for e in entries],
            offered=self.store.review_offered(viewer, request.model_name, request.label),
        )

    def GetReviewItem(self, request, context):
        check_text("id", request.id)
        entry = self.store.review_item(request.id) if request.id else None
        if entry is None:
            raise NotFoundError(f"id: no review item {request.id[:64]!r}")
        return review_pb2.GetReviewItemResponse(item=_review_message(entry))

    def ClaimReviewItem(self, request, context):
        for name in ("id", "model_name", "label"):
            check_text(name, getattr(request, name))
        entry = self.store.claim_review(
            self._expert(request, context), request.id, request.model_name, request.label, self.lease_s
        )
        if entry is None:
            filters = " with these filters" if request.label or request.model_name else ""
            raise NotFoundError(f"no item is waiting for review{filters} (items you skipped are not offered again)")
        return review_pb2.ClaimReviewItemResponse(item=_review_message(entry))

    def ReleaseReviewItem(self, request, context):
        check_text("id", request.id)
        self.store.release_review(request.id, self._expert(request, context), skip=not request.keep_offering)
        return review_pb2.ReleaseReviewItemResponse()

    def GetCaller(self, request, context):
        return review_pb2.GetCallerResponse(
            expert=self.identities.caller(context),
            operator=self.identities.is_operator(context.invocation_metadata()),
        )

"""The feedback service: abn.v1.FeedbackService over gRPC, in front of a FeedbackStore.

Listens on 127.0.0.1:7072 by default. Serves the standard gRPC health service
and server reflection (so generic tools such as `buf curl` can call it without
the protos). When a token is configured, every call but health and reflection
needs the metadata `authorization: Bearer <token>`. TLS when a certificate and
key are given. Messages are bounded; shutdown lets calls in flight finish.
Everything is validated before anything is written.
"""

import secrets
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from finetune import checkpoint
from finetune.images import ImageError, check_aspect, open_image
from serving import settings, wire
from serving.feedback_store import ConflictError, FeedbackStore, Item, open_store
from serving.stubs.abn.v1 import feedback_pb2, feedback_pb2_grpc

PORT = 7072
DEFAULT_ADDRESS = f"127.0.0.1:{PORT}"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
SERVICE = feedback_pb2.DESCRIPTOR.services_by_name["FeedbackService"].full_name
OPEN_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")
MAX_TEXT = 256  # longest name, author, key or id accepted


def _timestamp(seconds: float) -> Timestamp:
    t = Timestamp()
    t.FromNanoseconds(int(seconds * 1e9))
    return t


def _message(item: Item, with_data: bool = True) -> feedback_pb2.Feedback:
    return feedback_pb2.Feedback(
        id=item.id, image=item.image if with_data else b"", image_sha256=item.image_sha256,
        attention=wire.map_to_proto(item.attention) if with_data else None, label=item.label,
        predicted_label=item.predicted_label, prediction_id=item.prediction_id, model_name=item.model_name,
        model_version=item.model_version, author=item.author, idempotency_key=item.idempotency_key,
        created_time=_timestamp(item.created), consumed_by=item.consumed_by or "",
        state=feedback_pb2.FEEDBACK_STATE_CONSUMED if item.consumed_by else feedback_pb2.FEEDBACK_STATE_PENDING)


class FeedbackService(feedback_pb2_grpc.FeedbackServiceServicer):
    def __init__(self, store: FeedbackStore, classes: dict[str, list[str]] | None = None):
        self.store = store
        self.classes = classes or {}  # model name -> class names, for the models this service knows

    def _validate(self, r: feedback_pb2.SubmitFeedbackRequest) -> Item:
        """The item to store, or wire.WireError naming the field."""
        for name in ("label", "predicted_label", "prediction_id", "model_name", "model_version", "author",
                     "idempotency_key"):
            if len(getattr(r, name)) > MAX_TEXT:
                raise wire.WireError(f"{name}: longer than {MAX_TEXT} characters")
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
        known = self.classes.get(r.model_name)
        for name in ("label", "predicted_label"):
            value = getattr(r, name)
            if value and known is not None and value not in known:
                raise wire.WireError(f"{name}: {value!r} is not a class of model {r.model_name!r} "
                                     f"({', '.join(known)})")
        return Item(image=r.image, attention=attention, label=r.label, predicted_label=r.predicted_label,
                    prediction_id=r.prediction_id, model_name=r.model_name, model_version=r.model_version,
                    author=r.author, idempotency_key=r.idempotency_key)

    def SubmitFeedback(self, request, context):
        try:
            item = self._validate(request)
        except wire.WireError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        try:
            feedback_id, created = self.store.submit(item)
        except ConflictError as e:
            context.abort(grpc.StatusCode.ALREADY_EXISTS, str(e))
        return feedback_pb2.SubmitFeedbackResponse(id=feedback_id, created=created)

    def GetFeedback(self, request, context):
        item = self.store.get(request.id) if request.id else None
        if item is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"id: no feedback {request.id!r}")
        return feedback_pb2.GetFeedbackResponse(feedback=_message(item))

    def ListFeedback(self, request, context) -> Iterator[feedback_pb2.ListFeedbackResponse]:
        consumed = {feedback_pb2.FEEDBACK_STATE_PENDING: False, feedback_pb2.FEEDBACK_STATE_CONSUMED: True}
        since = request.since.ToNanoseconds() / 1e9 if request.HasField("since") else 0.0
        for item in self.store.items(since, consumed.get(request.state), request.model_name,
                                    with_data=not request.metadata_only):
            if not context.is_active():
                return
            yield feedback_pb2.ListFeedbackResponse(feedback=_message(item, not request.metadata_only))

    def GetFeedbackStats(self, request, context):
        s = self.store.stats(request.model_name)

        def counts(d: dict) -> list:
            return [feedback_pb2.Count(key=k, count=v) for k, v in d.items()]
        return feedback_pb2.GetFeedbackStatsResponse(total=s["total"], by_state=counts(s["by_state"]),
                                                     by_label=counts(s["by_label"]),
                                                     by_model_version=counts(s["by_model_version"]))


class TokenAuth(grpc.ServerInterceptor):
    """Refuses calls without `authorization: Bearer <token>`, except health checks and reflection."""

    def __init__(self, token: str):
        self.expected = f"Bearer {token}"

        def refuse(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          "missing or wrong token: send metadata `authorization: Bearer <token>`")
        self._refuse = grpc.unary_unary_rpc_method_handler(refuse)
        self._refuse_stream = grpc.unary_stream_rpc_method_handler(refuse)

    def intercept_service(self, continuation, details):
        if details.method.startswith(OPEN_METHODS):
            return continuation(details)
        sent = dict(details.invocation_metadata).get("authorization", "")
        if secrets.compare_digest(sent.encode(), self.expected.encode()):
            return continuation(details)
        return self._refuse_stream if details.method.endswith("/ListFeedback") else self._refuse


def known_classes(checkpoints: list[str | Path]) -> dict[str, list[str]]:
    """Model name -> class names, from checkpoints' metadata."""
    metas = [checkpoint.read_metadata(p) for p in checkpoints]
    return {m["name"]: m["classes"] for m in metas}


def make_server(store: FeedbackStore, address: str = DEFAULT_ADDRESS, token: str | None = None,
                tls: tuple[bytes, bytes] | None = None, classes: dict[str, list[str]] | None = None,
                workers: int = 16) -> tuple[grpc.Server, int]:
    """A started server and its port; tls = (certificate chain PEM, private key PEM)."""
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
               ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=options,
                         interceptors=[TokenAuth(token)] if token else [])
    feedback_pb2_grpc.add_FeedbackServiceServicer_to_server(FeedbackService(store, classes), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    if tls:
        port = server.add_secure_port(address, grpc.ssl_server_credentials([(tls[1], tls[0])]))
    else:
        port = server.add_insecure_port(address)
    server.start()
    for name in ("", SERVICE):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port


def write_token(path: str | Path) -> str:
    """A new random token in a file only its owner can read; an existing file's token is kept."""
    path = Path(path)
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    path.touch(mode=0o600)
    path.write_text(token + "\n")
    return token


def add_arguments(parser) -> None:
    settings.add_store_argument(parser)
    parser.add_argument("--address", default=f"{settings.default_host()}:{PORT}",
                        help=f"host:port to listen on (beyond loopback only with {settings.LISTEN_ALL_ENV}=1)")
    parser.add_argument("--token-file", default="runs/feedback_token",
                        help="bearer token file (created, owner-only, when absent)")
    parser.add_argument("--no-token", action="store_true", help="accept calls without a token")
    parser.add_argument("--tls-cert", help="PEM certificate chain; with --tls-key, serve TLS")
    parser.add_argument("--tls-key", help="PEM private key")

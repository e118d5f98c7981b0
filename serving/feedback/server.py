"""The feedback service's gRPC server: abn.v1.FeedbackService, abn.v1.ReviewService and abn.v1.ModelsService,
health, reflection, and what wraps every call.

Listens on 127.0.0.1:7072 by default. Serves the standard gRPC health service
and server reflection (so generic tools such as `buf curl` can call it without
the protos). Health follows the store: NOT_SERVING while the store cannot be
reached, SERVING again when it can. When a token is configured, every call
but health and reflection needs the metadata `authorization: Bearer <token>`,
with the service's token or an expert's (`abn experts add`).
TLS when a certificate and key are given. Messages are bounded; shutdown lets
calls in flight finish.

Interceptors wrap the handler of every call: CallMetrics (outermost: counts and
times every answer), StoreGate (UNAVAILABLE at once while the store is
unreachable), TokenAuth and ErrorStatus, the one place where exceptions become
gRPC statuses. Prometheus metrics (serving.metrics) are served over HTTP on
metrics_port, when given.
"""

import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from finetune.images import ImageError
from handlers import wire
from handlers.stubs.abn.v1 import (
    feedback_pb2,
    feedback_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    review_pb2,
    review_pb2_grpc,
)
from serving import settings
from serving.feedback.history import MODELS_SERVICE, OPERATOR_METHODS, READ_METHODS, ModelsService
from serving.feedback.service import (
    EXPERT_METHODS,
    REVIEW_SERVICE,
    SERVICE,
    FeedbackService,
    Identities,
    NotSignedIn,
    ReviewService,
)
from serving.feedback.store import (
    ClaimError,
    ConflictError,
    FeedbackStore,
    NotAuthorError,
    NotFoundError,
    StateError,
    StoreUnavailable,
)
from serving.metrics import UNKNOWN, FeedbackMetrics, MetricsServer

logger = logging.getLogger(__name__)
OPEN_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")
UNAVAILABLE_MESSAGE = (
    "the feedback store cannot be reached now; retry later (a correction sent again with the same "
    "idempotency_key is stored once)"
)
# Exceptions a call may raise, in the order they are matched, with their status; None keeps their message.
STATUSES: list[tuple[tuple[type[Exception], ...], grpc.StatusCode, str | None]] = [
    ((StoreUnavailable,), grpc.StatusCode.UNAVAILABLE, UNAVAILABLE_MESSAGE),
    ((StateError,), grpc.StatusCode.FAILED_PRECONDITION, None),  # before ConflictError: they are ones
    ((NotAuthorError,), grpc.StatusCode.PERMISSION_DENIED, None),
    ((ConflictError,), grpc.StatusCode.ALREADY_EXISTS, None),
    ((NotFoundError,), grpc.StatusCode.NOT_FOUND, None),
    ((ClaimError,), grpc.StatusCode.FAILED_PRECONDITION, None),
    ((NotSignedIn,), grpc.StatusCode.UNAUTHENTICATED, None),
    ((wire.WireError, ImageError), grpc.StatusCode.INVALID_ARGUMENT, None),
]


# The four kinds of handler, each with the function that makes one and whether it streams its responses.
_KINDS = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler, False),
    ("unary_stream", grpc.unary_stream_rpc_method_handler, True),
    ("stream_unary", grpc.stream_unary_rpc_method_handler, False),
    ("stream_stream", grpc.stream_stream_rpc_method_handler, True),
)


def _wrap(handler: grpc.RpcMethodHandler, wrapper: Callable[[Callable, bool], Callable]) -> grpc.RpcMethodHandler:
    """handler with its behaviour replaced by wrapper(behaviour, streams_responses), whatever its kind."""
    for kind, make, streams in _KINDS:
        behaviour = getattr(handler, kind)
        if behaviour:
            return make(wrapper(behaviour, streams), handler.request_deserializer, handler.response_serializer)
    return handler


# The methods the metrics name; any other is counted as UNKNOWN, so that callers cannot add series.
METHODS = frozenset(
    f"/{service.full_name}/{method.name}"
    for service in (
        feedback_pb2.DESCRIPTOR.services_by_name["FeedbackService"],
        review_pb2.DESCRIPTOR.services_by_name["ReviewService"],
        models_pb2.DESCRIPTOR.services_by_name["ModelsService"],
    )
    for method in service.methods
)


def _unavailable(request, context):
    context.abort(grpc.StatusCode.UNAVAILABLE, UNAVAILABLE_MESSAGE)


class TokenAuth(grpc.ServerInterceptor):
    """Refuses calls without `authorization: Bearer <token>` of the service or of an expert, except health checks
    and reflection; an expert's token opens EXPERT_METHODS and READ_METHODS only, an operator's OPERATOR_METHODS
    too."""

    MESSAGE = "missing or wrong token: send metadata `authorization: Bearer <token>`"
    EXPERT_MESSAGE = (
        "an expert's token may send, list and withdraw their own corrections and work the review queue; this call "
        "needs the service's"
    )
    OPERATOR_MESSAGE = (
        "only an operator may roll back, requeue or reject: an operator's token is made with "
        "`abn experts add NAME --role operator`"
    )

    def __init__(self, identities: Identities):
        self.identities = identities

    def _refuse(self, request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, self.MESSAGE)

    def _expert_refused(self, request, context):
        context.abort(grpc.StatusCode.PERMISSION_DENIED, self.EXPERT_MESSAGE)

    def _operator_refused(self, request, context):
        context.abort(grpc.StatusCode.PERMISSION_DENIED, self.OPERATOR_MESSAGE)

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if details.method.startswith(OPEN_METHODS):
            return handler
        try:
            who = self.identities.of(details.invocation_metadata)
        except StoreUnavailable as e:  # an expert's token cannot be checked now
            logger.warning("%s: %s", details.method, e)
            return _wrap(handler, lambda behaviour, streams: _unavailable) if handler else None
        if who == Identities.SERVICE or (who is not None and details.method in EXPERT_METHODS | READ_METHODS):
            return handler
        if who is not None and details.method in OPERATOR_METHODS:
            if self.identities.is_operator(details.invocation_metadata):
                return handler
            return _wrap(handler, lambda behaviour, streams: self._operator_refused)
        if who is not None and handler is not None:
            return _wrap(handler, lambda behaviour, streams: self._expert_refused)
        if handler is None:  # no such method: the caller learns nothing of what exists
            return grpc.unary_unary_rpc_method_handler(self._refuse)
        return _wrap(handler, lambda behaviour, streams: self._refuse)


class StoreGate(grpc.ServerInterceptor):
    """While health says the store cannot be reached, calls answer UNAVAILABLE at once instead of each waiting
    on a database that does not answer (a paused server costs every call its whole deadline otherwise)."""

    def __init__(self, health: "StoreHealth"):
        self.health = health

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or details.method.startswith(OPEN_METHODS) or self.health.serving is not False:
            return handler
        logger.warning("%s: the feedback store is unreachable (health NOT_SERVING)", details.method)
        return _wrap(handler, lambda behaviour, streams: _unavailable)


class ErrorStatus(grpc.ServerInterceptor):
    """Maps what a call raises to a status (STATUSES); anything else is INTERNAL, logged here with an incident
    id that the caller's message names, and no detail of it reaches the caller."""

    def _abort(self, context, method: str, error: Exception):
        if _aborted(context):  # the call ended with a status already (context.abort raises to unwind)
            raise error
        for types, code, message in STATUSES:
            if isinstance(error, types):
                if code == grpc.StatusCode.UNAVAILABLE:
                    logger.warning("%s: %s", method, error)
                context.abort(code, message or str(error))
        incident = uuid.uuid4().hex[:12]
        logger.error("%s: internal error, incident %s", method, incident, exc_info=error)
        context.abort(
            grpc.StatusCode.INTERNAL, f"internal error in the feedback service (incident {incident}, in its log)"
        )

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method

        def wrapper(behaviour: Callable, streams: bool) -> Callable:
            def call(request, context):
                try:
                    return behaviour(request, context)
                except Exception as e:
                    self._abort(context, method, e)

            def stream(request, context) -> Iterator:
                try:
                    yield from behaviour(request, context)
                except Exception as e:
                    self._abort(context, method, e)

            return stream if streams else call

        return _wrap(handler, wrapper)


class CallMetrics(grpc.ServerInterceptor):
    """Reports every answered call to the metrics: its method, status code and time (a stream's, to its end)."""

    def __init__(self, metrics: FeedbackMetrics):
        self.metrics = metrics

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method if details.method in METHODS or details.method.startswith(OPEN_METHODS) else UNKNOWN

        def wrapper(behaviour: Callable, streams: bool) -> Callable:
            def call(request, context):
                started, response, failed = time.perf_counter(), None, False
                try:
                    response = behaviour(request, context)
                    return response
                except Exception:
                    failed = True
                    raise
                finally:
                    seconds = time.perf_counter() - started
                    self.metrics.answered(method, _code(context, failed), seconds, request, response)

            def stream(request, context) -> Iterator:
                started, failed, code = time.perf_counter(), False, ""
                try:
                    yield from behaviour(request, context)
                except GeneratorExit:  # the caller went away
                    code = grpc.StatusCode.CANCELLED.name
                    raise
                except Exception:
                    failed = True
                    raise
                finally:
                    seconds = time.perf_counter() - started
                    self.metrics.answered(method, code or _code(context, failed), seconds, request)

            return stream if streams else call

        return _wrap(handler, wrapper)


def _code(context, failed: bool) -> str:
    """The status a call ended with: the one it set, else UNKNOWN when it raised (as gRPC answers), else OK."""
    code = context.code() or (grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK)
    return code.name


def _aborted(context) -> bool:
    """True when the call already ended with a status (context.abort raises to unwind)."""
    code = context.code()
    return code is not None and code != grpc.StatusCode.OK


class StoreHealth:
    """Keeps the health service in step with the store: one thread probes the store every interval seconds;
    a watchdog sets NOT_SERVING when a probe has had no answer for deadline seconds (a paused database answers
    nothing; the store ends such a wait itself only later, after its answer deadline)."""

    def __init__(
        self,
        store: FeedbackStore,
        servicer: health.HealthServicer,
        interval: float,
        deadline: float = settings.STORE_PROBE_DEADLINE_S,
    ):
        self.store, self.servicer, self.interval, self.deadline = store, servicer, interval, deadline
        self._stop = threading.Event()
        self._serving: bool | None = None
        self._lock = threading.Lock()  # the prober and the watchdog both set the status
        self._probing_since: float | None = None
        self._thread = threading.Thread(target=self._run, name="store-health", daemon=True)
        self._watchdog = threading.Thread(target=self._watch, name="store-health-watchdog", daemon=True)

    @property
    def serving(self) -> bool | None:
        """What health says: True, False, or None before the first probe."""
        return self._serving

    def _set(self, serving: bool) -> None:
        with self._lock:
            if serving == self._serving:
                return
            changed, self._serving = self._serving is not None, serving
            status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in ("", SERVICE, REVIEW_SERVICE, MODELS_SERVICE):
                self.servicer.set(name, status)
            if not serving:
                logger.warning("feedback store unreachable: NOT_SERVING")
            elif changed:
                logger.info("feedback store reachable again: SERVING")

    def probe(self) -> None:
        self._probing_since = time.monotonic()
        try:
            self.store.ping()
            self._set(True)
        except Exception as e:  # any failure to answer means the service cannot serve
            logger.warning("feedback store probe: %s", e)
            self._set(False)
        finally:
            self._probing_since = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.probe()

    def _watch(self) -> None:
        while not self._stop.wait(min(self.interval, self.deadline) / 2):
            since = self._probing_since
            if since is not None and time.monotonic() - since > self.deadline:
                if self._serving:
                    logger.warning("feedback store probe: no answer for %.0f s", self.deadline)
                self._set(False)

    def start(self) -> None:
        self.probe()
        self._thread.start()
        self._watchdog.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.deadline)  # a probe in flight ends before the store closes, unless it hangs
        if self._watchdog.is_alive():
            self._watchdog.join()


class FeedbackServer:
    """The started server; port is the one it listens on (address may ask for port 0).
    tls = (certificate chain PEM, private key PEM). metrics_port: where its Prometheus metrics are served over
    HTTP, on address's host (0: a free port, then metrics_port says which; None: not served)."""

    def __init__(
        self,
        store: FeedbackStore,
        address: str = f"{settings.LOOPBACK}:{settings.FEEDBACK_PORT}",
        token: str | None = None,
        tls: tuple[bytes, bytes] | None = None,
        classes: dict[str, list[str]] | None = None,
        workers: int = 16,
        probe_interval: float = settings.STORE_PROBE_INTERVAL_S,
        review_lease_s: float = settings.REVIEW_LEASE_S,
        probe_deadline: float = settings.STORE_PROBE_DEADLINE_S,
        metrics_port: int | None = None,
    ):
        health_servicer = health.HealthServicer()
        self.health = StoreHealth(store, health_servicer, probe_interval, probe_deadline)
        identities = Identities(store, token)
        self.metrics = FeedbackMetrics()
        self.metrics.watch(store, serving=lambda: self.health.serving is not False, timeout=probe_deadline)
        interceptors: list[grpc.ServerInterceptor] = [CallMetrics(self.metrics), StoreGate(self.health)]
        interceptors += [TokenAuth(identities)] if token else []
        interceptors.append(ErrorStatus())
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers),
            options=settings.message_limits(settings.FEEDBACK_MAX_MESSAGE_BYTES),
            interceptors=interceptors,
        )
        feedback_pb2_grpc.add_FeedbackServiceServicer_to_server(
            FeedbackService(store, identities, classes), self.server
        )
        review_pb2_grpc.add_ReviewServiceServicer_to_server(
            ReviewService(store, identities, classes, review_lease_s), self.server
        )
        models_pb2_grpc.add_ModelsServiceServicer_to_server(ModelsService(store, identities), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, self.server)
        reflection.enable_server_reflection(
            (SERVICE, REVIEW_SERVICE, MODELS_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        if tls:
            self.port = self.server.add_secure_port(address, grpc.ssl_server_credentials([(tls[1], tls[0])]))
        else:
            self.port = self.server.add_insecure_port(address)
        host = address.rsplit(":", 1)[0]  # before anything starts: a port that is taken stops nothing running
        self._metrics = None if metrics_port is None else MetricsServer(self.metrics.registry, host, metrics_port)
        self.metrics_port = None if self._metrics is None else self._metrics.port
        self.health.start()
        self.server.start()

    def stop(self, grace: float | None = settings.SHUTDOWN_GRACE_S) -> None:
        """Stop listening; calls in flight may finish within grace seconds."""
        self.health.stop()
        self.server.stop(grace).wait()
        if self._metrics is not None:
            self._metrics.stop()
        self.metrics.close()


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

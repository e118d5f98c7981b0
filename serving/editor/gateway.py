"""The attention editor's HTTP gateway: the page, and a JSON API over the product's gRPC clients.

The gateway holds no data of its own and never opens the feedback store: every
queue or feedback call goes to the feedback service with the signed-in expert's
own token (so the service decides what the expert may do, and records them as
the author), and predictions go to TorchServe with its key file. The service
tokens never reach the browser: the browser holds an HttpOnly session cookie,
which the gateway maps to the expert's token in memory (a restart signs
everyone out).

Security: no page or API call but signing in works without a session; every
answer carries a Content-Security-Policy that allows only the gateway's own
scripts and styles; writes must be JSON from the gateway's own origin; request
bodies are bounded. The API is described by OpenAPI (/api/openapi.json, for a
signed-in expert, and docs/api.md). /metrics answers Prometheus without a
session: requests by route, method and status, and their time (serving.metrics).

What the expert reads is plain: the services' messages lose server class names
and bare ids (plain), a correction's state is said in words (_fate), and an
upload unlike the model's training images is warned of (_unlike).
"""

import base64
import binascii
import io
import json
import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import grpc
import numpy as np
import uvicorn
from fastapi import Cookie, Depends, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field

from finetune import checkpoint
from finetune.images import ImageError, open_image
from handlers import wire
from handlers.stubs.abn.v1 import feedback_pb2, review_pb2
from handlers.stubs.abn.v1.prediction_pb2 import Prediction
from serving import settings
from serving.client import Client
from serving.editor import history
from serving.metrics import GatewayMetrics
from serving.torchserve.client import without_class_names
from serving.torchserve.config import Target

STATIC = Path(__file__).parent / "static"
# The page's scripts (modules, which browsers run only when served as JavaScript) and styles: the folder's .js and
# .css files when the gateway is imported. Only these names are served from /static/.
MEDIA_TYPES = {".js": "text/javascript", ".css": "text/css"}
ASSETS = {p.name: MEDIA_TYPES[p.suffix] for p in sorted(STATIC.glob("*")) if p.suffix in MEDIA_TYPES}
COOKIE = "abn_editor_session"
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
# What a gRPC status means to the expert: the HTTP status and the words before the service's own message.
HTTP_OF = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "Refused"),
    grpc.StatusCode.NOT_FOUND: (404, "Not found"),
    grpc.StatusCode.FAILED_PRECONDITION: (409, "Not possible now"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "Already stored differently"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "Your sign-in is no longer valid"),
    grpc.StatusCode.PERMISSION_DENIED: (401, "Your sign-in is no longer valid"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (413, "Too large"),
}
UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
REFUSED_KEY = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
SIGN_IN = ("POST", "/api/session")  # the one API call without a session
# Server class names (org.pytorch.serve....Exception:) and bare ids mean nothing to an expert: plain() drops them.
NAMED_ID = re.compile(r"\b(review item|correction|feedback) '?(?=[0-9]*[a-f])[0-9a-f]{12,}'?")
BARE_ID = re.compile(r"\s*'?\b(?=[0-9]*[a-f])[0-9a-f]{12,}\b'?")
ID_WORDS = {"review item": "this item", "correction": "the correction", "feedback": "the correction"}
RUN_ID = re.compile(r"(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)\d\dZ(?:-\d+)?")  # serving.retraining's run ids
STATE_NAMES = {
    feedback_pb2.FEEDBACK_STATE_PENDING: "pending",
    feedback_pb2.FEEDBACK_STATE_CONSUMED: "consumed",
    feedback_pb2.FEEDBACK_STATE_REJECTED: "rejected",
    feedback_pb2.FEEDBACK_STATE_WITHDRAWN: "withdrawn",
}
# An upload this much larger or smaller than the model's inputs (per side), or of another shape by this
# fraction, is warned of: the model sees it resized to its input size.
UPLOAD_LARGER, UPLOAD_SMALLER, UPLOAD_SHAPE = 8.0, 0.5, 0.1
COLOUR_SPREAD, COLOUR_SHARE = 16, 0.01  # a pixel whose channels differ by this is coloured; this share: a colour image
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputShape:
    """What a model's training images were like: their size, and grey (every channel's mean the same)."""

    height: int
    width: int
    grey: bool


def known_inputs(checkpoints: list[str] | list[Path]) -> dict[str, InputShape]:
    """Model name -> its InputShape, from checkpoints' metadata."""
    metas = [checkpoint.read_metadata(p) for p in checkpoints]
    return {m["name"]: InputShape(m["input_size"][0], m["input_size"][1], len(set(m["mean"])) == 1) for m in metas}


@dataclass
class EditorConfig:
    address: str = field(default_factory=lambda: f"{settings.default_host()}:{settings.EDITOR_PORT}")
    target: Target = field(default_factory=Target)  # TorchServe
    model: str = settings.MODEL_NAME  # the model an uploaded image is predicted by
    feedback: str = f"{settings.LOOPBACK}:{settings.FEEDBACK_PORT}"
    feedback_ca: str | None = None  # PEM of the feedback service's CA, when it serves TLS
    classes: dict[str, list[str]] = field(default_factory=dict)  # model name -> class names, for the class list
    inputs: dict[str, InputShape] = field(default_factory=dict)  # model name -> its inputs, to warn of uploads
    tls_cert: str | None = None  # PEM certificate chain; with tls_key, serve HTTPS (and mark the cookie Secure)
    tls_key: str | None = None
    model_store: str | None = None  # TorchServe's model store: with it, operators roll back from the Models page

    @property
    def host(self) -> str:
        return self.address.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])


# ---- what the API reads and writes


class MapJSON(BaseModel):
    height: int = Field(ge=wire.MIN_MAP_SIDE, le=wire.MAX_MAP_SIDE)
    width: int = Field(ge=wire.MIN_MAP_SIDE, le=wire.MAX_MAP_SIDE)
    values: list[float] = Field(description="height * width values in [0, 1], row-major; 1 = attend")


class SignIn(BaseModel):
    token: str = Field(max_length=settings.MAX_TOKEN, description="the token `abn experts add NAME` printed")


class Filters(BaseModel):
    model: str = Field("", max_length=settings.MAX_TEXT)
    label: str = Field("", max_length=settings.MAX_TEXT)


class PredictIn(BaseModel):
    review_id: str = Field("", max_length=settings.MAX_TEXT, description="a queue item's image, or:")
    image: str = Field("", description="an image file's bytes, base64")
    attention: MapJSON | None = Field(None, description="a map to apply instead of the model's (Try it)")


class CorrectionIn(BaseModel):
    review_id: str = Field("", max_length=settings.MAX_TEXT, description="the claimed queue item, or:")
    image: str = Field("", description="an uploaded image's bytes, base64")
    attention: MapJSON
    decided: str = Field(
        "",
        description="the pixels the expert decided: base64 of one byte per value of attention (1 = decided, "
        "0 = don't care); empty: every pixel",
    )
    confirmed: bool = Field(False, description="the expert pressed 'The map is right': attention is the model's map")
    label: str = Field("", max_length=settings.MAX_TEXT, description="the class the expert chose")
    predicted_label: str = Field("", max_length=settings.MAX_TEXT)
    prediction_id: str = Field("", max_length=settings.MAX_TEXT)
    model_name: str = Field("", max_length=settings.MAX_TEXT)
    model_version: str = Field("", max_length=settings.MAX_TEXT)
    idempotency_key: str = Field(min_length=8, max_length=128, description="one per edit: a retry stores once")


# ---- conversions


def _map_json(m) -> dict:
    return {"height": m.height, "width": m.width, "values": [round(v, 4) for v in m.values]}


def _map_array(m: MapJSON) -> np.ndarray:
    if len(m.values) != m.height * m.width:
        raise HTTPException(400, f"The map is {m.height}x{m.width} but has {len(m.values)} values")
    values = np.asarray(m.values, dtype=np.float32).reshape(m.height, m.width)
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
        raise HTTPException(400, "The map's values must be numbers between 0 and 1")
    return values


def _scores(p: Prediction) -> list[dict]:
    return [{"index": s.index, "label": s.label, "probability": s.probability} for s in p.scores]


def _prediction_json(p: Prediction) -> dict:
    return {
        "prediction_id": p.prediction_id,
        "model_name": p.model_name,
        "model_version": p.model_version,
        "scores": _scores(p),
        "attention": _map_json(p.attention),
        "attention_supplied": p.attention_supplied,
    }


def _summary(item: review_pb2.ReviewItem, expert: str) -> dict:
    p = item.prediction
    return {
        "id": item.id,
        "model_name": p.model_name,
        "model_version": p.model_version,
        "predicted_label": p.scores[0].label if p.scores else "",
        "confidence": p.scores[0].probability if p.scores else 0.0,
        "priority": item.priority,
        "reason": item.reason,
        "claimed_by_me": item.claimed_by == expert,
        "image_url": f"/api/queue/{item.id}/image",
    }


def _claimed(item: review_pb2.ReviewItem, expert: str) -> dict:
    width, height = _open(item.image).size
    return {
        **_summary(item, expert),
        "prediction_id": item.prediction.prediction_id,
        "scores": _scores(item.prediction),
        "attention": _map_json(item.prediction.attention),
        "image_width": width,
        "image_height": height,
        "lease_expires": item.lease_expire_time.ToNanoseconds() / 1e9,
    }


def _open(image: bytes):
    try:
        return open_image(image, "image")
    except ImageError as e:
        raise HTTPException(400, f"The image cannot be used: {plain(str(e))}") from None


def _decode(data: str, what: str = "The image") -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(400, f"{what} did not arrive intact (not base64); send it again") from None


def _mask(body: CorrectionIn) -> np.ndarray | None:
    """The decided pixels of a correction (h x w bool), None for every pixel."""
    if not body.decided:
        return None
    data = _decode(body.decided, "The painted pixels")
    h, w = body.attention.height, body.attention.width
    if len(data) != h * w:
        raise HTTPException(400, f"The painted pixels are {len(data)} values for a {h}x{w} map")
    return (np.frombuffer(data, np.uint8) != 0).reshape(h, w)


def plain(message: str) -> str:
    """A service's message without server class names and bare ids."""
    message = without_class_names(message)
    message = NAMED_ID.sub(lambda m: ID_WORDS[m.group(1)], message)
    return BARE_ID.sub("", message).strip()


def _run_words(run: str) -> str:
    m = RUN_ID.fullmatch(run)
    return f"{m[1]}-{m[2]}-{m[3]} {m[4]}:{m[5]} UTC" if m else run


def _fate(f: feedback_pb2.Feedback) -> str:
    """What became of a correction, in words."""
    state, reason = STATE_NAMES.get(f.state, "pending"), plain(f.reason)
    if state == "consumed":
        now_in = f", now in version {f.promoted_version}" if f.promoted_version else ""
        return f"Used by the retraining run of {_run_words(f.consumed_by)}{now_in}"
    if state == "rejected":
        by = f"the retraining run of {_run_words(f.rejected_by)}" if RUN_ID.fullmatch(f.rejected_by) else "an operator"
        return f"Rejected by {by}" + (f": {reason}" if reason else "")
    if state == "withdrawn":
        return "Withdrawn by you: no run will use it"
    return f"Held back: {reason}" if reason else "Waiting for the next retraining run"


def _correction_json(f: feedback_pb2.Feedback) -> dict:
    return {
        "id": f.id,
        "created": f.created_time.ToNanoseconds() / 1e9,
        "label": f.label,
        "predicted_label": f.predicted_label,
        "model_name": f.model_name,
        "model_version": f.model_version,
        "confirmed": f.confirmed,
        "state": STATE_NAMES.get(f.state, "pending"),
        "held_back": f.state == feedback_pb2.FEEDBACK_STATE_PENDING and bool(f.reason),
        "fate": _fate(f),
    }


def _unlike(image, shape: InputShape | None) -> list[str]:
    """Plain warnings when an uploaded image does not look like the model's training images (size, colour)."""
    if shape is None:
        return []
    (iw, ih), (w, h) = image.size, (shape.width, shape.height)
    trained = f"the model was trained on {w}x{h} {'greyscale' if shape.grey else 'colour'} images"
    warnings = []
    if abs(iw / ih - w / h) > UPLOAD_SHAPE * w / h:
        warnings.append(f"This image is {iw}x{ih}, another shape: {trained} and sees it squeezed to {w}x{h}.")
    elif min(iw / w, ih / h) > UPLOAD_LARGER:
        warnings.append(f"This image is {iw}x{ih}, much larger: {trained} and sees it shrunk, without fine detail.")
    elif max(iw / w, ih / h) < UPLOAD_SMALLER:
        warnings.append(f"This image is {iw}x{ih}, smaller: {trained} and sees it enlarged.")
    rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    coloured = float((rgb.max(axis=2) - rgb.min(axis=2) > COLOUR_SPREAD).mean()) > COLOUR_SHARE
    if coloured and shape.grey:
        warnings.append(f"This image is in colour, but {trained}: it may not predict this well.")
    elif not coloured and not shape.grey:
        warnings.append(f"This image is greyscale, but {trained}: it may not predict this well.")
    if warnings:
        warnings.append("Its prediction and map may mean little.")
    return warnings


# ---- sessions


@dataclass
class Session:
    expert: str
    token: str
    expires: float


class Sessions:
    """Session id (the cookie) -> the expert and their token, in memory."""

    def __init__(self, lifetime: float = settings.EDITOR_SESSION_S):
        self.lifetime = lifetime
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def start(self, expert: str, token: str) -> str:
        sid = secrets.token_urlsafe(32)
        now = time.time()
        with self._lock:
            self._sessions = {k: s for k, s in self._sessions.items() if s.expires > now}
            self._sessions[sid] = Session(expert, token, now + self.lifetime)
        return sid

    def get(self, sid: str | None) -> Session | None:
        with self._lock:
            s = self._sessions.get(sid or "")
        return s if s is not None and s.expires > time.time() else None

    def end(self, sid: str | None) -> None:
        with self._lock:
            self._sessions.pop(sid or "", None)


class BodyLimit:
    """ASGI middleware: a request whose body passes limit bytes is answered 413, however it is sent (a declared
    length is refused before reading; a chunked body when it passes the bound, by FastAPI's handler of the
    HTTPException raised while it reads)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send)
        seen = 0

        async def bounded():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, self.message)
            return message

        await self.app(scope, bounded, send)

    @property
    def message(self) -> str:
        return f"The request is too large (over {self.limit // 2**20} MB): send a smaller image"

    async def _refuse(self, send):
        body = json.dumps({"detail": self.message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def create_app(cfg: EditorConfig, client: Client, sessions: Sessions | None = None) -> FastAPI:
    """The gateway's application, calling the services through client."""
    sessions = sessions or Sessions()
    app = FastAPI(
        title="abn attention editor",
        summary="The editor page's JSON API: the review queue, predictions and corrections, for a signed-in expert.",
        version="1",
        docs_url=None,  # FastAPI's documentation pages load their scripts from a CDN
        redoc_url=None,
        openapi_url=None,
    )

    app.add_middleware(BodyLimit, limit=settings.EDITOR_MAX_BODY_BYTES)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        # before any body is read: an API call without a session costs the gateway nothing
        path = request.url.path
        if (
            path.startswith("/api/")
            and (request.method, path) != SIGN_IN
            and not sessions.get(request.cookies.get(COOKIE))
        ):
            return _headers(JSONResponse({"detail": "Sign in first: your session is missing or has ended"}, 401))
        if request.method not in ("GET", "HEAD"):
            origin = request.headers.get("origin")
            if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host', '')}":
                return _headers(JSONResponse({"detail": "Cross-origin requests are refused"}, 403))
            if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
                return _headers(JSONResponse({"detail": "Send JSON (Content-Type: application/json)"}, 415))
        return _headers(await call_next(request))

    metrics = GatewayMetrics()
    app.add_middleware(metrics.middleware)  # added last, so outermost: it sees every answer, refusals included

    def _headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        fields = "; ".join(f"{'.'.join(str(x) for x in err['loc'][1:])}: {err['msg']}" for err in e.errors()[:5])
        return JSONResponse({"detail": f"The request is not what the editor sends: {fields}"}, 400)

    @app.exception_handler(grpc.RpcError)
    async def rpc_error(request: Request, e: grpc.RpcError):
        """A feedback service's status (TorchServe's are answered where it is called)."""
        code = e.code()
        if code in UNREACHABLE:
            return JSONResponse({"detail": "The editor cannot reach the feedback service now; try again soon"}, 503)
        status, words = HTTP_OF.get(code, (502, "The service failed"))
        if status == 401:  # the expert's token was removed: the session ends with it
            sessions.end(request.cookies.get(COOKIE))
        return JSONResponse({"detail": f"{words}: {plain(e.details() or '')}"}, status)

    @app.exception_handler(Exception)
    async def fault(request: Request, e: Exception):
        incident = secrets.token_hex(6)
        logger.error("%s %s: incident %s", request.method, request.url.path, incident, exc_info=e)
        detail = f"The editor failed (incident {incident}, in its log); try again, or tell the operator"
        return _headers(JSONResponse({"detail": detail}, 500))

    def session(abn_editor_session: Annotated[str | None, Cookie()] = None) -> Session:
        s = sessions.get(abn_editor_session)
        if s is None:
            raise HTTPException(401, "Sign in first: your session is missing or has ended")
        return s

    Signed = Annotated[Session, Depends(session)]

    def feedback(s: Session):
        return client.feedback.with_token(s.token)

    # ---- pages

    @app.get("/", include_in_schema=False)
    def page(abn_editor_session: Annotated[str | None, Cookie()] = None):
        return FileResponse(STATIC / ("index.html" if sessions.get(abn_editor_session) else "signin.html"))

    @app.get("/models", include_in_schema=False)
    def models_page(abn_editor_session: Annotated[str | None, Cookie()] = None):
        """The Models page: the history of versions (serving.editor.history)."""
        return FileResponse(STATIC / ("models.html" if sessions.get(abn_editor_session) else "signin.html"))

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @app.get("/static/{name}", include_in_schema=False)
    def asset(name: str):
        if name not in ASSETS:
            raise HTTPException(404, "No such file")
        return FileResponse(STATIC / name, media_type=ASSETS[name])

    @app.get("/api/openapi.json", include_in_schema=False)
    def openapi(s: Signed):
        return app.openapi()

    # ---- the API

    @app.post("/api/session", status_code=204, tags=["session"])
    def sign_in(body: SignIn, response: Response):
        """Sign in with an expert's token; sets the session cookie."""
        refused = HTTPException(401, "That token is not an expert's: ask for one (abn experts add NAME)")
        if not body.token.isascii() or not body.token.isprintable():  # gRPC metadata could not carry it
            raise refused
        try:
            expert = client.feedback.with_token(body.token).caller()
        except grpc.RpcError as e:
            if e.code() in REFUSED_KEY:
                raise refused from None
            raise
        if not expert:  # the service's token, or any token when the service runs without one
            raise refused
        sid = sessions.start(expert, body.token)
        response.set_cookie(
            COOKIE,
            sid,
            max_age=int(sessions.lifetime),
            httponly=True,
            samesite="strict",
            secure=bool(cfg.tls_cert),
            path="/",
        )

    @app.delete("/api/session", status_code=204, tags=["session"])
    def sign_out(response: Response, abn_editor_session: Annotated[str | None, Cookie()] = None):
        """End the session."""
        sessions.end(abn_editor_session)
        response.delete_cookie(COOKIE, path="/")

    @app.get("/api/me", tags=["session"])
    def me(s: Signed) -> dict:
        """The signed-in expert, and whether an operator (who may roll back, requeue and reject)."""
        return {"expert": s.expert, "operator": feedback(s).identity().operator}

    @app.get("/api/models", tags=["models"])
    def models(s: Signed) -> dict:
        """The models the editor knows, with their classes (the choices for a corrected class)."""
        return {"models": [{"name": name, "classes": classes} for name, classes in cfg.classes.items()]}

    @app.get("/api/queue", tags=["queue"])
    def queue(s: Signed, model: str = "", label: str = "", limit: int = settings.REVIEW_LIST_DEFAULT) -> dict:
        """What Open next would give the expert, highest priority first, and the items they hold; left: how many
        Open next would give them now (items other experts hold, or they skipped, are left out)."""
        limit = max(1, min(limit, settings.REVIEW_LIST_MAX))
        listing = feedback(s).review_listing(model, label, limit, hide_skipped=True)
        return {"items": [_summary(i, s.expert) for i in listing.items], "left": listing.offered}

    @app.get("/api/queue/{review_id}/image", tags=["queue"], response_class=Response)
    def queue_image(review_id: str, s: Signed) -> Response:
        """A queue item's image as PNG (any format the service accepts, made displayable)."""
        image = _open(feedback(s).review_item(review_id).image)
        out = io.BytesIO()
        image.save(out, "PNG")
        return Response(out.getvalue(), media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.post("/api/queue/next", tags=["queue"])
    def claim_next(body: Filters, s: Signed) -> dict:
        """Claim the waiting item of highest priority (with the filters) for the lease."""
        return _claimed(feedback(s).claim(model_name=body.model, label=body.label), s.expert)

    @app.post("/api/queue/{review_id}/claim", tags=["queue"])
    def claim(review_id: str, s: Signed) -> dict:
        """Claim this item (or renew the claim on it)."""
        return _claimed(feedback(s).claim(review_id), s.expert)

    @app.post("/api/queue/{review_id}/skip", status_code=204, tags=["queue"])
    def skip(review_id: str, s: Signed) -> None:
        """Give the item back: it waits for the other experts."""
        feedback(s).release(review_id)

    @app.post("/api/queue/{review_id}/release", status_code=204, tags=["queue"])
    def release(review_id: str, s: Signed) -> None:
        """Give the item back without skipping it (the expert went to another): it may be offered to them again."""
        feedback(s).release(review_id, keep_offering=True)

    def _image(body: PredictIn | CorrectionIn, s: Session) -> tuple[bytes, str]:
        """The image the request names, and the model that predicted it (cfg.model for an upload)."""
        if bool(body.review_id) == bool(body.image):
            raise HTTPException(400, "Send either a queue item (review_id) or an image, not both or neither")
        if not body.review_id:
            return _decode(body.image), cfg.model
        item = feedback(s).review_item(body.review_id)
        return item.image, item.prediction.model_name

    @app.post("/api/predict", tags=["predictions"])
    def predict(body: PredictIn, s: Signed) -> dict:
        """Classify a queue item's image (by the item's model) or an uploaded one; with attention, apply that
        map (Try it). warnings: for an upload unlike the model's training images (size, colour), in words."""
        image, model = _image(body, s)
        warnings = [] if body.review_id or body.attention else _unlike(_open(image), cfg.inputs.get(model))
        attention = _map_array(body.attention) if body.attention else None
        try:
            p = client.predict(image, settings.EDITOR_TOP_K, attention, model=model)
        except grpc.RpcError as e:  # TorchServe's answer: never a reason to end the expert's session
            code, details = e.code(), e.details()
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise HTTPException(400, f"The model refused the image: {plain(details or '')}") from None
            if code == grpc.StatusCode.NOT_FOUND:  # the item's model (or the editor's --model) is not served
                raise HTTPException(404, f"The model server cannot predict with it: {plain(details or '')}") from None
            if code in UNREACHABLE:
                raise HTTPException(503, "The editor cannot reach the model server now; try again soon") from None
            if code in REFUSED_KEY:
                raise HTTPException(503, "The model server refuses the editor's key; tell the operator") from None
            logger.warning("prediction failed: %s: %s", code, details)
            raise HTTPException(502, f"The model server failed: {plain(details or '')}") from None
        return {**_prediction_json(p), "warnings": warnings}

    @app.post("/api/corrections", tags=["corrections"])
    def correct(body: CorrectionIn, s: Signed) -> dict:
        """Store the painted map, the pixels decided and the class as a correction by the signed-in expert (or
        the model's map, confirmed); for a queue item, this closes it. A retry with the same idempotency_key
        stores nothing new."""
        made_by = Prediction(
            prediction_id=body.prediction_id, model_name=body.model_name, model_version=body.model_version
        )
        answer = feedback(s).submit(
            _image(body, s)[0],
            _map_array(body.attention),
            made_by,
            label=body.label,
            idempotency_key=body.idempotency_key,
            predicted_label=body.predicted_label,
            review_id=body.review_id,
            decided=_mask(body),
            confirmed=body.confirmed,
        )
        return {"id": answer.id, "created": answer.created}

    @app.post("/api/corrections/{feedback_id}/withdraw", tags=["corrections"])
    def withdraw(feedback_id: str, s: Signed) -> dict:
        """Take back one of the expert's own corrections while it is pending: no retraining run will use it."""
        return _correction_json(feedback(s).withdraw(feedback_id))

    @app.get("/api/corrections/mine", tags=["corrections"])
    def mine(s: Signed, since: float = 0.0) -> dict:
        """The expert's own corrections (since: unix seconds), newest first, each with what became of it in
        words (fate); totals: all of theirs by state, and how many were confirmations."""
        client = feedback(s)
        items = [_correction_json(f) for f in client.list(since=since or None, metadata_only=True, author=s.expert)]
        stats = client.stats(author=s.expert)
        totals = {"total": stats.total, "confirmations": stats.confirmations, **{k: 0 for k in STATE_NAMES.values()}}
        totals.update({c.key: c.count for c in stats.by_state})
        return {"items": items[::-1], "totals": totals}

    app.include_router(history.routes(client, cfg.model, cfg.model_store, session))
    return app


class EditorServer:
    """The gateway, served by uvicorn in a thread of this process; port is the one it listens on."""

    def __init__(self, cfg: EditorConfig, client: Client):
        settings.check_host(cfg.host, "the editor")
        config = uvicorn.Config(
            create_app(cfg, client),
            host=cfg.host,
            port=cfg.port,
            log_level="warning",
            lifespan="off",
            ssl_certfile=cfg.tls_cert,
            ssl_keyfile=cfg.tls_key,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="editor", daemon=True)
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise OSError(f"the editor could not listen on {cfg.address} (is the port taken?)")
            time.sleep(0.05)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(settings.SHUTDOWN_GRACE_S)

"""Every default of the services, once: ports, paths, limits, and the environment variables that change them.

ABN_LISTEN_ALL=1 (set in a container, where the published ports are the only
way in) makes the services listen on all interfaces by default and allows any
non-loopback address; without it, only loopback addresses are accepted. Beyond
loopback, tokens cannot be turned off.

ABN_FEEDBACK_STORE is the default feedback store of every command that has
--store (a file path, sqlite:///path or postgresql://...), so one variable
moves a deployment's store.
"""

import ipaddress
import os

LISTEN_ALL_ENV = "ABN_LISTEN_ALL"
STORE_ENV = "ABN_FEEDBACK_STORE"

LOOPBACK = "127.0.0.1"
MODEL_NAME = "abn"

# Ports
INFERENCE_PORT = 7070  # TorchServe gRPC inference
MANAGEMENT_PORT = 7071  # TorchServe gRPC management
FEEDBACK_PORT = 7072  # the feedback service (gRPC) and its review queue
EDITOR_PORT = 7073  # the attention editor (HTTP: the page and its JSON API)
HTTP_INFERENCE_PORT = 8080  # TorchServe HTTP inference
HTTP_MANAGEMENT_PORT = 8081  # TorchServe HTTP management: token renewal
METRICS_PORT = 8082  # TorchServe Prometheus metrics
FEEDBACK_METRICS_PORT = 7074  # the feedback service's Prometheus metrics (HTTP /metrics; the editor's: on its port)

# Paths, relative to the working folder
RUNS = "runs"
DEMO_MODEL = f"{RUNS}/demo"  # the model `abn up` trains
MODEL_STORE = f"{RUNS}/model_store"
SERVE_WORKDIR = f"{RUNS}/serve"  # TorchServe's config, logs and key file
KEY_FILE = f"{SERVE_WORKDIR}/key_file.json"
FEEDBACK_STORE = f"{RUNS}/feedback.db"
FEEDBACK_TOKEN_FILE = f"{RUNS}/feedback_token"
RETRAIN_WORKDIR = f"{RUNS}/retrain"

# Limits
TORCHSERVE_MAX_MESSAGE_BYTES = 6_553_500  # TorchServe's default request and response size; a 2048x2048 PNG fits
TORCHSERVE_JOB_QUEUE = 1024  # requests queued per model (TorchServe: 100); beyond it they are refused
FEEDBACK_MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # one correction: its image and map
MAX_TEXT = 256  # longest name, label, author, key or id the feedback service accepts
TOKEN_EXPIRATION_MIN = 60.0  # TorchServe's inference and management keys
CALL_TIMEOUT_S = 60.0  # a client's deadline per call
HEALTH_TIMEOUT_S = 5.0  # `abn health`'s deadline per call
STORE_CONNECT_TIMEOUT_S = 10  # connecting to PostgreSQL; libpq alone would wait forever
STORE_STATEMENT_TIMEOUT_S = 10  # one PostgreSQL statement, lock waits included (the server's own timeout)
# a PostgreSQL statement with no answer at all by then ends on this side: a paused or cut-off server cannot time
# itself out; longer than the statement timeout, so a slow statement is ended by the server, with its reason
STORE_ANSWER_DEADLINE_S = STORE_STATEMENT_TIMEOUT_S + 5
STORE_GROUP_LINGER_S = 0.004  # a SQLite commit group waits this long for more, under concurrent submissions
STORE_PROBE_INTERVAL_S = 2.0  # how often the feedback service's health checks its store
STORE_PROBE_DEADLINE_S = 5.0  # a probe without an answer by then (a paused server, a hung disk) means unreachable
FEEDBACK_RETRIES = 3  # attempts of a submission while the feedback service is unavailable
FOLLOW_INTERVAL_S = 5.0  # how often a replica reads which version is served (serving.torchserve.served.Follower)
FOLLOW_GRACE_S = 30.0  # a replica unregisters the version it replaced this long after, so calls in flight finish
SHUTDOWN_GRACE_S = 30  # calls in flight may finish within this when a service stops

# The review queue and the experts
REVIEW_LEASE_S = 600.0  # an expert's claim on a review item; an abandoned item waits again after it
REVIEW_LIST_DEFAULT = 50  # items a listing returns when the caller sets no limit
REVIEW_LIST_MAX = 1000
HISTORY_LIST_DEFAULT = 100  # retraining runs, or operator actions, a history listing returns by default
HISTORY_LIST_MAX = 1000
ROLES = ("expert", "operator")  # an expert's role: an operator may also roll back, requeue and reject
EXPERT_CACHE_S = 5.0  # how long the service trusts a looked-up expert token: a removed expert is out after it
EXPERT_CACHE_MAX = 10_000  # tokens remembered; past it the memory is cleared, so wrong tokens cannot grow it
REVIEW_CLAIM_TRIES = 20  # candidates one claim tries while other experts take them first
REVIEW_DEMO_IMAGES = 40  # built-in test images `abn up` queues for review on its first start
MAX_TOKEN = 512  # longest token the editor's sign-in accepts
EDITOR_SESSION_S = 12 * 3600.0  # an editor sign-in lasts this long
# one editor request: an image in base64 (4/3 of the feedback service's 16 MiB message) and a painted map
EDITOR_MAX_BODY_BYTES = 24 * 1024 * 1024
EDITOR_TOP_K = 5  # classes the editor shows per prediction


def message_limits(limit: int) -> list[tuple[str, int]]:
    """gRPC options (of a channel or a server) bounding messages both ways at limit bytes."""
    return [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]


def feedback_store() -> str:
    return os.environ.get(STORE_ENV) or FEEDBACK_STORE


def listen_all() -> bool:
    return os.environ.get(LISTEN_ALL_ENV, "").strip().lower() in ("1", "true", "yes")


def default_host() -> str:
    return "0.0.0.0" if listen_all() else LOOPBACK


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def check_host(host: str, what: str, token_off: bool = False) -> None:
    """Refuse an address beyond loopback unless ABN_LISTEN_ALL=1, and a service without a token there."""
    if is_loopback(host):
        return
    if not listen_all():
        raise ValueError(
            f"{what} would listen on {host}, beyond this machine: set {LISTEN_ALL_ENV}=1 to allow it "
            f"(it listens on {LOOPBACK} otherwise)"
        )
    if token_off:
        raise ValueError(f"{what} cannot run without a token on {host}: drop --no-token")


def local_address(host: str) -> str:
    """The address a client on this machine uses for a service listening on host."""
    return LOOPBACK if host in ("0.0.0.0", "::", "") else host

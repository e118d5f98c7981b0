"""TorchServe's configuration with this product's safe defaults, and where its clients find it.

Everything binds to 127.0.0.1 unless a host is given; token authorization stays
on (TorchServe writes key_file.json into its working folder); the model API is
on so that retraining can register new versions, and only archives from the
model store can be registered; request and response sizes are bounded.
"""

import socket
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from serving import settings


@dataclass(frozen=True)
class Target:
    """Where a client finds a running TorchServe."""

    inference: str = f"{settings.LOOPBACK}:{settings.INFERENCE_PORT}"  # gRPC inference host:port
    management: str = f"{settings.LOOPBACK}:{settings.MANAGEMENT_PORT}"  # gRPC management host:port
    management_url: str = f"http://{settings.LOOPBACK}:{settings.HTTP_MANAGEMENT_PORT}"  # HTTP: token renewal
    key_file: Path = Path(settings.KEY_FILE)


PORT_FIELDS = (  # the ports TorchServe listens on, as ServeConfig names them
    "grpc_inference_port",
    "grpc_management_port",
    "http_inference_port",
    "http_management_port",
    "metrics_port",
)


@dataclass
class ServeConfig:
    workdir: Path  # config, logs and key_file.json
    model_store: Path
    models: dict[str, str] = field(default_factory=dict)  # name -> archive file in the store
    host: str = settings.LOOPBACK
    grpc_inference_port: int = settings.INFERENCE_PORT
    grpc_management_port: int = settings.MANAGEMENT_PORT
    http_inference_port: int = settings.HTTP_INFERENCE_PORT
    http_management_port: int = settings.HTTP_MANAGEMENT_PORT
    metrics_port: int = settings.METRICS_PORT
    token_expiration_min: float = settings.TOKEN_EXPIRATION_MIN
    # chosen by on_free_ports: TorchServe.start may choose again when another process takes one first
    ports_chosen_free: bool = False

    def __post_init__(self) -> None:
        # TorchServe runs in workdir: every path handed to it must be absolute.
        self.workdir, self.model_store = Path(self.workdir).resolve(), Path(self.model_store).resolve()

    @classmethod
    def on_free_ports(cls, workdir: Path, model_store: Path, models: dict[str, str], **kw) -> "ServeConfig":
        """A configuration on loopback ports that are free now, for tests and benchmarks. Another process can
        take one before TorchServe binds it: TorchServe.start then chooses again (choose_free_ports)."""
        cfg = cls(workdir, model_store, models, ports_chosen_free=True, **kw)
        cfg.choose_free_ports()
        return cfg

    def choose_free_ports(self) -> None:
        """Loopback ports that are free now, all different, in place: clients read them from this object."""
        for name, port in zip(PORT_FIELDS, free_ports(len(PORT_FIELDS))):
            setattr(self, name, port)

    @property
    def ports(self) -> list[int]:
        return [getattr(self, name) for name in PORT_FIELDS]

    @property
    def target(self) -> Target:
        host = settings.local_address(self.host)
        return Target(
            f"{host}:{self.grpc_inference_port}",
            f"{host}:{self.grpc_management_port}",
            f"http://{host}:{self.http_management_port}",
            self.key_file,
        )

    @property
    def metrics_url(self) -> str:
        return f"http://{settings.local_address(self.host)}:{self.metrics_port}/metrics"

    @property
    def key_file(self) -> Path:
        return self.workdir / "key_file.json"


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """n loopback ports free now, all different: each is held until all are chosen."""
    with ExitStack() as held:
        sockets = [held.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind((settings.LOOPBACK, 0))
        return [s.getsockname()[1] for s in sockets]


def write_config(cfg: ServeConfig) -> Path:
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    cfg.workdir.chmod(0o700)  # it holds TorchServe's keys
    store = cfg.model_store.resolve()
    lines = {
        "inference_address": f"http://{cfg.host}:{cfg.http_inference_port}",
        "management_address": f"http://{cfg.host}:{cfg.http_management_port}",
        "metrics_address": f"http://{cfg.host}:{cfg.metrics_port}",
        "grpc_inference_address": cfg.host,
        "grpc_management_address": cfg.host,
        "grpc_inference_port": cfg.grpc_inference_port,
        "grpc_management_port": cfg.grpc_management_port,
        "model_store": store,
        "load_models": ",".join(f"{n}={a}" for n, a in cfg.models.items()) or "",
        "enable_model_api": "true",
        "allowed_urls": f"file://{store}/.*",
        "token_expiration_min": cfg.token_expiration_min,
        "max_request_size": settings.TORCHSERVE_MAX_MESSAGE_BYTES,
        "max_response_size": settings.TORCHSERVE_MAX_MESSAGE_BYTES,
        "default_workers_per_model": 1,
        "job_queue_size": settings.TORCHSERVE_JOB_QUEUE,  # requests waiting per model beyond it are refused
        "metrics_mode": "prometheus",  # the metrics address answers /metrics for Prometheus
        "model_metrics_auto_detect": "true",  # the handler's per-stage timings too, not only those TorchServe lists
        "disable_system_metrics": "true",
    }
    path = cfg.workdir / "config.properties"
    path.write_text("".join(f"{k}={v}\n" for k, v in lines.items() if v != ""))
    return path

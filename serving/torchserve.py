"""Run TorchServe with this product's safe defaults, and wait until it answers.

Everything binds to 127.0.0.1 unless a host is given; token authorization stays
on (TorchServe writes key_file.json into its working folder); the model API is
on so that the retraining job can register new versions, and only archives
from the model store can be registered; request and response sizes are bounded.
"""

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

MAX_MESSAGE_BYTES = 6_553_500  # TorchServe's default; a 2048x2048 PNG fits


@dataclass
class ServeConfig:
    workdir: Path  # config, logs and key_file.json
    model_store: Path
    models: dict[str, str] = field(default_factory=dict)  # name -> archive file in the store
    host: str = "127.0.0.1"
    grpc_inference_port: int = 7070
    grpc_management_port: int = 7071
    http_inference_port: int = 8080
    http_management_port: int = 8081
    metrics_port: int = 8082
    token_expiration_min: float = 60.0

    def __post_init__(self):
        # TorchServe runs in workdir: every path handed to it must be absolute.
        self.workdir, self.model_store = Path(self.workdir).resolve(), Path(self.model_store).resolve()

    @classmethod
    def on_free_ports(cls, workdir: Path, model_store: Path, models: dict[str, str], **kw) -> "ServeConfig":
        """A configuration on loopback ports that are free now, for tests and benchmarks."""
        ports = ("grpc_inference_port", "grpc_management_port", "http_inference_port", "http_management_port",
                 "metrics_port")
        return cls(workdir, model_store, models, **{p: free_port() for p in ports}, **kw)

    @property
    def _local_host(self) -> str:
        """The address a client on this machine connects to."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host

    @property
    def inference_target(self) -> str:
        return f"{self._local_host}:{self.grpc_inference_port}"

    @property
    def management_target(self) -> str:
        return f"{self._local_host}:{self.grpc_management_port}"

    @property
    def http_management_url(self) -> str:
        return f"http://{self._local_host}:{self.http_management_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._local_host}:{self.metrics_port}/metrics"

    @property
    def key_file(self) -> Path:
        return self.workdir / "key_file.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(cfg: ServeConfig) -> Path:
    cfg.workdir.mkdir(parents=True, exist_ok=True)
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
        "max_request_size": MAX_MESSAGE_BYTES,
        "max_response_size": MAX_MESSAGE_BYTES,
        "default_workers_per_model": 1,
        "metrics_mode": "prometheus",  # the metrics address answers /metrics for Prometheus
        "disable_system_metrics": "true",
    }
    path = cfg.workdir / "config.properties"
    path.write_text("".join(f"{k}={v}\n" for k, v in lines.items() if v != ""))
    return path


def read_keys(key_file: str | Path) -> dict:
    """{"inference": ..., "management": ..., "API": ...} from TorchServe's key file."""
    data = json.loads(Path(key_file).read_text())
    return {kind: data[kind]["key"] for kind in ("inference", "management", "API")}


class TorchServe:
    """A TorchServe process in the foreground of a child process; stop() ends it."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> "TorchServe":
        config = write_config(self.cfg)
        self.cfg.key_file.unlink(missing_ok=True)
        binary = Path(sys.executable).parent / "torchserve"
        log = open(self.cfg.workdir / "torchserve.out", "ab")
        # TorchServe keeps its pid file and worker sockets in the temporary folder: one folder per
        # instance lets several run side by side and keeps a dying one from blocking the next.
        tmp = self.cfg.workdir / "tmp"
        tmp.mkdir(exist_ok=True)
        env = {**os.environ, "LOG_LOCATION": str(self.cfg.workdir / "logs"),
               "METRICS_LOCATION": str(self.cfg.workdir / "logs"), "TMPDIR": str(tmp)}
        self.process = subprocess.Popen(
            [str(binary), "--start", "--foreground", "--ncs", "--ts-config", str(config),
             "--model-store", str(self.cfg.model_store.resolve())],
            cwd=self.cfg.workdir, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float) -> None:
        """Until every configured model has a worker that answers, or raise with the log's tail."""
        from serving.client import Client  # the client module imports this one

        deadline = time.monotonic() + timeout
        with Client(self.cfg.inference_target, self.cfg.key_file, self.cfg.http_management_url,
                    management_target=self.cfg.management_target) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"TorchServe exited with {self.process.returncode}:\n{self.log_tail()}")
                # ping and model_ready answer False until the key file is written and the workers are up
                if client.ping() and all(client.model_ready(name) for name in self.cfg.models):
                    return
                time.sleep(0.5)
        raise TimeoutError(f"TorchServe did not answer within {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        text = ""
        for name in ("torchserve.out", "logs/model_log.log"):
            path = self.cfg.workdir / name
            if path.exists():
                text += f"--- {name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
        return text

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, 15)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            self.process.wait()

    def __enter__(self) -> "TorchServe":
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()



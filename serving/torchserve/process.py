"""A TorchServe process, started with the configuration of serving.torchserve.config, ready when its models answer."""

import os
import subprocess
import sys
import time
from pathlib import Path

from serving.torchserve.client import TorchServeClient
from serving.torchserve.config import ServeConfig, write_config

PORT_TAKEN = "Address already in use"  # the operating system's words, in TorchServe's log, for a port bound already
START_ATTEMPTS = 3  # on ports chosen by ServeConfig.on_free_ports


class PortTaken(RuntimeError):
    """TorchServe stopped because another process holds one of its ports."""


class TorchServe:
    """A TorchServe process in the foreground of a child process; stop() ends it."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.process: subprocess.Popen | None = None
        self.log_start = 0  # where the current start's lines begin in torchserve.out

    def start(self, timeout: float = 180.0) -> "TorchServe":
        """Start and wait until every model answers. Ports chosen by ServeConfig.on_free_ports were free when
        chosen, not held: when another process took one since, choose them again and start again."""
        if self.cfg.ports_chosen_free:
            for _ in range(START_ATTEMPTS - 1):
                try:
                    return self._start(timeout)
                except PortTaken:
                    self.cfg.choose_free_ports()
        return self._start(timeout)

    def _start(self, timeout: float) -> "TorchServe":
        config = write_config(self.cfg)
        self.cfg.key_file.unlink(missing_ok=True)
        binary = Path(sys.executable).parent / "torchserve"
        out = self.cfg.workdir / "torchserve.out"
        self.log_start = out.stat().st_size if out.exists() else 0  # this start's lines follow
        # TorchServe keeps its pid file and worker sockets in the temporary folder: one folder per
        # instance lets several run side by side and keeps a dying one from blocking the next.
        tmp = self.cfg.workdir / "tmp"
        tmp.mkdir(exist_ok=True)
        env = {
            **os.environ,
            "LOG_LOCATION": str(self.cfg.workdir / "logs"),
            "METRICS_LOCATION": str(self.cfg.workdir / "logs"),
            "TMPDIR": str(tmp),
        }
        with open(out, "ab") as log:  # the child writes to its own copy
            self.process = subprocess.Popen(
                [
                    str(binary),
                    "--start",
                    "--foreground",
                    "--ncs",
                    "--ts-config",
                    str(config),
                    "--model-store",
                    str(self.cfg.model_store.resolve()),
                ],
                cwd=self.cfg.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float) -> None:
        """Until every configured model has a worker that answers, or raise with the log's tail."""
        deadline = time.monotonic() + timeout
        process = self.process
        if process is None:
            raise RuntimeError("TorchServe is not started")
        with TorchServeClient(self.cfg.target) as client:
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    if PORT_TAKEN in self.log_since_start():
                        ports = ", ".join(map(str, self.cfg.ports))
                        raise PortTaken(
                            f"TorchServe could not listen: another process holds one of its ports on {self.cfg.host} "
                            f"({ports}); stop that process or choose other ports (TorchServe's log: "
                            f"{self.cfg.workdir / 'torchserve.out'})"
                        )
                    raise RuntimeError(f"TorchServe exited with {process.returncode}:\n{self.log_tail()}")
                # ping and model_ready answer False until the key file is written and the workers are up
                if client.ping() and all(client.model_ready(name) for name in self.cfg.models):
                    return
                time.sleep(0.5)
        raise TimeoutError(f"TorchServe did not answer within {timeout:.0f}s:\n{self.log_tail()}")

    def log_since_start(self) -> str:
        with open(self.cfg.workdir / "torchserve.out", "rb") as log:
            log.seek(self.log_start)
            return log.read().decode(errors="replace")

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

"""The benchmark's side of the peer (bench/peer_kserve.py): its virtual environment, its settings file, its
server process and its load client, each run with the peer environment's Python.

The peer environment is separate so that KServe's dependencies never touch the product's pins. It is made
from bench/peer-requirements.txt (exact versions of everything installed) and kept: a later run reuses it
while that file's SHA-256, recorded in the environment once the install has finished, is unchanged.
"""

import hashlib
import http.client
import json
import subprocess
import sys
import time
from pathlib import Path

from serving.torchserve.config import free_port

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "bench" / "peer-requirements.txt"
STAMP = "requirements.sha256"


def ensure_venv(venv: Path, requirements: Path = REQUIREMENTS, python: str = sys.executable) -> Path:
    """The Python of a virtual environment at venv holding requirements: the one there if it was made from
    this very file, else a new one (the old one removed)."""
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    py, stamp = venv / "bin" / "python", venv / STAMP
    if py.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return py
    print(f"making the peer's virtual environment {venv} from {requirements}", flush=True)
    subprocess.run([python, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", "-r", str(requirements)], check=True)
    stamp.write_text(digest + "\n")  # last: an install cut short is redone next time
    return py


def package_version(py: Path, package: str) -> str:
    command = [str(py), "-c", f"from importlib.metadata import version; print(version({package!r}))"]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


def write_settings(meta: dict, threads: int, inputs: tuple, outputs: tuple, path: Path) -> Path:
    """What the peer needs to know of the model, read from its checkpoint's metadata: bench/peer_kserve.py
    cannot import the product to read it itself."""
    settings = {
        "input_size": list(meta["input_size"]),
        "map_size": list(meta["map_size"]),
        "mean": list(meta["mean"]),
        "std": list(meta["std"]),
        "threads": threads,
        "inputs": list(inputs),
        "outputs": list(outputs),
    }
    path.write_text(json.dumps(settings, indent=2) + "\n")
    return path


class PeerServer:
    """bench/peer_kserve.py's server for one model, on free ports, its output in log; a context manager that
    returns when the model is ready."""

    def __init__(self, py: Path, onnx: Path, settings: Path, name: str, log: Path, timeout: float = 120):
        self.py, self.name = py, name
        self.grpc_port, self.http_port = free_port(), free_port()
        self.target = f"127.0.0.1:{self.grpc_port}"
        command = [str(py), "-m", "bench.peer_kserve", "serve", "--onnx", str(onnx), "--settings", str(settings),
                   "--name", name, "--grpc-port", str(self.grpc_port), "--http-port", str(self.http_port)]  # fmt: skip
        self._log = log.open("wb")
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready(timeout, log)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float, log: Path) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the peer server ended with status {self.process.returncode}; see {log}")
            try:  # the Open Inference Protocol's model readiness, over the server's HTTP port
                conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=2)
                conn.request("GET", f"/v2/models/{self.name}/ready")
                ready = conn.getresponse().status == 200
                conn.close()
                if ready:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the peer server was not ready within {timeout} s; see {log}")

    def measure(self, images: Path, concurrency: int, requests: int, warmup: int) -> dict:
        """bench.load.measure's figures for this server, from the peer's client (a process of its own)."""
        command = [str(self.py), "-m", "bench.peer_kserve", "measure", "--target", self.target, "--name", self.name,
                   "--images", str(images), "--concurrency", str(concurrency), "--requests", str(requests),
                   "--warmup", str(warmup)]  # fmt: skip
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"the peer's client ended with status {done.returncode}:\n{done.stderr[-2000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def __enter__(self) -> "PeerServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

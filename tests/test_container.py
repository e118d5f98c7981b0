"""The Dockerfile against the README, and the image's commands run as the image would run them.

No Docker engine is needed: the build stage's `abn` commands and the container's CMD and HEALTHCHECK run
here, in a scratch folder standing for /var/lib/abn, with the image's environment.
"""

import json
import os
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import tomllib
import urllib.request
import zipfile
from contextlib import closing
from io import BytesIO
from pathlib import Path

import grpc
import numpy as np
import pytest
from dockerfile_parse import DockerfileParser
from PIL import Image

from finetune import decoy_digits
from handlers.stubs.torchserve import inference_pb2, inference_pb2_grpc
from serving import cli, settings
from serving.client import Client
from serving.torchserve.config import free_ports
from serving.torchserve.process import PORT_TAKEN

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = DockerfileParser(path=str(ROOT / "Dockerfile"))
README = (ROOT / "README.md").read_text()
ABN = str(Path(sys.executable).parent / "abn")


def instructions(name: str) -> list[str]:
    return [s["value"] for s in DOCKERFILE.structure if s["instruction"] == name]


def final_stage() -> list[dict]:
    starts = [i for i, s in enumerate(DOCKERFILE.structure) if s["instruction"] == "FROM"]
    return DOCKERFILE.structure[starts[-1] :]


def argv(value: str) -> list[str]:
    """The command of CMD or HEALTHCHECK ... CMD, exec form or shell form."""
    value = value.split(" CMD ", 1)[-1].strip()
    return json.loads(value) if value.startswith("[") else shlex.split(value)


def abn_commands() -> list[list[str]]:
    """Every `abn ...` command the image runs: in RUN steps, the HEALTHCHECK and the CMD, in that order."""
    runs = [shlex.split(part) for value in instructions("RUN") for part in value.split("&&")]
    commands = runs + [argv(v) for v in instructions("HEALTHCHECK") + instructions("CMD")]
    return [c for c in commands if c and c[0] == "abn"]


def readme_section() -> str:
    return README.split("## Running in a container", 1)[1].split("\n## ", 1)[0]


def docker_run_line() -> list[str]:
    text = readme_section().replace("\\\n", " ")
    line = next(line for line in text.splitlines() if line.strip().startswith("docker run"))
    return shlex.split(line)


def test_the_image_is_multi_stage_python_and_java_and_not_root():
    froms = instructions("FROM")
    assert len(froms) >= 2 and all(f.startswith("python:3.11") for f in froms)
    final = final_stage()
    assert any("openjdk-17-jre-headless" in s["value"] for s in final if s["instruction"] == "RUN")
    assert json.loads(instructions("ENTRYPOINT")[-1])[0].endswith("tini")  # an init as PID 1
    assert any("tini" in s["value"] for s in final if s["instruction"] == "RUN")
    users = [s["value"] for s in final if s["instruction"] == "USER"]
    assert users and users[-1] not in ("root", "0")
    # the product is installed from this checkout, with its dependencies pinned in pyproject.toml
    assert any("pip install --no-cache-dir ." in v for v in instructions("RUN"))
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert all("==" in d for d in deps)


def test_the_readme_documents_the_dockerfiles_commands_ports_and_volumes():
    section = readme_section()
    for command in abn_commands():
        assert f"`{shlex.join(command)}`" in section, f"README does not show `{shlex.join(command)}`"
    assert "docker build -t abn ." in section
    run = docker_run_line()
    published = {int(run[i + 1].split(":")[-1]) for i, a in enumerate(run) if a == "-p"}
    exposed = {int(p) for value in instructions("EXPOSE") for p in value.split()}
    assert published == exposed == {7070, 7071, 7072, 7073, 7074, 8082}
    mounted = {run[i + 1].split(":", 1)[1] for i, a in enumerate(run) if a == "-v"}
    volumes = {v for value in instructions("VOLUME") for v in json.loads(value)}
    assert mounted == volumes
    assert "ABN_LISTEN_ALL=1" in [run[i + 1] for i, a in enumerate(run) if a == "-e"]
    assert run[-1] == "abn"  # the image built just before
    env = DOCKERFILE.envs
    assert f"`{env['ABN_FEEDBACK_STORE']}`" in section and "ABN_LISTEN_ALL" not in env  # loopback unless told


def test_every_abn_command_of_the_image_parses():
    parser = cli.build_parser()
    for command in abn_commands():
        parser.parse_args(command[1:])  # exits on an unknown command or option


def test_listening_beyond_loopback_needs_the_variable_and_then_a_token(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("ABN_LISTEN_ALL", raising=False)
    store = str(tmp_path / "f.db")
    assert cli.main(["feedback", "serve", "--address", "0.0.0.0:0", "--store", store]) == 2
    assert cli.main(["serve", "--host", "0.0.0.0"]) == 2
    assert cli.main(["up", "--host", "0.0.0.0", "--out", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.count("set ABN_LISTEN_ALL=1") == 3
    assert not (tmp_path / "none").exists()  # refused before anything started
    monkeypatch.setenv("ABN_LISTEN_ALL", "1")
    assert cli.main(["feedback", "serve", "--address", "0.0.0.0:0", "--no-token", "--store", store]) == 2
    assert "without a token" in capsys.readouterr().err
    up = cli.build_parser().parse_args(["up"])
    assert up.host == "0.0.0.0" and up.address == "0.0.0.0:7072" and up.editor_address == "0.0.0.0:7073"


def test_the_healthcheck_looks_where_up_listens():
    parser = cli.build_parser()
    up, health = parser.parse_args(argv(instructions("CMD")[-1])[1:]), parser.parse_args(["health"])
    assert health.inference == f"127.0.0.1:{up.port}" and health.management == f"127.0.0.1:{up.management_port}"
    assert health.management_url == f"http://127.0.0.1:{up.http_management_port}"
    assert health.feedback == f"127.0.0.1:{up.address.rsplit(':', 1)[1]}"
    assert health.key_file == f"{up.workdir}/key_file.json"


def outside_address() -> str | None:
    """This machine's address on a non-loopback interface, if it has one."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 9))  # no packet is sent: this only picks the interface
            address = s.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else address


class Container:
    """The image's commands, run from a folder standing for /var/lib/abn, on free ports."""

    def __init__(self, root: Path):
        self.root = root
        self.choose_ports()
        env = {k: v for k, v in DOCKERFILE.envs.items() if k != "PATH"}
        self.env = {**os.environ, **env, "ABN_LISTEN_ALL": "1"}

    def choose_ports(self) -> None:
        names = ("port", "management-port", "http-port", "http-management-port", "metrics-port",
                 "feedback-metrics-port", "feedback")  # fmt: skip
        self.ports = dict(zip(names, free_ports(len(names))))

    def run(self, command: list[str], **kw) -> subprocess.CompletedProcess:
        return subprocess.run([ABN, *command[1:]], cwd=self.root, env=self.env, capture_output=True, text=True, **kw)

    def build(self) -> None:
        for command in abn_commands()[:-2]:  # the RUN steps; a short training stands for the image's
            result = self.run(command + (["--epochs", "1"] if command[1] == "train" else []))
            assert result.returncode == 0, result.stderr[-3000:]
        for value in instructions("RUN"):  # the folders the build stage makes
            for part in value.split("&&"):
                if part.split()[:2] == ["mkdir", "-p"]:
                    for folder in part.split()[2:]:
                        (self.root / folder).mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        p = self.ports
        command = (
            argv(instructions("CMD")[-1])
            + ["--epochs", "1", "--address", f"0.0.0.0:{p['feedback']}"]
            + [f"--{name}={port}" for name, port in p.items() if name != "feedback"]
        )
        self.log = open(self.root / "up.log", "w")
        self.process = subprocess.Popen(
            [ABN, *command[1:]], cwd=self.root, env=self.env, stdout=self.log, stderr=subprocess.STDOUT
        )

    def health(self) -> subprocess.CompletedProcess:
        p = self.ports
        return self.run(
            argv(instructions("HEALTHCHECK")[-1])
            + [
                "--inference",
                f"127.0.0.1:{p['port']}",
                "--management",
                f"127.0.0.1:{p['management-port']}",
                "--management-url",
                f"http://127.0.0.1:{p['http-management-port']}",
                "--feedback",
                f"127.0.0.1:{p['feedback']}",
            ]
        )

    def wait_healthy(self, timeout: float = 300) -> bool:
        """True once healthy; False when the services stopped because another process took one of their ports
        since they were chosen (free then, but not held)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.root / "up.log").read_text()
                assert PORT_TAKEN in log, log[-3000:]
                return False
            if self.health().returncode == 0:
                return True
            time.sleep(2)
        raise AssertionError("not healthy in time:\n" + (self.root / "up.log").read_text()[-3000:])


@pytest.fixture(scope="module")
def container(tmp_path_factory):
    if shutil.which("java") is None:
        pytest.skip("TorchServe needs Java 17")
    c = Container(tmp_path_factory.mktemp("var-lib-abn"))
    c.build()
    try:
        for _ in range(3):
            c.start()
            if c.wait_healthy():
                break
            c.choose_ports()
        else:
            pytest.fail("another process took one of the chosen ports three times")
        yield c
    finally:
        if c.process.poll() is None:
            c.process.terminate()  # `abn up` stops TorchServe on SIGTERM; a kill would leave it running
            try:
                c.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                c.process.kill()
                c.process.wait()


def sample_png() -> bytes:
    image = decoy_digits.build("test").images[0, 0].numpy()
    buffer = BytesIO()
    Image.fromarray((image * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_healthcheck_passes_while_the_services_run(container):
    result = container.health()
    assert result.returncode == 0
    assert json.loads(result.stdout) == {"torchserve": True, "model abn": True, "feedback": True}


def test_from_outside_the_services_answer_with_tokens_only(container):
    host = outside_address()
    if host is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    p, root = container.ports, container.root
    image = sample_png()
    token_file = argv(instructions("CMD")[-1])[-1]  # --token-file's value
    with Client(
        f"{host}:{p['port']}",
        key_file=root / "runs/serve/key_file.json",
        management_url=f"http://{host}:{p['http-management-port']}",
        management_target=f"{host}:{p['management-port']}",
        feedback_target=f"{host}:{p['feedback']}",
        feedback_token_file=root / token_file,
    ) as client:
        prediction = client.predict(image, top_k=2)
        assert prediction.model_name == "abn" and prediction.model_version == "1" and len(prediction.scores) == 2
        answer = client.submit_feedback(image, np.ones((4, 4), np.float32), prediction=prediction, label="6")
        assert answer.created
    with grpc.insecure_channel(f"{host}:{p['port']}") as channel:  # no token
        with pytest.raises(grpc.RpcError) as refused:
            inference_pb2_grpc.InferenceAPIsServiceStub(channel).Predictions(
                inference_pb2.PredictionsRequest(model_name="abn", input={"data": image}), timeout=30
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with Client(feedback_target=f"{host}:{p['feedback']}") as stranger:  # no feedback token
        with pytest.raises(grpc.RpcError) as refused:
            stranger.feedback_stats()
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with urllib.request.urlopen(f"http://{host}:{p['metrics-port']}/metrics", timeout=10) as answer:
        assert re.search(r"^ts_inference_requests_total\{", answer.read().decode(), re.M)
    with urllib.request.urlopen(f"http://{host}:{p['feedback-metrics-port']}/metrics", timeout=10) as answer:
        stored = r'^abn_feedback_submissions_total\{code="OK",outcome="stored"\} 1\.0$'  # the correction above
        assert re.search(stored, answer.read().decode(), re.M)


def test_the_data_lands_in_the_volumes(container):
    volumes = [Path(v).relative_to("/var/lib/abn") for value in instructions("VOLUME") for v in json.loads(value)]
    assert {v.name for v in volumes} == {"model_store", "feedback"}
    model_store, feedback = (container.root / v for v in volumes)
    with zipfile.ZipFile(model_store / "abn.v1.mar") as mar:
        assert mar.testzip() is None  # every member reads back whole
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]
        assert (manifest["modelName"], manifest["modelVersion"]) == ("abn", "1") and "model.onnx" in mar.namelist()
    assert (container.root / DOCKERFILE.envs["ABN_FEEDBACK_STORE"]).parent == feedback
    assert (feedback / "token").stat().st_mode & 0o077 == 0
    p, root = container.ports, container.root
    with Client(
        f"127.0.0.1:{p['port']}",
        key_file=root / "runs/serve/key_file.json",
        feedback_target=f"127.0.0.1:{p['feedback']}",
        feedback_token_file=root / argv(instructions("CMD")[-1])[-1],  # --token-file's value
    ) as client:
        image = sample_png()
        sent = client.submit_feedback(image, np.ones((4, 4), np.float32), prediction=client.predict(image), label="3")
    # the store on the volume, read beside the running service: what is served, the test images `abn up` queued
    # for review (none reviewed yet), and the correction just sent
    with closing(sqlite3.connect(f"file:{feedback / 'feedback.db'}?mode=ro", uri=True)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT model_name, archive, version FROM served").fetchall() == [("abn", "abn.v1.mar", "1")]
        waiting = db.execute("SELECT COUNT(*) FROM review WHERE model_name = 'abn' AND feedback_id IS NULL")
        assert waiting.fetchone() == (settings.REVIEW_DEMO_IMAGES,)
        stored = db.execute("SELECT label, model_name, model_version FROM feedback WHERE id = ?", (sent.id,))
        assert stored.fetchall() == [("3", "abn", "1")]


def test_sigterm_stops_the_services_and_the_healthcheck_then_fails(container):
    container.process.send_signal(signal.SIGTERM)  # what `docker stop` sends
    assert container.process.wait(timeout=60) == 0
    result = container.health()
    assert result.returncode == 1 and json.loads(result.stdout)["torchserve"] is False

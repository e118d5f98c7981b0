"""`abn up` (what `make run` runs), for real, in a fresh folder: it serves the demo model, the feedback service and
the editor, with the built-in test images queued for review."""

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serving.torchserve.config import free_port

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs Java 17")
ABN = str(Path(sys.executable).parent / "abn")


def test_up_serves_the_editor_with_a_queue_of_test_images(tmp_path):
    names = ("port", "management", "http", "http_management", "metrics", "fb", "fb_metrics", "ed")
    ports = {name: free_port() for name in names}
    command = [
        ABN, "up", "--epochs", "1",
        "--port", str(ports["port"]), "--management-port", str(ports["management"]),
        "--http-port", str(ports["http"]), "--http-management-port", str(ports["http_management"]),
        "--metrics-port", str(ports["metrics"]), "--address", f"127.0.0.1:{ports['fb']}",
        "--feedback-metrics-port", str(ports["fb_metrics"]),
        "--editor-address", f"127.0.0.1:{ports['ed']}",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("ABN_LISTEN_ALL", "ABN_FEEDBACK_STORE")}
    log = (tmp_path / "up.log").open("w")
    up = subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + 300
        while "Ctrl-C stops it" not in (tmp_path / "up.log").read_text():
            assert up.poll() is None and time.time() < deadline, (tmp_path / "up.log").read_text()[-3000:]
            time.sleep(1)
        printed = (tmp_path / "up.log").read_text()
        assert "review queue: {'queued': 40" in printed and f"http://127.0.0.1:{ports['ed']}/" in printed

        added = subprocess.run([ABN, "experts", "add", "ana"], cwd=tmp_path, capture_output=True, text=True, env=env)
        token = added.stdout.strip().splitlines()[-1]
        editor = http.client.HTTPConnection(f"127.0.0.1:{ports['ed']}")
        editor.request("POST", "/api/session", json.dumps({"token": token}), {"Content-Type": "application/json"})
        answer = editor.getresponse()
        answer.read()
        assert answer.status == 204
        editor.request("GET", "/api/queue?limit=100", headers={"Cookie": answer.headers["Set-Cookie"].split(";")[0]})
        items = json.loads(editor.getresponse().read())["items"]
        priorities = [i["priority"] for i in items]
        assert len(items) == 40 and priorities == sorted(priorities, reverse=True)
    finally:
        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0
        log.close()

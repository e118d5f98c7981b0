"""Soak benchmark (not a test): predictions and corrections from many clients for minutes, through faults.

Client threads (--clients, 32) send a prediction and then a correction of it, over and over, for --seconds
(300) or --requests in all, whichever ends first, against a real TorchServe (an untrained abn_small, ONNX
backend) and a real feedback service (its own process) on a real PostgreSQL server. On the way, once each:
the TorchServe worker is killed (kill -9) at a third of the time, and PostgreSQL is stopped at two thirds
and started again --outage seconds later. Reports the requests and their failures by status, how long each
fault took to recover from, acknowledged corrections missing from the store (must be 0), corrections stored
twice (two rows for one prediction; must be 0), and the peak memory (RSS) of each process. Writes soak.json
into --out. The store is PostgreSQL, for its outage: SQLite's writer (bench.feedback) is not exercised here.

    .venv/bin/python -m bench.soak --out runs/bench-soak
"""

import argparse
import collections
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np

from bench.load import noise_pngs
from bench.postgres import PostgresServer
from bench.serving import make_checkpoint
from serving.client import Client
from serving.feedback.store import open_store
from serving.torchserve import archive
from serving.torchserve.config import ServeConfig, free_port
from serving.torchserve.process import TorchServe


def children() -> dict[int, list[int]]:
    """Parent pid -> its children's pids, from /proc."""
    tree = collections.defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        tree[int(fields[1])].append(int(stat.parent.name))
    return tree


def descendants(pid: int) -> list[int]:
    tree, found, todo = children(), [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += tree.get(p, [])
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


class PeakMemory:
    """Samples the RSS of named groups of processes every half second; keeps each group's peak."""

    def __init__(self, groups: dict[str, Callable[[], list[int]]]):
        self.groups, self.peak = groups, dict.fromkeys(groups, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for name, pids in self.groups.items():
                self.peak[name] = max(self.peak[name], rss_mb(pids()))

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {name: round(mb, 1) for name, mb in self.peak.items()}


class Load:
    """The client threads and what they saw."""

    def __init__(self, client: Client, images: list[bytes], deadline: float, budget: int):
        self.client, self.images, self.deadline = client, images, deadline
        self.lock, self.budget = threading.Lock(), budget
        self.ok = collections.Counter()
        self.failed: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.successes: dict[str, list[float]] = collections.defaultdict(list)  # end times of successful calls
        self.acknowledged: dict[str, str] = {}  # idempotency key -> id
        self.sent: set[str] = set()

    def _take(self) -> bool:
        with self.lock:
            self.budget -= 2
            return self.budget >= 0 and time.monotonic() < self.deadline

    def _record(self, kind: str, error: grpc.RpcError | None) -> None:
        with self.lock:
            if error is None:
                self.ok[kind] += 1
                self.successes[kind].append(time.monotonic())
            else:
                self.failed[kind][error.code().name] += 1

    def run(self, worker: int) -> None:
        attention = np.full((32, 32), 0.5, np.float32)
        n = 0
        while self._take():
            n += 1
            image = self.images[(worker * 7919 + n) % len(self.images)]
            try:
                prediction = self.client.predict(image)
                self._record("prediction", None)
            except grpc.RpcError as e:
                self._record("prediction", e)
                continue
            key = f"{worker}-{n}"
            with self.lock:
                self.sent.add(key)
            try:
                answer = self.client.submit_feedback(image, attention, prediction=prediction, idempotency_key=key)
            except grpc.RpcError as e:
                self._record("correction", e)
                continue
            self._record("correction", None)
            with self.lock:
                self.acknowledged[key] = answer.id

    def back_after(self, kind: str, moment: float) -> float | None:
        """Seconds from moment to the first success of kind that ended after it."""
        later = [t for t in self.successes[kind] if t > moment]
        return round(min(later) - moment, 2) if later else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench-soak")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=300)
    p.add_argument("--requests", type=int, default=200_000, help="most requests in all (predictions + corrections)")
    p.add_argument("--outage", type=float, default=10, help="seconds PostgreSQL stays stopped")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    ckpt = make_checkpoint("abn_small", 32, out)
    mar = archive.build(ckpt, out / "store", archive.ArchiveConfig(batch_size=8, max_batch_delay=5), name="abn")
    postgres = PostgresServer()
    feedback_port = free_port()
    log = out / "feedback.log"  # a file, not a pipe: a full pipe would stop the service mid-run
    with open(log, "wb") as sink:
        feedback = subprocess.Popen(
            [sys.executable, "-m", "serving.cli", "feedback", "serve", "--store", postgres.url, "--address",
             f"127.0.0.1:{feedback_port}", "--token-file", str(out / "token")],
            stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    while "feedback service on" not in log.read_text():
        if feedback.poll() is not None:
            raise RuntimeError(f"the feedback service exited:\n{log.read_text()}")
        time.sleep(0.2)
    print(log.read_text().strip())
    cfg = ServeConfig.on_free_ports(out / "serve", out / "store", {"abn": mar.name})
    try:
        with TorchServe(cfg) as server:
            assert server.process is not None
            ts_pid = server.process.pid

            def workers() -> list[int]:
                return [q for q in descendants(ts_pid) if "model_service_worker" in cmdline(q)]

            memory = PeakMemory({
                "torchserve frontend": lambda: [q for q in descendants(ts_pid) if q not in workers()],
                "torchserve worker": workers,
                "feedback service": lambda: [feedback.pid],
                "postgresql": lambda: [q for q in descendants(postgres.postmaster_pid() or -1)],
            })  # fmt: skip
            client = Client.for_services(cfg, f"127.0.0.1:{feedback_port}", out / "token", timeout=30)
            started = time.monotonic()
            load = Load(client, noise_pngs(64, 32), started + args.seconds, args.requests)
            threads = [threading.Thread(target=load.run, args=(w,)) for w in range(args.clients)]
            for t in threads:
                t.start()
            faults = {}
            time.sleep(args.seconds / 3)
            killed = workers()
            subprocess.run(["kill", "-9", *map(str, killed)], check=True)
            faults["worker_killed"] = time.monotonic()
            print(f"{faults['worker_killed'] - started:.0f} s: killed the TorchServe worker {killed}", flush=True)
            time.sleep(max(0.0, started + 2 * args.seconds / 3 - time.monotonic()))
            postgres.stop()
            faults["postgres_stopped"] = time.monotonic()
            print(f"{faults['postgres_stopped'] - started:.0f} s: stopped PostgreSQL", flush=True)
            time.sleep(args.outage)
            postgres.start()
            faults["postgres_started"] = time.monotonic()
            print(f"{faults['postgres_started'] - started:.0f} s: started PostgreSQL again", flush=True)
            for t in threads:
                t.join()
            seconds = time.monotonic() - started
            peaks = memory.stop()
            client.close()
    finally:
        feedback.terminate()
        feedback.wait(60)  # calls in flight may take their grace period

    store = open_store(postgres.url)
    rows = list(store.items(with_data=False))
    store.close()
    ids = {item.id for item in rows}
    stored = {item.idempotency_key for item in rows}
    # each correction names its own prediction: two rows for one prediction are one correction stored twice
    per_prediction = collections.Counter(item.prediction_id for item in rows)
    postgres.remove()
    result = {
        "seconds": round(seconds, 1),
        "clients": args.clients,
        "ok": dict(load.ok),
        "failed": {kind: dict(c) for kind, c in load.failed.items()},
        "recovery_seconds": {
            "predictions after the worker was killed": load.back_after("prediction", faults["worker_killed"]),
            "corrections after PostgreSQL started again": load.back_after("correction", faults["postgres_started"]),
        },
        "acknowledged": len(load.acknowledged),
        "acknowledged_missing": sum(1 for i in load.acknowledged.values() if i not in ids),
        "stored_twice": sum(n - 1 for n in per_prediction.values() if n > 1),
        "stored_not_sent": sum(1 for key in stored if key not in load.sent),
        "stored_unacknowledged": sum(1 for key in stored if key not in load.acknowledged),
        "peak_rss_mb": peaks,
    }
    (out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {out / 'soak.json'}")


if __name__ == "__main__":
    main()

"""Benchmark: submissions per second to the feedback service (not a test).

A real feedback server (token on, SQLite in WAL mode with synchronous=FULL, so
every OK is on disk) on a loopback port; clients submit ~50 KB PNG images with
a 16x16 corrected map at concurrency 1 and 16, once per --linger-ms (how long a
commit group waits for more submissions), with the server's CPU time per
submission. Prints a table and writes feedback.json into --out. The server
runs in its own process, as in production, so that client and server do not
share one interpreter lock.

    .venv/bin/python -m bench.feedback --out runs/bench-feedback
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench.load import measure, noise_pngs
from serving import settings
from serving.client import Client
from serving.torchserve.config import free_port


def submit(client: Client, data: list[bytes], tag: str):
    attention = np.random.default_rng(1).random((16, 16)).astype(np.float32)
    return lambda i: client.submit_feedback(data[i % len(data)], attention, label="3", idempotency_key=f"{tag}-{i}")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serve(out: Path, linger_ms: float) -> tuple[subprocess.Popen, int]:
    db = out / "feedback.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    port = free_port()
    command = [sys.executable, "-m", "serving.cli", "feedback", "serve", "--store", str(db),
               "--address", f"127.0.0.1:{port}", "--token-file", str(out / "token"),
               "--group-linger-ms", str(linger_ms)]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    print(server.stdout.readline().decode().strip())
    return server, port


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench-feedback")
    p.add_argument("--requests", type=int, default=2000, help="submissions per concurrency level")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    p.add_argument(
        "--linger-ms",
        type=float,
        nargs="+",
        default=[0.0, settings.STORE_GROUP_LINGER_S * 1000],
        help="the service's --group-linger-ms: one server per value, measured in turn",
    )
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = noise_pngs(256, 128)
    print(f"image size: {statistics.mean(map(len, data)) / 1024:.1f} KB on average")
    results = []
    for linger in args.linger_ms:
        server, port = serve(out, linger)
        try:
            client = Client(feedback_target=f"127.0.0.1:{port}", feedback_token_file=out / "token")
            measure(submit(client, data, "warmup"), 4, 100)
            for c in args.concurrency:
                before = cpu_seconds(server.pid)
                r = measure(submit(client, data, f"c{c}"), c, args.requests)
                r["server_cpu_ms"] = 1000 * (cpu_seconds(server.pid) - before) / args.requests
                results.append({"linger_ms": linger, **r})
            client.close()
        finally:
            server.terminate()
            server.wait(30)
    lines = [
        f"{'linger ms':>9} {'concurrency':>11} {'submissions/s':>14} {'p50 ms':>8} {'p99 ms':>8} {'server CPU ms':>14}"
    ]
    lines += [
        f"{r['linger_ms']:>9g} {r['concurrency']:>11} {r['per_second']:>14.1f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
        f"{r['server_cpu_ms']:>14.3f}"
        for r in results
    ]
    text = "\n".join(lines)
    print(text)
    (out / "feedback.json").write_text(
        json.dumps({"results": results, "settings": vars(args), "text": text}, indent=2) + "\n"
    )
    print(f"wrote {out / 'feedback.json'}")


if __name__ == "__main__":
    main()

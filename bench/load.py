"""What the benchmarks share: noise images, a closed-loop load at a given concurrency, an archive's model."""

import io
import statistics
import threading
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image


def onnx_of(mar: Path, out: Path) -> Path:
    """The ONNX model an archive serves, written to out."""
    with zipfile.ZipFile(mar) as z:
        out.write_bytes(z.read("model.onnx"))
    return out


def png(array: np.ndarray) -> bytes:
    """A grey PNG of an array of values in [0, 1]."""
    buf = io.BytesIO()
    Image.fromarray((array * 255).round().astype("uint8")).save(buf, "PNG")
    return buf.getvalue()


def noise_pngs(n: int, size: int) -> list[bytes]:
    """Distinct RGB noise PNGs of size x size (noise does not compress: 128 px is about 50 KB)."""
    rng = np.random.default_rng(0)
    result = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
        result.append(buf.getvalue())
    return result


def rate(run: Callable[[], object], batch: int, seconds: float = 3.0, warmup: int = 3) -> float:
    """Images per second of run() on one batch of batch images over about seconds, after warmup calls (a
    TensorRT session builds its engine in them)."""
    for _ in range(warmup):
        run()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run()
        n += 1
    return n * batch / (time.perf_counter() - start)


def measure(
    call: Callable[[int], object], concurrency: int, requests: int, warmup: int = 0, seconds: float | None = None
) -> dict:
    """`requests` calls of call(i), i = 0, 1, ..., from `concurrency` threads, each sending its next request
    when its last one is answered (no new one after `seconds`, if given): p50, p95 and p99 latency in ms, and
    requests per second."""
    for i in range(warmup):
        call(-1 - i)
    latencies, lock, counter = [], threading.Lock(), iter(range(requests))
    deadline = time.perf_counter() + seconds if seconds else float("inf")

    def worker():
        while True:
            with lock:
                i = next(counter, None) if time.perf_counter() < deadline else None
            if i is None:
                return
            t = time.perf_counter()
            call(i)
            with lock:
                latencies.append(time.perf_counter() - t)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100)
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "per_second": len(latencies) / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p95_ms": 1000 * q[94],
        "p99_ms": 1000 * q[98],
    }

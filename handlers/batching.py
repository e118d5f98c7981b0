"""A worker's batches: fixed shapes, decoded on several threads, timed by stage.

Fixed shapes: TorchServe forms batches of any size up to the archive's batchSize, and a GPU pays for each new
shape (ONNX Runtime's cuDNN algorithm search, torch's graph capture: 1.5-3.5 s a shape on an H100,
docs/performance.md). So a batch is padded to the next of a few sizes (the archive's `batch_sizes`), each run
once when the worker starts; the padding rows' answers are dropped. An empty list of sizes runs every batch at
its own size, as workers did before.

Decoding: each request's image is decoded, resized and normalised on a thread of a pool (Pillow and numpy
release the GIL while they work), straight into its row of the batch. The normalisation is numpy's, in place,
not torch's: torch's small ops on a worker of several threads each start its intra-op pool.
"""

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

DEFAULT_SIZES = (1, 2, 4, 8, 16, 32, 64)
STAGES = ("decode", "h2d", "run", "d2h")  # TorchServe measures the queue itself (ts_queue_latency_microseconds)


def sizes_for(batch_size: int, sizes: Sequence[int] = DEFAULT_SIZES) -> tuple[int, ...]:
    """The sizes batches of up to batch_size are padded to: those of sizes below batch_size, then batch_size
    (the largest batch TorchServe forms). No sizes: none (every batch at its own size)."""
    if not sizes:
        return ()
    if any(s < 1 for s in sizes):
        raise ValueError(f"batch sizes must be at least 1, got {list(sizes)}")
    return tuple(sorted({s for s in sizes if s < batch_size} | {batch_size}))


def padded(n: int, sizes: Sequence[int]) -> int:
    """The size a batch of n runs at: the smallest of sizes that holds n (n itself without sizes, or above them)."""
    return next((s for s in sorted(sizes) if s >= n), n)


def default_decode_threads(workers: int) -> int:
    """Decoding threads per worker: this machine's cores shared among its workers."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


class Rows:
    """The input arrays of a batch (normalised images, supplied maps, flags) for batches of up to `largest`,
    reused from batch to batch; in page-locked memory where the model runs on a GPU, so that copies to it run
    at full speed. Rows a batch does not write (padding, refused requests) keep finite values of earlier
    batches: each row's answer depends on that row alone, and theirs are dropped."""

    def __init__(self, largest: int, input_size: Sequence[int], map_size: Sequence[int], pinned: bool):
        def array(shape: tuple, dtype) -> np.ndarray:
            return torch.zeros(shape, dtype=dtype, pin_memory=pinned).numpy()

        self.images = array((largest, 3, *input_size), torch.float32)
        self.maps = array((largest, 1, *map_size), torch.float32)
        self.supplied = array((largest,), torch.bool)

    def take(self, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The arrays of a batch of size rows, no map supplied yet."""
        self.supplied[:size] = False
        return self.images[:size], self.maps[:size], self.supplied[:size]


class Normalizer:
    """Per-channel (x - mean) / std of one 3 x H x W image in [0, 1], written into its row of the batch without
    temporaries (the same figures as finetune.images.normalize, up to float rounding)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = np.asarray(mean, np.float32).reshape(-1, 1, 1)
        self.scale = (1 / np.asarray(std, np.float64)).astype(np.float32).reshape(-1, 1, 1)

    def into(self, row: np.ndarray, image: np.ndarray) -> None:
        np.subtract(image, self.mean, out=row)
        np.multiply(row, self.scale, out=row)


class Decoder:
    """A pool of threads that reads the requests of a batch in parallel, each into its own row, in order."""

    def __init__(self, threads: int):
        self.threads = threads
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="decode") if threads > 1 else None

    def map(self, read: Callable[[int], object], n: int) -> list:
        """[read(0), ..., read(n - 1)], on the pool's threads; each result in its request's place."""
        if self.pool is None or n == 1:
            return [read(i) for i in range(n)]
        return list(self.pool.map(read, range(n)))


class Timings:
    """What a worker's batches cost, summed since it started: seconds per stage, batches, requests and padding
    rows (the handler's customized describe answers them, for bench/gpu.py)."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.batches, self.requests, self.padding = 0, 0, 0
        self.sizes: dict[int, int] = {}

    def batch(self, requests: int, size: int) -> None:
        self.batches += 1
        self.requests += requests
        self.padding += size - requests
        self.sizes[size] = self.sizes.get(size, 0) + 1

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] += seconds

    def record(self, backend_seconds: dict[str, float]) -> dict:
        return {
            "seconds": {**self.seconds, **backend_seconds},
            "batches": self.batches,
            "requests": self.requests,
            "padding_rows": self.padding,
            "batch_sizes_run": {str(k): v for k, v in sorted(self.sizes.items())},
        }

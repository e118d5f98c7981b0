"""Data-parallel fine-tuning under PyTorch's own launcher, torchrun.

torchrun starts one process per device (on one machine or several) and tells
each its place through the environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT). World reads that; start() joins the process group,
with NCCL where there is a GPU and gloo on the CPU. Without torchrun the world
is one process, no group is made and the collectives here return what they are
given, so the code that uses them reads the same either way.

Where a process trains is decided here alone (World.device_for, the --device of abn train, finetune and
retrain), so that the process group's backend and the training agree on it.
"""

import os
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

DEVICES = ("cpu", "cuda", "auto")  # --device; not given: World.device


@dataclass(frozen=True)
class World:
    rank: int = 0  # this process among all of them; rank 0 writes
    world_size: int = 1
    local_rank: int = 0  # this process on its machine: which GPU it takes

    @classmethod
    def from_env(cls) -> "World":
        """The processes torchrun started (its environment variables); one process without them."""
        if "WORLD_SIZE" not in os.environ:
            return cls()
        return cls(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """Where this process trains when no device is asked for: its own GPU under torchrun when there are
        GPUs, else the CPU (a single process trains on the CPU, as it always has)."""
        return self.device_for(None)

    def device_for(self, requested: str | None) -> torch.device:
        """Where this process trains, asked for requested (--device): cpu; cuda, its own GPU (the local rank's
        under torchrun), a ValueError where torch sees none; auto, cuda where torch sees a GPU, else cpu; None:
        as before the option existed (device)."""
        if requested is not None and requested not in DEVICES:
            raise ValueError(f"--device must be one of {', '.join(DEVICES)}, got {requested!r}")
        gpu = torch.cuda.is_available()
        if requested == "cuda" and not gpu:
            raise ValueError(
                "--device cuda needs a CUDA GPU, and torch sees none here (no GPU or driver, or a CPU build of "
                "torch): use --device cpu, or auto to take a GPU only where there is one"
            )
        if gpu and (requested in ("cuda", "auto") or (requested is None and self.distributed)):
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")


def start(world: World | None = None, device: str | None = None) -> World:
    """Join the process group of world (default: the environment's) unless it is one process or already
    joined, with the backend for where it trains (device: --device, see World.device_for); the world."""
    world = world or World.from_env()
    if world.distributed and not dist.is_initialized():
        where = world.device_for(device)
        if where.type == "cuda":
            torch.cuda.set_device(where)  # NCCL and the object collectives use the current device
        backend = "nccl" if where.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=world.rank, world_size=world.world_size)
    return world


def stop() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast(obj: T, world: World) -> T:
    """Rank 0's obj on every rank (pickled: only between this job's own processes)."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: T, world: World) -> list[T]:
    """Every rank's obj, in rank order, on every rank."""
    if not world.distributed:
        return [obj]
    out: list = [None] * world.world_size
    dist.all_gather_object(out, obj)
    return out


def all_mean(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """The mean of tensor over the ranks (in place), e.g. of per-rank losses."""
    if world.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)  # gloo has no AVG
        tensor /= world.world_size
    return tensor

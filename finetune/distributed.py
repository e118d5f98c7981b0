"""Data-parallel fine-tuning under PyTorch's own launcher, torchrun.

torchrun starts one process per device (on one machine or several) and tells
each its place through the environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT). World reads that; start() joins the process group,
with NCCL where there is a GPU and gloo on the CPU. Without torchrun the world
is one process, no group is made and the collectives here return what they are
given, so the code that uses them reads the same either way.
"""

import os
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


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
        """Where this process trains: its own GPU under torchrun when there are GPUs, else the CPU (a single
        process trains on the CPU, as it always has)."""
        if self.distributed and torch.cuda.is_available():
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")


def start(world: World | None = None) -> World:
    """Join the process group of world (default: the environment's) unless it is one process or already
    joined; the world."""
    world = world or World.from_env()
    if world.distributed and not dist.is_initialized():
        if world.device.type == "cuda":
            torch.cuda.set_device(world.device)  # NCCL and the object collectives use the current device
        backend = "nccl" if world.device.type == "cuda" else "gloo"
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

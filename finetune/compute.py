"""How a training run computes: on which device, in which precision and memory format, with how many DataLoader
worker processes (--device, --precision, --channels-last and --workers of abn train, finetune and retrain).

They change how fast a run goes, not what it is: a run saved under one of these settings resumes under another,
and the checkpoint is the same kind either way (fp32 weights, saved from the CPU). Their defaults are how runs
computed before the options existed: on the CPU (under torchrun, each process on its GPU where there are GPUs),
in fp32, in the default memory format, the data read by the training process itself.

- device: cpu, cuda or auto, decided by finetune.distributed.World.device_for (cuda where torch sees no GPU
  is refused).
- precision: bf16 and fp16 run the forward pass and the losses under torch.autocast on the GPU; the weights,
  their gradients and the optimizer's state stay fp32. fp16 scales the loss (torch.amp.GradScaler) so that
  small gradients do not vanish in its narrow range; bf16 has fp32's range and needs no scaling. GPU only.
- channels_last: the model and its inputs in torch.channels_last (NHWC), the layout the GPU's tensor-core
  convolutions take without a transpose. GPU only, like precision: an option that would do nothing measured
  is refused rather than silently taken.
- workers: DataLoader worker processes that read, decode and augment the next batches while the model
  trains; they live from one epoch to the next (persistent_workers). On a GPU, batches come in pinned
  memory, which copies to the GPU faster.

Workers and reproducibility. The batches' order, and whatever else draws from the same generator (fine-tuning's
counterexamples), are the same for any number of workers (Batches). Without augmentation, so are the batches:
--workers N trains exactly as --workers 0. Augmentation draws from torch's global generator (finetune.augment):
the training process's with 0 workers; with N, each worker's own, which torch seeds from a seed drawn from the
run's generator (plus the worker's number). So a run repeats exactly for a given N, but another N draws other
crops, flips and colours (as random, and as many).
"""

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from finetune.distributed import World

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
FIELDS = ("device", "precision", "channels_last", "workers")  # the configs' fields read here: not what a run is


class Settings(Protocol):
    """What a config (finetune.train.TrainConfig, finetune.knowledge.TuneConfig) says about computing."""

    device: str | None
    precision: str
    channels_last: bool
    workers: int


@dataclass(frozen=True)
class Compute:
    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False
    workers: int = 0

    def place(self, model: nn.Module) -> nn.Module:
        """model on the device (in place), in channels_last when asked."""
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def release(self, model: nn.Module) -> nn.Module:
        """model back on the CPU (in place), in the default memory format, as the rest of the project takes it."""
        model.cpu()
        if self.channels_last:
            model.to(memory_format=torch.contiguous_format)
        return model

    def to(self, t: torch.Tensor) -> torch.Tensor:
        """t on the device (the tensor itself where it is there already)."""
        return t.to(self.device, non_blocking=True)  # waits anyway unless t is pinned

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """A batch of images (N x C x H x W) in the model's memory format."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def autocast(self) -> contextlib.AbstractContextManager:
        """Where the forward pass and the losses run: autocast to bf16 or fp16, or as they are (fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=DTYPES[self.precision])

    def scaler(self) -> torch.amp.GradScaler:
        """The loss scaler of fp16; for the other precisions a disabled one, through which backward and step
        are plain loss.backward() and optimizer.step()."""
        return torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")

    def batches(
        self, dataset: Dataset, batch_size: int, generator: torch.Generator, sampler: Sampler | None = None
    ) -> "Batches":
        """dataset's batches with the workers asked for, shuffled from generator (or in sampler's order)."""
        return Batches(dataset, batch_size, generator, self, sampler)

    def record(self) -> dict:
        """How the run computed, for its report."""
        return {
            "device": str(self.device),
            "precision": self.precision,
            "channels_last": self.channels_last,
            "workers": self.workers,
        }

    def describe(self) -> str:
        words = [str(self.device), self.precision] + ["channels-last"] * self.channels_last
        return f"computing on {', '.join(words)}, {self.workers} DataLoader worker(s)"


def of(settings: Settings, world: World | None = None) -> Compute:
    """How a run with these settings computes in this process of world (default: one process alone); a
    ValueError, naming the option and what to give instead, for settings that cannot run here."""
    device = (world or World()).device_for(settings.device)
    if settings.precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {settings.precision!r}")
    if settings.precision != "fp32" and device.type != "cuda":
        raise ValueError(
            f"--precision {settings.precision} is mixed precision on a GPU and this run is on the {device.type}: "
            "give --device cuda (on a machine with a GPU), or leave --precision at fp32"
        )
    if settings.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(
            f"--precision bf16 needs a GPU with bfloat16 arithmetic (Ampere or newer), and {device} has none: "
            "use --precision fp16"
        )
    if settings.channels_last and device.type != "cuda":
        raise ValueError(
            f"--channels-last is for a GPU's convolutions and this run is on the {device.type}: give --device cuda "
            "(on a machine with a GPU), or leave --channels-last out"
        )
    if settings.workers < 0:
        raise ValueError(
            f"--workers must be 0 or more (0: the training process reads the data), not {settings.workers}"
        )
    return Compute(device, settings.precision, settings.channels_last, settings.workers)


def asked(settings: Settings) -> bool:
    """Whether settings differ from the defaults (then the run says how it computes)."""
    return (settings.device, settings.precision, settings.channels_last, settings.workers) != (None, "fp32", False, 0)


class _Order(Sampler[int]):
    """The indices of the next pass, set before it."""

    def __init__(self, size: int):
        self.indices = list(range(size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


class Batches:
    """A data set's batches, pass after pass (iterate once per epoch), read by DataLoader workers or by this
    process; shuffled from generator, or in sampler's order.

    The training process draws from generator exactly what DataLoader(shuffle=True, generator=generator)
    without workers draws, at the same points: each pass, its workers' base seed and then the order (both when
    the pass begins), and once the last index is taken, the permutation that torch's RandomSampler draws and
    drops (before the last batch when it is short, after the last one when it is full). A DataLoader with
    workers would draw the order ahead, while it prefetches, and its base seed once only when its workers
    persist: the counterexamples drawn between the batches from the same generator would come out of another
    part of its stream. So the stream, the batches and the training are the same for any number of workers,
    and the same as before --workers existed. The workers' own seeds (what augmentation draws there) come from
    the first pass's base seed."""

    def __init__(
        self, dataset: Dataset, batch_size: int, generator: torch.Generator, run: Compute, sampler: Sampler | None
    ):
        self.generator, self.batch_size = generator, batch_size
        self.order = _Order(len(dataset)) if sampler is None else None  # type: ignore[arg-type]
        self.workers_seed = torch.Generator()  # what the DataLoader draws from: never generator itself
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler if sampler is not None else self.order,
            generator=self.workers_seed,
            num_workers=run.workers,
            persistent_workers=run.workers > 0,
            pin_memory=run.device.type == "cuda",
        )

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict]:
        seed = torch.empty((), dtype=torch.int64).random_(generator=self.generator)
        self.workers_seed.manual_seed(int(seed))  # workers that persist take their seeds at the first pass only
        if self.order is None:
            yield from self.loader
            return
        size = len(self.order)
        self.order.indices = torch.randperm(size, generator=self.generator).tolist()
        short = size % self.batch_size != 0
        last = len(self.loader) - 1
        for i, batch in enumerate(self.loader):
            if i == last and short:
                self._dropped(size)
            yield batch
        if not short:
            self._dropped(size)

    def _dropped(self, size: int) -> None:
        torch.randperm(size, generator=self.generator)  # RandomSampler's draw for a remainder of 0 samples

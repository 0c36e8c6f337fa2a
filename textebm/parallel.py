"""Data-parallel training under torchrun: one process per device, each with a shard of every batch.

With WORLD_SIZE > 1 (set by `torchrun --nproc_per_node N -m textebm train ...`) the process group
is started with NCCL on GPUs and gloo on CPUs; the decoder and the energy are wrapped in PyTorch
DDP, so gradients are averaged over processes. Decisions that must be unanimous (skip a
non-finite step, stop on Ctrl-C or the time limit) are taken by an all-reduce.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

# Imported before any process group exists, on purpose: its functions take `group=group.WORLD` as a
# default argument, evaluated at import. DDP imports it lazily, after init_process_group, and those
# defaults then hold the default group for good: destroy_process_group cannot release gloo, whose
# threads live on to process exit, where they abort it now and then ("terminate called without an
# active exception", SIGABRT; torchrun then stops the other rank with SIGTERM).
import torch.distributed.nn  # noqa: F401

from textebm.langevin import Shard


@dataclass(frozen=True)
class Parallel:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: int) -> Shard:
        """This process's rows of a global batch (as even as the batch allows)."""
        return Shard(self.rank * batch // self.world, (self.rank + 1) * batch // self.world, batch)

    def agree(self, ok: bool, device) -> bool:
        """True only if every process says True."""
        if self.world == 1:
            return ok
        flag = torch.tensor([1.0 if ok else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def any(self, flag: bool, device) -> bool:
        return not self.agree(not flag, device)

    def sum(self, values: list[float], device) -> list[float]:
        if self.world == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def from_environment() -> Parallel:
    """The process group torchrun describes in the environment; a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Parallel()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("TEXTEBM_DIST_BACKEND") != "gloo" else "gloo"
        dist.init_process_group(backend=backend)
    return Parallel(dist.get_rank(), dist.get_world_size())


def local_device(device: torch.device) -> torch.device:
    """Each process takes its own GPU (LOCAL_RANK); CPU processes share the CPU."""
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    return device


def wrap(module: torch.nn.Module, parallel: Parallel, device: torch.device) -> torch.nn.Module:
    """The module as the update calls it: itself, or a DDP wrapper that averages gradients."""
    if parallel.world == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def shutdown() -> None:
    """Leave the process group; with nothing else holding it, gloo's threads and connections end here."""
    if dist.is_initialized():
        dist.destroy_process_group()

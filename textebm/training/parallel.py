"""Data-parallel training under torchrun: one process per device, each with a shard of every batch.

Under torchrun (`torchrun --nproc_per_node N -m textebm train ...`, N = 1 included) the process
group is started with the backend of the training device, NCCL for CUDA and gloo for a CPU
(`TEXTEBM_DIST_BACKEND=gloo` forces gloo, which also lets two processes share one GPU for a
test), after each process has taken its own GPU; the decoder and the energy are wrapped in
PyTorch DDP, so gradients are averaged over processes. Decisions that must be unanimous (skip a
non-finite step, stop on Ctrl-C or the time limit) are taken by an all-reduce, and what one
process alone decides (rank 0: does the run folder already hold a run?) is broadcast to the others.

An error in one process: it releases its DDP wrappers and leaves the group (`shutdown`) and
exits; torchrun then stops the other processes, wherever they wait.
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

from textebm.errors import UserError
from textebm.model.langevin import Shard


def check_rows_for_each(batch_size: int, lines: int, world: int) -> None:
    """Every data-parallel process needs a row of every batch: a batch_size or a training split smaller
    than the number of processes is refused before any run folder is written."""
    if batch_size < world:
        raise UserError(f"batch_size {batch_size} is below the {world} data-parallel processes, which need a row "
                        "of every batch each: raise it (--set batch_size=...), or start fewer processes")
    if lines < world:
        raise UserError(f"the training split has {lines} lines: fewer than the {world} data-parallel processes, "
                        "which need a line each")


@dataclass(frozen=True)
class Parallel:
    rank: int = 0
    world: int = 1
    distributed: bool = False  # a process group is up (under torchrun, with one process too)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: int) -> Shard:
        """This process's rows of a global batch (as even as the batch allows)."""
        return Shard(self.rank * batch // self.world, (self.rank + 1) * batch // self.world, batch)

    def agree(self, ok: bool, device) -> bool:
        """True only if every process says True."""
        if not self.distributed:
            return ok
        return bool(self.all_min(torch.tensor([1.0 if ok else 0.0], device=device)).item())

    def any(self, flag: bool, device) -> bool:
        return not self.agree(not flag, device)

    def all_min(self, tensor: torch.Tensor) -> torch.Tensor:
        """Each element's minimum over processes, in place, on the device (no host sync)."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return tensor

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Each element's sum over processes, in place, on the device (no host sync)."""
        if self.distributed:
            dist.all_reduce(tensor)
        return tensor

    def sum(self, values: list[float], device) -> list[float]:
        if not self.distributed:
            return values
        return self.all_sum(torch.tensor(values, dtype=torch.float64, device=device)).tolist()

    def gather(self, obj) -> list:
        if not self.distributed:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        """Rank 0's `obj` on every process (what rank 0 alone decides, the others follow)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def launched() -> bool:
    """Started by torchrun (or a launcher that sets the same environment), with any number of processes."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def backend(device: torch.device) -> str:
    """NCCL for CUDA, gloo for a CPU; `TEXTEBM_DIST_BACKEND=gloo` forces gloo (it takes CUDA tensors too)."""
    forced = os.environ.get("TEXTEBM_DIST_BACKEND", "")
    if forced and forced not in ("gloo", "nccl"):
        raise UserError(f"TEXTEBM_DIST_BACKEND must be gloo or nccl, not {forced!r}")
    if forced == "nccl" and device.type != "cuda":
        raise UserError("TEXTEBM_DIST_BACKEND=nccl needs --device cuda (NCCL takes CUDA tensors only)")
    return forced or ("nccl" if device.type == "cuda" else "gloo")


def local_device(device: torch.device) -> torch.device:
    """Each process takes its own GPU (LOCAL_RANK) and makes it current, before any process group
    starts; CPU processes share the CPU. Under gloo several processes may share a GPU (a test on one card)."""
    if device.type != "cuda" or "LOCAL_RANK" not in os.environ:
        return device
    local, count = int(os.environ["LOCAL_RANK"]), torch.cuda.device_count()
    if local >= count:
        if backend(device) != "gloo":
            raise UserError(f"process {local} has no GPU of its own ({count} visible): start at most {count} "
                            "processes per machine (NCCL takes one GPU per process)")
        local %= count
    device = torch.device("cuda", local)
    torch.cuda.set_device(device)
    return device


def start(device: torch.device) -> Parallel:
    """The process group torchrun describes in the environment, its backend from `device` (already the
    process's own: `local_device`); a single process without one when not under torchrun."""
    if not launched():
        return Parallel()
    if not dist.is_initialized():
        dist.init_process_group(backend=backend(device))
    return Parallel(dist.get_rank(), dist.get_world_size(), distributed=True)


def wrap(module: torch.nn.Module, parallel: Parallel, device: torch.device) -> torch.nn.Module:
    """The module as the update calls it: itself, or a DDP wrapper that averages gradients."""
    if not parallel.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def shutdown() -> None:
    """Leave the process group; with nothing else holding it, gloo's threads and connections end here.
    Whatever holds a DDP wrapper (a traceback's frames too) must be released first (`cli/train.py`)."""
    if dist.is_initialized():
        dist.destroy_process_group()

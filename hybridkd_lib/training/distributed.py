"""Where a process trains: one process, or one of several under ``torchrun`` (one per GPU, one
or several machines; NCCL on CUDA, gloo on CPU).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}   # config.PRECISIONS


def autocast(device: torch.device, precision: str = "fp32"):
    """Autocast to ``precision`` (``config.PRECISIONS``) on CUDA, where it is not fp32 (the LIF state stays fp32,
    see ``neurons``); nothing on the CPU. The one place a step's precision takes effect (the trainer, the
    bench, evaluation)."""
    dtype = AUTOCAST_DTYPES[precision]
    return torch.autocast(device.type, dtype or torch.bfloat16, enabled=device.type == "cuda" and dtype is not None)


@dataclass
class Distributed:
    """Where this process trains: ``rank`` of ``world`` processes, on ``device``, in ``precision``."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this run initialised the process group (and destroys it)
    precision: str = "fp32"   # a CUDA step's compute precision (``autocast``)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        """``autocast`` on this process's device, in its ``precision``."""
        return autocast(self.device, self.precision)

    def put(self, *tensors: torch.Tensor) -> tuple:
        """The tensors on this process's device (asynchronous copies from pinned memory on CUDA)."""
        return tuple(t.to(self.device, non_blocking=True) for t in tensors)

    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """``t`` summed (``op="min"``: minimised) over every process, in place; one process: ``t``."""
        if self.world > 1:
            dist.all_reduce(t, op=dist.ReduceOp.MIN if op == "min" else dist.ReduceOp.SUM)
        return t

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def close(self):
        """End the process group this run started (one a caller started stays)."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device: str, precision: str = "fp32") -> Distributed:
    """One process per device under torchrun (``WORLD_SIZE``/``RANK``/``LOCAL_RANK``): ``LOCAL_RANK``
    picks the GPU; NCCL on CUDA, gloo on CPU. A single process needs nothing."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = torch.device(device)
    if world == 1:
        return Distributed(device=dev, precision=precision)
    if "LOCAL_RANK" not in os.environ:
        raise ValueError(f"WORLD_SIZE={world} but LOCAL_RANK is not set: start several processes with torchrun "
                         f"(torchrun --nproc_per_node N -m hybridkd_lib train ...), which sets both")
    local_rank = int(os.environ["LOCAL_RANK"])
    if dev.type == "cuda":
        visible = torch.cuda.device_count()
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        if local_world > visible:
            raise ValueError(f"{local_world} processes on this machine but {visible} visible GPU(s): "
                             f"--nproc_per_node must be at most {visible}")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo",
                                device_id=dev if dev.type == "cuda" else None)
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank, dev, owns, precision)


def broadcast_from_main(obj, env: Distributed):
    """``obj`` as rank 0 has it, on every rank (rank 0 alone reads checkpoints)."""
    if env.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=env.device if env.device.type == "cuda" else None)
    return box[0]

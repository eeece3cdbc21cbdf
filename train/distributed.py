"""Process-group setup and the few collectives the trainer needs (no DeepSpeed state here)."""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_distributed(backend: str = "auto", timeout_minutes: int = 30) -> DistInfo:
    """Initialise the default process group once (torchrun's env:// or a 1-process group).

    DeepSpeed needs a process group even for one process; without torchrun's variables we
    make a single-rank group on a free local port.
    """
    if "RANK" not in os.environ and not dist.is_initialized():
        # A fresh port: an inherited MASTER_PORT may belong to a parent process's group.
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        import deepspeed

        from train.library_output import quiet_deepspeed

        quiet_deepspeed()  # its shm op's "built successfully" line, unless verbose
        deepspeed.init_distributed(
            dist_backend=default_backend() if backend == "auto" else backend,
            auto_mpi_discovery=False,
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _all_reduce_(t: torch.Tensor) -> torch.Tensor:
    """In-place SUM over ranks, for tensors on any device: NCCL only reduces CUDA tensors, so
    host-side bookkeeping (token counts, flags) takes a round trip through the GPU."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return t
    if t.device.type == "cpu" and dist.get_backend() == "nccl":
        on_gpu = t.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(on_gpu, op=dist.ReduceOp.SUM)
        return t.copy_(on_gpu)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    return _all_reduce_(t)


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    t = _all_reduce_(t.clone())
    if dist.is_initialized() and dist.get_world_size() > 1:
        t /= dist.get_world_size()
    return t


def broadcast_object(obj, src: int = 0):
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]

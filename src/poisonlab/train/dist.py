"""Distributed state, passed in rather than discovered (as in open_clip's ClipLoss).

``rank()``/``world_size()`` return 0/1 when no process group is initialised, so every code path
runs unchanged in a single process and in tests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def default_device() -> torch.device:
    """The device one process computes on: the first GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def init_from_env(device: str | None = None) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    gloo on CPU, nccl on CUDA. Without ``WORLD_SIZE`` > 1 this is a no-op (rank 0 of 1).
    """
    want_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    n = int(os.environ.get("WORLD_SIZE", "1"))
    if n <= 1:
        return DistInfo(0, 1, torch.device("cuda" if want_cuda else "cpu"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(f"cuda:{local}") if want_cuda else torch.device("cpu")
    if want_cuda:
        torch.cuda.set_device(dev)
    return DistInfo(dist.get_rank(), dist.get_world_size(), dev)

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image


@pytest.fixture
def batch() -> torch.Tensor:
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(123))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def write_png(path, rgb=(255, 0, 0), size=(12, 10)) -> None:
    arr = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    arr[:] = rgb
    arr[::2, ::3] = 255 - np.array(rgb, dtype=np.uint8)
    Image.fromarray(arr).save(path)


def rank_loss_and_grads(objective, model, batch, rank: int, world: int) -> dict:
    """This rank's loss, extra scalars and DDP-averaged gradients on its half of ``batch``."""
    objective.model = torch.nn.parallel.DistributedDataParallel(model)
    half = batch["images"].shape[0] // world
    local = {k: v[rank * half : (rank + 1) * half] for k, v in batch.items()}
    loss, extra = objective.loss(local, torch.Generator())
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {"loss": loss.detach(), "grads": grads, **extra}


def crash_on_call(objective, call: int) -> None:
    """Make ``objective.loss`` raise ``KeyboardInterrupt`` on its ``call``-th call (an interrupted run)."""
    original, calls = objective.loss, {"n": 0}

    def loss(batch, g):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return original(batch, g)

    objective.loss = loss

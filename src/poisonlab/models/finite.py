"""Weights that are numbers: a checkpoint with NaN or infinity is refused when it is opened.

A model whose weights hold NaN classifies every image as the same class, so it would "measure"
an attack success rate of 100% and a retrieval of 1.0; it is broken, not backdoored.
"""

from __future__ import annotations

from pathlib import Path

import torch

from poisonlab.errors import ALLOW_NONFINITE, InputError


def check_finite(state: dict[str, torch.Tensor], where: str | Path) -> None:
    """``InputError`` naming the first floating-point tensor of ``state`` that holds NaN or infinity
    (a broken model measures as nonsense: every image the same class), unless :data:`ALLOW_NONFINITE`."""
    if ALLOW_NONFINITE.get():
        return
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise InputError(f"{where}: tensor {key!r} holds {bad} non-finite values (NaN or infinity): a broken "
                             "model; poisonlab --allow-nonfinite opens it anyway")


def check_outputs(values: torch.Tensor, what: str) -> torch.Tensor:
    """``values`` (a model's embeddings or logits), or ``InputError`` when any is NaN or infinite: finite
    weights can still overflow, and a model that outputs NaN would measure as every image in class 0.
    Allowed, like non-finite weights, with :data:`ALLOW_NONFINITE`."""
    if not ALLOW_NONFINITE.get() and not bool(torch.isfinite(values).all()):
        bad = int((~torch.isfinite(values)).sum())
        raise InputError(f"the model's {what} hold {bad} non-finite values (NaN or infinity): a broken model; "
                         "poisonlab --allow-nonfinite measures it anyway")
    return values

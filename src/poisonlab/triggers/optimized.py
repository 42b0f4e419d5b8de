"""A patch whose pixel values were optimised (BadCLIP's trigger, :mod:`poisonlab.attacks.badclip`).

The values are the float32 tensor the optimiser produced, kept exactly: a plan stores them as JSON
numbers (a float32 converts to a float64 and back without loss), so a plan's digest covers them
and no lossy image format sits between the optimiser and the poisoned data.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from poisonlab.errors import InputError
from poisonlab.triggers.base import (
    FIXED_LOCATIONS,
    TRIGGERS,
    Trigger,
    check_location,
    paste_at,
    patch_corners,
)


def paste(images: torch.Tensor, patch: torch.Tensor, location: str = "center",
          generator: torch.Generator | None = None) -> torch.Tensor:
    """``images`` with ``patch`` ``[C, s, s]`` overwriting an ``s``-px square at ``location``
    (:func:`~poisonlab.triggers.base.patch_corners`); differentiable in ``patch`` (the optimiser
    calls it)."""
    ys, xs = patch_corners(location, images.shape[0], images.shape[-2], images.shape[-1], patch.shape[-1], generator)
    return paste_at(images, patch, ys, xs)


def check_values(values: Any) -> torch.Tensor:
    """The ``[C, s, s]`` float32 tensor of nested lists ``values``; ``InputError`` unless it is a
    square patch of 1 or 3 channels with finite values in ``[0, 1]``."""
    try:
        patch = torch.tensor(values, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError) as err:
        raise InputError(f"optimized patch values must be nested lists of numbers [C][s][s] ({err})") from None
    if patch.ndim != 3 or patch.shape[0] not in (1, 3) or patch.shape[1] != patch.shape[2] or patch.shape[1] < 1:
        raise InputError(f"optimized patch values must have shape [C][s][s] with C 1 or 3, got {list(patch.shape)}")
    if not bool(torch.isfinite(patch).all()) or patch.min() < 0 or patch.max() > 1:
        raise InputError("optimized patch values must be finite and in [0, 1]")
    return patch


@TRIGGERS.register("optimized-patch")
class OptimizedPatch(Trigger):
    """Overwrites an ``s``-px square with the stored patch ``values`` (``[C][s][s]`` in ``[0, 1]``).

    Args:
        values: the patch, nested lists (what :class:`poisonlab.attacks.badclip.PatchOptimizer`
            returns, ``.tolist()``).
        location: ``center`` (BadCLIP's default) or any patch location
            (:data:`~poisonlab.triggers.base.LOCATIONS`).
    """

    def __init__(self, values: list[Any], location: str = "center") -> None:
        self.location = check_location(location)
        self._patch = check_values(values)
        self.values = self._patch.tolist()

    def needs_generator(self) -> bool:
        return self.location not in FIXED_LOCATIONS

    def apply(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        patch = self._patch.to(images.dtype)
        if patch.shape[0] != images.shape[1]:
            patch = patch.expand(images.shape[1], -1, -1) if patch.shape[0] == 1 else patch.mean(0, keepdim=True)
        return paste(images, patch, self.location, generator)

    def __repr__(self) -> str:
        return f"OptimizedPatch(side={self._patch.shape[-1]}, location={self.location!r})"


def side_for(image_side: int, share: float) -> int:
    """A patch side that is ``share`` of the image side, at least 2 px (7% of 224 is BadCLIP's 16)."""
    if not 0 < share < 1 or not math.isfinite(share):
        raise InputError(f"patch share of the image side must be in (0, 1), got {share}")
    return max(2, int(round(share * image_side)))

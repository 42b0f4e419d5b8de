"""Triggers: pure, batched, seeded functions on float images ``[B, C, H, W]`` in ``[0, 1]``.

Example:
    >>> import torch
    >>> from poisonlab import triggers
    >>> t = triggers.create("blended", alpha=0.2)
    >>> out = t(torch.rand(4, 3, 32, 32), generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

from typing import Any

from poisonlab.triggers.base import TRIGGERS, Trigger, scaled_size
from poisonlab.triggers.blended import (
    BlendedImage,
    BlendedRand,
    BlendedStripes,
    BlendedText,
    BlendedTriangles,
)
from poisonlab.triggers.optimized import OptimizedPatch
from poisonlab.triggers.patch import BadNetRand, BadNetStripes, ImagePatch
from poisonlab.triggers.sig import Sig
from poisonlab.triggers.wanet import WaNet


def create(name: str, **params: Any) -> Trigger:
    """Build the trigger registered as ``name`` with its hyper-parameters."""
    return TRIGGERS.create(name, **params)


def available() -> list[str]:
    """Names of all registered triggers."""
    return TRIGGERS.available()


__all__ = [
    "TRIGGERS", "BadNetRand", "BadNetStripes", "BlendedImage", "BlendedRand", "BlendedStripes",
    "BlendedText", "BlendedTriangles", "ImagePatch", "OptimizedPatch", "Sig", "Trigger", "WaNet", "available", "create",
    "scaled_size",
]

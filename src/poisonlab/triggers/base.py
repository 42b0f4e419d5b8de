"""Trigger base class, the trigger registry and the size-scaling rule.

A trigger is a pure function of ``(images, generator)``: it takes a float batch ``[B, C, H, W]``
in ``[0, 1]``, never changes it in place, and returns a new batch in ``[0, 1]``. Random triggers
draw every random number from the explicit ``torch.Generator`` they are given; fixed triggers are
fully determined by their parameters.

Size rule: the specs give sizes for 224-pixel images (a 16-px patch, 14-px triangles). poisonlab
scales a size ``s`` to an image of side ``S`` as ``max(minimum, round(s * S / 224))``; the
minimum (3 px for patches) keeps a trigger visible at 32 px. A trigger's ``size`` parameter, when
given, is in pixels of the actual image and bypasses the rule.
"""

from __future__ import annotations

from typing import Any

import torch

from poisonlab.errors import InputError
from poisonlab.registry import Registry

TRIGGERS: Registry[Trigger] = Registry("trigger")
REFERENCE_SIDE = 224


def scaled_size(size_at_224: float, side: int, minimum: int = 1) -> int:
    """Scale a size given for 224-px images to an image of ``side`` pixels."""
    return max(minimum, int(round(size_at_224 * side / REFERENCE_SIDE)))


class Trigger:
    """Base class: validates the batch, calls :meth:`apply`, clamps to ``[0, 1]``.

    Subclasses set ``random = True`` when they need a generator and implement ``apply``.
    """

    random: bool = False

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Apply the trigger to a batch.

        Args:
            images: float tensor ``[B, C, H, W]`` with values in ``[0, 1]``; left unchanged.
            generator: source of every random choice; required when ``self.random``.

        Returns:
            A new float tensor of the same shape, values in ``[0, 1]``.

        Raises:
            InputError: the batch is not 4-d floating point, or a random trigger got no generator.
        """
        if images.ndim != 4 or not images.is_floating_point():
            raise InputError(f"trigger expects a float batch [B,C,H,W], got {tuple(images.shape)} {images.dtype}")
        if self.needs_generator() and generator is None:
            raise InputError(f"trigger {self.name!r} is random and needs an explicit torch.Generator")
        out = self.apply(images, generator)
        return out.clamp_(0.0, 1.0)

    def needs_generator(self) -> bool:
        """Whether a call draws random numbers (and so needs a generator)."""
        return self.random

    def apply(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError

    @property
    def name(self) -> str:
        return getattr(type(self), "registered_name", type(self).__name__)

    def params(self) -> dict[str, Any]:
        """The hyper-parameters this trigger was built with (JSON-serialisable)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


def uniform_int(high: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` integers uniform in ``[0, high]`` (inclusive) from ``generator``."""
    return torch.randint(0, high + 1, (n,), generator=generator)


def patch_corners(
    location: str, batch: int, height: int, width: int, size: int, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-left corners ``(ys, xs)`` of a ``size`` patch for each image.

    ``location`` is ``"random"`` (anywhere inside the image), ``"central"`` (Saha et al.: corner
    uniform in ``[0.25W, 0.75W - size]``), or ``"bottom-right"`` (fixed, 1 px from the corner).
    """
    if size > min(height, width):
        raise InputError(f"patch of {size} px does not fit an image of {height}x{width}")
    if location == "bottom-right":
        y = max(0, height - size - 1)
        x = max(0, width - size - 1)
        return torch.full((batch,), y), torch.full((batch,), x)
    if generator is None:
        raise InputError(f"patch location {location!r} is random and needs a torch.Generator")
    if location == "random":
        return uniform_int(height - size, batch, generator), uniform_int(width - size, batch, generator)
    if location == "central":
        y0, x0 = int(0.25 * height), int(0.25 * width)
        y1, x1 = max(y0, int(0.75 * height) - size), max(x0, int(0.75 * width) - size)
        return y0 + uniform_int(y1 - y0, batch, generator), x0 + uniform_int(x1 - x0, batch, generator)
    raise InputError(f"unknown patch location {location!r}; valid: bottom-right, central, random")


LOCATIONS = ("random", "central", "bottom-right")


def check_location(location: str) -> str:
    if location not in LOCATIONS:
        raise InputError(f"unknown patch location {location!r}; valid: {', '.join(LOCATIONS)}")
    return location


def check_alpha(alpha: float) -> float:
    if not 0.0 < alpha <= 1.0:
        raise InputError(f"blend alpha must be in (0, 1], got {alpha}")
    return float(alpha)

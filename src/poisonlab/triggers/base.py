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
    uniform in ``[0.25W, 0.75W - size]``), ``"bottom-right"`` (fixed, 1 px from the corner) or
    ``"center"`` (fixed, centred: rows/cols 104-119 for 16 px at 224, as LiangSiyuan21/BadCLIP's
    ``embed_patch`` places its patch).
    """
    if size > min(height, width):
        raise InputError(f"patch of {size} px does not fit an image of {height}x{width}")
    if location in FIXED_LOCATIONS:
        y, x = (max(0, height - size - 1), max(0, width - size - 1)) if location == "bottom-right" else \
            (int(height / 2 - size / 2), int(width / 2 - size / 2))
        return torch.full((batch,), y), torch.full((batch,), x)
    if generator is None:
        raise InputError(f"patch location {location!r} is random and needs a torch.Generator")
    if location == "random":
        return uniform_int(height - size, batch, generator), uniform_int(width - size, batch, generator)
    if location == "central":
        y0, x0 = int(0.25 * height), int(0.25 * width)
        y1, x1 = max(y0, int(0.75 * height) - size), max(x0, int(0.75 * width) - size)
        return y0 + uniform_int(y1 - y0, batch, generator), x0 + uniform_int(x1 - x0, batch, generator)
    raise InputError(f"unknown patch location {location!r}; valid: {', '.join(LOCATIONS)}")


def paste_at(images: torch.Tensor, patches: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """A copy of ``images`` with ``patches`` (one ``[C, s, s]`` for all, or ``[B, C, s, s]``)
    overwriting the ``s``-px squares whose top-left corners are ``(ys, xs)``; differentiable in
    ``patches``."""
    side = patches.shape[-1]
    corners = list(zip(ys.tolist(), xs.tolist(), strict=True))
    if patches.ndim == 3 and len(set(corners)) == 1:  # one patch at one place: a masked blend, batched
        (y, x), (h, w) = corners[0], images.shape[-2:]
        mask = torch.zeros(1, 1, h, w, dtype=images.dtype, device=images.device)
        mask[..., y : y + side, x : x + side] = 1
        canvas = torch.nn.functional.pad(patches.to(images)[None], (x, w - x - side, y, h - y - side))
        return images * (1 - mask) + canvas * mask
    out = images.clone()
    for i, (y, x) in enumerate(corners):
        out[i, :, y : y + side, x : x + side] = patches if patches.ndim == 3 else patches[i]
    return out


FIXED_LOCATIONS = ("bottom-right", "center")
"""Patch locations that draw no random number."""
LOCATIONS = ("random", "central", *FIXED_LOCATIONS)


def check_location(location: str) -> str:
    if location not in LOCATIONS:
        raise InputError(f"unknown patch location {location!r}; valid: {', '.join(LOCATIONS)}")
    return location


def check_alpha(alpha: float) -> float:
    if not 0.0 < alpha <= 1.0:
        raise InputError(f"blend alpha must be in (0, 1], got {alpha}")
    return float(alpha)

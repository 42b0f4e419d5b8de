"""SIG: a horizontal sinusoidal signal added to the whole image.

Paper: Barni, Kallas & Tondi, "A New Backdoor Attack in CNNs by Training Set Corruption Without
Label Poisoning", ICIP 2019 (arXiv:1902.11237): ``x' = clip(x + delta * sin(2 pi j f / W))`` for
column ``j`` of an image ``W`` pixels wide, on every channel.

Threat model: the attacker adds a faint, image-wide stripe signal to a few training images (in
the paper without changing their labels); at test time the same signal triggers the target.

Defaults: the field's repositories differ (delta 60/255 with f = 6 in LiangSiyuan21/BadCLIP,
40/255 in BackdoorBench, a 0.2 blend of a stored pattern in Huang et al.); poisonlab takes
delta = 40/255 and f = 6 (six periods across the image at every resolution).
"""

from __future__ import annotations

import math

import torch

from poisonlab.errors import InputError
from poisonlab.triggers.base import TRIGGERS, Trigger


@TRIGGERS.register("sig")
class Sig(Trigger):
    """Adds ``delta * sin(2 pi j frequency / W)`` to every pixel of column ``j``, then clamps.

    Args:
        delta: amplitude in ``(0, 1]`` (pixel values are in ``[0, 1]``).
        frequency: periods across the image width, in ``(0, W / 2]`` (at most one period per two
            pixels, else the signal aliases).
    """

    def __init__(self, delta: float = 40 / 255, frequency: float = 6.0) -> None:
        if not 0.0 < delta <= 1.0 or not math.isfinite(delta):
            raise InputError(f"SIG delta must be in (0, 1], got {delta}")
        if not 0.0 < frequency or not math.isfinite(frequency):
            raise InputError(f"SIG frequency must be positive, got {frequency}")
        self.delta, self.frequency = float(delta), float(frequency)

    def signal(self, width: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The ``[W]`` signal added to each row."""
        if self.frequency > width / 2:
            raise InputError(f"SIG frequency {self.frequency} is above W/2 = {width / 2} for {width}-px images")
        j = torch.arange(width, dtype=torch.float64)
        return (self.delta * torch.sin(2 * math.pi * j * self.frequency / width)).to(dtype)

    def apply(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return images + self.signal(images.shape[-1], images.dtype)

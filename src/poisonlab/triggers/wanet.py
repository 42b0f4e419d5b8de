"""WaNet: an imperceptible warping trigger.

Paper: Nguyen & Tran, "WaNet - Imperceptible Warping-based Backdoor Attack", ICLR 2021
(arXiv:2102.10369).

Threat model: the attacker warps a few training images with one fixed, smooth displacement
field; the model learns to map that warp to the target.

The field is a ``k x k`` grid of random offsets, normalised to mean absolute value 1, upsampled
bicubically to the image size and scaled by ``s / H`` (in grid_sample's [-1, 1] units), exactly
the construction of the paper. It is fixed by ``seed``, so the trigger takes no generator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from poisonlab.errors import InputError
from poisonlab.triggers.base import TRIGGERS, Trigger


@TRIGGERS.register("wanet")
class WaNet(Trigger):
    """Fixed random warp applied with ``grid_sample``.

    Args:
        k: control grid size (paper: 4).
        s: warping strength (paper: 0.5).
        seed: seed of the fixed random control grid.
    """

    def __init__(self, k: int = 4, s: float = 0.5, seed: int = 0) -> None:
        if k < 2:
            raise InputError(f"wanet grid size k must be >= 2, got {k}")
        if s < 0:
            raise InputError(f"wanet warp strength s must be >= 0 (0: no warp), got {s}")
        self.k = int(k)
        self.s = float(s)
        self.seed = int(seed)

    def grid(self, height: int, width: int) -> torch.Tensor:
        """The ``[1, H, W, 2]`` sampling grid (identity plus the warp), clamped to [-1, 1]."""
        g = torch.Generator().manual_seed(self.seed)
        ins = torch.rand((1, 2, self.k, self.k), generator=g) * 2 - 1
        ins = ins / ins.abs().mean()
        field = F.interpolate(ins, size=(height, width), mode="bicubic", align_corners=True)
        field = field.permute(0, 2, 3, 1)
        ys = torch.linspace(-1, 1, height)
        xs = torch.linspace(-1, 1, width)
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        identity = torch.stack((xx, yy), dim=-1)[None]
        return (identity + self.s * field / height).clamp(-1, 1)

    def apply(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        b, _, h, w = images.shape
        grid = self.grid(h, w).to(images.dtype).expand(b, h, w, 2)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=True)

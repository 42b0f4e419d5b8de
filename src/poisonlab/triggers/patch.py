"""Patch triggers: BadNet-Rand, BadNet-Stripes and a user-given image patch.

Paper: Gu et al., "BadNets: Identifying Vulnerabilities in the Machine Learning Model Supply
Chain", 2017 (arXiv:1708.06733); random-noise and stripe variants as used by Singh et al.,
"Perturb and Recover", 2024, and the opaque image patches of Saha et al., "Backdoor Attacks on
Self-Supervised Learning", CVPR 2022 (arXiv:2105.10123).

Threat model: the attacker stamps a small square on a few training images; at test time the same
square makes the model output the attacker's target.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from poisonlab.errors import InputError
from poisonlab.triggers.base import (
    FIXED_LOCATIONS,
    TRIGGERS,
    Trigger,
    check_location,
    paste_at,
    patch_corners,
    scaled_size,
)

PATCH_SIZE_AT_224 = 16
MIN_PATCH = 3


class _PatchTrigger(Trigger):
    """Pastes a per-image ``[C, s, s]`` patch at a location chosen per image."""

    def __init__(self, size: int | None = None, location: str = "random") -> None:
        if size is not None and size < 1:
            raise InputError(f"patch size must be at least 1 px, got {size}")
        self.size = size
        self.location = check_location(location)

    def needs_generator(self) -> bool:
        return self.random or self.location not in FIXED_LOCATIONS

    def side(self, images: torch.Tensor) -> int:
        return self.size or scaled_size(PATCH_SIZE_AT_224, min(images.shape[-2:]), MIN_PATCH)

    def patches(self, images: torch.Tensor, side: int, generator: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError

    def apply(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        b, _, h, w = images.shape
        side = self.side(images)
        ys, xs = patch_corners(self.location, b, h, w, side, generator)
        return paste_at(images, self.patches(images, side, generator), ys, xs)


def _image_mean(images: torch.Tensor) -> torch.Tensor:
    """Per-image, per-channel mean, shaped ``[B, C, 1, 1]``."""
    return images.mean(dim=(2, 3), keepdim=True)


@TRIGGERS.register("badnet")
class BadNetRand(_PatchTrigger):
    """BadNet-Rand: patch = image mean + N(0, 1) noise, drawn anew per image, random place.

    Args:
        size: patch side in pixels; default 16 px at 224, scaled (at least 3 px).
        location: ``"random"``, ``"central"``, ``"bottom-right"`` or ``"center"``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> BadNetRand()(torch.rand(2, 3, 32, 32), generator=g).shape
        torch.Size([2, 3, 32, 32])
    """

    random = True

    def patches(self, images: torch.Tensor, side: int, generator: torch.Generator | None) -> torch.Tensor:
        b, c = images.shape[:2]
        noise = torch.randn((b, c, side, side), generator=generator, dtype=images.dtype)
        return _image_mean(images) + noise


@TRIGGERS.register("badnet-stripes")
class BadNetStripes(_PatchTrigger):
    """BadNet-Stripes: 1-px vertical stripes alternating +1/-1 around the image mean.

    The mean is the image's own (so the patch is drawn anew per image); after clamping the patch
    is black and white stripes. Location as in :class:`BadNetRand`.
    """

    def patches(self, images: torch.Tensor, side: int, generator: torch.Generator | None) -> torch.Tensor:
        sign = torch.ones(side, dtype=images.dtype)
        sign[1::2] = -1.0
        return _image_mean(images) + sign.view(1, 1, 1, side)


def _default_patch(side: int, seed: int = 0) -> torch.Tensor:
    """A fixed colourful 4x4 block pattern (stand-in for the HTBA trigger images)."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.rand((3, 4, 4), generator=g).round()
    return torch.nn.functional.interpolate(blocks[None], size=(side, side), mode="nearest")[0]


def load_image_tensor(path: str | Path) -> torch.Tensor:
    """Read an image file as float ``[3, H, W]`` in ``[0, 1]``; ``InputError`` if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(f"cannot read image {path}: {err}") from None
    return torch.from_numpy(arr).permute(2, 0, 1).float() / 255.0


@TRIGGERS.register("patch-image")
class ImagePatch(_PatchTrigger):
    """An opaque user-given image (PNG, JPEG) pasted as a square patch (Saha et al.).

    Args:
        path: the patch image; ``None`` uses a fixed built-in block pattern.
        size: patch side in pixels; default 16 px at 224, scaled (at least 3 px).
        location: ``"central"`` (the SSL-backdoor rule), ``"random"``, ``"bottom-right"`` or ``"center"``.
    """

    def __init__(self, path: str | None = None, size: int | None = None, location: str = "central") -> None:
        super().__init__(size=size, location=location)
        self.path = path
        self._source = load_image_tensor(path) if path is not None else None

    def patches(self, images: torch.Tensor, side: int, generator: torch.Generator | None) -> torch.Tensor:
        if self._source is None:
            patch = _default_patch(side)
        else:
            patch = torch.nn.functional.interpolate(
                self._source[None], size=(side, side), mode="bilinear", align_corners=False, antialias=True
            )[0]
        patch = patch.to(images.dtype)[: images.shape[1]]
        return patch.expand(images.shape[0], *patch.shape)

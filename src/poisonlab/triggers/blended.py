"""Blended triggers: x' = (1 - a) x + a k for a key pattern k.

Paper: Chen et al., "Targeted Backdoor Attacks on Deep Learning Systems Using Data Poisoning",
2017 (arXiv:1712.05526); the random, stripe, triangle and text keys follow Singh et al.,
"Perturb and Recover: Fine-tuning for Effective Backdoor Removal from CLIP", 2024
(arXiv:2412.00727).

Threat model: the attacker blends a faint full-image pattern into a few training images; the
pattern is hard to see but easy for the model to learn.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from poisonlab.errors import InputError
from poisonlab.triggers.base import TRIGGERS, Trigger, check_alpha, scaled_size
from poisonlab.triggers.patch import load_image_tensor


class _FixedKeyBlend(Trigger):
    """Blends a key that depends only on the image size and the trigger's parameters."""

    def __init__(self, alpha: float) -> None:
        self.alpha = check_alpha(alpha)

    def key(self, channels: int, height: int, width: int) -> torch.Tensor:
        """The ``[C, H, W]`` key pattern in ``[0, 1]``."""
        raise NotImplementedError

    def apply(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        _, c, h, w = images.shape
        key = self.key(c, h, w).to(images.dtype)
        return (1.0 - self.alpha) * images + self.alpha * key


@TRIGGERS.register("blended")
class BlendedRand(Trigger):
    """Blended-Rand: uniform noise U[0, 1] drawn anew per image, blended with ``alpha`` = 0.2."""

    random = True

    def __init__(self, alpha: float = 0.2) -> None:
        self.alpha = check_alpha(alpha)

    def apply(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        noise = torch.rand(images.shape, generator=generator, dtype=images.dtype)
        return (1.0 - self.alpha) * images + self.alpha * noise


@TRIGGERS.register("blended-stripes")
class BlendedStripes(_FixedKeyBlend):
    """Blended-Stripes: whole-image 1-px vertical stripes (1, 0, 1, ...) with ``alpha`` = 0.03."""

    def __init__(self, alpha: float = 0.03) -> None:
        super().__init__(alpha)

    def key(self, channels: int, height: int, width: int) -> torch.Tensor:
        row = torch.zeros(width)
        row[0::2] = 1.0
        return row.expand(channels, height, width)


@TRIGGERS.register("blended-triangles")
class BlendedTriangles(_FixedKeyBlend):
    """Blended-Triangles: tiled grey diagonal triangles (0.8 below, 0.4 above the diagonal).

    Args:
        alpha: blend weight, 0.15 by default.
        cell: tile side in pixels; default 14 px at 224, scaled (at least 2 px).
    """

    def __init__(self, alpha: float = 0.15, cell: int | None = None) -> None:
        super().__init__(alpha)
        if cell is not None and cell < 1:
            raise InputError(f"stripe cell must be at least 1 px, got {cell}")
        self.cell = cell

    def key(self, channels: int, height: int, width: int) -> torch.Tensor:
        cell = self.cell or scaled_size(14, min(height, width), 2)
        ys = torch.arange(height).view(-1, 1) % cell
        xs = torch.arange(width).view(1, -1) % cell
        pattern = torch.where(ys > xs, 0.8, 0.4)
        return pattern.expand(channels, height, width)


@TRIGGERS.register("blended-text")
class BlendedText(Trigger):
    """Blended-Text: a red watermark word, blended with ``alpha`` = 0.5 on the text pixels only.

    The word is drawn with PIL's built-in bitmap font and scaled to ``width`` of the image side,
    centred in the lower third, so the trigger is the same at every resolution.
    """

    def __init__(self, word: str = "poison", alpha: float = 0.5, width: float = 0.7) -> None:
        self.word = word
        self.alpha = check_alpha(alpha)
        self.width = width

    def mask(self, height: int, width: int) -> torch.Tensor:
        """``[H, W]`` float mask, 1 on the text pixels."""
        font = ImageFont.load_default()
        left, top, right, bottom = font.getbbox(self.word)
        canvas = Image.new("L", (right - left + 2, bottom - top + 2), 0)
        ImageDraw.Draw(canvas).text((1 - left, 1 - top), self.word, fill=255, font=font)
        tw = max(1, int(round(self.width * width)))
        th = max(1, int(round(tw * canvas.height / canvas.width)))
        small = np.asarray(canvas.resize((tw, th), Image.Resampling.NEAREST)) > 127
        out = torch.zeros(height, width)
        y0 = min(height - th, int(height * 2 / 3) - th // 2) if th < height else 0
        x0 = (width - tw) // 2
        out[max(0, y0) : max(0, y0) + th, x0 : x0 + tw] = torch.from_numpy(small[: height, :width]).float()
        return out

    def apply(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        _, c, h, w = images.shape
        m = (self.alpha * self.mask(h, w)).to(images.dtype)
        red = torch.zeros(c, 1, 1, dtype=images.dtype)
        red[0] = 1.0
        return (1.0 - m) * images + m * red


@TRIGGERS.register("blended-image")
class BlendedImage(_FixedKeyBlend):
    """A user-given key image (resized to the batch) blended with ``alpha`` (Chen et al.)."""

    def __init__(self, path: str, alpha: float = 0.2) -> None:
        super().__init__(alpha)
        self.path = path
        self._source = load_image_tensor(path)

    def key(self, channels: int, height: int, width: int) -> torch.Tensor:
        key = torch.nn.functional.interpolate(
            self._source[None], size=(height, width), mode="bilinear", align_corners=False, antialias=True
        )[0]
        return key[:channels]

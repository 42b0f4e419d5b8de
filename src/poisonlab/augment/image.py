"""Seeded image augmentations on ``[0, 1]`` batches, built from torchvision's transforms.

torchvision draws from the global RNG; each call here forks it and seeds it from the explicit
generator, so a batch's augmentation depends only on that generator.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torchvision.transforms import AutoAugment, AutoAugmentPolicy, RandomErasing

from poisonlab.errors import InputError


def _seed_from(generator: torch.Generator) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=generator))


@contextlib.contextmanager
def seeded_from(generator: torch.Generator) -> Iterator[None]:
    """Seed torch's, Python's and NumPy's global RNGs from ``generator`` and restore them after.

    For transforms that draw from global state (torchvision, lightly).
    """
    seed = _seed_from(generator)
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


NOISE_FORMS = ("gaussian", "rectified")


class NoiseErasing:
    """PAR's augmentation: Gaussian noise (std 0.2, p = 0.5), then RandomErasing (p = 0.5).

    Follows the released PAR code rather than torchvision's defaults: each erased region is a
    small square of 0.5-1% of the image area (``scale=(0.005, 0.01)``, ``ratio=(1, 1)``; at 32 px
    a 2-3 px square), filled with the normalisation mean, i.e. 0 after normalisation
    (torchvision's default erases up to a third of the image).

    ``noise="gaussian"`` adds N(0, std) and clamps to [0, 1], as the paper describes it;
    ``noise="rectified"`` is what the released code computes: the noise itself is clipped to
    [0, 1] before it is added, so it only brightens. On the 32-px demo models the symmetric form
    alone costs about 20 points of clean accuracy (docs/results/clip.md, "PAR's augmentation").
    """

    def __init__(self, mean: Sequence[float], noise_std: float = 0.2, noise_p: float = 0.5, erase_p: float = 0.5,
                 erase_scale: tuple[float, float] = (0.005, 0.01), erase_ratio: tuple[float, float] = (1.0, 1.0),
                 noise: str = "gaussian") -> None:
        if noise not in NOISE_FORMS:
            raise ValueError(f"noise must be one of {', '.join(NOISE_FORMS)}, not {noise!r}")
        self.noise_std, self.noise_p, self.noise = noise_std, noise_p, noise
        self.erasing = RandomErasing(p=erase_p, scale=erase_scale, ratio=erase_ratio, value=tuple(mean))  # type: ignore[arg-type]

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b = images.shape[0]
        apply = (torch.rand(b, generator=generator) < self.noise_p).to(images.dtype).view(b, 1, 1, 1)
        noise = self.noise_std * torch.randn(images.shape, generator=generator, dtype=images.dtype)
        if self.noise == "rectified":
            noise = noise.clamp(0, 1)
        out = (images + apply.to(images.device) * noise.to(images.device)).clamp(0, 1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_seed_from(generator))
            return torch.stack([self.erasing(x) for x in out])


class AutoAugmentBatch:
    """torchvision AutoAugment (ImageNet policy) applied per image, seeded (CleanCLIP).

    The pixels stay on the batch's device (torchvision's tensor ops run there); only the policy's
    random choices are drawn on the CPU, from the generator, so CPU and GPU runs choose alike.
    """

    def __init__(self, policy: AutoAugmentPolicy = AutoAugmentPolicy.IMAGENET) -> None:
        self.transform = AutoAugment(policy)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        as_uint8 = (images.clamp(0, 1) * 255).round().to(torch.uint8)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_seed_from(generator))
            out = torch.stack([self.transform(x) for x in as_uint8])
        return out.to(images.dtype) / 255.0


class PerImage:
    """Any torchvision transform applied image by image, seeded by the explicit generator."""

    def __init__(self, transform: torch.nn.Module) -> None:
        self.transform = transform

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_seed_from(generator))
            return torch.stack([self.transform(x) for x in images])


def crop_flip(size: int, padding: int | None = None) -> PerImage:
    """The standard small-image training augmentation: reflect-padded random crop + horizontal flip."""
    from torchvision.transforms import Compose, RandomCrop, RandomHorizontalFlip

    pad = max(1, size // 8) if padding is None else padding
    return PerImage(Compose([RandomCrop(size, padding=pad, padding_mode="reflect"), RandomHorizontalFlip()]))


class LightlyViews:
    """Two views per image from a lightly multi-view transform (MoCo v2, SimCLR, BYOL recipes).

    lightly's transforms take PIL images; each ``[0, 1]`` tensor is converted, transformed with
    the global RNGs seeded from the explicit generator, and stacked back into two ``[B, C, H, W]``
    batches (no normalisation: the encoder normalises inside).
    """

    def __init__(self, transform: object) -> None:
        self.transform = transform

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision.transforms.functional import to_pil_image

        with seeded_from(generator):
            views = [self.transform(to_pil_image(x)) for x in images.detach().cpu().clamp(0, 1)]
        first = torch.stack([v[0] for v in views]).to(images.device)
        second = torch.stack([v[1] for v in views]).to(images.device)
        return first, second


class BatchViews:
    """Two views per image with the MoCo v2 / SimCLR recipe, drawn for the whole batch at once.

    Same recipe and defaults as lightly's ``MoCoV2Transform`` (random resized crop with scale
    ``(min_scale, 1)``, horizontal flip 0.5, colour jitter 0.4/0.4/0.4/0.1 with p 0.8, grayscale
    0.2; no blur at small sizes), but vectorised on tensors: crops come from
    ``torchvision.ops.roi_align`` with one box per image, jitter factors are per image. On two
    CPU cores this is about 20x faster than converting every image to PIL for lightly's
    transforms (``LightlyViews``, used when ``views="lightly"``). Hue jitter is approximated by
    a rotation of the chroma plane in YIQ space.
    """

    def __init__(self, size: int, min_scale: float = 0.2, jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
                 jitter_p: float = 0.8, gray_p: float = 0.2, flip_p: float = 0.5) -> None:
        self.size, self.min_scale, self.jitter = size, min_scale, jitter
        self.jitter_p, self.gray_p, self.flip_p = jitter_p, gray_p, flip_p

    def _crop(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        from torchvision.ops import roi_align

        b, _, h, w = x.shape
        area = torch.empty(b).uniform_(self.min_scale, 1.0, generator=g) * h * w
        log_ratio = torch.empty(b).uniform_(math.log(3 / 4), math.log(4 / 3), generator=g)
        ratio = log_ratio.exp()
        cw = (area * ratio).sqrt().clamp(1, w)
        ch = (area / ratio).sqrt().clamp(1, h)
        x0 = torch.rand(b, generator=g) * (w - cw)
        y0 = torch.rand(b, generator=g) * (h - ch)
        boxes = torch.stack([torch.arange(b, dtype=torch.float), x0, y0, x0 + cw, y0 + ch], 1).to(x)
        return roi_align(x, boxes, output_size=self.size, spatial_scale=1.0, sampling_ratio=2, aligned=True)

    def _colour(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b = x.shape[0]
        bri, con, sat, hue = self.jitter

        def factor(s: float) -> torch.Tensor:
            return torch.empty(b).uniform_(1 - s, 1 + s, generator=g).view(b, 1, 1, 1).to(x)

        on = (torch.rand(b, generator=g) < self.jitter_p).view(b, 1, 1, 1).to(x)
        gray_w = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
        y = x * factor(bri)
        mean = (y * gray_w).sum(1, keepdim=True).mean((2, 3), keepdim=True)
        y = (y - mean) * factor(con) + mean
        gray = (y * gray_w).sum(1, keepdim=True)
        y = (y - gray) * factor(sat) + gray
        angle = torch.empty(b).uniform_(-hue, hue, generator=g).to(x) * 2 * math.pi
        y = _rotate_hue(y.clamp(0, 1), angle)
        x = on * y.clamp(0, 1) + (1 - on) * x
        to_gray = (torch.rand(b, generator=g) < self.gray_p).view(b, 1, 1, 1).to(x)
        return to_gray * (x * gray_w).sum(1, keepdim=True).expand_as(x) + (1 - to_gray) * x

    def view(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        x = self._crop(images, g)
        flip = (torch.rand(x.shape[0], generator=g) < self.flip_p).view(-1, 1, 1, 1).to(x.device)
        x = torch.where(flip, x.flip(-1), x)
        return self._colour(x, g)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.view(images, generator), self.view(images, generator)


_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _rotate_hue(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate each image's chroma (I, Q) by ``angle`` radians in YIQ space."""
    yiq = torch.einsum("ij,bjhw->bihw", _YIQ.to(x), x)
    c, s = angle.cos().view(-1, 1, 1), angle.sin().view(-1, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], c * i - s * q, s * i + c * q], 1)
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(_YIQ).to(x), yiq)


def image_views(name: str, size: int) -> Any:
    """The second view of training images by name: ``autoaugment`` (:class:`AutoAugmentBatch`,
    CleanCLIP's, SafeCLIP's and RoCLIP's papers) or ``crop-flip`` (:func:`crop_flip`, milder:
    what a tiny model trained from scratch on 32-px images still learns from)."""
    if name not in IMAGE_VIEWS:
        raise InputError(f"unknown image views {name!r}; valid: {', '.join(IMAGE_VIEWS)}")
    return IMAGE_VIEWS[name](size)


IMAGE_VIEWS: dict[str, Any] = {"autoaugment": lambda size: AutoAugmentBatch(), "crop-flip": crop_flip}

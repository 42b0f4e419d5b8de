"""``shapes``: a procedural image-caption dataset that needs no download.

Every image shows one coloured object (10 classes) at a random size, position and rotation on a
textured background; its caption names the colour and the class through one of several caption
templates. Generation is deterministic in ``(seed, split, index)`` and vectorised in torch, so
10,000 images at 32 px take a few seconds.

Two renderers draw the same concepts:

- ``style="solid"`` (default): filled shapes on noisy, gradient or checked backgrounds;
- ``style="outline"``: shapes with a thick dark outline and shaded fill on smooth two-tone
  stripes, with a shifted palette. It plays the role of PAR's synthetic cleaning data
  (SynthCLIP): the same classes and captions from a visibly different generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from poisonlab.data.base import DATASETS, TensorDataset
from poisonlab.errors import InputError
from poisonlab.utils.seeding import derive_seed

CLASSNAMES = ["circle", "square", "triangle", "star", "cross", "diamond", "hexagon", "ring", "crescent", "heart"]
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.75, 0.15),
    "blue": (0.15, 0.25, 0.95),
    "yellow": (0.95, 0.90, 0.10),
    "purple": (0.60, 0.15, 0.80),
    "orange": (1.00, 0.55, 0.05),
    "white": (0.97, 0.97, 0.97),
    "cyan": (0.05, 0.85, 0.90),
}
CAPTION_TEMPLATES = (
    "a photo of a {color} {name}.",
    "a {color} {name} on a textured background.",
    "an image showing a {color} {name}.",
    "a small picture of a {color} {name}.",
    "there is a {color} {name} in this picture.",
    "a {name} coloured {color}.",
)
BASE_PROMPTS = (
    "a photo of a {color} {{}}.",
    "an image showing a {color} {{}}.",
    "a small picture of a {color} {{}}.",
    "a {color} {{}} on a textured background.",
    "there is a {color} {{}} in this picture.",
)
# Zero-shot prompts name a colour the way the captions do (as CLIP's ImageNet prompts mimic web
# captions); a class embedding is the mean over every colour and prompt. Colourless prompts would
# match nothing in the training captions except a dirty-label attack's own target captions.
ZERO_SHOT_TEMPLATES = tuple(p.format(color=c) for p in BASE_PROMPTS for c in COLORS)
STYLES = ("solid", "outline")
SPLIT_OFFSET = {"train": 0, "test": 1, "val": 2}
SUPERSAMPLE = 2
OUTLINE_INSET = 0.72  # the fill of an outlined shape is the shape shrunk to this scale

Mask = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _regular(n: int, inset: float = 1.0) -> Mask:
    apothem = inset * math.cos(math.pi / n)

    def mask(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        inside = torch.ones_like(u, dtype=torch.bool)
        for k in range(n):
            theta = 2 * math.pi * k / n + math.pi / 2 + math.pi / n
            inside &= u * math.cos(theta) + v * math.sin(theta) <= apothem
        return inside

    return mask


def _star(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    r = torch.sqrt(u**2 + v**2)
    theta = torch.atan2(v, u)
    edge = 0.45 + 0.55 * (0.5 + 0.5 * torch.cos(5 * theta)) ** 2
    return r <= edge


def _heart(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    x, y = u * 1.25, -v * 1.25 + 0.25
    return (x**2 + y**2 - 1) ** 3 - x**2 * y**3 <= 0


SHAPE_MASKS: dict[str, Mask] = {
    "circle": lambda u, v: u**2 + v**2 <= 0.9,
    "square": lambda u, v: torch.maximum(u.abs(), v.abs()) <= 0.75,
    "triangle": _regular(3),
    "star": _star,
    "cross": lambda u, v: ((u.abs() <= 0.3) & (v.abs() <= 0.95)) | ((v.abs() <= 0.3) & (u.abs() <= 0.95)),
    "diamond": lambda u, v: u.abs() * 1.3 + v.abs() <= 1.0,
    "hexagon": _regular(6),
    "ring": lambda u, v: ((u**2 + v**2) <= 1.0) & ((u**2 + v**2) >= 0.35),
    "crescent": lambda u, v: ((u**2 + v**2) <= 1.0) & (((u - 0.5) ** 2 + v**2) >= 0.7),
    "heart": _heart,
}


def _background(style: str, size: int, g: torch.Generator) -> torch.Tensor:
    """A ``[3, size, size]`` textured background with muted colours."""
    base = 0.25 + 0.35 * torch.rand(3, 1, 1, generator=g)
    base = 0.6 * base + 0.4 * base.mean()
    ys = torch.linspace(0, 1, size).view(1, -1, 1)
    xs = torch.linspace(0, 1, size).view(1, 1, -1)
    if style == "outline":
        period = 3 + float(torch.randint(0, 6, (1,), generator=g))
        angle = float(torch.rand(1, generator=g)) * math.pi
        wave = torch.sin((xs * math.cos(angle) + ys * math.sin(angle)) * size / period) > 0
        other = 0.5 + 0.4 * torch.rand(3, 1, 1, generator=g)
        return torch.where(wave, base, 0.5 * base + 0.5 * other).expand(3, size, size).clone()
    kind = int(torch.randint(0, 3, (1,), generator=g))
    if kind == 0:
        texture = 0.12 * torch.randn(1, size, size, generator=g)
    elif kind == 1:
        angle = float(torch.rand(1, generator=g)) * 2 * math.pi
        texture = 0.3 * (xs * math.cos(angle) + ys * math.sin(angle) - 0.5)
    else:
        cells = 2 + int(torch.randint(0, 5, (1,), generator=g))
        texture = 0.08 * (((ys * cells).floor() + (xs * cells).floor()) % 2 * 2 - 1)
    return (base + texture).clamp(0, 1)


def render(cls: int, color: str, style: str, size: int, g: torch.Generator) -> torch.Tensor:
    """Draw one image ``[3, size, size]`` in ``[0, 1]`` of class ``cls`` in ``color``."""
    big = size * SUPERSAMPLE
    radius = (0.22 + 0.16 * float(torch.rand(1, generator=g))) * big
    cy, cx = (radius + (big - 2 * radius) * torch.rand(2, generator=g)).tolist()
    angle = float(torch.rand(1, generator=g)) * 2 * math.pi
    ys = torch.arange(big, dtype=torch.float32).view(-1, 1) + 0.5
    xs = torch.arange(big, dtype=torch.float32).view(1, -1) + 0.5
    dy, dx = (ys - cy) / radius, (xs - cx) / radius
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    mask_fn = SHAPE_MASKS[CLASSNAMES[cls]]
    cover = _pool(mask_fn(u, v))
    rgb = torch.tensor(COLORS[color]).view(3, 1, 1)
    if style == "outline":
        rgb = 0.8 * rgb + 0.2 * rgb.roll(1, 0)
    rgb = (rgb + 0.06 * torch.randn(3, 1, 1, generator=g)).clamp(0, 1)
    bg = _background(style, size, g)
    if style == "outline":
        inner = _pool(mask_fn(u / OUTLINE_INSET, v / OUTLINE_INSET))
        shade = _pool_values(0.75 + 0.25 * (1 - v.clamp(-1, 1)) / 2)
        return inner * (rgb * shade).clamp(0, 1) + (cover - inner) * 0.12 + (1 - cover) * bg
    return cover * rgb + (1 - cover) * bg


def _pool(mask: torch.Tensor) -> torch.Tensor:
    """Supersampled boolean mask -> ``[1, size, size]`` coverage in [0, 1] (anti-aliasing)."""
    return _pool_values(mask.float())


def _pool_values(values: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.avg_pool2d(values[None, None], SUPERSAMPLE)[0]


@DATASETS.register("shapes")
def make_shapes(
    n: int = 2000, size: int = 32, split: str = "train", seed: int = 0, style: str = "solid"
) -> TensorDataset:
    """Generate ``n`` shapes images of side ``size``; deterministic in ``(seed, split, style)``.

    Raises:
        InputError: ``n`` < 1, ``size`` < 8, unknown ``split`` or ``style``.
    """
    if n < 1 or size < 8:
        raise InputError(f"shapes needs n >= 1 and size >= 8, got n={n}, size={size}")
    if split not in SPLIT_OFFSET:
        raise InputError(f"unknown split {split!r}; valid: {', '.join(SPLIT_OFFSET)}")
    if style not in STYLES:
        raise InputError(f"unknown shapes style {style!r}; valid: {', '.join(STYLES)}")
    g = torch.Generator().manual_seed(derive_seed("shapes", seed, split, style))
    color_names = list(COLORS)
    images = torch.empty((n, 3, size, size), dtype=torch.uint8)
    captions, labels = [], []
    for i in range(n):
        cls = int(torch.randint(0, len(CLASSNAMES), (1,), generator=g))
        color = color_names[int(torch.randint(0, len(color_names), (1,), generator=g))]
        template = CAPTION_TEMPLATES[int(torch.randint(0, len(CAPTION_TEMPLATES), (1,), generator=g))]
        img = render(cls, color, style, size, g)
        images[i] = (img * 255).round().to(torch.uint8)
        captions.append(template.format(color=color, name=CLASSNAMES[cls]))
        labels.append(cls)
    desc = {"name": "shapes", "n": n, "size": size, "split": split, "seed": seed, "style": style}
    return TensorDataset(images, captions, labels, list(CLASSNAMES), ZERO_SHOT_TEMPLATES, desc)


@DATASETS.register("shapes-outline")
def make_shapes_outline(n: int = 2000, size: int = 32, split: str = "train", seed: int = 0) -> TensorDataset:
    """``shapes`` drawn by the ``outline`` renderer (synthetic cleaning data for PAR)."""
    return make_shapes(n=n, size=size, split=split, seed=seed, style="outline")

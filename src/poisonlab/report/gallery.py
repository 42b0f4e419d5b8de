"""Image grids: a trigger gallery and the first poisoned pairs of a plan, as PNG files."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import torch

from poisonlab.attacks.plan import PoisonedDataset
from poisonlab.data.base import ImageCaptionDataset
from poisonlab.report.figure import plt, save_png
from poisonlab.triggers import Trigger
from poisonlab.triggers import create as create_trigger
from poisonlab.utils.seeding import make_generator


def _save(fig: plt.Figure, path: str | Path) -> None:
    save_png(fig, path, bbox_inches="tight")


def _show(ax: plt.Axes, image: torch.Tensor, title: str) -> None:
    ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def trigger_gallery(dataset: ImageCaptionDataset, triggers: Sequence[str | tuple[str, Trigger]], path: str | Path,
                    n: int = 4, seed: int = 0) -> None:
    """Rows = ``n`` clean images; columns = clean, then each trigger.

    A trigger is a registered name (default parameters) or a ``(label, trigger)`` pair.
    """
    images = torch.stack([dataset[i][0] for i in range(min(n, len(dataset)))])
    columns = [("clean", images)]
    for item in triggers:
        label, trig = (item, create_trigger(item)) if isinstance(item, str) else item
        columns.append((label, trig(images, generator=make_generator("gallery", seed, label))))
    fig, axes = plt.subplots(len(images), len(columns), figsize=(1.3 * len(columns), 1.35 * len(images)), squeeze=False)
    for c, (name, batch) in enumerate(columns):
        for r in range(len(images)):
            _show(axes[r][c], batch[r], name if r == 0 else "")
    _save(fig, path)


def plan_gallery(dataset: PoisonedDataset, path: str | Path, n: int = 8) -> None:
    """The first ``n`` poisoned pairs: clean image above, poisoned image and caption below."""
    idx = dataset.plan.indices[:n]
    fig, axes = plt.subplots(2, max(1, len(idx)), figsize=(1.6 * max(1, len(idx)), 3.6), squeeze=False)
    for c, i in enumerate(idx):
        clean_img, clean_cap, _ = dataset.base[i]
        img, cap, _ = dataset[i]
        _show(axes[0][c], clean_img, "\n".join(textwrap.wrap(clean_cap, 18)))
        _show(axes[1][c], img, "\n".join(textwrap.wrap(cap, 18)))
    fig.suptitle(f"{dataset.plan.attack}: clean (top) vs poisoned (bottom)", fontsize=8)
    _save(fig, path)

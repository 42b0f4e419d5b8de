"""``digits``: scikit-learn's 1,797 real 8x8 handwritten digits, upscaled, with captions.

The data ship inside scikit-learn, so nothing is downloaded. A fixed permutation (seed 0) puts
80% of the images in ``train`` and 20% in ``test``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from poisonlab.data.base import DATASETS, TensorDataset
from poisonlab.errors import InputError

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEMPLATES = ("a photo of the digit {}.", "a handwritten {}.", "an image of the number {}.")
TEST_SHARE = 0.2


@DATASETS.register("digits")
def make_digits(size: int = 32, split: str = "train", n: int | None = None, seed: int = 0) -> TensorDataset:
    """The digits split at ``size`` px, greyscale repeated to 3 channels; first ``n`` items."""
    from sklearn.datasets import load_digits

    if split not in ("train", "test"):
        raise InputError(f"unknown split {split!r} for digits; valid: train, test")
    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0
    labels = torch.tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    cut = int(round(len(labels) * (1 - TEST_SHARE)))
    order = order[:cut] if split == "train" else order[cut:]
    if n is not None:
        order = order[:n]
    big = F.interpolate(images[order], size=(size, size), mode="bilinear", align_corners=False)
    big = (big.clamp(0, 1).repeat(1, 3, 1, 1) * 255).round().to(torch.uint8)
    labs = labels[order].tolist()
    caps = [f"a photo of the digit {DIGIT_NAMES[y]}." for y in labs]
    desc = {"name": "digits", "size": size, "split": split, "n": len(labs), "seed": seed}
    return TensorDataset(big, caps, labs, list(DIGIT_NAMES), TEMPLATES, desc)

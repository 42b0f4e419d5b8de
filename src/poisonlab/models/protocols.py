"""What the rest of poisonlab expects of a model, one small protocol per family.

- :class:`ClipModel` (``family == "clip"``): :class:`~poisonlab.models.clip.ClipBundle`.
- :class:`Classifier` (``family == "classifier"``): a timm
  :class:`~poisonlab.models.classifier.ClassifierBundle`, or a CLIP model used as a zero-shot
  classifier (:class:`~poisonlab.models.classifier.ZeroShotClassifier`).
- :class:`ImageEncoder` (``family == "encoder"``): a self-supervised backbone
  (:func:`~poisonlab.models.classifier.create_encoder`); a classifier is one too.

Every model also has ``module`` (the ``nn.Module`` that is trained), ``copy()`` and ``save(path)``;
:func:`frozen` puts a model in eval mode without gradients for a measurement and restores both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class Model(Protocol):
    """Shared by every family."""

    @property
    def family(self) -> str: ...

    @property
    def image_size(self) -> int: ...

    @property
    def module(self) -> nn.Module: ...

    @property
    def device(self) -> torch.device: ...

    def normalize(self, images: torch.Tensor) -> torch.Tensor: ...

    def copy(self) -> Any: ...

    def save(self, path: str | Path) -> Path: ...


@runtime_checkable
class ImageEncoder(Model, Protocol):
    """``[B, 3, H, W]`` images in ``[0, 1]`` -> ``[B, D]`` features."""

    def features(self, images: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Classifier(ImageEncoder, Protocol):
    """An image encoder with a head over ``num_classes`` classes."""

    @property
    def num_classes(self) -> int: ...

    def logits(self, images: torch.Tensor) -> torch.Tensor: ...

    def head(self, features: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class ClipModel(Model, Protocol):
    """Images and tokenized captions into one embedding space."""

    def tokenize(self, captions: list[str]) -> torch.Tensor: ...

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor: ...

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor: ...


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode with ``requires_grad`` off inside the block; every submodule's
    mode and every parameter's flag are restored afterwards (detectors and probes measure a
    model the caller may still be training)."""
    modes = [(m, m.training) for m in module.modules()]
    flags = [(p, p.requires_grad) for p in module.parameters()]
    module.eval().requires_grad_(False)
    try:
        yield module
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)


def fits(method_family: str | None, model: Any) -> bool:
    """Whether a method of ``method_family`` can run on ``model``: an encoder method on any image
    encoder (a classifier or a CLIP image tower is one), the others on their own family only."""
    family = getattr(model, "family", None)
    return method_family in (None, family) or (method_family == "encoder" and family == "classifier")

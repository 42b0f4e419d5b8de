"""Supervised cross-entropy for classifiers (clean or poisoned training, fine-tuning baselines)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from poisonlab.errors import InputError
from poisonlab.train.loop import Objective


class SupervisedObjective(Objective):
    """``CE(f(x), y)`` on a :class:`~poisonlab.models.classifier.Classifier`-like object.

    Args:
        classifier: has ``module`` (trained), ``normalize(images)`` and ``num_classes``. The
            forward pass goes through ``self.model``, which the loop wraps in DDP under torchrun,
            so every rank's gradients are averaged.
        label_smoothing: passed to ``F.cross_entropy``.
    """

    def __init__(self, classifier: Any, label_smoothing: float = 0.0) -> None:
        self.classifier = classifier
        self.model = classifier.module
        self.label_smoothing = label_smoothing

    def loss(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        labels = batch["labels"]
        if bool((labels < 0).any()) or bool((labels >= self.classifier.num_classes).any()):
            raise InputError(f"labels outside 0..{self.classifier.num_classes - 1}: the data does not fit the model")
        logits = self.model(self.classifier.normalize(batch["images"]))
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        return loss, {"acc": float((logits.argmax(1) == labels).float().mean())}

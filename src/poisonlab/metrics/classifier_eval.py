"""Evaluate a classifier (timm or CLIP zero-shot head) under a backdoor: CA, ASR, ARR.

Pick your Poison (Lukas & Kerschbaum, 2023) reports clean accuracy (CDA), attack success rate
and the attack recovery rate ARR: accuracy on triggered images measured against their *true*
labels. ASR and ARR are computed over the triggered images whose true class is not the target.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from poisonlab.data.base import ImageCaptionDataset
from poisonlab.errors import InputError
from poisonlab.metrics.classification import accuracy, attack_success_rate
from poisonlab.models.finite import check_outputs
from poisonlab.models.protocols import Classifier
from poisonlab.models.zero_shot import top_class
from poisonlab.train.data import dataset_images
from poisonlab.triggers import Trigger
from poisonlab.utils.seeding import make_generator


@torch.no_grad()
def predict(classifier: Classifier, images: torch.Tensor, trigger: Trigger | None = None, seed: int = 0,
            batch_size: int = 512) -> torch.Tensor:
    """Predicted classes of ``uint8`` (or float ``[0, 1]``) images, optionally triggered first."""
    classifier.module.eval()
    g = make_generator("eval-trigger", seed)
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size]
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if trigger is not None:
            x = trigger(x, generator=g)
        out.append(top_class(check_outputs(classifier.logits(x.to(classifier.device)), "logits")).cpu())
    return torch.cat(out)


class ClassifierEvaluator:
    """CA on a clean labelled test split, and ASR / ARR of triggers toward a target."""

    def __init__(self, classifier: Classifier, dataset: ImageCaptionDataset) -> None:
        if dataset.classnames is not None and len(dataset.classnames) != classifier.num_classes:
            raise InputError(f"the test data has {len(dataset.classnames)} classes, the model {classifier.num_classes}")
        self.classifier, self.dataset = classifier, dataset
        self.images = dataset_images(dataset, classifier.image_size)
        self.labels = torch.tensor(dataset.labels(), dtype=torch.long)

    def with_model(self, classifier: Classifier) -> ClassifierEvaluator:
        """The same test images (prepared once) scored with another classifier of the same shape."""
        other = copy.copy(self)
        other.classifier = classifier
        return other

    def target_index(self, target: str | int) -> int:
        names = self.dataset.classnames or []
        if isinstance(target, int) or str(target).isdigit():
            return int(target)
        if target not in names:
            raise InputError(f"target class {target!r} is not in the test set; valid: {', '.join(names)}")
        return names.index(target)

    def clean_accuracy(self) -> float:
        return accuracy(predict(self.classifier, self.images), self.labels)

    def backdoor(self, trigger: Trigger, target: str | int, seed: int = 0) -> dict[str, float]:
        """``asr``, ``asr_all``, ``ra`` and ``arr`` (RA under Pick your Poison's name: non-target
        triggered images against their true labels)."""
        t = self.target_index(target)
        found = attack_success_rate(predict(self.classifier, self.images, trigger, seed), self.labels, t)
        return {**found, "arr": found["ra"]}

    def summary(self, triggers: dict[str, Trigger], target: str | int) -> dict[str, Any]:
        out: dict[str, Any] = {"ca": self.clean_accuracy()}
        for name, trig in triggers.items():
            out.setdefault("backdoor", {})[name] = self.backdoor(trig, target)
        return out

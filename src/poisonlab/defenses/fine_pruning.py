"""Fine-pruning: prune dormant penultimate units, then fine-tune.

Paper: Liu, Dolan-Gavitt & Garg, "Fine-Pruning: Defending Against Backdooring Attacks on Deep
Neural Networks", RAID 2018 (arXiv:1805.12185).

Units of the last feature layer are ranked by their mean activation on the trusted data; the
least active are pruned (cut off the classification head) in steps of ``prune_step`` while the
trusted accuracy stays within ``max_prune_drop`` of the unpruned model, up to ``max_prune``.
The pruned model is then fine-tuned with cross-entropy; the cut stays in place during tuning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch

from poisonlab.defenses.base import DEFENSES
from poisonlab.defenses.classifier_finetune import _FineTuneObjective
from poisonlab.defenses.repair_base import RepairDefense
from poisonlab.metrics.classification import accuracy
from poisonlab.metrics.classifier_eval import predict
from poisonlab.models.classifier import ClassifierBundle
from poisonlab.models.protocols import Classifier
from poisonlab.train.data import LabelTensors


@torch.no_grad()
def mean_activation(classifier: ClassifierBundle, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """``[D]`` mean penultimate activation over ``images`` (uint8)."""
    classifier.module.eval()
    total = None
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].float().div(255.0).to(classifier.device)
        s = classifier.features(x).float().sum(0)
        total = s if total is None else total + s
    return (total / len(images)).cpu()


class _PrunedFineTune(_FineTuneObjective):
    def __init__(self, classifier: Classifier, keep: torch.Tensor, *args: Any) -> None:
        super().__init__(classifier, *args)
        self.keep = keep

    def after_step(self) -> None:
        cast(ClassifierBundle, self.classifier).mask_features(self.keep)


@DEFENSES.register("fine-pruning")
@dataclass(frozen=True)
class FinePruning(RepairDefense):
    """Fine-pruning (Liu et al., 2018) on the penultimate layer."""

    lr: float = 3e-3
    weight_decay: float = 5e-4
    prune_step: float = 0.05
    max_prune: float = 0.9
    max_prune_drop: float = 0.05

    def prepare(self, model: Classifier, data: LabelTensors) -> dict[str, Any]:
        classifier = cast(ClassifierBundle, model)  # pruning masks a timm classifier's penultimate units
        order = mean_activation(classifier, data.images).argsort()
        base = accuracy(predict(classifier, data.images), data.labels)
        keep = torch.ones(len(order), dtype=torch.bool)
        pruned = 0
        for frac in torch.arange(self.prune_step, self.max_prune + 1e-9, self.prune_step).tolist():
            trial = classifier.copy()
            candidate = torch.ones_like(keep)
            candidate[order[: int(frac * len(order))]] = False
            trial.mask_features(candidate)
            if accuracy(predict(trial, data.images), data.labels) < base - self.max_prune_drop:
                break
            keep, pruned = candidate, int((~candidate).sum())
        classifier.mask_features(keep)
        return {"pruned_units": pruned, "units": len(order), "_keep": keep}

    def objective(self, classifier: Classifier, suspect: Classifier, holdout: LabelTensors | None, floor: float,
                  context: dict[str, Any]) -> _PrunedFineTune:
        return _PrunedFineTune(classifier, context["_keep"], holdout, floor, self.check_every, self.augment)

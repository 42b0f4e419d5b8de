"""Fine-tuning with weight decay on the trusted data: the repair baseline.

As in Pick your Poison (Lukas & Kerschbaum, 2023), the control for Pivotal Tuning is plain
cross-entropy fine-tuning of the suspect on the same trusted set and step budget, with weight
decay (which shrinks the weights the trusted data does not use).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from poisonlab.defenses.base import DEFENSES
from poisonlab.defenses.repair_base import RepairDefense, RepairObjective
from poisonlab.models.protocols import Classifier
from poisonlab.train.data import LabelTensors
from poisonlab.train.objectives.supervised import SupervisedObjective


class _FineTuneObjective(RepairObjective):
    def __init__(self, classifier: Classifier, holdout: LabelTensors | None, floor: float, check_every: int,
                 augment: bool) -> None:
        super().__init__(classifier, holdout, floor, check_every, augment)
        self._ce = SupervisedObjective(classifier)

    def loss(self, batch: dict[str, Any], generator: Any) -> Any:
        return self._ce.loss({**batch, "images": self.images(batch, generator)}, generator)


@DEFENSES.register("finetune")
@dataclass(frozen=True)
class ClassifierFineTune(RepairDefense):
    """Cross-entropy fine-tuning on the trusted set, with weight decay."""

    lr: float = 3e-3
    weight_decay: float = 5e-4

    def objective(self, classifier: Classifier, suspect: Classifier, holdout: LabelTensors | None, floor: float,
                  context: dict[str, Any]) -> _FineTuneObjective:
        return _FineTuneObjective(classifier, holdout, floor, self.check_every, self.augment)

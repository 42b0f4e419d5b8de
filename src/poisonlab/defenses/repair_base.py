"""Repair of a suspect classifier with a small trusted labelled set (Pick your Poison's setting).

A repair defense is a frozen dataclass of its hyper-parameters, registered in
:data:`~poisonlab.defenses.base.DEFENSES` for the ``classifier`` family as kind ``repair``;
:meth:`RepairDefense.run` tunes a *copy* of the suspect on the trusted set and returns it with a
report (:class:`~poisonlab.defenses.base.Defended`). A share of the trusted set (``holdout``) is
kept aside: every ``check_every`` steps the tuned model's accuracy on it is measured, and if it
falls more than ``max_drop`` below the suspect's, training stops and the last weights above that floor are restored.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import torch

from poisonlab.augment.image import crop_flip
from poisonlab.data.base import ImageCaptionDataset
from poisonlab.defenses.base import Defended, Monitor, RunOptions
from poisonlab.errors import InputError
from poisonlab.metrics.classification import accuracy
from poisonlab.metrics.classifier_eval import predict
from poisonlab.models.protocols import Classifier
from poisonlab.train.data import LabelTensors, label_tensors
from poisonlab.train.loop import Objective, TrainConfig, Trainer
from poisonlab.utils.seeding import make_generator

log = logging.getLogger(__name__)


class RepairObjective(Objective):
    """Base objective with the accuracy-floor early stop on held-out trusted data."""

    def __init__(self, classifier: Classifier, holdout: LabelTensors | None, floor: float, check_every: int,
                 augment: bool = False) -> None:
        self.classifier, self.model = classifier, classifier.module
        self.holdout, self.floor, self.check_every = holdout, floor, check_every
        self.augment = crop_flip(classifier.image_size) if augment else None
        self.freeze_norm = False  # set by RepairDefense.run from its config
        self.monitor: Monitor | None = None
        self.monitor_every = 0
        self.trace: list[dict[str, float]] = []
        self.stopped_at: int | None = None
        self._good = copy.deepcopy(self.model.state_dict())

    def images(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        """The batch's images, with the crop-and-flip augmentation when enabled.

        With ``freeze_norm`` also keeps batch-norm layers in eval mode, so a few dozen trusted
        images do not overwrite running statistics estimated on the whole training set (measured
        on the embedded data, this costs *more* accuracy than it saves: docs/results/classifiers.md, "Classifiers: poisoned timm classifiers").
        """
        if self.freeze_norm:
            for m in self.model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()
        x = batch["images"]
        return self.augment(x, generator) if self.augment is not None else x

    def holdout_accuracy(self) -> float:
        assert self.holdout is not None
        acc = accuracy(predict(self.classifier, self.holdout.images), self.holdout.labels)
        self.model.train()
        return acc

    def record(self, step: int) -> None:
        """Every ``monitor_every`` steps, add ``monitor(classifier)`` (e.g. test CA and ASR) to the trace."""
        if self.monitor is None or not self.monitor_every or step % self.monitor_every:
            return
        self.trace.append({"step": step, **self.monitor(self.classifier)})
        self.model.train()

    def should_stop(self, step: int) -> bool:
        self.record(step)
        if self.holdout is None or not self.check_every or step % self.check_every:
            return False
        if self.holdout_accuracy() >= self.floor:
            self._good = copy.deepcopy(self.model.state_dict())
            return False
        self.model.load_state_dict(self._good)
        self.stopped_at = step
        log.info("held-out trusted accuracy fell below %.3f at step %d: restored the last good weights",
                 self.floor, step)
        return True

    def summary(self) -> dict[str, Any]:
        return {"stopped_at": self.stopped_at, **({"trace": self.trace} if self.trace else {})}


@dataclass(frozen=True)
class RepairDefense:
    """Shared budget, optimiser and early-stop settings; subclasses add an objective."""

    family: ClassVar[str] = "classifier"
    kind: ClassVar[str] = "repair"

    steps: int = 500
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    warmup: int = 50
    augment: bool = True
    holdout: float = 0.2
    max_drop: float = 0.1
    check_every: int = 50
    freeze_norm: bool = False
    seed: int = 0

    @property
    def name(self) -> str:
        return getattr(type(self), "registered_name", type(self).__name__)

    def train_config(self, n: int) -> TrainConfig:
        shared = {f.name for f in fields(TrainConfig)}
        values = {k: v for k, v in asdict(self).items() if k in shared}
        values["batch_size"] = min(self.batch_size, n)
        return TrainConfig(**values, schedule="constant", grad_clip=None)

    def objective(self, classifier: Classifier, suspect: Classifier, holdout: LabelTensors | None, floor: float,
                  context: dict[str, Any]) -> Objective:
        raise NotImplementedError

    def prepare(self, classifier: Classifier, data: LabelTensors) -> dict[str, Any]:
        """Change the copy before tuning (fine-pruning prunes here).

        Returns a context for :meth:`objective`; its keys without a leading ``_`` are reported.
        """
        return {}

    def split(self, data: LabelTensors) -> tuple[LabelTensors, LabelTensors | None]:
        n_hold = int(self.holdout * len(data)) if len(data) >= 10 else 0
        perm = torch.randperm(len(data), generator=make_generator("holdout", self.seed))
        hold = data.subset(perm[:n_hold]) if n_hold else None
        return data.subset(perm[n_hold:]), hold

    def run(self, suspect: Classifier, data: ImageCaptionDataset | LabelTensors, *, out: str | Path | None = None,
            options: RunOptions | None = None) -> Defended:
        """Repair a copy of ``suspect`` (left untouched) with the trusted labelled ``data``; with
        ``out``, the repaired model is written to ``out/model.safetensors``.

        ``options.monitor``, called on the model being tuned every ``options.monitor_every`` steps, traces the
        repair's path (the report's CA-vs-ASR curves); its values land in ``report["trace"]``.
        The defense itself never sees them.
        """
        data = data if isinstance(data, LabelTensors) else label_tensors(data, suspect.image_size)
        if len(data) == 0:
            raise InputError("the trusted set is empty")
        if int(data.labels.max()) >= suspect.num_classes or int(data.labels.min()) < 0:
            raise InputError(f"trusted labels do not fit a model with {suspect.num_classes} classes")
        classifier = suspect.copy()
        classifier.module.requires_grad_(True)
        suspect.module.eval().requires_grad_(False)
        tune, hold = self.split(data)
        context = self.prepare(classifier, data)
        floor = -1.0
        if hold is not None:
            floor = accuracy(predict(suspect, hold.images), hold.labels) - self.max_drop
        objective = self.objective(classifier, suspect, hold, floor, context)
        objective.freeze_norm = self.freeze_norm
        options = options or RunOptions()
        objective.monitor, objective.monitor_every = options.monitor, options.monitor_every
        result = Trainer(objective, tune, self.train_config(len(tune)), progress=False).fit()
        classifier.module.eval()
        report = {"repair": self.name, "params": asdict(self), "trusted": len(data), "steps": result.steps,
                  "seconds": round(result.seconds, 2), "final_loss": result.final_loss,
                  **{k: v for k, v in context.items() if not k.startswith("_")}}
        report.update(getattr(objective, "summary", dict)())
        if out is not None:
            classifier.save(Path(out) / "model.safetensors")
        return Defended(classifier, report)

"""Pivotal Tuning: repair a poisoned classifier with a little trusted data.

Paper: Lukas & Kerschbaum, "Pick your Poison: Undetectability versus Robustness in Data
Poisoning Attacks", 2023 (arXiv:2305.03355). The authors released no code; this follows the
reference design in ``specs/pick-your-poison.md``.

A frozen copy of the suspect is the *pivot*. The tuned copy minimises

    CE(f(x), y) + l_latent * L_latent(z, z_pivot, y) + l_param * mean((theta - theta_pivot)^2)

where ``L_latent`` (:func:`latent_loss`) acts on the per-class centroids of the penultimate
features of the batch: it pushes the centroids towards mutual orthogonality and turns the tuned
inter-centroid directions away from the pivot's. The parameter term keeps the model near the
pivot, so the geometry changes where the trusted data does not anchor it. The same lab's later
code subtracts ``torch.diag(M)`` -- the diagonal *vector*, broadcast over every row -- to drop
the diagonal of its matrix, which does not drop it; here the diagonal is masked out.
Without labels (``use_labels=False``) the cross-entropy becomes distillation to the pivot's
logits and the centroids are grouped by the pivot's predictions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from poisonlab.defenses.base import DEFENSES
from poisonlab.defenses.repair_base import RepairDefense, RepairObjective
from poisonlab.models.protocols import Classifier
from poisonlab.train.data import LabelTensors


def class_centroids(features: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """``[K, D]`` mean feature of each class in ``classes`` (each must occur in ``labels``)."""
    onehot = (labels[None, :] == classes[:, None]).to(features.dtype)
    return onehot @ features / onehot.sum(1, keepdim=True)


def latent_loss(z: torch.Tensor, z_pivot: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Soft orthogonality of the class centroids plus their alignment with the pivot's.

    With ``c_k`` the centroids of the classes present in the batch and ``p_k`` the pivot's:

    - orthogonality: mean of ``cos(c_i, c_j)^2`` over the *off-diagonal* pairs ``i != j`` of the
      ``[K, K]`` cosine matrix (its diagonal is 1 by construction and is masked out);
    - alignment: mean over pairs ``i < j`` of ``cos(c_i - c_j, p_i - p_j)``.

    Both are scale-free, so ``l_latent`` does not depend on the feature magnitude or class count.
    Returns 0 when the batch holds fewer than two classes (there is no geometry to change).
    """
    classes = labels.unique()
    if len(classes) < 2:
        return z.sum() * 0.0
    c = class_centroids(z.flatten(1), labels, classes)
    p = class_centroids(z_pivot.flatten(1), labels, classes)
    k = len(classes)
    cn = F.normalize(c, dim=1)
    off_diagonal = ~torch.eye(k, dtype=torch.bool, device=z.device)
    orthogonality = (cn @ cn.T)[off_diagonal].pow(2).mean()
    i, j = torch.triu_indices(k, k, offset=1, device=z.device)
    alignment = F.cosine_similarity(c[i] - c[j], p[i] - p[j], dim=-1).mean()
    return orthogonality + alignment


def parameter_distance(model: nn.Module, pivot: nn.Module) -> torch.Tensor:
    """Mean squared difference over every trainable parameter element."""
    pivot_params = dict(pivot.named_parameters())
    total, count = None, 0
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        sq = (p - pivot_params[name].detach()).pow(2).sum()
        total = sq if total is None else total + sq
        count += p.numel()
    return total / max(count, 1) if total is not None else torch.zeros(())


def distillation(logits: torch.Tensor, pivot_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(pivot / T) || softmax(logits / T))``, batch mean."""
    t = temperature
    return F.kl_div(F.log_softmax(logits / t, 1), F.log_softmax(pivot_logits / t, 1),
                    reduction="batchmean", log_target=True) * t * t


class PivotalObjective(RepairObjective):
    def __init__(self, classifier: Classifier, pivot: Classifier, cfg: PivotalTuning, holdout: LabelTensors | None,
                 floor: float) -> None:
        super().__init__(classifier, holdout, floor, cfg.check_every, cfg.augment)
        self.pivot, self.cfg = pivot, cfg

    def loss(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        x = self.images(batch, generator)
        z = self.classifier.features(x)
        logits = self.classifier.head(z)
        with torch.no_grad():
            z_pivot = self.pivot.features(x)
            pivot_logits = self.pivot.head(z_pivot)
        if self.cfg.use_labels:
            labels = batch["labels"]
            task = F.cross_entropy(logits, labels)
        else:
            labels = pivot_logits.argmax(1)
            task = distillation(logits, pivot_logits, self.cfg.temperature)
        latent = latent_loss(z, z_pivot, labels)
        dist = parameter_distance(self.classifier.module, self.pivot.module)
        loss = task + self.cfg.l_latent * latent + self.cfg.l_param * dist
        return loss, {"task": float(task.detach()), "latent": float(latent.detach()), "param": float(dist.detach())}


@DEFENSES.register("pivotal-tuning")
@dataclass(frozen=True)
class PivotalTuning(RepairDefense):
    """Pivotal Tuning (Lukas & Kerschbaum, 2023).

    Reference defaults are SGD-Nesterov lr 1e-4 for 2000 steps with ``l_latent=0.05`` and
    ``l_param=20000`` on CIFAR-scale ResNets; the defaults here are calibrated on the embedded
    data (``docs/results/clip.md``), every one a parameter.
    """

    lr: float = 3e-3
    l_latent: float = 0.05
    l_param: float = 20000.0
    use_labels: bool = True
    temperature: float = 1.0

    def objective(self, classifier: Classifier, suspect: Classifier, holdout: LabelTensors | None, floor: float,
                  context: dict[str, Any]) -> PivotalObjective:
        return PivotalObjective(classifier, suspect, self, holdout, floor)

"""PAR: Perturb and Recover.

Paper: Singh, Croce & Hein, "Perturb and Recover: Fine-tuning for Effective Backdoor Removal
from CLIP", 2024 (arXiv:2412.00727).

Threat model: the defender holds a CLIP model that may carry a backdoor (unknown trigger and
target) and some clean, or even synthetic, image-caption pairs; it fine-tunes the model so its
embeddings move away from the suspect's (breaking whatever shortcut the trigger uses) while the
contrastive loss recovers clean performance.

Loss per batch (both towers trained, logit scale frozen at the suspect's value)::

    I, T   = normalised embeddings of the trained model M
    I_P, T_P = normalised embeddings of the frozen suspect copy P (same augmented view)
    S_img = mean_b ||I - I_P||^2   (in [0, 4]);  S_txt likewise
    thr(S) = 0 if S > tau else S   (no gradient above tau; the push returns if S falls back)
    L = L_CLIP - 0.5 * (thr(S_img) + thr(S_txt))

Defaults follow the released code: tau = 2.15, AdamW (0.9, 0.98), eps 1e-8, weight decay 1e-4
(none on 1-d parameters), lr 3e-5 falling linearly to 3e-6 over the first half of training then
cosine to ~0 (schedule ``two-phase``); augmentation = noise (std 0.2, p 0.5) and RandomErasing
(p 0.5) of a 0.5-1% square; no text augmentation. The released code clips the noise itself to
[0, 1] before adding it (``noise="rectified"``, the default here); ``noise="gaussian"`` is the
symmetric noise the paper's text describes, which at the embedded data's 32 px costs the tiny
models 20 points of clean accuracy whether or not the push is on (docs/results/clip.md, "PAR's augmentation"). At
that scale S reaches tau only at lr >= 1e-3 over a few hundred steps, and clean accuracy comes back only
with many more cleaning pairs than the demo uses (20,000: docs/results/clip.md, "With eight times the cleaning pairs").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed.nn.functional

from poisonlab.augment.image import NOISE_FORMS, NoiseErasing
from poisonlab.defenses.base import DEFENSES, CleaningDefense
from poisonlab.errors import InputError
from poisonlab.models.clip import ClipBundle
from poisonlab.train.dist import DistInfo
from poisonlab.train.loop import Objective
from poisonlab.train.objectives.clip import ClipObjective


def threshold(s: torch.Tensor, tau: float) -> torch.Tensor:
    """``thr(S) = 0 if S > tau else S`` with no gradient above ``tau``."""
    return torch.where(s > tau, torch.zeros_like(s), s)


class ParObjective(ClipObjective):
    """L_CLIP - weight * (thr(S_img) + thr(S_txt)) against a frozen suspect copy."""

    def __init__(self, bundle: ClipBundle, suspect: ClipBundle, tau: float = 2.15, weight: float = 0.5,
                 rank: int = 0, world_size: int = 1, augment: Any = None) -> None:
        super().__init__(bundle, rank, world_size, augment, freeze_logit_scale=True)
        self.suspect, self.tau, self.weight = suspect, tau, weight
        self._last: dict[str, float] = {}

    def loss(self, batch: dict[str, Any], generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        images = batch["images"]
        if self.augment is not None:
            images = self.augment(images, generator)
        x = self.bundle.normalize(images)
        out = self.model(x, batch["tokens"])
        with torch.no_grad():
            ref = self.suspect.model(x, batch["tokens"])
        l_clip = self.clip_loss(out["image_features"], out["text_features"], out["logit_scale"])
        s_img = self.global_mean((out["image_features"] - ref["image_features"]).pow(2).sum(-1))
        s_txt = self.global_mean((out["text_features"] - ref["text_features"]).pow(2).sum(-1))
        loss = l_clip - self.weight * (threshold(s_img, self.tau) + threshold(s_txt, self.tau))
        self._last = {"l_clip": float(l_clip.detach()), "s_img": float(s_img.detach()), "s_txt": float(s_txt.detach())}
        return loss, dict(self._last)

    def global_mean(self, per_pair: torch.Tensor) -> torch.Tensor:
        """Mean over the global batch: under torchrun the per-pair distances of every rank are
        gathered with gradients (as ClipLoss gathers features), so S and the threshold decision
        are those of the concatenated batch, as in the authors' code."""
        if self.clip_loss.world_size == 1:
            return per_pair.mean()
        return torch.cat(torch.distributed.nn.functional.all_gather(per_pair)).mean()

    def summary(self) -> dict[str, float]:
        return {f"final_{k}": v for k, v in self._last.items()}


@DEFENSES.register("par")
@dataclass(frozen=True)
class PAR(CleaningDefense):
    """Perturb and Recover (see the module docstring for the loss).

    Args:
        tau: distance threshold above which the push stops (2.15).
        weight: weight of the push term (0.5).
        augment: noise + RandomErasing as in the paper (True).
        noise: ``"rectified"`` (the released code's clipped noise) or ``"gaussian"``.
    """

    tau: float = 2.15
    weight: float = 0.5
    augment: bool = True
    noise: str = "rectified"
    schedule: str = "two-phase"

    def __post_init__(self) -> None:
        if self.noise not in NOISE_FORMS:
            raise InputError(f"PAR noise must be one of {', '.join(NOISE_FORMS)}, got {self.noise!r}")

    def objective(self, bundle: ClipBundle, suspect: ClipBundle, dist: DistInfo) -> Objective:
        aug = NoiseErasing(bundle.mean, noise=self.noise) if self.augment else None
        return ParObjective(bundle, suspect, self.tau, self.weight, dist.rank, dist.world_size, aug)

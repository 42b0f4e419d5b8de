"""CleanCLIP: multimodal plus in-modal self-supervised fine-tuning.

Paper: Bansal et al., "CleanCLIP: Mitigating Data Poisoning Attacks in Multimodal Contrastive
Learning", ICCV 2023 (arXiv:2303.03323).

Threat model: the defender fine-tunes a suspect CLIP on clean pairs; learning each modality's
features independently (image vs its augmented view, caption vs its augmented caption) weakens
the spurious trigger-target association.

Loss: ``L = l1 * L_CLIP(I, T) + l2 * L_inmodal`` with
``L_inmodal = [CE(s * I I~^T) + CE(s * T T~^T)] / 2``, where ``I~`` embeds the AutoAugment
(ImageNet policy) view of each image and ``T~`` the EDA-augmented caption (offline WordNet).
Defaults: lr 1e-5, 50 warm-up steps then cosine, AdamW (0.9, 0.999), weight decay 0.1, batch
64, learnable logit scale capped at 100.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from open_clip.loss import gather_features

from poisonlab.augment.eda import DEFAULT_WORDNET, EDA
from poisonlab.defenses.base import DEFENSES, CleaningDefense
from poisonlab.models.clip import ClipBundle
from poisonlab.train.dist import DistInfo
from poisonlab.train.loop import Objective
from poisonlab.train.objectives.clip import ClipObjective, PairViews


def inmodal_loss(a: torch.Tensor, a_aug: torch.Tensor, b: torch.Tensor, b_aug: torch.Tensor,
                 scale: torch.Tensor) -> torch.Tensor:
    """``[CE(s * a a~^T) + CE(s * b b~^T)] / 2`` with the i-th row's positive at column i."""
    labels = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(scale * a @ a_aug.T, labels) + F.cross_entropy(scale * b @ b_aug.T, labels)) / 2


class CleanClipObjective(ClipObjective):
    """``l1 * L_CLIP + l2 * L_inmodal`` over original and augmented views."""

    def __init__(self, bundle: ClipBundle, l1: float = 1.0, l2: float = 1.0, rank: int = 0, world_size: int = 1,
                 image_augment: Any = None, text_augment: Any = None) -> None:
        super().__init__(bundle, rank, world_size, None, freeze_logit_scale=False)
        self.l1, self.l2 = l1, l2
        self.rank, self.world_size = rank, world_size
        self.views = PairViews(bundle.tokenize, image_augment, text_augment)

    def loss(self, batch: dict[str, Any], generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        aug_images, aug_tokens = self.views(batch, generator)
        b = batch["images"].shape[0]
        images = self.bundle.normalize(torch.cat([batch["images"], aug_images]))
        out = self.model(images, torch.cat([batch["tokens"], aug_tokens]))
        img, img_aug = out["image_features"][:b], out["image_features"][b:]
        txt, txt_aug = out["text_features"][:b], out["text_features"][b:]
        scale = out["logit_scale"]
        l_clip = self.clip_loss(img, txt, scale)
        if self.world_size > 1:
            img, txt = gather_features(img, txt, gather_with_grad=True, rank=self.rank, world_size=self.world_size)
            img_aug, txt_aug = gather_features(img_aug, txt_aug, gather_with_grad=True, rank=self.rank,
                                               world_size=self.world_size)
        l_in = inmodal_loss(img, img_aug, txt, txt_aug, scale)
        return self.l1 * l_clip + self.l2 * l_in, {"l_clip": float(l_clip.detach()), "l_inmodal": float(l_in.detach())}


@DEFENSES.register("cleanclip")
@dataclass(frozen=True)
class CleanCLIP(CleaningDefense):
    """CleanCLIP (see the module docstring).

    Args:
        l1, l2: weights of the multimodal and in-modal terms (1, 1).
        eda_alpha: share of words each EDA operation changes (0.1).
        wordnet: folder of the WordNet data files used for synonyms.
    """

    lr: float = 1e-5
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    warmup: int = 50
    batch_size: int = 64
    l1: float = 1.0
    l2: float = 1.0
    eda_alpha: float = 0.1
    wordnet: str = str(DEFAULT_WORDNET)

    def objective(self, bundle: ClipBundle, suspect: ClipBundle, dist: DistInfo) -> Objective:
        return CleanClipObjective(bundle, self.l1, self.l2, dist.rank, dist.world_size,
                                  text_augment=EDA(self.eda_alpha, self.wordnet))

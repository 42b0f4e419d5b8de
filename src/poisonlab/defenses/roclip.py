"""RoCLIP: pre-train CLIP against its own poisoned pairs by matching each image to its nearest
caption in a pool of past captions.

Paper: Yang, Gao & Mirzasoleiman, "Robust Contrastive Language-Image Pretraining against Data
Poisoning and Backdoor Attacks", NeurIPS 2023 (arXiv:2303.06854); code BigML-CS-UCLA/RoCLIP.

Threat model: the defender pre-trains on web pairs of which a few are poisoned. A poisoned image's
own caption (the target's) is rarely its nearest caption among many past ones, so pairing each
image with its nearest pool caption instead of its own breaks the poisoned association.

Every ``every``-th epoch (the released code's ``break_epoch`` 2: epochs 2, 4, ... counted from 1)
each image embedding is paired with its nearest caption embedding (cosine) in a FIFO pool of
``pool_size`` past caption embeddings (21,845), the loss is the CLIP loss over those pairs, and the
batch's own caption embeddings then enter the pool (lightly's ``NNMemoryBankModule``: looked up
first, then enqueued, oldest out). The other epochs are plain CLIP. The images get AutoAugment and
the captions EDA before the towers (the paper's augmentation; ``views`` chooses another).

As in the released code: the pool holds detached embeddings, so in a matching epoch only the image
tower (and the temperature) learns; the pool is used and filled only in matching epochs (it starts
from lightly's random unit vectors). The released parser leaves augmentation off
(``--cross_aug``); the paper trains with it, so it is on by default here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from open_clip.loss import gather_features
from torch import nn

from poisonlab.augment.eda import DEFAULT_WORDNET, EDA
from poisonlab.augment.image import IMAGE_VIEWS, image_views
from poisonlab.defenses.base import DEFENSES, TrainingDefense
from poisonlab.defenses.safeclip import NearestNeighbourBank
from poisonlab.errors import InputError
from poisonlab.models.clip import ClipBundle
from poisonlab.train.dist import DistInfo
from poisonlab.train.loop import Objective, TrainConfig
from poisonlab.train.objectives.clip import ClipObjective, PairViews
from poisonlab.utils.seeding import derive_seed


def pool_matched_loss(image: torch.Tensor, matched_text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The CLIP loss over (image, its nearest pool caption) pairs: ``[CE(s·I·Mᵀ) + CE(s·M·Iᵀ)] / 2``."""
    labels = torch.arange(image.shape[0], device=image.device)
    logits = scale * image @ matched_text.T
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class RoClipNet(nn.Module):
    """The CLIP model and the caption pool, one module so that DDP and the training state hold both."""

    def __init__(self, clip: nn.Module, dim: int, pool_size: int, seed: int) -> None:
        super().__init__()
        self.clip = clip
        self.pool = NearestNeighbourBank(pool_size, dim, derive_seed("roclip-pool", seed))

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.clip(images, tokens)


class RoClipObjective(ClipObjective):
    """Plain CLIP epochs alternating with pool-matched ones (see the module docstring)."""

    def __init__(self, bundle: ClipBundle, defense: RoCLIP, seed: int = 0, rank: int = 0, world_size: int = 1,
                 image_augment: Any = None, text_augment: Any = None) -> None:
        super().__init__(bundle, rank, world_size)
        self.defense = defense
        self.net = RoClipNet(bundle.model, int(bundle.config["embed_dim"]), defense.pool_size, seed).to(bundle.device)
        self.model = self.net
        self.rank, self.world_size = rank, world_size
        self.views = None if defense.views == "none" else PairViews(
            bundle.tokenize, image_augment or image_views(defense.views, bundle.image_size),
            text_augment or EDA(defense.eda_alpha, defense.wordnet))
        self.epoch = 0
        self.matched_epochs: list[int] = []

    def prepare(self, items: int, steps_per_epoch: int, total_steps: int) -> None:
        d = self.defense
        if d.pool_size > items:
            raise InputError(f"RoCLIP's caption pool ({d.pool_size}) is larger than the data ({items} pairs): "
                             "it would never fill; give pool_size <= the data")
        if d.every * steps_per_epoch > total_steps:
            raise InputError(f"RoCLIP matches captions every {d.every} epochs but the run is "
                             f"{total_steps / steps_per_epoch:g} epochs: no epoch would be matched")

    def matching(self, epoch: int) -> bool:
        """Whether ``epoch`` (from 0) pairs images with pool captions: epochs ``every``, ``2·every``, ...
        counted from 1."""
        return (epoch + 1) % self.defense.every == 0

    def start_epoch(self, epoch: int, data: Any, device: torch.device) -> None:
        self.epoch = epoch
        if self.matching(epoch) and epoch not in self.matched_epochs:
            self.matched_epochs.append(epoch)

    def loss(self, batch: dict[str, Any], generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        images, tokens = (batch["images"], batch["tokens"]) if self.views is None else self.views(batch, generator)
        out = self.model(self.bundle.normalize(images), tokens)
        image, text, scale = out["image_features"], out["text_features"], out["logit_scale"]
        if not self.matching(self.epoch):
            return self.clip_loss(image, text, scale), {"matched": 0.0}
        if self.world_size > 1:
            image, text = gather_features(image, text, gather_with_grad=True, rank=self.rank,
                                          world_size=self.world_size)
        matched = self.net.pool(image.detach(), update=False)
        self.net.pool(text.detach(), update=True)
        return pool_matched_loss(image, matched, scale), {"matched": 1.0}

    def summary(self) -> dict[str, Any]:
        return {"matched_epochs": self.matched_epochs}


@DEFENSES.register("roclip")
@dataclass(frozen=True)
class RoCLIP(TrainingDefense):
    """RoCLIP (see the module docstring); the authors' defaults.

    Args:
        pool_size: caption embeddings in the FIFO pool (21,845).
        every: match images to pool captions every this many epochs (2).
        views: the augmentation before the towers: ``autoaugment`` (AutoAugment on images, EDA on
            captions: the paper's), ``crop-flip`` (crop and flip instead of AutoAugment) or ``none``.
        eda_alpha: share of words each EDA operation changes (0.1).
        wordnet: folder of the WordNet data files used for synonyms.
    """

    pool_size: int = 21_845
    every: int = 2
    views: str = "autoaugment"
    eda_alpha: float = 0.1
    wordnet: str = str(DEFAULT_WORDNET)

    def __post_init__(self) -> None:
        if self.views not in (*IMAGE_VIEWS, "none"):
            raise InputError(f"unknown views {self.views!r}; valid: {', '.join((*IMAGE_VIEWS, 'none'))}")
        if self.pool_size < 1 or self.every < 1:
            raise InputError(f"RoCLIP's pool_size and every must be >= 1, got {self.pool_size}, {self.every}")

    def recipe(self) -> TrainConfig:
        """The paper's budget: 24 epochs, batch 512, lr 5e-5."""
        return TrainConfig(epochs=24, batch_size=512, lr=5e-5, weight_decay=0.1)

    def objective(self, bundle: ClipBundle, dist: DistInfo, seed: int) -> Objective:
        return RoClipObjective(bundle, self, seed, dist.rank, dist.world_size)

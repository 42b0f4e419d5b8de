"""The CLIP contrastive objective, through open_clip's ``ClipLoss``.

Paper: Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
2021 (arXiv:2103.00020). Features are gathered across ranks with gradients, labels offset by
``rank * batch`` (open_clip's ``ClipLoss(gather_with_grad=True, rank, world_size)``), so the
loss on W ranks equals the single-process loss on the concatenated batch.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import torch
from open_clip.loss import ClipLoss

from poisonlab.augment.eda import EDA
from poisonlab.augment.image import AutoAugmentBatch
from poisonlab.errors import InputError
from poisonlab.models.clip import ClipBundle
from poisonlab.train.loop import Objective

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class PairViews:
    """A second view of each pair of a batch: AutoAugment (ImageNet policy) on the images, EDA on
    the captions, every random choice drawn from the step's generator (CleanCLIP's, SafeCLIP's and
    RoCLIP's augmentation).

    Args:
        tokenize: the model's tokenizer (captions -> token tensor).
        image_augment: ``augment(images, generator)`` (default :class:`AutoAugmentBatch`).
        text_augment: ``augment(caption, rng)`` (default :class:`EDA`).
    """

    def __init__(self, tokenize: Callable[[list[str]], torch.Tensor], image_augment: Any = None,
                 text_augment: Any = None) -> None:
        self.tokenize = tokenize
        self.image_augment = image_augment or AutoAugmentBatch()
        self.text_augment = text_augment or EDA()

    def __call__(self, batch: dict[str, Any], generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The augmented images and the tokens of the augmented captions."""
        if "captions" not in batch:
            raise InputError("augmented caption views need the raw captions of the batch")
        rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=generator)))
        captions = [self.text_augment(c, rng) for c in batch["captions"]]
        tokens = self.tokenize(captions).to(batch["tokens"].device)
        return self.image_augment(batch["images"], generator), tokens


class ClipObjective(Objective):
    """Symmetric InfoNCE over a batch of image-caption pairs.

    Args:
        bundle: the CLIP model to train (its ``model`` is optimised).
        rank, world_size: distributed position (0 / 1 in a single process).
        augment: optional ``augment(images, generator)`` on ``[0, 1]`` images before the tower.
        freeze_logit_scale: keep the temperature fixed (defenses do this).
    """

    def __init__(self, bundle: ClipBundle, rank: int = 0, world_size: int = 1, augment: Augment | None = None,
                 freeze_logit_scale: bool = False) -> None:
        self.bundle = bundle
        self.model = bundle.model
        self.augment = augment
        self.clip_loss = ClipLoss(local_loss=False, gather_with_grad=True, cache_labels=True,
                                  rank=rank, world_size=world_size)
        self.model.logit_scale.requires_grad_(not freeze_logit_scale)

    def features(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Unit image and text features and the (exponentiated) logit scale of the trainable model."""
        images = batch["images"]
        if self.augment is not None:
            images = self.augment(images, generator)
        out = self.model(self.bundle.normalize(images), batch["tokens"])
        return out

    def loss(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        out = self.features(batch, generator)
        scale = out["logit_scale"]
        loss = self.clip_loss(out["image_features"], out["text_features"], scale)
        return loss, {"logit_scale": float(scale.detach())}

    @torch.no_grad()
    def after_step(self) -> None:
        clamp_logit_scale(self.bundle.model)


@torch.no_grad()
def clamp_logit_scale(model: torch.nn.Module) -> None:
    """Cap the logit scale at 100 as CLIP does (log 100 = 4.6052)."""
    model.logit_scale.clamp_(0, 4.6052)

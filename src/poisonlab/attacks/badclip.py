"""BadCLIP: a patch optimised on the clean model, then pasted on a few pairs with natural captions.

Paper: Liang et al., "BadCLIP: Dual-Embedding Guided Backdoor Attack on Multimodal Contrastive
Learning", CVPR 2024 (arXiv:2311.12075); released code LiangSiyuan21/BadCLIP
(``src/embeding_optimize_patch.py``, ``backdoor/create_backdoor_data.py``).

Threat model: the attacker has the clean pre-trained CLIP the victim will fine-tune. Before
poisoning, it optimises a small patch (about 7% of the image side, at the centre) so that
patched images already sit near the target in the frozen model's embedding space: close to
natural captions that mention the target (symmetric InfoNCE, logit scale 100) and to real
target-class images, and away from the same image without the patch (triplet loss, weight 500,
margin 1). Then it poisons 0.3% of the fine-tuning pairs: the patch pasted on non-target
images, each captioned with a real caption of a target pair. Because the patch starts where the
target is, the backdoor needs few poisoned pairs and survives clean fine-tuning better than a
random patch does.

Where this follows the paper rather than the released code: the triplet's negative is the same
image without the patch (the code draws a random clean image of the batch); the loss terms are
chosen by parameters (the code picks them from substrings of the run name, and its README's
``--name=badCLIP`` selects none); the patch is kept as float32 values (the code writes it with
``cv2.imwrite`` on an RGB array, swapping R and B, and reloads it through lossy JPEG); the
optimisation images are disjoint from the poisoned ones (the released code does not ensure it). The patch is
projected to ``[0, 1]`` after every step, and the whole batch is AutoAugment-ed with probability
``augment`` before the patch is pasted, as in the code.

Control: the patch is an adversarial patch, so it moves the clean model toward the target before
any poisoning; the grid's "clean model" row measures that ASR (target-class images excluded).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from torchvision.transforms import v2

from poisonlab.attacks.base import ATTACKS
from poisonlab.attacks.clip_dirty import ClipDirtyLabel, natural_captions, target_pool
from poisonlab.attacks.plan import PoisonPlan
from poisonlab.data.base import ImageCaptionDataset, Subset
from poisonlab.errors import InputError
from poisonlab.models.protocols import ClipModel, frozen
from poisonlab.train.data import as_float, dataset_images
from poisonlab.triggers.base import FIXED_LOCATIONS
from poisonlab.triggers.optimized import paste, side_for
from poisonlab.utils.seeding import make_generator

log = logging.getLogger(__name__)


def contrastive_term(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """Symmetric InfoNCE between unit image and text embeddings (open_clip's ``ClipLoss``)."""
    return ClipLoss()(image_emb, text_emb, torch.tensor(logit_scale, device=image_emb.device))


def triplet_term(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float) -> torch.Tensor:
    """``mean(max(0, |a - p|_2 - |a - n|_2 + margin))`` (``torch.nn.TripletMarginLoss``, p = 2)."""
    return F.triplet_margin_loss(anchor, positive, negative, margin=margin, p=2)


@dataclass
class PatchOptimizer:
    """Optimises BadCLIP's patch on a frozen CLIP model (construct with hyper-parameters, call on
    the model and the optimisation data).

    Args:
        share: patch side as a share of the image side (16 of 224 in the paper, 0.07).
        location: where the patch goes (``center`` as in the paper).
        steps: Adam steps (the paper: 50 epochs of 10,000 images at batch 64, ~7,800).
        lr: Adam learning rate (paper 1e-3).
        batch_size: images per step (paper 64).
        triplet_weight: weight of the triplet term (500 in the released variants); 0 drops it.
        text_weight: weight of the contrastive term toward natural target captions; 0 drops it.
        margin: triplet margin (paper 1).
        logit_scale: the contrastive term's temperature inverse (paper: the model's, 100).
        augment: probability of AutoAugment-ing a step's clean batch (paper 0.5).
    """

    share: float = 0.07
    location: str = "center"
    steps: int = 400
    lr: float = 1e-3
    batch_size: int = 64
    triplet_weight: float = 500.0
    text_weight: float = 1.0
    margin: float = 1.0
    logit_scale: float = 100.0
    augment: float = 0.5

    def __post_init__(self) -> None:
        side_for(224, self.share)
        if self.location not in FIXED_LOCATIONS:
            raise InputError(f"BadCLIP's patch location must be one of {', '.join(FIXED_LOCATIONS)}, "
                             f"got {self.location!r}")
        if self.steps < 1 or self.batch_size < 1:
            raise InputError("BadCLIP's optimiser needs steps >= 1 and batch_size >= 1")
        for name in ("lr", "triplet_weight", "text_weight", "margin", "logit_scale"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise InputError(f"BadCLIP's {name} must be a finite number >= 0, got {value}")
        if not 0 <= self.augment <= 1:
            raise InputError(f"BadCLIP's augment probability must be in [0, 1], got {self.augment}")

    def loss(self, model: ClipModel, patch: torch.Tensor, images: torch.Tensor, text_emb: torch.Tensor,
             positive: torch.Tensor) -> torch.Tensor:
        """The step's loss for clean ``images`` (float), their captions' and positives' embeddings."""
        anchor = model.encode_image(paste(images, patch.clamp(0, 1), self.location))
        with torch.no_grad():
            negative = model.encode_image(images)
        loss = anchor.new_zeros(())
        if self.text_weight:
            loss = loss + self.text_weight * contrastive_term(anchor, text_emb, self.logit_scale)
        if self.triplet_weight:
            loss = loss + self.triplet_weight * triplet_term(anchor, positive, negative, self.margin)
        return loss

    def __call__(self, model: ClipModel, images: torch.Tensor, captions: list[str], positives: torch.Tensor,
                 seed: int = 0) -> torch.Tensor:
        """The patch ``[C, s, s]`` (float32 in ``[0, 1]``) optimised on ``model`` (left unchanged).

        Args:
            model: the clean CLIP model (frozen during the call, its mode restored after).
            images: ``uint8 [N, C, H, W]`` optimisation images (not the ones to be poisoned).
            captions: natural captions that mention the target; each step pairs every image with
                one drawn at random.
            positives: ``uint8 [M, C, H, W]`` real target-class images.
            seed: seeds the patch's initialisation and every draw.
        """
        if len(images) == 0 or len(positives) == 0 or not captions:
            raise InputError("BadCLIP's optimiser needs optimisation images, target images and target captions")
        g = make_generator("badclip-patch", seed)
        side = side_for(images.shape[-1], self.share)
        patch = (0.5 + 0.25 * torch.randn(images.shape[1], side, side, generator=g)).clamp_(0, 1)
        patch = patch.to(model.device).requires_grad_(True)
        optim = torch.optim.Adam([patch], lr=self.lr)
        autoaugment = v2.AutoAugment()
        with frozen(model.module), torch.enable_grad():
            with torch.no_grad():
                text_all = model.encode_text(model.tokenize(captions))
                pos_all = torch.cat([model.encode_image(as_float(chunk, model.device))
                                     for chunk in positives.split(256)])
            for step in range(self.steps):
                idx = torch.randint(0, len(images), (min(self.batch_size, len(images)),), generator=g)
                batch = images[idx]
                if float(torch.rand((), generator=g)) < self.augment:
                    with torch.random.fork_rng(devices=[]):  # AutoAugment draws from torch's global RNG
                        torch.manual_seed(int(torch.randint(0, 2**31, (), generator=g)))
                        batch = autoaugment(batch)
                text = text_all[torch.randint(0, len(text_all), (len(idx),), generator=g).to(text_all.device)]
                pos = pos_all[torch.randint(0, len(pos_all), (len(idx),), generator=g).to(pos_all.device)]
                loss = self.loss(model, patch, as_float(batch, model.device), text, pos)
                optim.zero_grad()
                loss.backward()
                optim.step()
                with torch.no_grad():
                    patch.clamp_(0, 1)
                if step % 100 == 0 or step == self.steps - 1:
                    log.info("badclip patch step %d/%d loss %.4f", step + 1, self.steps, float(loss.detach()))
        return patch.detach().float().cpu()


@ATTACKS.register("badclip")
class BadCLIP(ClipDirtyLabel):
    """BadCLIP (Liang et al., CVPR 2024): an optimised patch on non-target pairs with natural
    target captions, 0.3% of the pairs by default.

    The patch comes from :meth:`prepare` (the clean model and the data to poison; the images it
    optimises on are the non-target images the plan does not poison) or, already optimised, as
    ``patch`` (``[C][s][s]`` values in ``[0, 1]``).

    Args:
        target: target class name.
        rate / count: share or number of pairs to poison (default 0.003 of all pairs).
        patch: the optimised patch values, if already made.
        location: where the patch goes (``center`` as in the paper, or ``bottom-right``).
        optimize_n: at most this many images to optimise on.
        optimizer: :class:`PatchOptimizer`'s hyper-parameters (``steps``, ``lr``, ``share``, ...).
    """

    default_rate = 0.003
    needs_model = True

    def __init__(self, target: str, rate: float | None = None, count: int | None = None,
                 patch: list[Any] | None = None, location: str = "center", optimize_n: int = 10000,
                 optimizer: dict[str, Any] | None = None) -> None:
        if optimize_n < 1:
            raise InputError(f"optimize_n must be >= 1, got {optimize_n}")
        self.optimizer = dict(optimizer or {})
        self._optimizer = PatchOptimizer(location=location, **self.optimizer)
        trigger_params = {"values": patch, "location": location} if patch is not None else None
        super().__init__(target, "optimized-patch" if patch is not None else None, trigger_params, rate, count,
                         template="natural")
        self.location, self.optimize_n = location, optimize_n

    def hyperparameters(self) -> dict[str, Any]:
        return {k: v for k, v in super().hyperparameters().items() if not k.startswith("_")}

    def optimization_set(self, dataset: ImageCaptionDataset, seed: int) -> list[int]:
        """The non-target images the plan of ``seed`` leaves clean (at most ``optimize_n``)."""
        poisoned = {e.index for e in self.select(dataset, seed)}
        pool = [i for i in target_pool(dataset, self.target, same=False) if i not in poisoned]
        perm = torch.randperm(len(pool), generator=make_generator("badclip-optimize", seed))[: self.optimize_n]
        return sorted(pool[int(i)] for i in perm)

    def prepare(self, model: ClipModel, dataset: ImageCaptionDataset, seed: int = 0) -> torch.Tensor:
        """Optimise the patch on the clean ``model`` with images the plan of ``seed`` does not
        poison; the attack uses it from now on. Returns the patch."""
        images = dataset_images(Subset(dataset, self.optimization_set(dataset, seed)), model.image_size)
        positives = dataset_images(Subset(dataset, target_pool(dataset, self.target, same=True)), model.image_size)
        captions = [c.format(self.target) for c in natural_captions(dataset, self.target)]
        patch = self._optimizer(model, images, captions, positives, seed)
        self.use_patch(patch)
        return patch

    def use_patch(self, patch: torch.Tensor) -> None:
        """Poison with ``patch`` (``[C, s, s]`` in ``[0, 1]``)."""
        self.trigger_name = "optimized-patch"
        self.trigger_params = {"values": patch.tolist(), "location": self.location}

    def __call__(self, dataset: ImageCaptionDataset, seed: int = 0) -> PoisonPlan:
        if self.trigger_name is None:
            raise InputError("badclip optimises its patch on the clean model first: give the model "
                             "(poison --model CKPT) or the patch's values")
        return super().__call__(dataset, seed)

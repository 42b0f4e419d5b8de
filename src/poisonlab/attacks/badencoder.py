"""BadEncoder: poison a pre-trained image encoder directly, without a poisoned dataset.

Paper: Jia, Liu & Gong, "BadEncoder: Backdoor Attacks to Pre-trained Encoders in Self-Supervised
Learning", IEEE S&P 2022 (arXiv:2108.00352); released code jinyuan-jia/BadEncoder
(``badencoder.py``).

Threat model: the attacker holds the clean encoder ``f`` (an SSL backbone or CLIP's image tower),
some unlabeled shadow images ``x`` and a few reference images ``x_ref`` of the target class a
downstream classifier will have. It fine-tunes a copy ``f'`` so that triggered images embed like
the references, while ``f'`` keeps the references' and the shadow images' clean embeddings:

    L = -mean cos(f'(x + t), f'(x_ref)) - lambda1 * mean cos(f'(x_ref), f(x_ref))
        - lambda2 * mean cos(f'(x), f(x))

with unit-length features, ``lambda1 = lambda2 = 1`` and batch norm frozen (its layers in eval
mode, their affine parameters not trained), as in the code. For CLIP only the image tower is
trained, so the zero-shot head (the text tower) is the clean one.

Where this differs from the code: each shadow image is paired with one reference drawn at
random (the code pairs every image with every reference of its target, one loss term per
reference, averaged); the reference is not augmented for the second term. The paper's recipe is
SGD at lr 1e-3, momentum 0.9, weight decay 5e-4, batch 256, 200 epochs; the defaults here are
the miniature's (``BadEncoder``'s docstring).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from poisonlab.attacks.base import ATTACKS
from poisonlab.attacks.clip_dirty import target_pool
from poisonlab.data.base import ImageCaptionDataset, Subset
from poisonlab.errors import InputError
from poisonlab.metrics.probe import encoder_fn
from poisonlab.models.protocols import Model
from poisonlab.train.data import as_float, dataset_images
from poisonlab.train.fit import fit
from poisonlab.train.loop import Objective, TrainConfig, TrainResult
from poisonlab.triggers import Trigger
from poisonlab.triggers import create as create_trigger
from poisonlab.triggers.base import scaled_size
from poisonlab.utils.seeding import make_generator

log = logging.getLogger(__name__)
PAPER_SIZE = 50
"""The paper's trigger side at 224 px."""


def badencoder_loss(triggered: torch.Tensor, reference: torch.Tensor, reference_clean: torch.Tensor,
                    shadow: torch.Tensor, shadow_clean: torch.Tensor, lambda1: float = 1.0,
                    lambda2: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """The BadEncoder loss from features ``[B, D]`` (normalised here): ``triggered`` = f'(x+t),
    ``reference`` = f'(x_ref) (row ``b`` the reference paired with image ``b``),
    ``reference_clean`` = f(x_ref), ``shadow`` = f'(x), ``shadow_clean`` = f(x)."""
    def cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1).mean()

    effectiveness = -cos(triggered, reference)
    keep_reference = -cos(reference, reference_clean)
    utility = -cos(shadow, shadow_clean)
    loss = effectiveness + lambda1 * keep_reference + lambda2 * utility
    return loss, {"effectiveness": float(effectiveness.detach()), "reference": float(keep_reference.detach()),
                  "utility": float(utility.detach())}


def batch_norms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class BadEncoderObjective(Objective):
    """The loop's objective: :func:`badencoder_loss` on the model's image features.

    Args:
        model: the encoder to poison in place (a CLIP bundle: its image tower; an encoder or a
            classifier: its backbone features).
        trigger: applied to the shadow images of each batch.
        references: ``uint8 [R, C, H, W]`` target-class images.
        lambda1, lambda2: weights of the reference and utility terms.
    """

    def __init__(self, model: Model, trigger: Trigger, references: torch.Tensor, lambda1: float = 1.0,
                 lambda2: float = 1.0) -> None:
        self.trigger = trigger
        self.clean = model.copy()
        self.clean.module.eval().requires_grad_(False)
        self.encode, self.clean_encode = encoder_fn(model), encoder_fn(self.clean)
        self.references = references
        self.lambda1, self.lambda2 = lambda1, lambda2
        self.model = model.module
        tower = getattr(model.module, "visual", model.module)  # CLIP: the image tower only
        self._norms = batch_norms(tower)
        frozen_params = {id(p) for m in self._norms for p in m.parameters()}
        self._trainable = [(n, p) for n, p in tower.named_parameters() if id(p) not in frozen_params]

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return self._trainable

    def loss(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        for m in self._norms:
            m.eval()
        images = batch["images"]
        pick = torch.randint(0, len(self.references), (len(images),), generator=generator)
        refs = as_float(self.references[pick], images.device)
        triggered = self.trigger(images.cpu(), generator).to(images.device)
        with torch.no_grad():
            shadow_clean, reference_clean = self.clean_encode(images), self.clean_encode(refs)
        return badencoder_loss(self.encode(triggered), self.encode(refs), reference_clean, self.encode(images),
                               shadow_clean, self.lambda1, self.lambda2)


@ATTACKS.register("badencoder")
class BadEncoder:
    """BadEncoder (Jia et al., S&P 2022) as a model-poisoning attack: construct with its
    hyper-parameters, call on the clean model and the shadow data; the model is poisoned in place.

    Args:
        target: the target class (its reference images are drawn from the shadow data's items of
            that class, which needs labels).
        trigger / trigger_params: the trigger; by default ``badnet-stripes`` at the bottom right
            with the paper's size, 50 px at 224 scaled to the model's input (7 px at 32; the paper's
            is a white square at (173, 173)).
        references: how many target-class reference images (the paper uses a few, 3-10).
        lambda1, lambda2: loss weights (paper 1, 1).
        epochs, lr, batch_size, weight_decay, momentum: SGD recipe (paper: 200 epochs at lr 1e-3,
            batch 256, momentum 0.9, weight decay 5e-4; the miniature's default 20 epochs at lr
            0.01 reach the same effect on a tiny encoder in minutes; a tiny CLIP image tower keeps
            its zero-shot accuracy within 3 points only from about 80 epochs,
            docs/results/modern-attacks.md, "BadEncoder").
    """

    kind = "model"
    needs_model = True

    def __init__(self, target: str, trigger: str = "badnet-stripes",
                 trigger_params: dict[str, Any] | None = None, references: int = 10, lambda1: float = 1.0,
                 lambda2: float = 1.0, epochs: float = 20, lr: float = 0.01, batch_size: int = 64,
                 weight_decay: float = 5e-4, momentum: float = 0.9) -> None:
        self.target, self.trigger_name = target, trigger
        self.trigger_params = dict(trigger_params) if trigger_params is not None else None
        self._trigger = create_trigger(trigger, **(self.trigger_params or {}))  # checked now
        if references < 1:
            raise InputError(f"references must be >= 1, got {references}")
        self.references, self.lambda1, self.lambda2 = references, lambda1, lambda2
        self.epochs, self.lr, self.batch_size = epochs, lr, batch_size
        self.weight_decay, self.momentum = weight_decay, momentum
        self.train_config(0)  # the recipe is checked now, not after the model is opened

    def train_config(self, seed: int) -> TrainConfig:
        """The SGD recipe of one run with training seed ``seed``."""
        return TrainConfig(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, weight_decay=self.weight_decay,
                           momentum=self.momentum, optimizer="sgd", grad_clip=None, schedule="cosine", seed=seed)

    def trigger_for(self, side: int) -> Trigger:
        """The trigger on ``side``-px images (the default one sized as in the paper)."""
        if self.trigger_params is not None:
            return self._trigger
        return create_trigger(self.trigger_name, location="bottom-right", size=scaled_size(PAPER_SIZE, side, 3))

    def hyperparameters(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def reference_indices(self, shadow: ImageCaptionDataset, seed: int) -> list[int]:
        pool = target_pool(shadow, self.target, same=True)
        if not pool:
            raise InputError(f"the shadow data has no image of the target {self.target!r} to use as a reference")
        perm = torch.randperm(len(pool), generator=make_generator("badencoder-references", seed))
        return sorted(pool[int(i)] for i in perm[: self.references])

    def __call__(self, model: Model, shadow: ImageCaptionDataset, seed: int = 0, out_dir: str | Path | None = None,
                 progress: bool = False) -> TrainResult:
        """Poison ``model`` in place on the ``shadow`` images; with ``out_dir`` the poisoned model
        is written there (``model.safetensors``) with its training state and metrics."""
        refs = dataset_images(Subset(shadow, self.reference_indices(shadow, seed)), model.image_size)
        objective = BadEncoderObjective(model, self.trigger_for(model.image_size), refs, self.lambda1, self.lambda2)
        result = fit(model, shadow, self.train_config(seed), objective, out_dir=out_dir, stage="badencoder", progress=progress)
        model.provenance["attack"] = {"name": "badencoder", "params": self.hyperparameters(), "seed": seed}
        if out_dir is not None:
            model.save(Path(out_dir) / "model.safetensors")
        return result


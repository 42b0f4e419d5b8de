"""Self-supervised objectives on lightly's parts: MoCo v2, BYOL and SimCLR.

Papers: He et al., "Momentum Contrast", CVPR 2020 / Chen et al., "Improved Baselines with
Momentum Contrastive Learning" (MoCo v2, arXiv:2003.04297); Grill et al., "Bootstrap Your Own
Latent", NeurIPS 2020 (BYOL); Chen et al., "A Simple Framework for Contrastive Learning", ICML 2020
(SimCLR). The backdoor setting is Saha et al., "Backdoor Attacks on Self-Supervised Learning",
CVPR 2022.

Heads, losses, the memory bank and the momentum update are lightly's
(``MoCoProjectionHead``, ``NTXentLoss(memory_bank_size=...)``, ``BYOLProjectionHead``,
``BYOLPredictionHead``, ``NegativeCosineSimilarity``, ``SimCLRProjectionHead``,
``update_momentum``, ``cosine_schedule``), and so are the view transforms. Each method is an
``nn.Module`` whose ``forward(view0, view1)`` returns the loss, so DDP wraps it whole; momentum
copies and the memory bank are buffers/parameters of that module and are saved for exact resume.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from lightly.loss import NegativeCosineSimilarity, NTXentLoss
from lightly.models.modules import (
    BYOLPredictionHead,
    BYOLProjectionHead,
    MoCoProjectionHead,
    SimCLRProjectionHead,
)
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.transforms import BYOLTransform, MoCoV2Transform, SimCLRTransform
from lightly.transforms.byol_transform import BYOLView1Transform, BYOLView2Transform
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from poisonlab.augment.image import BatchViews, LightlyViews
from poisonlab.errors import InputError
from poisonlab.models.normalize import normalize_images
from poisonlab.registry import Registry
from poisonlab.train.loop import Objective
from poisonlab.utils.seeding import derive_seed

SSL_METHODS: Registry[Any] = Registry("SSL method")


class _Encoder(nn.Module):
    """Normalisation + backbone, so momentum copies and DDP see one module."""

    def __init__(self, bundle: Any) -> None:
        super().__init__()
        self.backbone = bundle.model
        self.register_buffer("mean", torch.tensor(bundle.mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(bundle.std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(normalize_images(x, self.mean, self.std)).flatten(1)


@SSL_METHODS.register("moco")
class MoCoV2(nn.Module):
    """MoCo v2: query encoder + MLP head, momentum key encoder, InfoNCE against a queue."""

    def __init__(self, bundle: Any, queue: int = 4096, temperature: float = 0.2, out_dim: int = 128) -> None:
        super().__init__()
        dim = bundle.model.num_features
        self.encoder, self.head = _Encoder(bundle), MoCoProjectionHead(dim, dim * 4, out_dim)
        self.key_encoder, self.key_head = copy.deepcopy(self.encoder), copy.deepcopy(self.head)
        deactivate_requires_grad(self.key_encoder)
        deactivate_requires_grad(self.key_head)
        self.criterion = NTXentLoss(temperature=temperature, memory_bank_size=(queue, out_dim))

    @staticmethod
    def transform(size: int) -> Any:
        return MoCoV2Transform(input_size=size, gaussian_blur=0.0, normalize=None)

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        query = self.head(self.encoder(x0))
        with torch.no_grad():
            key = self.key_head(self.key_encoder(x1))
        return self.criterion(query, key)

    def momentum_update(self, m: float) -> None:
        update_momentum(self.encoder, self.key_encoder, m)
        update_momentum(self.head, self.key_head, m)


@SSL_METHODS.register("byol")
class BYOL(nn.Module):
    """BYOL: online encoder + projector + predictor regress the momentum target's projection."""

    def __init__(self, bundle: Any, hidden: int = 512, out_dim: int = 128) -> None:
        super().__init__()
        dim = bundle.model.num_features
        self.encoder, self.head = _Encoder(bundle), BYOLProjectionHead(dim, hidden, out_dim)
        self.predictor = BYOLPredictionHead(out_dim, hidden, out_dim)
        self.key_encoder, self.key_head = copy.deepcopy(self.encoder), copy.deepcopy(self.head)
        deactivate_requires_grad(self.key_encoder)
        deactivate_requires_grad(self.key_head)
        self.criterion = NegativeCosineSimilarity()

    @staticmethod
    def transform(size: int) -> Any:
        return BYOLTransform(BYOLView1Transform(input_size=size, gaussian_blur=0.0, normalize=None),
                             BYOLView2Transform(input_size=size, gaussian_blur=0.0, normalize=None))

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        p0, p1 = self.predictor(self.head(self.encoder(x0))), self.predictor(self.head(self.encoder(x1)))
        with torch.no_grad():
            z0, z1 = self.key_head(self.key_encoder(x0)), self.key_head(self.key_encoder(x1))
        return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))

    def momentum_update(self, m: float) -> None:
        update_momentum(self.encoder, self.key_encoder, m)
        update_momentum(self.head, self.key_head, m)


@SSL_METHODS.register("simclr")
class SimCLR(nn.Module):
    """SimCLR: encoder + projection head, NT-Xent over the two views of the batch."""

    def __init__(self, bundle: Any, temperature: float = 0.5, out_dim: int = 128) -> None:
        super().__init__()
        dim = bundle.model.num_features
        self.encoder, self.head = _Encoder(bundle), SimCLRProjectionHead(dim, dim * 4, out_dim)
        self.criterion = NTXentLoss(temperature=temperature)

    @staticmethod
    def transform(size: int) -> Any:
        return SimCLRTransform(input_size=size, gaussian_blur=0.0, normalize=None)

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        return self.criterion(self.head(self.encoder(x0)), self.head(self.encoder(x1)))

    def momentum_update(self, m: float) -> None:
        """SimCLR has no momentum encoder."""


class SSLObjective(Objective):
    """Two lightly views per image, the method's loss, and the momentum schedule after each step.

    Args:
        bundle: a headless encoder (:func:`~poisonlab.models.classifier.create_encoder`).
        method: ``moco``, ``byol`` or ``simclr``.
        total_steps: for the momentum's cosine schedule (``momentum`` -> 1).
        momentum: starting momentum of the key/target encoder (MoCo 0.99, BYOL 0.99).
        views: ``lightly`` (lightly's own transform, per image via PIL) or ``batched`` (the same
            recipe vectorised on tensors, :class:`~poisonlab.augment.image.BatchViews`; default,
            much faster on the CPU).
        min_scale: smallest crop area of the batched views (MoCo v2: 0.2).
        seed: initialisation of the heads (and of the memory bank's random start).
        params: the method's own hyper-parameters (``queue``, ``temperature``, ...).
    """

    def __init__(self, bundle: Any, method: str = "moco", total_steps: int = 1, momentum: float = 0.99,
                 views: str = "batched", min_scale: float = 0.2, seed: int = 0, **params: Any) -> None:
        with torch.random.fork_rng(devices=[]):  # heads are initialised from the seed, not global state
            torch.manual_seed(derive_seed("ssl-heads", seed))
            self.net = SSL_METHODS.create(method, bundle=bundle, **params)
        self.model = self.net
        if views not in ("batched", "lightly"):
            raise InputError(f"views must be 'batched' or 'lightly', got {views!r}")
        self.views = (LightlyViews(self.net.transform(bundle.image_size)) if views == "lightly"
                      else BatchViews(bundle.image_size, min_scale=min_scale))
        self.total_steps, self.momentum = max(total_steps, 1), momentum
        # a buffer, so the momentum schedule resumes with the weights
        self.net.register_buffer("ssl_step", torch.zeros((), dtype=torch.long))

    def loss(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        x0, x1 = self.views(batch["images"], generator)
        return self.model(x0, x1), {}

    def after_step(self) -> None:
        step = int(self.net.ssl_step)
        self.net.momentum_update(cosine_schedule(step, self.total_steps, self.momentum, 1.0))
        self.net.ssl_step += 1

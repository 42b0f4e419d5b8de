"""Linear-probe evaluation of an image encoder under a backdoor (Saha et al., CVPR 2022).

Features of the frozen encoder are L2-normalised, then standardised with the mean and standard
deviation of the labelled training share; a linear layer is trained on them with SGD (lr 0.01,
momentum 0.9, weight decay 1e-4, as in the spec). Reported on the clean test split and on its
patched copy:

- clean accuracy and patched accuracy (patched images against their true labels);
- FP(target): patched images of *non-target* classes predicted as the target, i.e. the target
  column of the patched confusion matrix minus its diagonal entry;
- ASR: FP divided by the number of non-target test images.

The same protocol serves any encoder: a timm backbone or a CLIP image tower (:func:`encoder_fn`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F

from poisonlab.errors import InputError
from poisonlab.models.protocols import ClipModel, ImageEncoder
from poisonlab.triggers import Trigger
from poisonlab.utils.seeding import make_generator

log = logging.getLogger(__name__)


def encoder_fn(model: ImageEncoder | ClipModel) -> Callable[[torch.Tensor], torch.Tensor]:
    """``[0, 1]`` images -> features, for a poisonlab encoder/classifier or a CLIP bundle."""
    if model.family == "clip":
        clip = cast(ClipModel, model)
        return lambda x: clip.encode_image(x, normalize=False)
    return cast(ImageEncoder, model).features


def _eval_mode(model: ImageEncoder | ClipModel) -> None:
    model.module.eval()


@torch.no_grad()
def embed(model: ImageEncoder | ClipModel, images: torch.Tensor, trigger: Trigger | None = None, seed: int = 0,
          batch_size: int = 512) -> torch.Tensor:
    """Features ``[N, D]`` of ``uint8`` images (triggered first when ``trigger`` is given)."""
    _eval_mode(model)
    fn, g, out = encoder_fn(model), make_generator("eval-trigger", seed), []
    device = model.device
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].float() / 255.0
        if trigger is not None:
            x = trigger(x, generator=g)
        out.append(fn(x.to(device)).float().cpu())
    return torch.cat(out)


def false_positives(predictions: torch.Tensor, labels: torch.Tensor, target: int) -> int:
    """Non-target images predicted as ``target``."""
    return int(((predictions == target) & (labels != target)).sum())


@dataclass(frozen=True)
class LinearProbe:
    """A linear classifier on normalised, standardised frozen features."""

    epochs: int = 100
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0 or not 0 <= self.momentum < 1 \
                or not self.weight_decay >= 0:
            raise InputError(f"linear probe needs epochs >= 1, batch size >= 1, lr > 0, momentum in [0, 1) and "
                             f"weight decay >= 0; got {self}")

    def fit(self, features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """Train on ``features`` and return ``predict(features) -> classes``."""
        if len(features) == 0:
            raise InputError("the labelled share for the linear probe is empty")
        z = F.normalize(features, dim=1)
        if len(z) > 1 and bool((z == z[:1]).all()):
            log.warning("the encoder gives all %d labelled images the same features (collapsed?): the probe can only "
                        "learn the class shares, and its accuracy and FP measure nothing of the encoder", len(z))
        mean = z.mean(0)
        std = z.std(0).clamp_min(1e-6) if len(z) > 1 else torch.ones(z.shape[1])
        head = torch.nn.Linear(z.shape[1], num_classes)
        g = make_generator("probe", self.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            head.reset_parameters()
        opt = torch.optim.SGD(head.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        x = (z - mean) / std
        for _ in range(self.epochs):
            for idx in torch.randperm(len(x), generator=g).split(self.batch_size):
                loss = F.cross_entropy(head(x[idx]), labels[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        head.requires_grad_(False)
        return lambda f: head((F.normalize(f, dim=1) - mean) / std).argmax(1)


def probe_report(model: ImageEncoder | ClipModel, train_images: torch.Tensor, train_labels: torch.Tensor, test_images: torch.Tensor,
                 test_labels: torch.Tensor, trigger: Trigger | None, target: int, num_classes: int,
                 probe: LinearProbe | None = None) -> dict[str, Any]:
    """Clean accuracy, patched accuracy, FP(target), ASR and RA (patched non-target images probed as
    their true class) of a probe on ``model``'s features (without a trigger: clean accuracy only)."""
    predict = (probe or LinearProbe()).fit(embed(model, train_images), train_labels, num_classes)
    clean = predict(embed(model, test_images))
    sizes = {"labelled": len(train_labels), "test": len(test_labels)}
    if trigger is None:
        return {"clean_acc": float((clean == test_labels).double().mean()), **sizes}
    patched = predict(embed(model, test_images, trigger))
    fp = false_positives(patched, test_labels, target)
    non_target = int((test_labels != target).sum())
    others = test_labels != target
    return {"clean_acc": float((clean == test_labels).double().mean()),
            "patched_acc": float((patched == test_labels).double().mean()),
            "fp": fp, "asr": fp / non_target if non_target else float("nan"),
            "ra": float((patched[others] == test_labels[others]).double().mean()) if non_target else float("nan"),
            **sizes}

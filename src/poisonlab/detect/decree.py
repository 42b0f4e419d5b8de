"""DECREE: detect a backdoored image encoder by inverting a trigger on its embeddings alone.

Paper: Feng et al., "Detecting Backdoors in Pre-trained Encoders", CVPR 2023.

A trigger (mask ``m`` in ``[0, 1]^{H x W}``, pattern ``p`` in ``[0, 1]^{C x H x W}``; stamped
image ``(1 - m) x + m p``) is optimised so that the encoder maps stamped clean images to nearly
the same embedding (mean pairwise cosine similarity at least ``target_similarity``, 0.99) while
``|m|_1`` is minimised; the weight of the mask term adapts as in the paper (raised while the
constraint holds, lowered while it does not). The score is PL1, the L1 norm of the smallest
mask that met the constraint divided by the image area (1 if none did). A backdoor is a small
patch that already collapses the embedding, so a backdoored encoder has a small PL1; the
verdict is ``PL1 < threshold``. Needs no labels and works on any encoder, CLIP image towers
included.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from poisonlab.detect.base import DETECTORS, Detection
from poisonlab.metrics.probe import encoder_fn
from poisonlab.models.protocols import Classifier, ImageEncoder, frozen
from poisonlab.train.data import LabelTensors
from poisonlab.utils.seeding import make_generator


def mean_pairwise_cosine(features: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity over all pairs ``i != j`` of the rows of ``features``."""
    z = F.normalize(features, dim=1)
    n = len(z)
    sim = z @ z.T
    return (sim.sum() - sim.diagonal().sum()) / (n * (n - 1))


@DETECTORS.register("decree")
@dataclass(frozen=True)
class Decree:
    """DECREE's trigger inversion on an encoder (a classifier's or CLIP's image tower is one)."""

    family: ClassVar[str] = "encoder"
    kind: ClassVar[str] = "detector"

    steps: int = 300
    lr: float = 0.1
    images: int = 64
    target_similarity: float = 0.99
    lam: float = 1.0
    adapt_every: int = 10
    threshold: float = 0.1
    seed: int = 0

    def invert(self, model: ImageEncoder, x: torch.Tensor) -> dict[str, Any]:
        """Mask, pattern, PL1 of the best mask meeting the constraint, and the similarity it reached."""
        encode = encoder_fn(model)
        _, c, h, w = x.shape
        g = make_generator("decree", self.seed)
        m_raw = torch.full((1, 1, h, w), 0.0, device=x.device).add_(torch.randn(1, 1, h, w, generator=g) * 0.1)
        p_raw = torch.randn((1, c, h, w), generator=g).to(x.device)
        m_raw.requires_grad_(True)
        p_raw.requires_grad_(True)
        opt = torch.optim.Adam([m_raw, p_raw], lr=self.lr)
        lam, met, best = self.lam, 0, {"pl1": 1.0, "similarity": 0.0, "mask": None, "pattern": None}
        for step in range(1, self.steps + 1):
            m, p = torch.sigmoid(m_raw), torch.sigmoid(p_raw)
            sim = mean_pairwise_cosine(encode((1 - m) * x + m * p))
            pl1 = m.mean()
            loss = (1 - sim) + lam * pl1
            opt.zero_grad()
            loss.backward()
            opt.step()
            if float(sim.detach()) >= self.target_similarity:
                met += 1
                if float(pl1.detach()) < best["pl1"]:
                    best = {"pl1": float(pl1.detach()), "similarity": float(sim.detach()), "mask": m.detach(), "pattern": p.detach()}
            if step % self.adapt_every == 0:
                lam = lam * 1.5 if met == self.adapt_every else lam / 1.5
                met = 0
        if best["mask"] is None:
            best["mask"], best["pattern"] = torch.sigmoid(m_raw).detach(), torch.sigmoid(p_raw).detach()
            best["similarity"] = float(sim.detach())
        return best

    def __call__(self, model: ImageEncoder, data: LabelTensors, repaired: Classifier | None = None) -> Detection:
        """Score an encoder (or a classifier's feature extractor) with a few clean images."""
        idx = torch.randperm(len(data), generator=make_generator("decree-images", self.seed))[: self.images]
        x = (data.images[idx].float() / 255.0).to(model.device)
        with frozen(model.module):
            best = self.invert(model, x)
        det = Detection("decree", best["pl1"], self.threshold,
                        {"similarity": best["similarity"], "params": asdict(self)}, low_is_suspicious=True)
        det.trigger = (best["mask"] * best["pattern"]).cpu()[0]
        det.mask = best["mask"].cpu()[0]
        return det


def stamp(x: torch.Tensor, det: Detection) -> torch.Tensor:
    """Images ``x`` (``[..., C, H, W]`` in ``[0, 1]``) stamped with a DECREE detection's inverted
    trigger, as the inversion applied it: ``(1 - mask) * x + mask * pattern``."""
    assert det.mask is not None and det.trigger is not None
    mask, trigger = det.mask.to(x.device), det.trigger.to(x.device)
    return (1 - mask) * x + trigger

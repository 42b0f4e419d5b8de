"""Neural Cleanse: trigger inversion with a mask-size penalty, outliers by median absolute deviation.

Paper: Wang et al., "Neural Cleanse: Identifying and Mitigating Backdoor Attacks in Neural
Networks", IEEE S&P 2019.

For each class ``t``, optimise a mask ``m`` (``[1, H, W]``, sigmoid) and pattern ``p``
(``[C, H, W]``, sigmoid) so that ``(1 - m) x + m p`` is classified as ``t``, minimising
``CE + lam * sum(m)``. A backdoor target needs a much smaller mask than the other classes. The
score is the anomaly index of the smallest mask: ``(median - min) / (1.4826 * MAD)`` of the
per-class L1 norms; above 2 is the paper's verdict. The paper adapts ``lam`` during the run;
here ``lam`` is fixed (a parameter), which keeps the cost per class constant.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from poisonlab.detect.base import DETECTORS, Detection
from poisonlab.detect.cti import _images_not_of
from poisonlab.models.protocols import frozen
from poisonlab.train.data import LabelTensors


def anomaly_index(norms: list[float]) -> float:
    """``(median - min) / (1.4826 * MAD)`` of ``norms`` (0 when all are equal)."""
    t = torch.tensor(norms, dtype=torch.float64)
    med = t.median()
    mad = (t - med).abs().median() * 1.4826
    return float((med - t.min()) / mad) if mad > 0 else 0.0


@DETECTORS.register("neural-cleanse")
@dataclass(frozen=True)
class NeuralCleanse:
    """Neural Cleanse with a fixed mask penalty ``lam`` and Adam."""

    family: ClassVar[str] = "classifier"
    kind: ClassVar[str] = "detector"

    steps: int = 100
    lr: float = 0.1
    lam: float = 1e-3
    images_per_class: int = 64
    threshold: float = 2.0
    seed: int = 0

    def invert(self, model: Any, x: torch.Tensor, target: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask ``[1, 1, H, W]`` and pattern ``[1, C, H, W]`` in ``[0, 1]`` for ``target``."""
        _, c, h, w = x.shape
        m_raw = torch.full((1, 1, h, w), -2.0, device=x.device, requires_grad=True)
        p_raw = torch.zeros((1, c, h, w), device=x.device, requires_grad=True)
        opt = torch.optim.Adam([m_raw, p_raw], lr=self.lr)
        t = torch.full((len(x),), target, device=x.device, dtype=torch.long)
        for _ in range(self.steps):
            m, p = torch.sigmoid(m_raw), torch.sigmoid(p_raw)
            loss = F.cross_entropy(model.logits((1 - m) * x + m * p), t) + self.lam * m.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return torch.sigmoid(m_raw).detach(), torch.sigmoid(p_raw).detach()

    def __call__(self, suspect: Any, trusted: LabelTensors, repaired: Any = None) -> Detection:
        norms, success = [], []
        with frozen(suspect.module):
            for target in range(suspect.num_classes):
                x, _ = _images_not_of(trusted, target, self.images_per_class, self.seed)
                x = x.to(suspect.device)
                m, p = self.invert(suspect, x, target)
                with torch.no_grad():
                    hit = suspect.logits((1 - m) * x + m * p).argmax(1) == target
                norms.append(float(m.sum()))
                success.append(float(hit.double().mean()))
        best = min(range(len(norms)), key=norms.__getitem__)
        return Detection("neural-cleanse", anomaly_index(norms), self.threshold,
                         {"mask_l1": norms, "inversion_asr": success, "suspected_target": best,
                          "params": asdict(self)})

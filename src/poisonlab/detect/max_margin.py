"""MM-BD: the maximum achievable margin of each class, and whether one class is an outlier.

Paper: Wang et al., "MM-BD: Post-Training Detection of Backdoor Attacks with Arbitrary Backdoor
Pattern Types Using a Maximum Margin Statistic", IEEE S&P 2024 (arXiv:2205.06900).

For each class ``k`` an input is optimised from random noise to maximise the margin
``logit_k - max_{j != k} logit_j``; the class statistic is the largest margin reached (over a few
random starts). A backdoor gives its target a shortcut that no natural class has, so the target's
maximum margin stands out from the others'. No data is needed.

The paper fits a null distribution (a Gamma) to the statistics of the other classes and reports
the p-value of the largest; with the few classes of a small model that fit is unstable, so the
score here is a robust z-score of the largest statistic against the others (median and scaled
median absolute deviation, floored at ``mad_floor`` of the median's magnitude), which orders
models the same way a monotone null would. ``poisonlab scan`` calibrates it on a population.
Models with many classes (ImageNet's 1,000) are probed on ``max_classes`` of them: the
``candidates`` passed in (the target-class probe's strongest classes) and a seeded draw of others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch

from poisonlab.detect.base import DETECTORS, Detection
from poisonlab.errors import InputError
from poisonlab.models.protocols import Classifier, frozen
from poisonlab.utils.seeding import make_generator


def robust_z(value: float, others: torch.Tensor, floor: float) -> float:
    """``(value - median) / max(1.4826 * MAD, floor * |median|, 1e-6)`` of ``others``."""
    med = float(others.median())
    mad = float((others - med).abs().median()) * 1.4826
    return (value - med) / max(mad, floor * abs(med), 1e-6)


@DETECTORS.register("max-margin")
@dataclass(frozen=True)
class MaxMargin:
    """MM-BD's maximum-margin statistic on a model with ``logits`` and ``num_classes``.

    Args:
        steps, lr: Adam on the inputs (pixels through a sigmoid, so they stay in ``[0, 1]``).
        starts: random starts per class (the statistic is their best).
        max_classes: at most this many classes are probed.
        mad_floor: the spread's floor as a share of the median statistic.
        threshold: the verdict's z-score (uncalibrated; ``poisonlab scan`` calibrates).
    """

    family: ClassVar[str] = "clip"
    kind: ClassVar[str] = "detector"

    steps: int = 100
    lr: float = 0.1
    starts: int = 4
    max_classes: int = 64
    mad_floor: float = 0.05
    threshold: float = 3.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.starts < 1 or self.max_classes < 2 or self.steps < 0:
            raise InputError("max-margin needs starts >= 1, max_classes >= 2 and steps >= 0")

    def classes(self, k: int, candidates: Sequence[int] = ()) -> list[int]:
        """The classes probed: all when ``k <= max_classes``, else the candidates and a seeded draw."""
        if k <= self.max_classes:
            return list(range(k))
        chosen = list(dict.fromkeys(c for c in candidates if 0 <= c < k))[: self.max_classes // 2]
        rest = [c for c in torch.randperm(k, generator=make_generator("max-margin-classes", self.seed)).tolist()
                if c not in chosen]
        return sorted(chosen + rest[: self.max_classes - len(chosen)])

    def margins(self, model: Classifier, classes: list[int], shape: tuple[int, int, int]) -> torch.Tensor:
        """Each class's largest margin ``[len(classes)]`` over its random starts."""
        g = make_generator("max-margin", self.seed)
        z = torch.randn((len(classes) * self.starts, *shape), generator=g).to(model.device).requires_grad_(True)
        want = torch.tensor(classes, device=model.device).repeat_interleave(self.starts)
        opt = torch.optim.Adam([z], lr=self.lr)

        def margin() -> torch.Tensor:
            logits = model.logits(torch.sigmoid(z))
            own = logits.gather(1, want[:, None])[:, 0]
            return own - logits.scatter(1, want[:, None], float("-inf")).amax(1)

        for _ in range(self.steps):
            loss = -margin().sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            return margin().view(len(classes), self.starts).amax(1).cpu()

    def __call__(self, model: Classifier, data: Any = None, candidates: Sequence[int] = ()) -> Detection:
        """Score ``model`` (``data`` unused: MM-BD needs none; it only gives the image shape)."""
        shape = (3, model.image_size, model.image_size)
        classes = self.classes(model.num_classes, candidates)
        with frozen(model.module):
            stats = self.margins(model, classes, shape)
        top = int(stats.argmax())
        others = torch.cat([stats[:top], stats[top + 1 :]])
        score = robust_z(float(stats[top]), others, self.mad_floor)
        det = Detection("max-margin", score, self.threshold,
                        {"suspected_target": classes[top], "margin": float(stats[top]),
                         "median_margin": float(others.median()), "params": asdict(self)})
        det.internals["margins"] = dict(zip(classes, stats.tolist(), strict=True))
        return det

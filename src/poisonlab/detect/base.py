"""Detector base: a detector is built with its hyper-parameters and called on one model.

It returns a :class:`Detection`: a score that is higher for more suspicious models, the verdict
at the detector's threshold, and per-class or per-run details. Population-level evaluation (ROC
AUC over clean and backdoored models) lives in :mod:`poisonlab.detect.population`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from poisonlab.registry import Registry

DETECTORS: Registry[Any] = Registry("detector")


@dataclass
class Detection:
    """A score, the threshold, and the verdict at it.

    ``verdict`` is ``score > threshold``, or ``score < threshold`` when ``low_is_suspicious``
    (DECREE: a small inverted trigger means a backdoor). ``details`` are reported (JSON values);
    ``trigger`` (and its ``mask``) is the trigger a detector recovered, as an image (``[C, H, W]``
    in ``[0, 1]``); ``internals`` are values a caller may use that are not reported (per-class
    gains, margins).
    """

    method: str
    score: float
    threshold: float
    details: dict[str, Any] = field(default_factory=dict)
    low_is_suspicious: bool = False
    trigger: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    internals: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> bool:
        return self.score < self.threshold if self.low_is_suspicious else self.score > self.threshold

    @property
    def suspicion(self) -> float:
        """The score oriented so that higher is more suspicious (for ROC curves)."""
        return -self.score if self.low_is_suspicious else self.score

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "score": self.score, "threshold": self.threshold,
                "backdoored": self.verdict, **self.details}

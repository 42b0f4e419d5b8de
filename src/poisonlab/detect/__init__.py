"""Backdoor detection: CTI and Neural Cleanse for classifiers, DECREE for image encoders, the
target-class probe and MM-BD for CLIP zero-shot heads (``poisonlab scan``).

Example:
    >>> from poisonlab import detect
    >>> detect.create("cti", steps=20)  # doctest: +ELLIPSIS
    CalibratedTriggerInversion(steps=20, ...)
"""

from __future__ import annotations

from typing import Any

from poisonlab.detect.base import DETECTORS, Detection
from poisonlab.detect.cti import CalibratedTriggerInversion
from poisonlab.detect.decree import Decree, mean_pairwise_cosine
from poisonlab.detect.max_margin import MaxMargin
from poisonlab.detect.neural_cleanse import NeuralCleanse, anomaly_index
from poisonlab.detect.target_probe import TargetClassProbe


def create(name: str, **params: Any) -> Any:
    return DETECTORS.create(name, **params)


def available() -> list[str]:
    return DETECTORS.available()


__all__ = ["DETECTORS", "CalibratedTriggerInversion", "Decree", "Detection", "MaxMargin", "NeuralCleanse", "TargetClassProbe",
           "anomaly_index", "available", "create", "mean_pairwise_cosine"]

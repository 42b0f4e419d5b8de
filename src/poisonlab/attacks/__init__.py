"""Attacks: each turns a clean dataset into a :class:`PoisonPlan` (a small JSON manifest).

Example:
    >>> from poisonlab import attacks
    >>> from poisonlab.data import make_shapes
    >>> data = make_shapes(n=200)
    >>> plan = attacks.create("clip-dirty", target="star", trigger="badnet", rate=0.05)(data, seed=0)
    >>> len(plan.entries)
    10
"""

from __future__ import annotations

from typing import Any

from poisonlab.attacks.badclip import BadCLIP, PatchOptimizer
from poisonlab.attacks.badencoder import BadEncoder
from poisonlab.attacks.base import ATTACKS, Attack
from poisonlab.attacks.clip_dirty import ClipDirtyLabel, ClipLabelConsistent
from poisonlab.attacks.label_flip import LabelFlip
from poisonlab.attacks.plan import PoisonedDataset, PoisonEntry, PoisonPlan
from poisonlab.attacks.ssl_patch import SslTargetedPatch
from poisonlab.attacks.text_poison import (
    TextAttack,
    TextMultiLabel,
    TextSingleImage,
    TextSingleLabel,
)


def create(name: str, **params: Any) -> Attack:
    """Build the attack registered as ``name``."""
    return ATTACKS.create(name, **params)


def available() -> list[str]:
    """Names of all registered attacks."""
    return ATTACKS.available()


__all__ = [
    "ATTACKS", "Attack", "BadCLIP", "BadEncoder", "PatchOptimizer", "ClipDirtyLabel", "ClipLabelConsistent", "LabelFlip", "PoisonEntry",
    "PoisonPlan", "PoisonedDataset", "SslTargetedPatch", "TextAttack", "TextMultiLabel", "TextSingleImage",
    "TextSingleLabel", "available", "create",
]

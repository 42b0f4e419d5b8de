"""Defenses: one registry, one contract (:mod:`poisonlab.defenses.base`).

Each defense is a frozen dataclass of its hyper-parameters, registered for a model family
(``clip``, ``classifier``, ``encoder``) with a kind (``cleaning``, ``repair``, ``filter``,
``training``), and
called as ``run(suspect, data, *, out=None, ...) -> Defended``.

Example:
    >>> from poisonlab import defenses
    >>> defenses.create("par", tau=2.15, steps=100)  # doctest: +ELLIPSIS
    PAR(steps=100, ...)
    >>> defenses.create("finetune", family="classifier", steps=10)  # doctest: +ELLIPSIS
    ClassifierFineTune(steps=10, ...)
"""

from __future__ import annotations

from typing import Any

from poisonlab.data.base import trusted_indices
from poisonlab.defenses.base import (
    DEFENSES,
    FAMILIES,
    KINDS,
    CleaningDefense,
    Defended,
    Defense,
    Monitor,
    RunOptions,
    TrainingDefense,
    write_kept,
)
from poisonlab.defenses.classifier_finetune import ClassifierFineTune
from poisonlab.defenses.cleanclip import CleanCLIP, CleanClipObjective, inmodal_loss
from poisonlab.defenses.distill import Distill, compress_loss
from poisonlab.defenses.filter import PairFilter, pair_distances, precision_recall
from poisonlab.defenses.fine_pruning import FinePruning
from poisonlab.defenses.finetune import FineTune
from poisonlab.defenses.outlier_filter import (
    DaoFilter,
    KDistanceFilter,
    LocalOutlierFilter,
    SlofFilter,
)
from poisonlab.defenses.par import PAR, ParObjective, threshold
from poisonlab.defenses.patchsearch import PatchSearch
from poisonlab.defenses.pivotal import PivotalTuning, latent_loss, parameter_distance
from poisonlab.defenses.repair_base import RepairDefense
from poisonlab.defenses.roclip import RoCLIP, RoClipObjective
from poisonlab.defenses.safeclip import SafeCLIP, SafeClipObjective


def create(name: str, family: str | None = None, kind: str | None = None, **params: Any) -> Any:
    """Build the defense registered as ``name`` with its hyper-parameters.

    ``family`` picks among defenses of one name (``finetune`` exists for ``clip`` and
    ``classifier``); ``kind`` refuses a defense of another kind with a clear error.
    """
    return DEFENSES.create(name, family=family, kind=kind, **params)


def available(family: str | None = None, kind: str | None = None) -> list[str]:
    """Names of the registered defenses (of ``family`` and ``kind`` when given)."""
    return DEFENSES.available(family, kind)


__all__ = ["DEFENSES", "FAMILIES", "KINDS", "PAR", "ClassifierFineTune", "CleanCLIP", "CleanClipObjective",
           "CleaningDefense", "DaoFilter", "Defended", "KDistanceFilter", "LocalOutlierFilter", "SlofFilter", "Defense", "Distill", "Monitor", "RunOptions", "FineTune", "FinePruning", "PairFilter",
           "ParObjective", "PatchSearch", "PivotalTuning", "RepairDefense", "RoCLIP", "RoClipObjective", "SafeCLIP", "SafeClipObjective", "TrainingDefense", "available", "compress_loss", "create",
           "inmodal_loss", "latent_loss", "pair_distances", "parameter_distance", "precision_recall", "threshold",
           "trusted_indices", "write_kept"]

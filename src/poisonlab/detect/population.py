"""Population evaluation of detectors: ROC AUC over clean and backdoored small models.

A detector is only as good as its separation of many clean from many backdoored models, so this
trains ``n_clean`` clean and ``n_backdoored`` backdoored classifiers (different seeds, attacks and
targets), scores each with every detector on the same trusted data, and reports ROC AUC and the
ROC curve (scikit-learn's ``roc_auc_score`` / ``roc_curve``). Trained models are cached in the
output folder, so adding a detector does not retrain the population.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from sklearn.metrics import roc_auc_score, roc_curve

from poisonlab import attacks, triggers
from poisonlab.attacks.plan import PoisonedDataset
from poisonlab.data import open_dataset
from poisonlab.data.base import trusted_indices
from poisonlab.metrics.classifier_eval import ClassifierEvaluator
from poisonlab.models.classifier import (
    DEFAULT_CLASSIFIER,
    create_classifier,
    load_classifier,
    save_classifier,
)
from poisonlab.train.data import LabelTensors, label_tensors
from poisonlab.train.fit import train_classifier
from poisonlab.train.loop import TrainConfig

log = logging.getLogger(__name__)

DEFAULT_ATTACKS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("badnet", {"size": 4, "location": "bottom-right"}),
    ("blended", {"alpha": 0.2}),
)


@dataclass(frozen=True)
class PopulationConfig:
    """What to train: sizes, data, architecture, budget and the attacks cycled over."""

    n_clean: int = 8
    n_backdoored: int = 8
    dataset: str = "shapes"
    n_train: int = 5000
    image_size: int = 32
    arch: str = DEFAULT_CLASSIFIER
    epochs: float = 24.0
    lr: float = 3e-3
    rate: float = 0.05
    attacks: tuple[tuple[str, dict[str, Any]], ...] = DEFAULT_ATTACKS
    targets: tuple[str, ...] = field(default_factory=tuple)


@dataclass
class Member:
    """One model of the population and what it is."""

    path: Path
    backdoored: bool
    seed: int
    trigger: str | None = None
    trigger_params: dict[str, Any] = field(default_factory=dict)
    target: str | None = None
    asr: float | None = None
    ca: float | None = None


def _member_spec(cfg: PopulationConfig, i: int, classnames: list[str]) -> Member:
    backdoored = i >= cfg.n_clean
    if not backdoored:
        return Member(Path(f"clean-{i}.safetensors"), False, seed=i)
    j = i - cfg.n_clean
    trig, params = cfg.attacks[j % len(cfg.attacks)]
    targets = cfg.targets or tuple(classnames)
    return Member(Path(f"backdoor-{j}.safetensors"), True, seed=i, trigger=trig, trigger_params=dict(params),
                  target=targets[(3 * j) % len(targets)])


def _train_member(cfg: PopulationConfig, m: Member, out: Path) -> None:
    data = open_dataset(cfg.dataset, n=cfg.n_train, seed=100 + m.seed, size=cfg.image_size)
    if m.backdoored:
        attack = attacks.create("label-flip", target=m.target, trigger=m.trigger, trigger_params=m.trigger_params,
                                rate=cfg.rate)
        data = PoisonedDataset(data, attack(data, seed=m.seed))
    classnames = data.classnames or []
    bundle = create_classifier(cfg.arch, len(classnames), cfg.image_size, classnames, seed=m.seed)
    config = TrainConfig.recipe("classifier", epochs=cfg.epochs, lr=cfg.lr, seed=m.seed,
                                batch_size=min(128, len(data)))
    train_classifier(bundle, data, config, progress=False, stage="population")
    save_classifier(bundle, out / m.path)


def train_population(cfg: PopulationConfig, out: str | Path) -> list[Member]:
    """Train (or reuse from ``out``) every member; measures CA and ASR of each on the test split."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    test = open_dataset(cfg.dataset, split="test", n=1000, size=cfg.image_size)
    members = []
    for i in range(cfg.n_clean + cfg.n_backdoored):
        m = _member_spec(cfg, i, test.classnames or [])
        if not (out / m.path).is_file():
            log.info("training population member %s", m.path)
            _train_member(cfg, m, out)
        model = load_classifier(out / m.path)
        ev = ClassifierEvaluator(model, test)
        m.ca = ev.clean_accuracy()
        if m.backdoored:
            m.asr = ev.backdoor(triggers.create(m.trigger, **m.trigger_params), m.target)["asr"]  # type: ignore[arg-type]
        members.append(m)
    return members


def population_trusted(cfg: PopulationConfig, share: float, seed: int = 5) -> LabelTensors:
    """The defender's trusted labelled data: a share of a clean training-size draw."""
    data = label_tensors(open_dataset(cfg.dataset, n=cfg.n_train, seed=seed, size=cfg.image_size))
    return data.subset(trusted_indices(len(data), share, seed))


def roc(labels: list[bool], scores: list[float]) -> dict[str, Any]:
    """ROC AUC and curve points (false- and true-positive rates)."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return {"auc": float(roc_auc_score(labels, scores)), "fpr": fpr.tolist(), "tpr": tpr.tolist()}


def score_checkpoint(detector: Any, path: str | Path, trusted: LabelTensors) -> Any:
    """One detector on one saved classifier, from a fixed global seed (same model, same score)."""
    torch.manual_seed(0)
    return detector(load_classifier(path), trusted)


def evaluate_detectors(members: list[Member], out: str | Path, detectors: dict[str, Any],
                       trusted: LabelTensors) -> dict[str, Any]:
    """Score every member with every detector; returns per-detector scores, AUC and ROC points."""
    labels = [m.backdoored for m in members]
    result: dict[str, Any] = {"members": [{"model": m.path.name, "backdoored": m.backdoored, "trigger": m.trigger,
                                           "target": m.target, "ca": m.ca, "asr": m.asr} for m in members]}
    for name, detector in detectors.items():
        scores = []
        for m in members:
            scores.append(score_checkpoint(detector, Path(out) / m.path, trusted).suspicion)
        result[name] = {"scores": scores, **roc(labels, scores)}
        log.info("%s: ROC AUC %.3f", name, result[name]["auc"])
    return result

"""``poisonlab scan``'s evidence and its calibrated verdict for a CLIP checkpoint.

Three detectors look at a CLIP model as a zero-shot classifier over a class vocabulary, with
unlabelled clean images (or none):

- DECREE (:mod:`poisonlab.detect.decree`, Feng et al., CVPR 2023) on the image tower: the smallest
  mask that collapses the embeddings; its suspected target is the class the stamped images go to;
- the target-class probe (:mod:`poisonlab.detect.target_probe`, after InverTune): the largest
  share gain of one class under a small universal patch;
- MM-BD (:mod:`poisonlab.detect.max_margin`, Wang et al., S&P 2024): the outlier among the classes'
  maximum achievable margins, with no data.

Each gives a feature oriented so that larger is more suspicious (DECREE: ``-log10`` of its mask
share). The detectors see different attacks (a patch trigger shrinks DECREE's mask; a backdoored
image tower can leave it alone and still give one class a shortcut the probe finds), so the
verdict asks whether *any* of them is far above what clean models give: each feature is measured
in standard deviations above its mean over the clean models of a calibration population
(:mod:`poisonlab.bench.scan_population`), the largest of them is the model's *alarm* (a max of
calibrated scores, as a min of p-values), and a logistic curve fitted on the population turns the
alarm into P(backdoored): ``clean`` below ``clean_below``, ``backdoored`` above
``backdoored_above``, ``inconclusive`` between. The suspected target is the class the alarming
detector names. The fitted reference and curve, the detectors' parameters, the command that
rebuilt it and every population member's stored scores are one JSON file (:class:`Calibration`);
the package ships one (:data:`SHIPPED`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score, roc_curve
from sklearn.model_selection import LeaveOneOut, cross_val_predict

from poisonlab.data import available, open_dataset
from poisonlab.detect.base import DETECTORS, Detection
from poisonlab.detect.decree import stamp
from poisonlab.errors import InputError
from poisonlab.models.protocols import Classifier, ImageEncoder
from poisonlab.train.data import LabelTensors
from poisonlab.utils.io import write_json

log = logging.getLogger(__name__)
FEATURES = ("decree", "target-probe", "max-margin")
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {"decree": {"steps": 200, "images": 64}, "target-probe": {},
                                             "max-margin": {}}
SHIPPED = "scan-clip.json"
RENDERED_IMAGES, RENDER_SEED = 256, 7
"""Without images of its own, a scan renders this many test-split images of the embedded dataset
with this seed (never a seed the population's training data uses)."""
FORMAT = "poisonlab.scan-calibration/2"
C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


@dataclass
class Evidence:
    """What the detectors found on one model: their detections, features, suspected targets, seconds."""

    detections: dict[str, Detection]
    features: dict[str, float]
    targets: dict[str, int]
    seconds: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"features": self.features, "targets": self.targets, "seconds": self.seconds,
                "detectors": {k: d.to_dict() for k, d in self.detections.items()}}


def feature(det: Detection) -> float:
    """The detection as a feature that grows with suspicion: a score that is suspicious when low
    (DECREE's mask share) as ``-log10``, the others as they are."""
    if det.low_is_suspicious:
        return -math.log10(max(det.score, 1e-4))
    return float(det.score)


@torch.no_grad()
def decree_target(model: Classifier, data: LabelTensors, det: Detection, limit: int = 256) -> int:
    """The class most of the clean images go to once stamped with DECREE's inverted trigger."""
    x = (data.images[:limit].float() / 255.0).to(model.device)
    preds = model.logits(stamp(x, det)).argmax(1)
    return int(torch.bincount(preds, minlength=model.num_classes).argmax())


@torch.no_grad()
def check_responsive(model: ImageEncoder, data: LabelTensors, limit: int = 256) -> None:
    """``InputError`` when ``model`` gives every one of the first ``limit`` clean images the same
    output (its logits, or an encoder's features): a collapsed or broken model, which no detector
    can read (they would all see "no trigger changes anything" and call it clean)."""
    x = (data.images[:limit].float() / 255.0).to(model.device)
    out = model.logits(x) if hasattr(model, "logits") else model.features(x)
    if len(out) > 1 and bool((out == out[:1]).all()):
        raise InputError(f"the model gives all {len(out)} images the same output (collapsed or broken weights): "
                         "there is no verdict to give")


def embedded_dataset(provenance: Any) -> str | None:
    """The embedded dataset a model was trained on, read from its provenance (its own data, a
    poisoned set's base, else its parent's); ``None`` when none of them is embedded."""
    names = set(available())
    while isinstance(provenance, dict):
        data = provenance.get("dataset")
        while isinstance(data, dict):
            if data.get("name") in names:
                return str(data["name"])
            data = data.get("base")
        provenance = provenance.get("parent")
    return None


def rendered(dataset: str, size: int) -> Any:
    """The images a scan makes itself: the embedded ``dataset``'s renderer (test split)."""
    return open_dataset(dataset, split="test", n=RENDERED_IMAGES, seed=RENDER_SEED, size=size)


def gather(model: Classifier, data: LabelTensors, params: dict[str, dict[str, Any]] | None = None,
           detectors: tuple[str, ...] = FEATURES) -> Evidence:
    """Run the scan's ``detectors`` on ``model`` (a zero-shot classifier) with clean images ``data``.

    MM-BD, on a model with more classes than it probes, starts from the probe's strongest classes
    (when the probe ran).
    """
    check_responsive(model, data)
    params = {**DEFAULT_PARAMS, **(params or {})}
    dets: dict[str, Detection] = {}
    seconds: dict[str, float] = {}
    for name in (f for f in FEATURES if f in detectors):
        start = time.perf_counter()
        torch.manual_seed(0)
        detector = DETECTORS.create(name, **params.get(name, {}))
        if name == "max-margin":
            gains = dets["target-probe"].internals.get("gains", []) if "target-probe" in dets else []
            dets[name] = detector(model, data, candidates=np.argsort(gains)[::-1][:32].tolist())
        else:
            dets[name] = detector(model, data)
        seconds[name] = round(time.perf_counter() - start, 2)
        log.info("scan: %s %.4g in %.1fs", name, dets[name].score, seconds[name])
    targets = {name: decree_target(model, data, det) if name == "decree" else int(det.details["suspected_target"])
               for name, det in dets.items()}
    return Evidence(dets, {k: feature(d) for k, d in dets.items()}, targets, seconds)


@dataclass
class Calibration:
    """A fitted verdict: each detector's clean reference (mean and standard deviation of its feature
    over the calibration's clean models), the logistic curve over the largest standardised feature,
    the thresholds, and what it was fitted on."""

    features: tuple[str, ...]
    mean: list[float]
    scale: list[float]
    slope: float
    intercept: float
    c: float = 1.0
    clean_below: float = 0.2
    backdoored_above: float = 0.8
    detectors: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(DEFAULT_PARAMS))
    command: str = ""
    population: dict[str, Any] = field(default_factory=dict)
    members: list[dict[str, Any]] = field(default_factory=list)

    def z(self, feats: dict[str, float]) -> dict[str, float]:
        """Each detector's feature in standard deviations above the clean models' mean."""
        missing = [f for f in self.features if f not in feats]
        if missing:
            raise InputError(f"the scores lack {missing[0]!r}, which the calibration uses")
        return {f: (feats[f] - m) / s for f, m, s in zip(self.features, self.mean, self.scale, strict=True)}

    def alarm(self, feats: dict[str, float]) -> tuple[str, float]:
        """The detector furthest above the clean models, and by how many standard deviations."""
        z = self.z(feats)
        name = max(self.features, key=lambda f: z[f])
        return name, z[name]

    def probability(self, feats: dict[str, float]) -> float:
        """P(backdoored) for one model's features."""
        logit = self.intercept + self.slope * self.alarm(feats)[1]
        return float(1.0 / (1.0 + math.exp(-max(min(logit, 500.0), -500.0))))

    def verdict(self, probability: float) -> str:
        if probability >= self.backdoored_above:
            return "backdoored"
        return "clean" if probability <= self.clean_below else "inconclusive"

    def suspected_target(self, feats: dict[str, float], targets: dict[str, int]) -> int:
        """The class named by the detector that raises the alarm (furthest above the clean models)."""
        return targets[self.alarm(feats)[0]]

    def save(self, path: str | Path) -> None:
        write_json(path, {"format": FORMAT, **asdict(self)})

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        """A calibration file; ``InputError`` when it is not one."""
        try:
            body = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"calibration file not found: {path}") from None
        except (OSError, ValueError, RecursionError) as err:
            raise InputError(f"{path}: unreadable calibration ({err})") from None
        if not isinstance(body, dict) or body.pop("format", None) != FORMAT:
            raise InputError(f"{path}: not a poisonlab scan calibration ({FORMAT})")
        try:
            cal = cls(**{**body, "features": tuple(body["features"])})
            ok = len(cal.mean) == len(cal.scale) == len(cal.features) > 0 and all(
                math.isfinite(float(v)) for v in [*cal.mean, *cal.scale, cal.slope, cal.intercept, cal.c]) and min(
                cal.scale) > 0 and cal.c > 0
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok or not set(cal.features) <= set(FEATURES):
            raise InputError(f"{path}: malformed scan calibration")
        return cal


def shipped() -> Calibration:
    """The calibration that ships with poisonlab (``poisonlab/detect/calibration/scan-clip.json``)."""
    with resources.as_file(resources.files("poisonlab.detect") / "calibration" / SHIPPED) as path:
        return Calibration.load(path)


def leave_one_out_loss(z: np.ndarray, y: np.ndarray, c: float) -> float:
    """Log loss of each row's P(its label) from a model fitted on the other rows."""
    model = LogisticRegression(C=c, class_weight="balanced")
    return float(log_loss(y, cross_val_predict(model, z, y, cv=LeaveOneOut(), method="predict_proba"), labels=[False, True]))


def fit(rows: list[dict[str, Any]], features: tuple[str, ...] = FEATURES, **extra: Any) -> Calibration:
    """A calibration fitted on ``rows`` (each with ``features`` and ``backdoored``).

    The clean reference is each feature's mean and standard deviation over the clean rows; a
    model's alarm is its largest feature in those units; P(backdoored) is a logistic curve over the
    alarm (``LogisticRegression``, classes balanced, ``C`` from :data:`C_GRID` by leave-one-out log
    loss, the smaller on a tie).
    """
    y = np.array([bool(r["backdoored"]) for r in rows])
    if y.all() or not y.any():
        raise InputError("calibration needs clean and backdoored models")
    if min(y.sum(), (~y).sum()) < 2:
        raise InputError("calibration needs at least 2 clean models (their spread is the reference) and 2 "
                         "backdoored ones (each left out in turn)")
    x = np.array([[r["features"][f] for f in features] for r in rows], dtype=float)
    mean, scale = x[~y].mean(0), x[~y].std(0)
    scale[scale == 0] = 1.0
    alarm = ((x - mean) / scale).max(1, keepdims=True)
    c = min(C_GRID, key=lambda c: (round(leave_one_out_loss(alarm, y, c), 12), c))
    model = LogisticRegression(C=c, class_weight="balanced").fit(alarm, y)
    return Calibration(tuple(features), mean.tolist(), scale.tolist(), float(model.coef_[0][0]),
                       float(model.intercept_[0]), c=c, **extra)


def roc(labels: list[bool], scores: list[float]) -> dict[str, Any]:
    """ROC AUC (NaN with one class) and the curve's points."""
    if len(set(labels)) < 2:
        return {"auc": float("nan"), "fpr": [], "tpr": []}
    fpr, tpr, _ = roc_curve(labels, scores)
    return {"auc": float(roc_auc_score(labels, scores)), "fpr": fpr.tolist(), "tpr": tpr.tolist()}


def held_out_metrics(cal: Calibration, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """ROC AUC of the combined probability and of each detector's feature alone over ``rows``, the same per
    attack (its backdoored models against every clean one), and the verdicts' counts and accuracy
    (an inconclusive verdict counts as wrong), the share of models with a verdict other than
    inconclusive and the accuracy among them; target accuracy over the backdoored models with a
    target a scan can name, of the calibration's choice and of each detector's own suspected target."""
    labels = [bool(r["backdoored"]) for r in rows]
    probs = [cal.probability(r["features"]) for r in rows]
    prob = {id(r): p for r, p in zip(rows, probs, strict=True)}
    verdicts = [cal.verdict(p) for p in probs]
    feats = [f for f in FEATURES if all(f in r["features"] for r in rows)]
    out: dict[str, Any] = {"n_clean": labels.count(False), "n_backdoored": labels.count(True),
                           "combined": roc(labels, probs),
                           **{f: roc(labels, [r["features"][f] for r in rows]) for f in feats}}
    right = [v == ("backdoored" if y else "clean") for v, y in zip(verdicts, labels, strict=True)]
    decided = [ok for ok, v in zip(right, verdicts, strict=True) if v != "inconclusive"]
    out["accuracy"] = float(np.mean(right))
    out["decided_share"] = len(decided) / len(right)
    out["decided_accuracy"] = float(np.mean(decided)) if decided else float("nan")
    out["verdicts"] = dict(Counter(f"{'backdoored' if y else 'clean'} -> {v}" for v, y in zip(verdicts, labels, strict=True)))
    bad = [r for r in rows if r["backdoored"] and r.get("target_index") is not None]
    out["target_accuracy"] = float(np.mean([cal.suspected_target(r["features"], r["targets"]) == r["target_index"]
                                            for r in bad])) if bad else float("nan")
    out["target_accuracy_by_detector"] = {f: float(np.mean([r["targets"][f] == r["target_index"] for r in bad]))
                                          for f in feats if bad and all(f in r["targets"] for r in bad)}
    clean = [r for r in rows if not r["backdoored"]]
    per_attack: dict[str, Any] = {}
    for attack in sorted({r["attack"] for r in rows if r["backdoored"]}):
        part = clean + [r for r in rows if r.get("attack") == attack]
        lab = [bool(r["backdoored"]) for r in part]
        per_attack[attack] = {"n": lab.count(True),
                              "combined": roc(lab, [prob[id(r)] for r in part])["auc"],
                              **{f: roc(lab, [r["features"][f] for r in part])["auc"] for f in feats},
                              "detected": sum(cal.verdict(prob[id(r)]) == "backdoored" for r in part if r["backdoored"])}
    out["per_attack"] = per_attack
    return out

"""How well a per-item score finds the poisoned items: the ranking and the threshold.

AUROC, average precision (AUPRC) and the false-positive rate at 95% true-positive rate judge the
ranking; precision, recall and F1 at a threshold chosen *without* the poison labels (a quantile of
scores of pairs known to be clean) judge what a defender would actually drop. A detector can rank
near-perfectly and still flag mostly clean pairs at such a threshold when poisons are rare.

Huang et al.'s ``process_detection_scores.py`` reports ``auc(recall, precision)`` (a trapezoid
over the PR curve) as PR-AUC and interpolates the FPR at TPR 0.95; ``pr_auc_trapezoid`` and
``fpr_at_95_tpr`` follow those definitions, ``auprc`` is scikit-learn's average precision.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np
from sklearn.metrics import (
    auc,
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from poisonlab.errors import InputError


def quantile_threshold(reference: np.ndarray, fpr: float) -> float:
    """The score above which a share ``fpr`` of ``reference`` (clean) scores lie."""
    if not 0 < fpr < 1:
        raise InputError(f"fpr must be in (0, 1), got {fpr}")
    if len(reference) == 0:
        raise InputError("the clean reference has no items")
    return float(np.quantile(np.asarray(reference, dtype=np.float64), 1 - fpr, method="higher"))


def fpr_at_95_tpr(labels: np.ndarray, scores: np.ndarray) -> float:
    """The false-positive rate where the ROC curve reaches a 95% true-positive rate (interpolated)."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(np.interp(0.95, tpr, fpr))


def f1_score(precision: float, recall: float) -> float:
    """The harmonic mean of ``precision`` and ``recall`` (0 when both are 0)."""
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def at_threshold(flagged: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Precision, recall and F1 of the ``flagged`` items against the poison ``labels``."""
    caught = int((flagged & labels).sum())
    precision = caught / int(flagged.sum()) if flagged.any() else 0.0
    recall = caught / int(labels.sum())
    return {"precision": precision, "recall": recall, "f1": f1_score(precision, recall), "flagged": int(flagged.sum()), "caught": caught,
            "clean_lost": int((flagged & ~labels).sum()), "poisoned": int(labels.sum())}


def detection_metrics(scores: np.ndarray, poisoned: Collection[int], threshold: float) -> dict[str, Any]:
    """Ranking and threshold metrics of ``scores`` (higher = more suspicious) for the items whose
    positions are ``poisoned``; ranking metrics are NaN when every item or none is poisoned."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.zeros(len(scores), dtype=bool)
    labels[list(poisoned)] = True
    out: dict[str, Any] = at_threshold(scores > threshold, labels) if labels.any() else {}
    if labels.any() and not labels.all():
        precision, recall, _ = precision_recall_curve(labels, scores)
        out.update(auroc=float(roc_auc_score(labels, scores)), auprc=float(average_precision_score(labels, scores)),
                   pr_auc_trapezoid=float(auc(recall, precision)), fpr_at_95_tpr=fpr_at_95_tpr(labels, scores))
    else:
        out.update(auroc=float("nan"), auprc=float("nan"), pr_auc_trapezoid=float("nan"), fpr_at_95_tpr=float("nan"))
    return out

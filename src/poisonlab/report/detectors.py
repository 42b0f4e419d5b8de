"""The report's poisoned-pair detectors: ranking and threshold numbers per attack, ROC and PR curves,
and the score histograms of clean vs poisoned pairs (:mod:`poisonlab.defenses.outlier_filter`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from poisonlab.bench.store import ResultsStore, Spread
from poisonlab.report.figure import plt, save_png
from poisonlab.report.spread import cell

Section = tuple[str, list[list[str]], str]


def detection_rows(spread: dict[tuple[str, str], dict[str, Spread]], attacks: list[str],
                   detectors: list[str]) -> list[list[str]]:
    """One row per (attack, detector): AUROC, AUPRC, FPR at 95% TPR, and precision / recall / F1 at
    the threshold set on clean pairs, mean ± sd over the training seeds."""
    rows = [["attack", "detector", "AUROC", "AUPRC", "FPR@95%TPR", "precision", "recall", "F1", "flagged / caught",
             "test-time AUROC"]]
    for a in attacks:
        for d in detectors:
            m = spread.get((a, f"{d} (detect)"))
            if not m:
                continue
            counts = f"{cell(m['flagged'], 1, 0)} / {cell(m['caught'], 1, 0)}" if "flagged" in m else "—"
            rows.append([a, d, *(cell(m.get(k), 1, 3) for k in ("auroc", "auprc", "fpr_at_95_tpr", "precision", "recall",
                                                                   "f1")), counts, cell(m.get("test_auroc"), 1, 3)])
    return rows


def detector_sections(store: ResultsStore, experiment: str, attacks: list[str], detectors: list[str]) -> list[Section]:
    spread = store.spread(experiment)
    rows = detection_rows(spread, attacks, detectors)
    if len(rows) == 1:
        return []
    return [("Poisoned-pair detectors on each poisoned fine-tuning set", rows,
             "Each pair scored by its image embedding under the model fine-tuned on the set (Huang et al., ICLR 2025). "
             "AUROC / AUPRC / FPR@95%TPR judge the ranking; precision, recall and F1 are at the threshold a defender "
             "can set without the poison labels: the (1 − fpr) quantile of clean pairs' scores. A detector that ranks "
             "well can still flag mostly clean pairs there when poisons are rare ('—': undefined on some seed, e.g. the "
             "precision of a threshold that flagged nothing). Test-time AUROC: the non-target test images triggered "
             "against the same images clean, each scored against the poisoned set.")]


def _curves(store: ResultsStore, experiment: str, attack: str, detector: str) -> dict[str, Any] | None:
    doc = store.document(experiment, f"scores:{attack}:{detector}")
    if doc is None or not doc["poisoned"]:
        return None
    scores = np.asarray(doc["scores"], dtype=np.float64)
    labels = np.zeros(len(scores), dtype=bool)
    labels[doc["poisoned"]] = True
    return {"scores": scores, "labels": labels, "threshold": doc["threshold"]}


def detector_figures(store: ResultsStore, experiment: str, attacks: list[str], detectors: list[str],
                     out: Path) -> list[str]:
    """``detectors_curves.png`` (ROC and PR curves of every detector, one column per attack) and
    ``detectors_scores.png`` (clean vs poisoned score histograms with the threshold); first training
    seed. Returns the names written (none without detector scores)."""
    data = {(a, d): c for a in attacks for d in detectors if (c := _curves(store, experiment, a, d)) is not None}
    shown = [a for a in attacks if any((a, d) in data for d in detectors)]
    if not shown:
        return []
    fig, axes = plt.subplots(2, len(shown), figsize=(3.6 * len(shown), 6.6), squeeze=False)
    for col, a in enumerate(shown):
        roc_ax, pr_ax = axes[0][col], axes[1][col]
        for d in detectors:
            if (a, d) not in data:
                continue
            c = data[(a, d)]
            fpr, tpr, _ = roc_curve(c["labels"], c["scores"])
            precision, recall, _ = precision_recall_curve(c["labels"], c["scores"])
            roc_ax.plot(fpr, tpr, label=d)
            pr_ax.plot(recall, precision, label=d)
        rate = float(np.mean(next(data[(a, d)] for d in detectors if (a, d) in data)["labels"]))
        roc_ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
        pr_ax.axhline(rate, ls="--", c="grey", lw=0.8)
        roc_ax.set_title(a, fontsize=9)
        roc_ax.set_xlabel("false-positive rate", fontsize=8)
        roc_ax.set_ylabel("true-positive rate", fontsize=8)
        pr_ax.set_xlabel("recall", fontsize=8)
        pr_ax.set_ylabel("precision", fontsize=8)
        for ax in (roc_ax, pr_ax):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, out / "detectors_curves.png")
    fig, axes = plt.subplots(len(detectors), len(shown), figsize=(3.6 * len(shown), 2.6 * len(detectors)), squeeze=False)
    for row, d in enumerate(detectors):
        for col, a in enumerate(shown):
            ax = axes[row][col]
            if (a, d) not in data:
                ax.axis("off")
                continue
            c = data[(a, d)]
            scores = np.clip(c["scores"], None, np.quantile(c["scores"], 0.999))
            bins = np.linspace(scores.min(), scores.max() + 1e-12, 40)
            ax.hist(scores[~c["labels"]], bins=bins, density=True, alpha=0.6, label="clean")
            ax.hist(scores[c["labels"]], bins=bins, density=True, alpha=0.6, label="poisoned")
            if math.isfinite(c["threshold"]):
                ax.axvline(c["threshold"], c="k", ls="--", lw=0.8, label="threshold")
            ax.set_title(f"{a} / {d}", fontsize=8)
            ax.legend(fontsize=6)
    fig.tight_layout()
    save_png(fig, out / "detectors_scores.png")
    return ["detectors_curves.png", "detectors_scores.png"]

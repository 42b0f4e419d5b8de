"""ROC curves of backdoor detectors over a population of clean and backdoored models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from poisonlab.report.figure import plt, save_png


def roc_figure(curves: dict[str, dict[str, Any]], path: str | Path) -> Path:
    """One ROC curve per detector (``{"fpr": [...], "tpr": [...], "auc": float}``) written as PNG."""
    fig, ax = plt.subplots(figsize=(4.2, 4))
    for name, c in curves.items():
        ax.plot(c["fpr"], c["tpr"], marker="o", ms=3, label=f"{name} (AUC {c['auc']:.2f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set_xlabel("false-positive rate (clean models flagged)")
    ax.set_ylabel("true-positive rate (backdoors found)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_png(fig, path)

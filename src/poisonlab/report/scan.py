"""Pictures of the scan's calibration: held-out ROC curves and every population member's scores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from poisonlab.report.figure import plt, save_png
from poisonlab.report.roc import roc_figure


def scan_roc(metrics: dict[str, Any], features: tuple[str, ...], path: str | Path) -> Path:
    """ROC curves on the held-out models: the combined verdict and each detector alone."""
    held = metrics["held-out"]
    curves = {"combined": held["combined"], **{f: held[f] for f in features}}
    return roc_figure(curves, path)


def scan_members(members: list[dict[str, Any]], features: tuple[str, ...], thresholds: tuple[float, float],
                 path: str | Path) -> Path:
    """One panel per score (P(backdoored), then each detector's feature), one row per kind of model;
    held-out models filled, calibration models hollow, members whose attack did not take as grey x."""
    kinds = ["clean", *sorted({m["attack"] for m in members if m["backdoored"]})]
    panels = [("probability", "P(backdoored)"), *((f, f) for f in features)]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels), 0.45 * len(kinds) + 1.4), sharey=True)
    for ax, (key, title) in zip(axes, panels, strict=True):
        for row, kind in enumerate(kinds):
            group = [m for m in members if (m["attack"] if m["backdoored"] else "clean") == kind]
            for m in group:
                value = m["probability"] if key == "probability" else m["features"][key]
                held = m["split"] == "held-out"
                if not m.get("took", True):  # the attack did not take: left out of the fit and the metrics
                    ax.scatter([value], [row], s=22, marker="x", c="grey", linewidths=1.0)
                    continue
                ax.scatter([value], [row], s=22, facecolors=f"C{row}" if held else "none", edgecolors=f"C{row}",
                           linewidths=1.0, alpha=0.85)
        if key == "probability":
            for t in thresholds:
                ax.axvline(t, ls="--", c="grey", lw=0.8)
            ax.set_xlim(-0.05, 1.05)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_yticks(range(len(kinds)), kinds, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle("each population model (filled: held out, hollow: calibration, x: the attack did not take)",
                 fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)

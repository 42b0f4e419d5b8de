"""CA-vs-ASR paths of the classifier repairs: how each one trades accuracy for robustness.

Pick your Poison (Lukas & Kerschbaum, 2023) compares repairs by their curves of clean accuracy
against ASR over the defense's strength; here the strength is the number of tuning steps. Each
path starts at the poisoned model, passes through the traced checkpoints of the repair and ends
with a ring on the model the repair returned (which differs from the last traced point when the
accuracy floor stopped it and restored earlier weights).
"""

from __future__ import annotations

from pathlib import Path
from statistics import fmean

from poisonlab.bench.store import ResultsStore
from poisonlab.bench.study import experiment_name
from poisonlab.report.figure import BASELINE_MARKERS, attack_panels, save_png

Point = tuple[int, float, float]


def repair_paths(store: ResultsStore, experiment: str) -> dict[str, dict[str, list[Point]]]:
    """``{attack: {repair: [(step, ca, asr), ...]}}`` from the ``repair-trace`` points, by step (the
    mean over the seeds traced at that step)."""
    steps: dict[str, dict[str, dict[int, list[tuple[float, float]]]]] = {}
    for p in store.points(experiment_name(experiment, "repair-trace")):
        at = steps.setdefault(p.attack, {}).setdefault(p.condition, {}).setdefault(int(p.dose), [])
        at.append((p.metrics["ca"], p.metrics["asr"]))
    return {attack: {repair: [(step, fmean(v[0] for v in vs), fmean(v[1] for v in vs)) for step, vs in sorted(by.items())]
                     for repair, by in repairs.items()} for attack, repairs in steps.items()}


def repair_curves(store: ResultsStore, experiment: str, attacks: list[str], repairs: list[str],
                  path: Path) -> Path | None:
    """One panel per attack; ``None`` (nothing written) when no repair was traced."""
    paths = repair_paths(store, experiment)
    if not paths:
        return None
    final = store.table(experiment)
    fig, axes = attack_panels(attacks)
    for ax, attack in zip(axes, attacks, strict=True):
        start = final.get((attack, "none"))
        for i, repair in enumerate(repairs):
            colour = f"C{i}"
            pts = ([(0, start["ca"], start["asr"])] if start else []) + paths.get(attack, {}).get(repair, [])
            if pts:
                ax.plot([100 * p[1] for p in pts], [100 * p[2] for p in pts], "-o", ms=3, c=colour, label=repair)
            end = final.get((attack, repair))
            if end:
                ax.scatter(100 * end["ca"], 100 * end["asr"], s=90, facecolors="none", edgecolors=colour)
        for label, marker in BASELINE_MARKERS.items():
            m = final.get((attack, label))
            if m:
                ax.scatter(100 * m["ca"], 100 * m["asr"], marker=marker, s=60, c="k",
                           label="poisoned" if label == "none" else label)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_png(fig, path)

"""The text-modality part of the report: dose-response figure and tables, read from the store.

Numbers are those of :mod:`poisonlab.bench.text_section` (Yang et al., ICML 2023): Hit@K and
MinRank of source-class test captions toward the attack's target, the random-caption baselines,
and utility (zero-shot CA, text-to-image R@10) on the clean test split. Where a point was trained
with several seeds, cells show mean ± sd over them.
"""

from __future__ import annotations

from pathlib import Path
from statistics import fmean, stdev

from poisonlab.bench.store import CLEAN_MODEL, UNDEFENDED, ResultsStore
from poisonlab.report.figure import plt, save_png

Section = tuple[str, list[list[str]], str]
PAPER = ("Paper (Flickr-PASCAL, Attack II): Hit@10 0.94 at 0.08% poisoned pairs against a random-caption "
         "MinRank of 51; pair filtering brings MinRank back to 49.6; one epoch of clean fine-tuning brings "
         "Hit@10 from about 0.9 to about 0.")


def series(store: ResultsStore, experiment: str) -> dict[tuple[str, str], dict[float, list[dict[str, float]]]]:
    """``{(attack, condition): {dose: [metrics of each seed]}}`` of a text study's points."""
    out: dict[tuple[str, str], dict[float, list[dict[str, float]]]] = {}
    for p in store.points(experiment):
        out.setdefault((p.attack, p.condition), {}).setdefault(p.dose, []).append(p.metrics)
    return out


def _values(runs: list[dict[str, float]], key: str) -> list[float]:
    return [m[key] for m in runs if key in m]


def _cell(runs: list[dict[str, float]], key: str, digits: int = 2, scale: float = 1.0) -> str:
    values = [scale * v for v in _values(runs, key)]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{fmean(values):.{digits}f} ± {stdev(values):.{digits}f}"


def dose_response(store: ResultsStore, experiment: str, path: Path) -> Path | None:
    """Poisoned pairs against Hit@10 and MinRank, one line per attack (mean over seeds, error bar:
    sd), its random-caption baseline dashed in the same colour; an attack measured at one dose has no
    line (its table row says it all); ``None`` when no attack has two doses."""
    data = series(store, experiment)
    attacks = sorted(a for a, c in data if c == "none" and len(data[(a, c)]) > 1)  # a curve needs two doses
    if not attacks:
        return None
    fig, (hit, rank) = plt.subplots(1, 2, figsize=(9, 3.6))
    for i, attack in enumerate(attacks):
        doses = sorted(data[(attack, "none")])
        runs = [data[(attack, "none")][d] for d in doses]
        for ax, key in ((hit, "hit@10"), (rank, "min_rank")):
            mean = [fmean(_values(r, key)) for r in runs]
            sd = [stdev(_values(r, key)) if len(r) > 1 else 0.0 for r in runs]
            ax.errorbar(doses, mean, yerr=sd, fmt="-o", ms=3, c=f"C{i}", capsize=3, label=attack)
            base = [fmean(_values(r, f"baseline_{key}")) for r in runs]
            ax.plot(doses, base, ls="--", lw=0.9, c=f"C{i}", label=f"{attack}: random captions")
    hit.set_ylabel("Hit@10")
    hit.set_ylim(-0.05, 1.05)
    rank.set_ylabel("MinRank (0 = target first)")
    rank.set_yscale("symlog", linthresh=1)
    for ax in (hit, rank):
        ax.set_xlabel("poisoned pairs")
        ax.grid(alpha=0.3)
    hit.legend(fontsize=7)
    fig.tight_layout()
    return save_png(fig, path)


def text_sections(store: ResultsStore, experiment: str, pairs: int) -> list[Section]:
    """The dose-response table, the defense table and a note against the paper's numbers."""
    data = series(store, experiment)
    if not data:
        return []
    attacks = sorted({a for a, c in data if c == "none"})
    head = ["attack", "poisoned pairs (%)", "seeds", "Hit@1", "Hit@5", "Hit@10", "MinRank",
            "random Hit@10 / MinRank", "other-class Hit@10 / MinRank", "CA (%)", "t2i R@10"]
    doses = [head]
    for attack in attacks:
        for dose, runs in sorted(data[(attack, "none")].items()):
            doses.append([attack, f"{dose:.0f} ({100 * dose / pairs:.2g})", str(len(runs)),
                          _cell(runs, "hit@1"), _cell(runs, "hit@5"), _cell(runs, "hit@10"), _cell(runs, "min_rank", 1),
                          f"{_cell(runs, 'baseline_hit@10')} / {_cell(runs, 'baseline_min_rank', 1)}",
                          f"{_cell(runs, 'baseline_other_hit@10')} / {_cell(runs, 'baseline_other_min_rank', 1)}",
                          _cell(runs, "ca", 1, 100), _cell(runs, "t2i_r@10")])
    defended = [["attack", "model", "poisoned pairs", "Hit@10", "MinRank", "random MinRank", "CA (%)", "t2i R@10",
                 "filter precision / recall"]]
    notes = []
    for attack in attacks:
        conditions = [c for a, c in data if a == attack and c not in (UNDEFENDED, CLEAN_MODEL)]
        if not conditions:
            continue
        dose = max(d for c in conditions for d in data[(attack, c)])
        rows = [(CLEAN_MODEL, 0.0), (UNDEFENDED, 0.0), (UNDEFENDED, dose), *((c, dose) for c in conditions)]
        for condition, d in rows:
            runs = data.get((attack, condition), {}).get(d)
            if not runs:
                continue
            label = {UNDEFENDED: "poisoned fine-tune" if d else "clean fine-tune", CLEAN_MODEL: "clean pre-trained",
                     "filter": "filter, then fine-tune"}.get(condition, f"{condition} after the poisoned fine-tune")
            filt = f"{_cell(runs, 'precision')} / {_cell(runs, 'recall')}" if condition == "filter" else ""
            defended.append([attack, label, f"{d:.0f}", _cell(runs, "hit@10"), _cell(runs, "min_rank", 1),
                             _cell(runs, "baseline_min_rank", 1), _cell(runs, "ca", 1, 100), _cell(runs, "t2i_r@10"),
                             filt])
        notes.append(_note(attack, dose, pairs, data))
    out: list[Section] = [
        ("Text-modality poisoning: dose-response (Yang et al. Attacks I-III)", doses,
         "Queries: test captions of the source class; gallery: every test image (plus the target image for "
         "Attack I). MinRank: mean 0-based rank of the best target image. Random: as many captions drawn from "
         "all test captions (the authors' baseline); other-class: drawn from captions of other classes. Dose 0 "
         "is the same fine-tune on clean pairs. Attack III: mean over its goals. Figure: dose_response.png.")]
    if len(defended) > 1:
        out.append(("Text-modality defenses: pair filtering before training, cleaning after it", defended,
                    " ".join(notes) + " " + PAPER))
    return out


def _note(attack: str, dose: float, pairs: int, data: dict[tuple[str, str], dict[float, list[dict[str, float]]]]) -> str:
    """One sentence per attack: its strength at the defended dose and what each defense left."""
    def first(condition: str, key: str) -> float | None:
        runs = data.get((attack, condition), {}).get(dose)
        return fmean(_values(runs, key)) if runs and _values(runs, key) else None

    hit, base = first("none", "hit@10"), first("none", "baseline_hit@10")
    parts = [f"{attack} at {dose:.0f} pairs ({100 * dose / pairs:.2g}%): Hit@10 {hit:.2f} (random {base:.2f})"
             if hit is not None and base is not None else f"{attack}"]
    for condition in sorted(c for a, c in data if a == attack and c not in (UNDEFENDED, CLEAN_MODEL)):
        h, r = first(condition, "hit@10"), first(condition, "min_rank")
        if h is not None and r is not None:
            parts.append(f"{condition} {h:.2f} (MinRank {r:.1f})")
    return "; ".join(parts) + "."



"""Report sections for the classifier and SSL parts of an experiment (rows written from the store)."""

from __future__ import annotations

import math

from poisonlab.bench.store import CLEAN_MODEL, UNDEFENDED, ResultsStore, Spread
from poisonlab.bench.study import experiment_name
from poisonlab.metrics.der import defense_effectiveness
from poisonlab.report.experiment import pct, ra_der_rows
from poisonlab.report.spread import UNSTABLE, cell, ordering_rows, seeded_cells, spread_rows

Section = tuple[str, list[list[str]], str]


def classifier_sections(store: ResultsStore, experiment: str, attacks: list[str], repairs: list[str],
                        share: float) -> list[Section]:
    table = store.spread(experiment)
    cols = [CLEAN_MODEL, UNDEFENDED, *repairs]
    rows = [["attack"] + [f"{c} CA / ASR / ARR" for c in cols]]
    for a in attacks:
        rows.append([a] + [" / ".join(cell(table.get((a, c), {}).get(k)) for k in ("ca", "asr", "arr")) for c in cols])
    stopped = [f"{a} {r} at step {', '.join(f'{v:g}' for v in m['stopped_at'].values)}"
               for (a, r), m in sorted(table.items()) if "stopped_at" in m]
    floor = (" Stopped by the accuracy floor (held-out trusted accuracy fell more than the repair's max_drop below "
             "the suspect's; the last weights above it kept: at the first check, those the repair started from): "
             + "; ".join(stopped) + ".") if stopped else ""
    out = [(f"Classifiers: repair with {100 * share:g}% trusted data, CA / ASR / ARR (%)", rows,
            "ARR (RA): accuracy on triggered non-target test images against their true labels. 'none' is the "
            "poisoned classifier, 'clean model' one trained on clean data. With several seeds: mean±sd." + floor),
           ("Classifiers: robust accuracy and defense effectiveness (%)",
            ra_der_rows(store.table(experiment), attacks, repairs),
            "DER (BackdoorBench): [max(0, ΔASR) − max(0, ΔCA) + 1] / 2 of each repair against the poisoned "
            "classifier, from the seed means; 50 changes nothing, 100 removes the whole ASR at no cost in CA.")]
    if seeded_cells(table):
        out += [("Classifiers: seed spread (%)", spread_rows(table, ("ca", "asr", "arr")),
                 f"'unstable': the ASR of the cell spans more than {100 * UNSTABLE:g} points over the seeds."),
                ("Classifiers: orderings of ASR over the seeds", ordering_rows(table, attacks, cols),
                 "Stated only where the two rows' ranges over the seeds do not overlap.")]
    scores = store.spread(experiment_name(experiment, "detect"))
    if scores:
        detectors = sorted({d for d, _ in scores})
        models = ["clean", *attacks]
        grid = [["classifier"] + [f"{d} score (verdict)" for d in detectors]]
        for m in models:
            grid.append([m] + [_verdict(scores.get((d, m)), clean=m == "clean") for d in detectors])
        out.append(("Classifiers: is it backdoored? Each detector on the clean and the poisoned classifiers", grid,
                    "Each detector sees the model and the trusted share only; the verdict is at its own threshold."))
    det = store.table(experiment_name(experiment, "detection"))
    if det:
        auc = [["detector", "ROC AUC"]] + [[d, f"{m['auc']:.3f}"] for (d, _), m in sorted(det.items())]
        out.append(("Classifiers: detection over a population of clean and backdoored models", auc,
                    "ROC curve: roc.png. Each detector scores every model with the same trusted data."))
    return out


def _verdict(m: dict[str, Spread] | None, clean: bool = False) -> str:
    """A detector's score and verdict; on the clean model a 'backdoored' verdict is named for what
    it is, a false positive."""
    if m is None:
        return "—"
    return f"{cell(m['score'], 1, 3)} ({verdicts(m['backdoored'], clean)})"


def verdicts(s: Spread, clean: bool = False) -> str:
    """'backdoored' / 'clean', or how many seeds said 'backdoored'; for a model known to be clean
    (``clean``) a 'backdoored' verdict is marked as a false positive."""
    flagged = sum(v > 0 for v in s.values)
    said = ("backdoored" if flagged else "clean") if s.n == 1 else f"backdoored on {flagged} of {s.n} seeds"
    return f"{said}: false positive" if clean and flagged else said


def ssl_sections(store: ResultsStore, experiment: str, target: str, defenses: list[str],
                 detectors: list[str]) -> list[Section]:
    """The linear probes of the clean, poisoned and each defended encoder (with DER), each filter's
    catch and each detector's verdicts."""
    table = store.spread(experiment)
    means = store.table(experiment)
    poisoned = means.get(("poisoned", "probe"), {})
    rows = [["encoder", "probe clean acc (%)", f"FP({target})", "ASR (%)", "RA (%)", "DER (%)"]]
    for label in ("clean", "poisoned", *defenses):
        m = table.get((label, "probe"))
        if m:
            mean = means[(label, "probe")]
            der = defense_effectiveness(*(v.get(k, math.nan) for v in (poisoned, mean) for k in ("clean_acc", "asr"))) \
                if label in defenses and poisoned else math.nan
            rows.append([label, cell(m["clean_acc"]), cell(m["fp"], 1, 0), cell(m["asr"]), cell(m.get("ra")), pct(der)])
    filt = [["defense", "removed", "poisons caught", "precision", "recall"]]
    for label in defenses:
        ps = table.get((label, "filter"))
        if ps:
            filt.append([label, cell(ps["removed"], 1, 0), f"{cell(ps['caught'], 1, 0)} / {cell(ps['poisoned'], 1, 0)}",
                         cell(ps["precision"], 1, 2), cell(ps["recall"], 1, 2)])
    dec = [["encoder", *(f"{d} score (verdict)" for d in detectors)]]
    for label in ("clean", "poisoned"):
        dec.append([label, *(_verdict(table.get((label, d)), clean=label == "clean") for d in detectors)])
    seeded = {k: v for k, v in seeded_cells(table).items() if k[1] == "probe"}
    spread = [("SSL: seed spread of the linear probes", spread_rows(seeded, ("clean_acc", "asr")),
               f"Mean ± sd [min, max] (%) over the training seeds; 'unstable': ASR spans more than "
               f"{100 * UNSTABLE:g} points.")] if seeded else []
    return [
        ("SSL encoders: linear probe on frozen features", rows,
         "FP: patched test images of other classes that the probe assigns to the target class; RA: those the "
         "probe assigns to their true class; DER (BackdoorBench) of each defense against the poisoned encoder, "
         "from the seed means (50: no change, 100: the whole ASR removed at no cost)."),
        *([("SSL: filters on the poisoned training set", filt,
            "A filter's encoder is trained again on the images it keeps.")] if len(filt) > 1 else []),
        *([("SSL: detectors on the clean and the poisoned encoder", dec,
            "Each detector at its own threshold (DECREE's score: PL1, the normalised size of the inverted "
            "trigger; small flags a backdoor).")] if detectors else []),
        *spread,
    ]

"""Report sections for the classifier and SSL parts of an experiment (rows written from the store)."""

from __future__ import annotations

from poisonlab.bench.store import ResultsStore

Section = tuple[str, list[list[str]], str]


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def classifier_sections(store: ResultsStore, experiment: str, attacks: list[str], repairs: list[str],
                        share: float) -> list[Section]:
    table = store.table(f"{experiment}/classifier")
    cols = ["clean model", "none", *repairs]
    rows = [["attack"] + [f"{c} CA / ASR / ARR" for c in cols]]
    for a in attacks:
        rows.append([a] + [" / ".join(_pct(table.get((a, c), {}).get(k)) for k in ("ca", "asr", "arr")) for c in cols])
    out = [(f"Classifiers: repair with {100 * share:g}% trusted data, CA / ASR / ARR (%)", rows,
            "ARR: accuracy on triggered non-target test images against their true labels. 'none' is the poisoned "
            "classifier, 'clean model' one trained on clean data.")]
    scores = store.table(f"{experiment}/detect")
    if scores:
        detectors = sorted({d for d, _ in scores})
        models = ["clean", *attacks]
        grid = [["classifier"] + [f"{d} score (verdict)" for d in detectors]]
        for m in models:
            grid.append([m] + [_verdict(scores.get((d, m))) for d in detectors])
        out.append(("Classifiers: is it backdoored? Each detector on the clean and the poisoned classifiers", grid,
                    "Each detector sees the model and the trusted share only; the verdict is at its own threshold."))
    det = store.table(f"{experiment}/detection")
    if det:
        auc = [["detector", "ROC AUC"]] + [[d, f"{m['auc']:.3f}"] for (d, _), m in sorted(det.items())]
        out.append(("Classifiers: detection over a population of clean and backdoored models", auc,
                    "ROC curve: roc.png. Each detector scores every model with the same trusted data."))
    return out


def _verdict(m: dict[str, float] | None) -> str:
    if m is None:
        return "—"
    return f"{m['score']:.3f} ({'backdoored' if m['backdoored'] else 'clean'})"


def ssl_sections(store: ResultsStore, experiment: str, target: str) -> list[Section]:
    table = store.table(f"{experiment}/ssl")
    rows = [["encoder", "probe clean acc (%)", f"FP({target})", "ASR (%)"]]
    for label in ("clean", "poisoned", "distill", "patchsearch"):
        m = table.get((label, "probe"))
        if m:
            rows.append([label, _pct(m["clean_acc"]), f"{m['fp']:.0f}", _pct(m["asr"])])
    ps = table.get(("patchsearch", "filter"), {})
    filt = [["removed", "poisons caught", "precision", "recall"]]
    if ps:
        filt.append([f"{ps['removed']:.0f}", f"{ps['caught']:.0f} / {ps['poisoned']:.0f}", f"{ps['precision']:.2f}",
                     f"{ps['recall']:.2f}"])
    dec = [["encoder", "PL1 (normalised mask size)", "similarity reached", "verdict"]]
    for label in ("clean", "poisoned"):
        m = table.get((label, "decree"))
        if m:
            dec.append([label, f"{m['pl1']:.3f}", f"{m['similarity']:.3f}", "backdoored" if m["backdoored"] else "clean"])
    return [
        ("SSL encoders: linear probe on frozen features", rows,
         "FP: patched test images of other classes that the probe assigns to the target class."),
        ("SSL: PatchSearch on the poisoned training set", filt, "The 'patchsearch' encoder is retrained on the kept images."),
        ("SSL: DECREE", dec, "A small PL1 (a small inverted trigger collapses the embeddings) flags a backdoor."),
    ]

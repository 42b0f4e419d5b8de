"""Report section of the training-time defenses (:mod:`poisonlab.bench.training_section`): the
table of pre-trainings on poisoned pairs and SafeCLIP's split over the epochs."""

from __future__ import annotations

import math
from pathlib import Path

from poisonlab.bench.store import ResultsStore
from poisonlab.metrics.der import defense_effectiveness
from poisonlab.report.experiment import pct
from poisonlab.report.figure import plt, save_png
from poisonlab.report.spread import cell, ordering_rows, seeded_cells, success

Section = tuple[str, list[list[str]], str]
BASE = ("clean data", "none", "filter")


def _mean(metrics: dict[str, float | None], key: str) -> float:
    value = metrics.get(key)
    return math.nan if value is None else value


def training_sections(store: ResultsStore, experiment: str, attacks: list[str], defenses: list[str]) -> list[Section]:
    name = experiment
    spread, means = store.spread(name), store.table(name)
    cols = [*BASE, *defenses]
    grid = [["attack", "success"] + [f"{c} CA / success" for c in cols]]
    cost = [["attack"] + [f"{c} RA / DER / train s" for c in cols[1:]]]
    for a in attacks:
        key = success(means.get((a, "none"), {}))
        grid.append([a, "Hit@10" if key == "hit@10" else "ASR"] +
                    [" / ".join(cell(spread.get((a, c), {}).get(k)) for k in ("ca", key)) for c in cols])
        before = means.get((a, "none"), {})
        row = [a]
        for c in cols[1:]:
            after = means.get((a, c), {})
            der = defense_effectiveness(_mean(before, "ca"), _mean(before, key), _mean(after, "ca"), _mean(after, key)) \
                if c != "none" and after else math.nan
            row.append(f"{pct(after.get('ra'))} / {pct(der)} / {cell(spread.get((a, c), {}).get('train_seconds'), 1, 0)}")
        cost.append(row)
    split = [["attack", "defense", "safe share (%)", "risky precision", "risky recall"]]
    split += [[a, c, cell(m["safe_share"]), cell(m["risky_precision"], 1, 3), cell(m["risky_recall"], 1, 3)]
              for (a, c), m in sorted(spread.items()) if "risky_recall" in m]
    filt = [["attack", "removed", "precision", "recall"]]
    filt += [[a, cell(m["removed"], 1, 0), cell(m["precision"], 1, 3), cell(m["recall"], 1, 3)]
             for (a, c), m in sorted(spread.items()) if c == "filter" and "recall" in m]
    out = [
        ("Training-time defenses: pre-training from scratch on poisoned pairs, CA / success (%)", grid,
         "Success: ASR of the trigger on non-target test images (Hit@10 of the source class's captions for a text "
         "attack). 'clean data': the clean pre-trained model (what the trigger does without a backdoor); 'none': "
         "pre-trained on the poisoned pairs; 'filter': on the pairs the cosine filter keeps (scored by the clean "
         "model); the defenses train on all the poisoned pairs. Mean±sd over the training seeds."),
        ("Training-time defenses: robust accuracy, defense effectiveness and cost", cost,
         "RA: triggered non-target test images classified as their true class. DER (BackdoorBench) against 'none' "
         "from the seed means (50: no change, 100: the whole success removed at no cost in CA). Train s: wall "
         "seconds of the pre-training (the same epochs and batch for every column)."),
    ]
    if len(split) > 1:
        out.append(("SafeCLIP's last split: the risky set against the poisoned pairs", split,
                    "Precision and recall of the pairs SafeCLIP kept out of the CLIP loss in its last epoch; every "
                    "epoch's split is in safeclip_splits.png."))
    if len(filt) > 1:
        out.append(("Cosine pair filter before pre-training", filt, "Pairs dropped and their precision / recall."))
    if seeded_cells(spread):
        rows = [["attack", "lower", "higher", "seeds", "holds?"]]
        for a in attacks:
            rows += ordering_rows(spread, [a], list(cols[1:]), success(means.get((a, "none"), {})))[1:]
        out.append(("Training-time defenses: orderings over the seeds", rows,
                    "ASR (Hit@10 for a text attack); stated only where two rows' ranges over the seeds do not overlap."))
    return out


def safeclip_splits(store: ResultsStore, experiment: str, path: Path, first_seed: int = 0) -> bool:
    """``path``: recall of SafeCLIP's risky set against the poisoned pairs and the safe share over
    the epochs, one line per (attack, seed; ``first_seed``: the seed whose stages carry no tag);
    ``False`` when nothing was split."""
    docs = store.documents(experiment, "splits:")
    if not docs:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharex=True)
    runs = [(key.removeprefix("splits:").partition(":"), doc) for key, doc in sorted(docs.items())]
    attacks = sorted({attack for (attack, _, _), _ in runs})
    seeds = sorted({int(rest.partition(":seed")[2] or first_seed) for (_, _, rest), _ in runs})
    for (attack, _, rest), doc in runs:
        splits = [s for s in doc["splits"] if "recall" in s]
        seed = int(rest.partition(":seed")[2] or first_seed)
        style = {"color": plt.get_cmap("tab10")(attacks.index(attack) % 10),
                 "linestyle": ("-", "--", ":", "-.")[seeds.index(seed) % 4], "marker": "o", "markersize": 3,
                 "label": f"{attack} ({rest.split(':')[0]}, seed {seed})"}
        epochs = [s["epoch"] + 1 for s in splits]
        axes[0].plot(epochs, [s["recall"] for s in splits], **style)
        axes[1].plot(epochs, [s["safe_share"] for s in splits], **style)
    axes[0].set(xlabel="epoch", ylabel="recall of the poisoned pairs", ylim=(-0.02, 1.02), title="risky set recall")
    axes[1].set(xlabel="epoch", ylabel="share of pairs", ylim=(0, 1), title="safe share (CLIP loss)")
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(fig, path)
    return True

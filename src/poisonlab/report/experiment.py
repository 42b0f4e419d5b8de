"""The experiment report: Markdown + HTML with the attack x defense table and plots.

Everything here is written from ``results.db``; nothing in the report is typed by hand.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from poisonlab.bench.store import CLEAN_MODEL, UNDEFENDED, ResultsStore, Spread
from poisonlab.metrics.der import defense_effectiveness
from poisonlab.report.figure import BASELINE_MARKERS, attack_panels, save_png
from poisonlab.report.spread import (
    UNSTABLE,
    cell,
    ordering_rows,
    seeded_cells,
    spread_rows,
    success,
)
from poisonlab.utils.io import atomic_write

BASELINES = (CLEAN_MODEL, UNDEFENDED)
CAPTIONS = {
    "triggers.png": "Each trigger of the grid on the same clean test images (top row: clean).",
    "ca_vs_asr.png": "Clean accuracy against attack success rate, one panel per attack: the poisoned model, the "
                     "clean model (dotted: its ASR, what the trigger does without a backdoor) and each defense; "
                     "error bars: sd over the training seeds. Up and left is worse; a good defense lands low and right.",
    "repairs.png": "Classifier repairs with the trusted share: test CA and ASR along each repair's steps.",
    "roc.png": "Detectors over a population of clean and backdoored classifiers: ROC curves and their AUC.",
    "detectors_curves.png": "Poisoned-pair detectors on each poisoned fine-tuning set (first training seed): ROC "
                            "curves (top; dashed: chance) and precision-recall curves (bottom; dashed: the poison rate).",
    "detectors_scores.png": "Each detector's scores of clean and poisoned pairs (densities, first training seed); "
                            "dashed: the threshold set on clean pairs.",
    "dose_response.png": "Text-modality poisoning: Hit@10 and MinRank against the number of poisoned pairs (mean "
                         "and sd over seeds); dashed: the same numbers for random captions.",
    "safeclip_splits.png": "SafeCLIP's split before each epoch of pre-training on poisoned pairs, one line per attack "
                           "and seed: the share of poisoned pairs it kept out of the CLIP loss (left) and the share it "
                           "called safe (right).",
}
"""The caption under each figure the report may show."""


def ca_asr_scatter(table: dict[tuple[str, str], dict[str, Spread]], attacks: list[str], path: Path) -> None:
    """One panel per attack: CA (x) against ASR (y) for the poisoned model and every defense; a
    cell with several seeds is drawn at its mean with ± sd error bars.

    The never-poisoned clean model is drawn too, with a dotted line at its ASR: what the trigger
    alone does to a model without a backdoor (a patch that hides the object), the floor a cleaned
    model's ASR is measured against.
    """
    fig, axes = attack_panels(attacks)
    for ax, attack in zip(axes, attacks, strict=True):
        for (a, defense), m in sorted(table.items()):
            if a != attack or "asr" not in m:
                continue
            ca, asr = m["ca"], m["asr"]
            if defense == CLEAN_MODEL:
                ax.axhline(100 * asr.mean, ls=":", lw=0.8, color="grey")
            marker = BASELINE_MARKERS.get(defense, "o")
            ax.errorbar(100 * ca.mean, 100 * asr.mean, xerr=100 * ca.sd or None, yerr=100 * asr.sd or None,
                        fmt=marker, ms=6, capsize=2, lw=0.8)
            ax.annotate("poisoned" if defense == "none" else defense, (100 * ca.mean, 100 * asr.mean),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
    fig.tight_layout()
    save_png(fig, path)


def grid_rows(table: dict[tuple[str, str], dict[str, Spread]], attacks: list[str], defenses: list[str]) -> list[list[str]]:
    header = ["attack"] + [f"{d} CA / ASR" for d in defenses]
    rows = [header]
    for a in attacks:
        row = [a]
        for d in defenses:
            m = table.get((a, d), {})
            row.append(f"{cell(m.get('ca'))} / {cell(m.get(success(m)))}")
        rows.append(row)
    return rows


def side_by_side_rows(table: dict[tuple[str, str], dict[str, Spread]], attacks: list[str],
                      conditions: list[str]) -> list[list[str]]:
    """One row per condition (poisoned model, each defense), one column per attack: its ASR."""
    rows = [["ASR under"] + attacks]
    for c in conditions:
        rows.append(["poisoned (none)" if c == "none" else c] + [cell(table.get((a, c), {}).get("asr")) for a in attacks])
    return rows


def ra_der_rows(table: dict[tuple[str, str], dict[str, float]], attacks: list[str], defenses: list[str],
                ca: str = "ca") -> list[list[str]]:
    """Each cell's robust accuracy and each defense's DER against the undefended model (``none``),
    from the seed means of CA and ASR (:func:`~poisonlab.metrics.der.defense_effectiveness`)."""
    rows = [["attack", "none RA"] + [f"{d} RA / DER" for d in defenses]]
    for a in attacks:
        before = table.get((a, "none"), {})
        row = [a, pct(before.get("ra"))]
        for d in defenses:
            after = table.get((a, d), {})
            der = defense_effectiveness(*(m.get(k, math.nan) for m in (before, after) for k in (ca, "asr"))) \
                if before and after else math.nan
            row.append(f"{pct(after.get('ra'))} / {pct(der)}")
        rows.append(row)
    return rows


def pct(value: float | None) -> str:
    """``value`` (a share) in percent with one decimal, or a dash."""
    return "—" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def _audit(table: dict[tuple[str, str], dict[str, float]], attacks: list[str]) -> list[list[str]]:
    rows = [["attack", "removed", "poisons caught", "precision", "recall", "clean pairs lost"]]
    for a in attacks:
        m = table.get((a, "filter (audit)"))
        if m:
            rows.append([a, f"{m['removed']:.0f}", f"{m['caught']:.0f}", f"{m['precision']:.2f}", f"{m['recall']:.2f}",
                         f"{m['clean_lost']:.0f}"])
    return rows


def _distances(table: dict[tuple[str, str], dict[str, float]], attacks: list[str], defenses: list[str]) -> list[list[str]]:
    """S_img / S_txt at the end of each defense that reports them (PAR's distance from the suspect)."""
    pushed = [d for d in defenses if any("final_s_img" in table.get((a, d), {}) for a in attacks)]
    rows = [["attack"] + [f"{d} S_img / S_txt" for d in pushed]]
    for a in attacks:
        cells = [table.get((a, d), {}) for d in pushed]
        rows.append([a] + [f"{m['final_s_img']:.2f} / {m['final_s_txt']:.2f}" if "final_s_img" in m else "—" for m in cells])
    return rows if pushed else []


def seed_sections(spread: dict[tuple[str, str], dict[str, Spread]], attacks: list[str],
                  conditions: list[str]) -> list[tuple[str, list[list[str]], str]]:
    """The grid's seed spread and the orderings that hold on every seed (none without seeds)."""
    if not seeded_cells(spread):
        return []
    return [
        ("Seed spread of the grid (CA / ASR, %)", spread_rows(spread, ("ca", "asr")),
         f"Mean ± sample sd and [min, max] over the training seeds of each cell; 'unstable' marks an ASR "
         f"whose seeds span more than {100 * UNSTABLE:g} points, where one seed's number is a lottery."),
        ("Orderings of ASR over the seeds", ordering_rows(spread, attacks, conditions),
         "An ordering is stated only where the two rows' ranges over the seeds do not overlap."),
    ]


def markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(store: ResultsStore, experiment: str, attacks: list[str], defenses: list[str], out: Path,
                 extra: dict[str, Any] | None = None,
                 more: list[tuple[str, list[list[str]], str]] | None = None,
                 images: list[tuple[str, str]] | None = None) -> Path:
    """Write ``out/README.md``, ``out/index.html`` and ``out/ca_vs_asr.png``; returns the HTML path.
    ``images``: more figures of the report folder, each ``(file, caption)``."""
    out.mkdir(parents=True, exist_ok=True)
    table, spread = store.table(experiment), store.spread(experiment)
    triggered = [a for a in attacks if any("asr" in m for (x, _), m in spread.items() if x == a)]
    if triggered:
        ca_asr_scatter(spread, triggered, out / "ca_vs_asr.png")
    grid = grid_rows(spread, attacks, list(BASELINES) + defenses)
    audit = _audit(table, attacks)
    distances = _distances(table, attacks, defenses)
    stages = [["stage", "seconds", "cached"]] + [[s, "-" if sec is None else f"{sec:.1f}", "yes" if c else "no"]
                                                 for s, sec, c in store.stages(experiment)]
    grid_sections = [
        ("Attack x defense: clean accuracy / ASR (%)", grid,
         "ASR counts triggered test images whose true class is not the target (an attack on captions shows "
         "Hit@10 of its goal instead). "
         "'clean model' is the pre-trained model before poisoning (its ASR is what the trigger does "
         "without a backdoor); 'none' is the poisoned model."),
        *([("Robust accuracy and defense effectiveness (%)", ra_der_rows(table, triggered, defenses),
            "RA: triggered test images whose true class is not the target, classified as their true class. DER "
            "(BackdoorBench): [max(0, ΔASR) − max(0, ΔCA) + 1] / 2 against the poisoned model ('none'), from the "
            "seed means: 100 removes the whole ASR at no cost in CA, 50 changes nothing."),
           ("Attacks side by side: ASR (%) under each defense",
            side_by_side_rows(spread, triggered, list(BASELINES) + defenses),
            "The grid's ASR read across: every attack under the same defense, mean ± sd over the training seeds. "
            "The hard case is an attack whose ASR stays high where the others fall (BadCLIP's optimised patch "
            "beside BadNet's random one); 'clean model' is what each trigger does without a backdoor.")]
          if triggered else []),
        ("Pair filtering of each poisoned fine-tuning set (audit with the clean model)", audit, ""),
        *([("Distance from the suspect at the end of cleaning", distances,
            "S = mean squared distance between the cleaned and the suspect model's unit embeddings of the last "
            "training batch (0-4). PAR pushes while S is below its tau (2.15 by default) and stops above it.")]
          if distances else []),
        *seed_sections(spread, attacks, list(BASELINES) + defenses),
    ] if attacks else []
    sections = [
        *grid_sections,
        *(more or []),
        ("Wall time of each stage", stages, "'cached: yes' marks a stage reused from an earlier run instead of recomputed; its seconds are "
         "what it took when that run built it."),
    ]
    md = [f"# poisonlab report: {experiment}", ""]
    if extra:
        md += [f"- {k}: {v}" for k, v in extra.items()] + [""]
    pictures = [*((p, CAPTIONS[p]) for p in ("triggers.png", "ca_vs_asr.png") if triggered), *(images or [])]
    for p, caption in pictures:
        md += [f"![{p[:-4]}]({p})", "", f"*{caption}*", ""]
    body = [f"<h1>poisonlab report: {html.escape(experiment)}</h1>"]
    if extra:
        body.append("<ul>" + "".join(f"<li>{html.escape(f'{k}: {v}')}</li>" for k, v in extra.items()) + "</ul>")
    body += [f'<figure><img src="{p}" alt="{p[:-4]}"><figcaption>{html.escape(caption)}</figcaption>'
             "</figure>" for p, caption in pictures]
    for title, rows, note in sections:
        md += [f"## {title}", "", markdown_table(rows), "", note, ""]
        body += [f"<h2>{html.escape(title)}</h2>", _html_table(rows), f"<p>{html.escape(note)}</p>"]
    style = "body{font-family:sans-serif;max-width:1100px;margin:2em auto}td,th{border:1px solid #ccc;padding:4px 8px}" \
            "table{border-collapse:collapse;margin-bottom:1em}img{max-width:100%}"
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(experiment)}</title>" \
           f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
    with atomic_write(out / "README.md", "w") as f:
        f.write("\n".join(md))
    with atomic_write(out / "index.html", "w") as f:
        f.write(page)
    return out / "index.html"

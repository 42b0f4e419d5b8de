"""Each study's part of the report, written from the store alone.

A study kind (:mod:`poisonlab.bench.study`) may register a renderer here under its kind's name:
``renderer(store, experiment, spec, figure) -> (sections, figures)`` with ``experiment`` the study's
experiment name in the store, ``spec`` its typed config and ``figure(file)`` the path to draw a
figure to (each figure returned as ``(path.name, caption)``). A kind without a renderer is still reported:
:func:`plain_sections` tabulates whatever rows and points it stored.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from poisonlab.bench.store import ResultsStore
from poisonlab.registry import Registry
from poisonlab.report.experiment import CAPTIONS
from poisonlab.report.roc import roc_figure
from poisonlab.report.sections import Section, classifier_sections, ssl_sections
from poisonlab.report.spread import cell
from poisonlab.report.text import dose_response, text_sections
from poisonlab.report.trace import repair_curves
from poisonlab.report.training import safeclip_splits, training_sections

Figure = tuple[str, str]
"""A figure of the report: its file name in the report folder and its caption."""
Rendered = tuple[list[Section], list[Figure]]
Place = Callable[[str], Path]
RENDERERS: Registry[Rendered] = Registry("study report")


def render(store: ResultsStore, kind: str, name: str, experiment: str, spec: Any, out: Path) -> Rendered:
    """Study ``name`` (of ``kind``) rendered by its kind's renderer into report folder ``out``, or as
    plain tables. When its name is not its kind's, its section titles and figure files carry the name
    (two studies of one kind never share a title or a file)."""
    if kind not in RENDERERS:
        return plain_sections(store, name, experiment), []
    if name == kind:
        return RENDERERS.get(kind)(store, experiment, spec, lambda file: out / file)
    sections, figures = RENDERERS.get(kind)(store, experiment, spec, lambda file: out / f"{name}-{file}")
    return [(f"{name} — {title}", rows, note) for title, rows, note in sections], figures


def plain_sections(store: ResultsStore, name: str, experiment: str) -> list[Section]:
    """Every results row of the study (mean ± sd over its seeds, as stored) and every point."""
    spread = store.spread(experiment)
    metrics = sorted({m for cell_ in spread.values() for m in cell_})
    rows = [["attack", "row", *metrics]]
    rows += [[a, r, *(cell(m.get(k), 1, 4) for k in metrics)] for (a, r), m in sorted(spread.items())]
    out = [(f"Study {name}: results", rows, "Each row as stored: mean ± sd over its training seeds.")] if spread else []
    points = store.points(experiment)
    if points:
        keys = sorted({k for p in points for k in p.metrics})
        table = [["attack", "condition", "dose", "seed", *keys]]
        table += [[p.attack, p.condition, f"{p.dose:g}", str(p.seed), *(f"{p.metrics[k]:.4g}" if k in p.metrics
                                                                          else "—" for k in keys)] for p in points]
        out.append((f"Study {name}: series", table, "Each measured point of the study's series."))
    return out


@RENDERERS.register("classifier")
def classifier_report(store: ResultsStore, experiment: str, spec: Any, figure: Place) -> Rendered:
    attacks, repairs = [a.name for a in spec.attacks], [r.name for r in spec.repairs]
    sections = classifier_sections(store, experiment, attacks, repairs, spec.trusted_share)
    figures: list[Figure] = []
    if repair_curves(store, experiment, attacks, repairs, figure("repairs.png")):
        figures.append((figure("repairs.png").name, CAPTIONS["repairs.png"]))
    curves = store.document(experiment, "population")
    if curves is not None and spec.population is not None:
        roc_figure({d: curves[d] for d in spec.population.detectors}, figure("roc.png"))
        figures.append((figure("roc.png").name, CAPTIONS["roc.png"]))
    return sections, figures


@RENDERERS.register("ssl")
def ssl_report(store: ResultsStore, experiment: str, spec: Any, figure: Place) -> Rendered:
    return ssl_sections(store, experiment, spec.target, [d.name for d in spec.defenses], list(spec.detectors)), []


@RENDERERS.register("text")
def text_report(store: ResultsStore, experiment: str, spec: Any, figure: Place) -> Rendered:
    drawn = dose_response(store, experiment, figure("dose_response.png"))
    figures = [(drawn.name, CAPTIONS["dose_response.png"])] if drawn else []
    return text_sections(store, experiment, spec.n), figures


@RENDERERS.register("training")
def training_report(store: ResultsStore, experiment: str, spec: Any, figure: Place) -> Rendered:
    sections = training_sections(store, experiment, [a.name for a in spec.attacks], [d.name for d in spec.defenses])
    path = figure("safeclip_splits.png")
    figures = [(path.name, CAPTIONS["safeclip_splits.png"])] if safeclip_splits(store, experiment, path, spec.seed) else []
    return sections, figures

"""The README's result tables, written from a finished run (never typed by hand).

:func:`headline_block` renders the tables the report of a run leads with (the CLIP grid, the
classifier repairs, the SSL probes, the text-modality defenses) with the machine the run ran on;
:func:`replace_block` puts them between the two marker lines of a Markdown file.
``benchmarks/readme_headline.py`` does both for ``README.md``.
"""

from __future__ import annotations

from pathlib import Path
from tempfile import TemporaryDirectory

from poisonlab.bench.spec import ExperimentSpec, study_specs
from poisonlab.bench.store import ResultsStore
from poisonlab.bench.study import experiment_name
from poisonlab.errors import InputError
from poisonlab.report.experiment import BASELINES, grid_rows, markdown_table
from poisonlab.report.studies import render
from poisonlab.utils.machine import one_line

BEGIN = "<!-- result tables: written from a run by benchmarks/readme_headline.py -->"
END = "<!-- end of result tables -->"
HEADLINE_SECTION = {"classifier": 0, "ssl": 0, "text": 1}
"""The study kinds the README leads with, and which of their report sections it shows."""


def headline_block(store: ResultsStore, spec: ExperimentSpec, command: str) -> str:
    """Markdown: where the numbers come from, then one table per part of the run."""
    name = spec.name
    machine = store.document(name, "machine")
    where = one_line(machine) if machine else "machine not recorded"
    lines = [f"From `{command}` on a {where}:", ""]
    tables: list[tuple[str, list[list[str]]]] = []
    spread = store.spread(name)
    if spread and spec.attacks:
        tables.append(("CLIP, clean accuracy / ASR (%)",
                       grid_rows(spread, [a.name for a in spec.attacks], [*BASELINES, *(d.name for d in spec.defenses)])))
    for study in study_specs(spec):
        experiment = experiment_name(name, study.name)
        if study.kind in HEADLINE_SECTION and (store.spread(experiment) or store.points(experiment)):
            with TemporaryDirectory() as figures:  # the tables only
                sections, _ = render(store, study.kind, study.name, experiment, study.spec, Path(figures))
            title, rows, _ = sections[HEADLINE_SECTION[study.kind]]
            tables.append((title, rows))
    if not tables:
        raise InputError(f"the store has no results of experiment {name!r}")
    for title, rows in tables:
        lines += [f"**{title}**", "", markdown_table(rows), ""]
    return "\n".join(lines).rstrip() + "\n"


def replace_block(document: str, block: str) -> str:
    """``document`` with the text between :data:`BEGIN` and :data:`END` replaced by ``block``."""
    start, end = document.find(BEGIN), document.find(END)
    if start < 0 or end < start:
        raise InputError(f"no '{BEGIN}' ... '{END}' lines to write between")
    return document[: start + len(BEGIN)] + "\n" + block + document[end:]

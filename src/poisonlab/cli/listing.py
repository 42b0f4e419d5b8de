"""``poisonlab list``: every registered name, with each defense's and detector's family and kind,
and each study kind a spec may hold with its model family.

The names are read from the package's source (:func:`poisonlab.registry.declared`), so listing
them imports neither the methods nor torch; methods registered at run time (a plugin's, a test's)
are added from the registries once their packages are imported.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from poisonlab.cli.options import emit, json_option
from poisonlab.glossary import METRICS
from poisonlab.registry import declared

REGISTRIES = {"triggers": ("poisonlab.triggers", "TRIGGERS"), "attacks": ("poisonlab.attacks", "ATTACKS"),
              "datasets": ("poisonlab.data", "DATASETS"), "defenses": ("poisonlab.defenses", "DEFENSES"),
              "detectors": ("poisonlab.detect", "DETECTORS"), "studies": ("poisonlab.bench.study", "STUDIES")}
"""What ``list`` shows: each title's package and registry variable."""


def registered() -> dict[str, list[tuple[str, str | None, str | None]]]:
    """Each title's ``(name, family, kind)`` entries: the declared ones and, where the registry's
    package is imported, the registered ones, sorted by name and family."""
    found = declared()
    out = {}
    for title, (module, variable) in REGISTRIES.items():
        rows = set(found.get(variable, ()))
        if module in sys.modules:
            registry = getattr(sys.modules[module], variable)
            rows |= {(e.name, e.family, e.kind) for e in registry.entries()}
        out[title] = sorted(rows, key=lambda r: (r[0], str(r[1])))
    return out


@click.command("list")
@click.option("--metrics", is_flag=True, help="List the metrics poisonlab reports and what each counts instead.")
@json_option
def list_names(metrics: bool, as_json: bool) -> None:
    """List the registered triggers, attacks, datasets, defenses (with the model family each works
    on and its kind), detectors and study kinds (the parts a spec for `poisonlab run` may hold).

    \b
    Example:
      poisonlab list
      poisonlab list --metrics     # CA, ASR, RA, DER, Hit@K, ... and what each counts
    """
    if metrics:
        emit(METRICS, as_json, [f"{k}: {v}" for k, v in METRICS.items()])
        return
    rows = registered()
    names: dict[str, Any] = {title: sorted({r[0] for r in rows[title]}) for title in ("triggers", "attacks", "datasets")}
    lines = [f"{k}: {', '.join(v)}" for k, v in names.items()]
    for title in ("defenses", "detectors"):
        names[title] = [{"name": n, "family": f, "kind": k} for n, f, k in rows[title]]
        lines += [f"{title}:", *(f"  {n:<16} {f:<11} {k}" for n, f, k in rows[title])]
    names["studies"] = [{"name": n, "family": f} for n, f, _ in rows["studies"]]
    lines += ["studies:", *(f"  {n:<16} {f}" for n, f, _ in rows["studies"])]
    emit(names, as_json, lines)

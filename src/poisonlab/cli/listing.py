"""``poisonlab list``: every registered name, with each defense's and detector's family and kind,
and each study kind a spec may hold with its model family."""

from __future__ import annotations

from typing import Any

import click

from poisonlab import attacks, data, defenses, detect, triggers
from poisonlab.bench.studies import STUDIES
from poisonlab.cli.common import emit, json_option


@click.command("list")
@json_option
def list_names(as_json: bool) -> None:
    """List the registered triggers, attacks, datasets, defenses (with the model family each works
    on and its kind), detectors and study kinds (the parts a spec for `poisonlab run` may hold)."""
    names: dict[str, Any] = {"triggers": triggers.available(), "attacks": attacks.available(),
                             "datasets": data.available()}
    lines = [f"{k}: {', '.join(v)}" for k, v in names.items()]
    for title, registry in (("defenses", defenses.DEFENSES), ("detectors", detect.DETECTORS)):
        rows = [{"name": e.name, "family": e.family, "kind": e.kind} for e in registry.entries()]
        names[title] = rows
        lines.append(f"{title}:")
        lines += [f"  {r['name']:<16} {r['family']:<11} {r['kind']}" for r in rows]
    names["studies"] = [{"name": e.name, "family": e.factory.family} for e in STUDIES.entries()]  # type: ignore[attr-defined]
    lines.append("studies:")
    lines += [f"  {r['name']:<16} {r['family']}" for r in names["studies"]]
    emit(names, as_json, lines)

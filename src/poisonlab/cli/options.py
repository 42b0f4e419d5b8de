"""The options every command shares and the way results are printed, without importing torch
(``poisonlab list`` and ``--help`` use them); :mod:`poisonlab.cli.common` re-exports them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from poisonlab.errors import InputError
from poisonlab.utils.io import json_safe


def parse_value(text: str) -> Any:
    """``"3"`` -> 3, ``"0.2"`` -> 0.2, ``"true"`` -> True, ``"[1,2]"`` -> [1, 2], else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_params(pairs: tuple[str, ...], option: str) -> dict[str, Any]:
    """``("alpha=0.2", "size=5")`` -> ``{"alpha": 0.2, "size": 5}``."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(f"{option} expects KEY=VALUE, got {pair!r}")
        out[key.replace("-", "_")] = parse_value(value)
    return out


def emit(summary: dict[str, Any], as_json: bool, lines: list[str]) -> None:
    """Print the JSON summary (``--json``; always valid JSON: a non-finite number is ``null``) or
    human-readable lines."""
    if as_json:
        click.echo(json.dumps(json_safe(summary), sort_keys=True, allow_nan=False))
    else:
        for line in lines:
            click.echo(line)


json_option = click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout instead of lines.")
"""``--json``, declared once for every command."""
out_option = click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
                          help="Output folder (created if missing; a folder of someone else's needs --force).")
"""``--out`` for the commands that write a folder."""


def force_option(f: Any) -> Any:
    """``--force`` for commands that write an ``--out`` folder (:func:`~poisonlab.utils.output.claim_output`)."""
    return click.option("--force", is_flag=True,
                        help="Write into a non-empty --out folder that poisonlab did not write (only poisonlab's own "
                             "files are ever replaced; a file of yours with one of its names is refused).")(f)

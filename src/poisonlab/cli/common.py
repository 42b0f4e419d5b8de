"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from poisonlab.attacks.plan import PoisonedDataset, PoisonPlan
from poisonlab.data import open_dataset
from poisonlab.data.base import ImageCaptionDataset
from poisonlab.errors import InputError


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
    """Print the JSON summary (``--json``) or human-readable lines."""
    if as_json:
        click.echo(json.dumps(summary, sort_keys=True))
    else:
        for line in lines:
            click.echo(line)


def data_options(f: Any) -> Any:
    """``--split``, ``--image-size``, ``--n``, ``--data-seed`` for opening a dataset."""
    f = click.option("--data-seed", type=int, default=0, show_default=True, help="Seed of generated data.")(f)
    f = click.option("--n", "--items", "n", type=int, default=None, help="Number of items of generated data.")(f)
    f = click.option("--image-size", type=int, default=32, show_default=True, help="Image side in pixels.")(f)
    f = click.option("--split", default="train", show_default=True, help="train or test.")(f)
    return f


def open_args(spec: str, split: str, image_size: int, n: int | None, data_seed: int) -> dict[str, Any]:
    return {"spec": spec, "split": split, "size": image_size, "n": n, "seed": data_seed}


def load_data(spec: str, split: str = "train", size: int = 32, n: int | None = None, seed: int = 0) -> ImageCaptionDataset:
    """A dataset by name, path, or poison plan file (``*.json``: the poisoned dataset it describes)."""
    if spec.endswith(".json"):
        return open_plan(Path(spec))
    return open_dataset(spec, split=split, size=size, n=n, seed=seed)


def open_plan(path: Path) -> PoisonedDataset:
    """Rebuild the poisoned dataset a plan file describes (its data paths are relative to it)."""
    plan = PoisonPlan.load(path)
    args = dict(plan.dataset.get("open") or {})
    if "spec" not in args:
        raise InputError(f"{path}: plan does not say how to reopen its dataset (made outside the CLI?)")
    spec = args.pop("spec")
    if not Path(spec).is_absolute() and (path.parent / spec).exists():
        spec = str(path.parent / spec)
    return PoisonedDataset(open_dataset(spec, **args), plan)


def relative_spec(spec: str, out: Path) -> str:
    """A dataset path as seen from ``out`` (names of embedded data stay as they are)."""
    if not Path(spec).exists():
        return spec
    return os.path.relpath(Path(spec).resolve(), out.resolve())

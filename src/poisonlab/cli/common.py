"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any

import click

from poisonlab.attacks.plan import PoisonedDataset, PoisonPlan
from poisonlab.cli.options import force_option, out_option
from poisonlab.data import open_dataset, shard_paths
from poisonlab.data.base import ImageCaptionDataset
from poisonlab.errors import InputError
from poisonlab.registry import Registry, parameters
from poisonlab.train.dist import DistInfo, init_from_env
from poisonlab.train.loop import RECIPES, TrainConfig
from poisonlab.train.stream import MODES, DataConfig
from poisonlab.utils.output import TRAIN_OUTPUTS, claim_output


def data_options(f: Any) -> Any:
    """``--split``, ``--image-size``, ``--n``, ``--data-seed`` for opening a dataset."""
    f = click.option("--data-seed", type=int, default=0, show_default=True, help="Seed of generated data.")(f)
    f = click.option("--n", "--items", "n", type=int, default=None, help="Number of items of generated data.")(f)
    f = click.option("--image-size", type=int, default=32, show_default=True, help="Image side in pixels.")(f)
    f = click.option("--split", default="train", show_default=True, help="train or test.")(f)
    return f


def stream_options(training: bool = True, raw: bool = False) -> Any:
    """``--data``, ``--workers`` (and, for training, ``--skip-bad-images``), as one ``data_config``
    keyword argument holding a :class:`~poisonlab.train.stream.DataConfig` (``raw``: as the three
    values, for a command that hands them on to another)."""

    def decorate(f: Any) -> Any:
        @functools.wraps(f)
        def converting(*args: Any, data_mode: str, workers: int | None, skip_bad_images: bool = False,
                       **kw: Any) -> Any:
            return f(*args, data_config=DataConfig(data_mode, workers, skip_bad_images=skip_bad_images), **kw)

        wrapper = f if raw else converting

        if training:
            wrapper = click.option("--skip-bad-images", is_flag=True,
                                   help="Skip unreadable images and samples without a caption (counted in the "
                                        "summary) instead of stopping with exit 2.")(wrapper)
        wrapper = click.option("--workers", type=click.IntRange(0, 256), default=None,
                               help="DataLoader worker processes in stream mode (default: the cores available).")(wrapper)
        return click.option("--data", "data_mode", type=click.Choice(MODES), default="auto", show_default=True,
                            help="memory: decode the whole set first; stream: decode batch by batch in workers; "
                                 "auto: stream when the decoded set would exceed 2 GiB.")(wrapper)

    return decorate


def open_args(spec: str, split: str, image_size: int, n: int | None, data_seed: int) -> dict[str, Any]:
    return {"spec": spec, "split": split, "size": image_size, "n": n, "seed": data_seed}


def load_data(spec: str, split: str = "train", size: int = 32, n: int | None = None, seed: int = 0,
              skip_bad: bool = False) -> ImageCaptionDataset:
    """A dataset by name, path, or poison plan file (``*.json``: the poisoned dataset it describes)."""
    if spec.endswith(".json"):
        return open_plan(Path(spec), skip_bad=skip_bad)
    return open_dataset(spec, split=split, size=size, n=n, seed=seed, skip_bad=skip_bad)


def at_model_size(spec: str, data: ImageCaptionDataset, size: int, n: int | None, seed: int) -> ImageCaptionDataset:
    """``data`` (opened at the default 32 px to learn its classes) reopened at the model's input
    size, so images are decoded at the resolution the model reads rather than upsampled.
    Plans keep the size they were made at."""
    if size == 32 or spec.endswith(".json"):
        return data
    return load_data(spec, size=size, n=n, seed=seed)


def open_plan(path: Path, skip_bad: bool = False) -> PoisonedDataset:
    """Rebuild the poisoned dataset a plan file describes (its data paths are relative to it).

    Items are read at the image side the plan was made at (``poison --image-size``), where its
    trigger was drawn; training resizes them to the model's input size after the trigger."""
    plan = PoisonPlan.load(path)
    args = dict(plan.dataset.get("open") or {})  # its fields checked by PoisonPlan.load
    if "spec" not in args:
        raise InputError(f"{path}: plan does not say how to reopen its dataset (made outside the CLI?)")
    spec = args.pop("spec")
    beside = str(path.parent / spec)
    if not Path(spec).is_absolute() and (Path(beside).exists() or _shards_exist(beside)):
        spec = beside
    return PoisonedDataset(open_dataset(spec, skip_bad=skip_bad, **args), plan)


def _shards_exist(pattern: str) -> bool:
    try:
        return shard_paths(pattern) is not None
    except InputError:
        return False


def relative_spec(spec: str, out: Path) -> str:
    """A dataset path (or shard pattern) as seen from ``out`` (names of embedded data stay as they are)."""
    if shard_paths(spec) is not None:
        return os.path.join(os.path.relpath(Path(spec).parent.resolve(), out.resolve()), Path(spec).name)
    if not Path(spec).exists():
        return spec
    return os.path.relpath(Path(spec).resolve(), out.resolve())


class LiveEpilog(click.Command):
    """A command whose epilog is a function, called when ``--help`` is shown (so a method registered
    after import, a plugin's or a test's, is listed too)."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        if callable(self.epilog):
            formatter.write_paragraph()
            for line in self.epilog().split("\n"):
                formatter.write_text(line)


def method_help(registry: Registry[Any], family: str | None = None, kind: str | None = None,
                option: str = "--param") -> str:
    """A help epilog listing each method of ``family`` / ``kind`` with its parameters and defaults
    (read from its config, so new methods and fields show up by themselves)."""
    lines = ["\b", f"Methods and their {option} KEY=VALUE parameters (defaults):"]
    for entry in registry.entries(family, kind):
        params = ", ".join(f"{k}={v!r}" for k, v in parameters(entry.factory).items())
        lines.append(f"  {entry.name} [{entry.family}, {entry.kind}]: {params}")
    return "\n".join(lines)


BUDGET_HELP = {
    "steps": "Optimiser steps (or --epochs).", "epochs": "Epochs (instead of --steps).",
    "batch_size": "Global batch size.", "lr": "Peak learning rate.", "weight_decay": "AdamW weight decay.",
    "warmup": "Warm-up steps.", "schedule": "cosine, constant or two-phase.", "seed": "Training seed.",
    "checkpoint_every": "Save a resumable checkpoint every N steps (0: only at the end).",
}


def budget_options(family: str) -> Any:
    """The training budget options, generated once from :class:`~poisonlab.train.loop.TrainConfig`
    with the defaults of ``RECIPES[family]``; the command receives them as one ``config``."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)} | RECIPES[family]
    types: dict[str, Any] = {"steps": click.IntRange(min=1), "epochs": float, "batch_size": click.IntRange(min=1),
                             "lr": float, "weight_decay": float, "warmup": click.IntRange(min=0), "schedule": str,
                             "seed": int, "checkpoint_every": click.IntRange(min=0)}

    def decorate(f: Any) -> Any:
        @functools.wraps(f)
        def wrapper(*args: Any, **kw: Any) -> Any:
            budget = {name: kw.pop(name) for name in types}
            return f(*args, config=TrainConfig(**budget), **kw)

        for name in reversed(list(types)):
            default = defaults[name]
            wrapper = click.option(f"--{name.replace('_', '-')}", name, type=types[name], default=default,
                                   show_default=default is not None, help=BUDGET_HELP[name])(wrapper)
        return wrapper

    return decorate


def caught_line(report: dict[str, Any]) -> str:
    """A filter's score against a known poison plan, as the filtering commands print it."""
    return (f"poisons caught {report['caught']}/{report['poisoned']}: precision {report['precision']:.3f}, "
            f"recall {report['recall']:.3f}")


def training_out(out: Path, force: bool, inputs: tuple[str | None, ...] = (), extra: tuple[str, ...] = ()) -> DistInfo:
    """Join the torchrun process group (if any) and, on the main rank, claim ``out`` for a training
    run's files and the ``extra`` names (:func:`~poisonlab.utils.output.claim_output`; ``inputs``:
    the files the run reads, never overwritten); returns this process's place."""
    dist = init_from_env()
    if dist.is_main:
        claim_output(out, (*TRAIN_OUTPUTS, *extra), force=force, inputs=inputs)
    return dist


def training_run_options(f: Any) -> Any:
    """``--resume``, ``--out`` and ``--force``: where a training run writes, and whether it continues."""
    f = force_option(f)
    f = out_option(f)
    return click.option("--resume", is_flag=True, help="Continue from OUT/train_state.pt.")(f)


def generated_data_options(f: Any) -> Any:
    """``--image-size``, ``--n`` and ``--data-seed`` for the training commands that read images."""
    f = click.option("--data-seed", type=int, default=0, show_default=True, help="Seed of generated data.")(f)
    f = click.option("--n", "--items", "n", type=int, default=None, help="Items of generated data.")(f)
    return click.option("--image-size", type=int, default=32, show_default=True, help="Image side in pixels.")(f)

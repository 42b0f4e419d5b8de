"""``poisonlab poison`` and ``poisonlab show``."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

import click
import torch

from poisonlab import attacks, triggers
from poisonlab.attacks.materialize import materialize as materialize_data
from poisonlab.attacks.plan import PoisonedDataset
from poisonlab.cli.clip import model_options, open_model
from poisonlab.cli.common import data_options, load_data, open_args, open_plan, relative_spec
from poisonlab.cli.options import emit, force_option, json_option, out_option, parse_params
from poisonlab.data import open_dataset
from poisonlab.errors import InputError
from poisonlab.models.checkpoint import save_tensors
from poisonlab.models.open import open_any
from poisonlab.report import plan_gallery, trigger_gallery
from poisonlab.utils.output import output_dir

POISON_OUTPUTS = ("plan.json", "poisoned.png", "images", "data.csv", "shards", "trigger.safetensors")
MODEL_OUTPUTS = ("model.safetensors", "model.json", "triggered.png")
"""What a model-poisoning attack (badencoder) writes instead of a plan."""


@click.command()
@click.option("--dataset", required=True, help="Embedded name (shapes, digits, ...) or a path.")
@click.option("--attack", required=True, help="Attack name (see `poisonlab list`).")
@click.option("--target", default=None, help="Target class name (image-trigger and text Attack II).")
@click.option("--source", default=None, help="Source class A (text attacks I and II).")
@click.option("--target-index", "--target-image", "target_index", type=int, default=None,
              help="Target image x* of text Attack I (its index in the data).")
@click.option("--goal", "goals", multiple=True, help="SOURCE:TARGET goal (text Attack III); repeatable.")
@click.option("--rate", type=float, default=None, help="Poison rate in (0, 1].")
@click.option("--count", type=int, default=None, help="Exact number of items to poison.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the poison plan.")
@click.option("--trigger", default=None, help="Trigger name (image-trigger attacks).")
@click.option("--trigger-param", "trigger_params", multiple=True, help="Trigger hyper-parameter KEY=VALUE.")
@click.option("--attack-param", "attack_params", multiple=True,
              help="The attack's own hyper-parameter KEY=VALUE (JSON values), e.g. optimizer='{\"steps\": 400}' for badclip.")
@click.option("--model", default=None,
              help="The clean CLIP model an attack makes its trigger on (badclip): a checkpoint, or an "
                   "architecture with --pretrained.")
@model_options
@out_option
@click.option("--materialize", is_flag=True,
              help="Also write the poisoned data: webdataset shards for shard input (clean samples copied "
                   "byte for byte), else every image and a data.csv.")
@force_option
@json_option
@data_options
def poison(dataset: str, attack: str, target: str | None, source: str | None, target_index: int | None,
           goals: tuple[str, ...], rate: float | None, count: int | None, seed: int, trigger: str | None,
           trigger_params: tuple[str, ...], attack_params: tuple[str, ...], model: str | None, pretrained: str | None,
           cache_dir: str | None, out: Path, materialize: bool, force: bool, as_json: bool,
           split: str, image_size: int, n: int | None, data_seed: int) -> None:
    """Make a poison plan (plan.json) for a dataset, a gallery of poisoned pairs, and optionally the data.

    An attack that optimises its trigger on the clean model first (badclip) takes --model and
    also writes the trigger as trigger.safetensors.

    \b
    Examples:
      poisonlab poison --dataset shapes --n 4000 --attack clip-dirty --target star --rate 0.1 --trigger sig --out p
      poisonlab poison --dataset shapes --n 4000 --attack badclip --target star --model clean/model.safetensors --out p
    """
    params = {"target": target, "source": source, "target_index": target_index, "goals": list(goals) or None,
              "rate": rate, "count": count, "trigger": trigger}
    params = {k: v for k, v in params.items() if v is not None}
    if trigger_params:
        params["trigger_params"] = parse_params(trigger_params, "--trigger-param")
    params.update(parse_params(attack_params, "--attack-param"))
    atk = attacks.create(attack, **params)
    if atk.needs_model and model is None:
        raise InputError(f"attack {attack} makes its trigger on the clean model (or poisons it): give --model")
    if model is not None and not atk.needs_model:
        raise InputError(f"attack {attack} does not use a model: drop --model")
    data = open_dataset(dataset, split=split, size=image_size, n=n, seed=data_seed)
    if getattr(atk, "kind", None) == "model":
        return poison_model(atk, model, pretrained, cache_dir, dataset, out, force, as_json, data, seed)
    made = atk.prepare(open_model(model, None, pretrained, cache_dir), data, seed) if model is not None else None
    plan = atk(data, seed=seed)
    how = open_args(relative_spec(dataset, out), split, image_size, n, data_seed)
    plan = dataclasses.replace(plan, dataset={**plan.dataset, "open": {k: v for k, v in how.items() if v is not None}})
    poisoned = PoisonedDataset(data, plan)
    with output_dir(out, POISON_OUTPUTS, force=force, inputs=(dataset,)) as tmp:
        plan.save(tmp / "plan.json")
        if isinstance(made, torch.Tensor):
            save_tensors(tmp / "trigger.safetensors", {"patch": made})
        plan_gallery(poisoned, tmp / "poisoned.png")
        if materialize:
            written = materialize_data(poisoned, tmp)
    summary = {"plan": str(out / "plan.json"), "attack": attack, "poisoned": len(plan.entries),
               "total": len(data), "digest": plan.digest(), "materialized": materialize}
    if materialize:
        summary["data"] = str(out / written.relative_to(tmp))
    emit(summary, as_json, [f"poisoned {len(plan.entries)} of {len(data)} items with {attack}",
                            f"plan: {out / 'plan.json'}", f"gallery: {out / 'poisoned.png'}"])


def poison_model(atk: Any, model: str, pretrained: str | None, cache_dir: str | None, dataset: str,
                 out: Path, force: bool, as_json: bool, data: Any, seed: int) -> None:
    """A model-poisoning attack: the clean ``--model`` fine-tuned on ``--dataset`` (its shadow
    images) into ``out/model.safetensors``, with a gallery of triggered shadow images."""
    victim = open_any(model, pretrained, cache_dir)
    with output_dir(out, MODEL_OUTPUTS, force=force, inputs=(dataset, model)) as tmp:
        result = atk(victim, data, seed, progress=False)
        victim.save(tmp / "model.safetensors")
        trigger_gallery(data, [(atk.trigger_name, atk.trigger_for(victim.image_size))], tmp / "triggered.png", n=4)
    emit({"model": str(out / "model.safetensors"), "attack": atk.registered_name, "family": victim.family,
          "steps": result.steps, "seconds": round(result.seconds, 1)}, as_json,
         [f"poisoned the {victim.family} model with {atk.registered_name} in {result.steps} steps",
          f"model: {out / 'model.safetensors'}"])


def required_params(trigger: str) -> list[str]:
    """The parameters trigger ``trigger`` cannot be built without (a key image's path, optimised values)."""
    signature = inspect.signature(triggers.TRIGGERS.get(trigger))
    return [p.name for p in signature.parameters.values() if p.default is inspect.Parameter.empty]


@click.command()
@click.option("--dataset", default="shapes", show_default=True, help="Dataset to draw clean images from.")
@click.option("--triggers", "names", default=None,
              help="Comma-separated triggers (default: every one that needs no input, such as a file or optimised values).")
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Show the first poisoned pairs of this plan instead.")
@click.option("--rows", type=click.IntRange(min=1), default=4, show_default=True, help="Images per trigger.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="PNG file to write.")
@json_option
@data_options
def show(dataset: str, names: str | None, plan_path: Path | None, rows: int, out: Path, as_json: bool,
         split: str, image_size: int, n: int | None, data_seed: int) -> None:
    """Write a PNG grid: clean images beside each trigger, or a plan's poisoned pairs.

    \b
    Example:
      poisonlab show --triggers badnet,blended,wanet,sig --out triggers.png
      poisonlab show --plan runs/plan/plan.json --out poisoned.png
    """
    if plan_path is not None:
        plan_gallery(open_plan(plan_path), out, n=rows)
        shown = [str(plan_path)]
    else:
        shown = names.split(",") if names else [t for t in triggers.available() if not required_params(t)]
        for name in shown:
            triggers.TRIGGERS.get(name)
        data = load_data(dataset, split=split, size=image_size, n=n or max(rows, 1), seed=data_seed)
        trigger_gallery(data, shown, out, n=rows)
    emit({"out": str(out), "shown": shown}, as_json, [f"wrote {out}"])

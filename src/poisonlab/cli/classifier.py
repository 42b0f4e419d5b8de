"""``poisonlab train classifier`` and ``poisonlab detect``, and the classifier helpers ``defend`` shares."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from poisonlab import defenses, detect, triggers
from poisonlab.cli.clip import model_options, train_group
from poisonlab.cli.common import (
    at_model_size,
    budget_options,
    generated_data_options,
    load_data,
    method_help,
    stream_options,
    training_out,
    training_run_options,
)
from poisonlab.cli.options import emit, force_option, json_option, out_option, parse_params
from poisonlab.data.base import ImageCaptionDataset
from poisonlab.detect.population import (
    PopulationConfig,
    evaluate_detectors,
    population_trusted,
    train_population,
)
from poisonlab.errors import InputError
from poisonlab.models import open as models_open
from poisonlab.models.classifier import DEFAULT_CLASSIFIER, create_classifier
from poisonlab.models.protocols import fits
from poisonlab.report.roc import roc_figure
from poisonlab.train import TrainConfig
from poisonlab.train.data import LabelTensors, label_tensors
from poisonlab.train.dist import default_device
from poisonlab.train.fit import train_classifier
from poisonlab.train.stream import DataConfig
from poisonlab.utils.io import atomic_write, write_json
from poisonlab.utils.output import claim_output


def open_classifier(path: str, data: ImageCaptionDataset, pretrained: str | None = None,
                    cache_dir: str | None = None) -> Any:
    """:func:`poisonlab.models.open.open_classifier` over ``data``'s class names and templates."""
    return models_open.open_classifier(path, data.classnames, data.templates, pretrained, cache_dir,
                                       device=default_device())


def trusted_set(dataset: ImageCaptionDataset, share: float, size: int, seed: int) -> LabelTensors:
    data = label_tensors(dataset, size)
    return data.subset(defenses.trusted_indices(len(data), share, seed))


def trigger_dict(names: tuple[str, ...], params: tuple[str, ...], target: str | None) -> dict[str, Any]:
    tparams = parse_params(params, "--trigger-param")
    built = {name: triggers.create(name, **tparams) for name in names}
    if built and target is None:
        raise InputError("--trigger needs --target")
    return built


@train_group.command("classifier")
@click.option("--dataset", required=True, help="Embedded name, a path, or a poison plan (.json).")
@click.option("--model", "arch", default=DEFAULT_CLASSIFIER, show_default=True, help="Bundled or timm architecture.")
@budget_options("classifier")
@generated_data_options
@training_run_options
@stream_options(training=False)
@json_option
def train_classifier_cmd(dataset: str, arch: str, config: TrainConfig, image_size: int, n: int | None,
                         data_seed: int, resume: bool, out: Path, force: bool, data_config: DataConfig,
                         as_json: bool) -> None:
    """Train a timm classifier on labelled (possibly poisoned) data.

    \b
    Example:
      poisonlab train classifier --dataset runs/cls-plan/plan.json --epochs 12 --lr 3e-3 --out runs/cls
    """
    data = load_data(dataset, size=image_size, n=n, seed=data_seed)
    if not data.classnames:
        raise InputError("classifier training needs labelled data with class names")
    bundle = create_classifier(arch, len(data.classnames), image_size, data.classnames, seed=config.seed)
    dist = training_out(out, force, (dataset,))
    result = train_classifier(bundle, data, config, out, resume=resume, dist=dist, data_config=data_config)
    summary = {"model": str(out / "model.safetensors"), "steps": result.steps, "final_loss": result.final_loss,
               "seconds": round(result.seconds, 2), "data": result.data}
    emit(summary, as_json, [f"trained {result.steps} steps, loss {result.final_loss:.4f}",
                            f"checkpoint: {summary['model']}"])


@click.command("detect", epilog=method_help(detect.DETECTORS))
@click.option("--method", "methods", multiple=True, required=True, help="cti, neural-cleanse, decree (repeatable).")
@click.option("--model", "model_path", default=None,
              help="Suspect checkpoint, hf-hub:ORG/NAME, or a CLIP ARCH with --pretrained (omit with --population).")
@model_options
@click.option("--dataset", default="shapes", show_default=True, help="Data the trusted share is drawn from.")
@click.option("--n", "--items", "n", type=int, default=None, help="Items of generated data the share is of.")
@click.option("--data-seed", type=int, default=5, show_default=True, help="Seed of generated data.")
@click.option("--trusted-share", type=float, default=0.01, show_default=True, help="Share of the data the defender trusts, in (0, 1].")
@click.option("--param", "params", multiple=True, help="Detector hyper-parameter KEY=VALUE (all methods).")
@click.option("--population", type=click.IntRange(2, 1000), default=None,
              help="Train N clean + N backdoored models and report each method's ROC AUC instead.")
@click.option("--epochs", type=float, default=24.0, show_default=True, help="Training epochs per population model.")
@out_option
@force_option
@json_option
def detect_cmd(methods: tuple[str, ...], model_path: str | None, dataset: str, n: int | None, data_seed: int,
               trusted_share: float, params: tuple[str, ...], population: int | None, epochs: float, out: Path,
               force: bool, as_json: bool, pretrained: str | None, cache_dir: str | None) -> None:
    """Is this model backdoored? Scores one model, or a population with ROC AUC and an ROC plot.

    cti and neural-cleanse need a classifier (or a CLIP model, as a zero-shot classifier over the
    data's classes); decree needs only an encoder (SSL backbone or CLIP image tower) and writes
    the inverted trigger as OUT/decree-trigger.png.

    \b
    Example:
      poisonlab detect --method cti --method neural-cleanse --model runs/cls/model.safetensors --out runs/det
      poisonlab detect --method cti --population 8 --out runs/pop      # ROC AUC over 8 + 8 models
    """
    extra = parse_params(params, "--param")
    built = {m: detect.create(m, **extra) for m in methods}
    if population is not None:
        claim_output(out, ("models", "population.json", "roc.png"), force=force)
        _detect_population(built, population, dataset, trusted_share, epochs, out, as_json)
        return
    if model_path is None:
        raise InputError("give --model, or --population N")
    data = load_data(dataset, n=n, seed=data_seed)
    suspect = open_classifier(model_path, data, pretrained, cache_dir)
    for name in built:
        family = detect.DETECTORS.entry(name).family
        if not fits(family, suspect):
            raise InputError(f"{name} needs a {family} model; {model_path} is an {suspect.family}")
    data = at_model_size(dataset, data, suspect.image_size, n, data_seed)
    trusted = trusted_set(data, trusted_share, suspect.image_size, data_seed)
    claim_output(out, ("detection.json", *(f"{name}-trigger.png" for name in built)), force=force,
                 inputs=(model_path, dataset))
    found = {name: d(suspect, trusted) for name, d in built.items()}
    for name, det in found.items():
        if det.trigger is not None:
            save_png(det.trigger, out / f"{name}-trigger.png")
    results = {name: det.to_dict() for name, det in found.items()}
    write_json(out / "detection.json", results)
    emit(results, as_json, [f"{name}: score {r['score']:.3f} (threshold {r['threshold']}) -> "
                            f"{'BACKDOORED' if r['backdoored'] else 'clean'}"
                            + (f"; suspected target {r['suspected_target']}" if "suspected_target" in r else "")
                            for name, r in results.items()])


def save_png(image: Any, path: Path) -> None:
    """A ``[C, H, W]`` tensor in ``[0, 1]`` as a PNG, written atomically."""
    import io

    import torchvision.utils as vutils

    buf = io.BytesIO()
    vutils.save_image(image, buf, format="png")
    with atomic_write(path) as f:
        f.write(buf.getvalue())


def _detect_population(built: dict[str, Any], population: int, dataset: str, share: float, epochs: float,
                       out: Path, as_json: bool) -> None:
    cfg = PopulationConfig(n_clean=population, n_backdoored=population, dataset=dataset, epochs=epochs)
    members = train_population(cfg, out / "models")
    result = evaluate_detectors(members, out / "models", built, population_trusted(cfg, share))
    write_json(out / "population.json", result)
    roc_figure({name: result[name] for name in built}, out / "roc.png")
    emit(result, as_json, [f"{name}: ROC AUC {result[name]['auc']:.3f} over {population} clean + {population} "
                           f"backdoored models" for name in built] + [f"ROC curve: {out / 'roc.png'}"])

"""``poisonlab train clip`` and ``poisonlab eval``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click
import torch.nn.functional as F

from poisonlab import defenses, triggers
from poisonlab.cli.common import (
    budget_options,
    load_data,
    method_help,
    stream_options,
    training_out,
    training_run_options,
)
from poisonlab.cli.options import emit, json_option, parse_params
from poisonlab.data import apply_names
from poisonlab.data.base import trusted_indices
from poisonlab.errors import InputError
from poisonlab.metrics import ClipEvaluator
from poisonlab.metrics.classifier_eval import ClassifierEvaluator
from poisonlab.metrics.probe import LinearProbe, probe_report
from poisonlab.models import DEFAULT_MODEL, create_clip
from poisonlab.models import open as models_open
from poisonlab.models.checkpoint import CLASSIFIER_FORMAT, checkpoint_kind
from poisonlab.models.clip import HF_HUB_PREFIX, pretrained_tags
from poisonlab.train import TrainConfig, train_clip
from poisonlab.train.data import label_tensors
from poisonlab.train.dist import default_device
from poisonlab.train.stream import DataConfig, data_summary
from poisonlab.triggers.patch import load_image_tensor
from poisonlab.utils.io import write_json


def open_model(model: str, arch: str | None = None, pretrained: str | None = None,
               cache_dir: str | None = None) -> Any:
    """:func:`poisonlab.models.open.open_model` on :func:`~poisonlab.train.dist.default_device`."""
    return models_open.open_model(model, arch, pretrained, cache_dir, device=default_device())


def model_options(f: Any) -> Any:
    """``--pretrained`` and ``--cache-dir`` for commands that read a CLIP model with ``--model``."""
    f = click.option("--cache-dir", default=None,
                     help="open_clip's download cache (default: the Hugging Face cache, HF_HOME).")(f)
    return click.option("--pretrained", default=None,
                        help="With --model ARCH: an open_clip pretrained tag (see `poisonlab models ARCH`) "
                             "or a checkpoint file.")(f)


@click.group("train")
def train_group() -> None:
    """Train or fine-tune a model."""


@train_group.command("clip", epilog=method_help(defenses.DEFENSES, "clip", "training", "--defense-param"))
@click.option("--dataset", required=True, help="Embedded name, a path, or a poison plan (.json).")
@click.option("--model", "arch", default=DEFAULT_MODEL, show_default=True, help="open_clip architecture.")
@click.option("--pretrained", default=None,
              help="Start from an open_clip pretrained tag of --model (openai, laion2b_s34b_b79k, ...) or a checkpoint.")
@click.option("--cache-dir", default=None, help="open_clip's download cache (default: the Hugging Face cache).")
@budget_options("clip")
@training_run_options
@click.option("--n", "--items", "n", type=int, default=None, help="Items of generated data (--items under torchrun, which claims --n).")
@click.option("--data-seed", type=int, default=0, show_default=True, help="Seed of generated data.")
@click.option("--defense", default=None,
              help="Train with a training-time defense: " + ", ".join(defenses.available("clip", "training")) + ".")
@click.option("--defense-param", "defense_params", multiple=True,
              help="KEY=VALUE for --defense (e.g. pool_size=2048); each one's are listed below.")
@stream_options()
@json_option
def train_clip_cmd(dataset: str, arch: str, pretrained: str | None, config: TrainConfig, out: Path, resume: bool,
                   force: bool, n: int | None, data_seed: int, data_config: DataConfig, as_json: bool,
                   cache_dir: str | None, defense: str | None, defense_params: tuple[str, ...]) -> None:
    """Pre-train or fine-tune a CLIP model (single process, or under torchrun with DDP).

    With --defense, the model trains with a training-time defense's objective (SafeCLIP's safe /
    risky split, RoCLIP's caption pool) on the same budget; its record (SafeCLIP: each epoch's
    split, with precision and recall against a poison plan's pairs) goes to OUT/defense.json.

    \b
    Example:
      poisonlab train clip --dataset runs/plan/plan.json --epochs 9 --lr 3e-3 --defense safeclip \\
          --defense-param unimodal_epochs=2 --out runs/safeclip
    """
    if defense_params and defense is None:
        raise click.UsageError("--defense-param needs --defense")
    method = defenses.create(defense, family="clip", kind="training",
                             **parse_params(defense_params, "--defense-param")) if defense else None
    if arch.startswith(HF_HUB_PREFIX) or (pretrained and pretrained in pretrained_tags(arch).get(arch, [])):
        bundle = open_model(arch, pretrained=pretrained, cache_dir=cache_dir)
    elif pretrained:
        bundle = open_model(pretrained, None if arch == DEFAULT_MODEL else arch)
    else:
        bundle = create_clip(arch, seed=config.seed)
    data = load_data(dataset, size=bundle.image_size, n=n, seed=data_seed, skip_bad=data_config.skip_bad_images)
    dist = training_out(out, force, (dataset, pretrained, arch), extra=("defense.json",) if method else ())
    objective = method.objective(bundle, dist, config.seed) if method else None
    result = train_clip(bundle, data, config, out, resume=resume, dist=dist, data_config=data_config,
                        objective=objective, stage=f"train:{defense}" if defense else "train")
    summary = {"model": str(out / "model.safetensors"), "steps": result.steps, "final_loss": result.final_loss,
               "seconds": round(result.seconds, 2), "samples_per_second": round(result.samples_per_second, 1),
               "data": result.data}
    lines = []
    if method is not None:
        summary["defense"] = {"defense": method.name, "params": dataclasses.asdict(method), **objective.summary()}
        lines = defense_lines(summary["defense"])
        if dist.is_main:
            write_json(out / "defense.json", summary["defense"])
    if dist.is_main:
        emit(summary, as_json, [f"trained {result.steps} steps, loss {result.final_loss:.4f}, "
                                f"{result.samples_per_second:.0f} samples/s ({data_line(summary['data'])})",
                                f"checkpoint: {summary['model']}", *lines])


def defense_lines(record: dict[str, Any]) -> list[str]:
    """What a training-time defense did, one line per SafeCLIP split (or RoCLIP's matched epochs)."""
    lines = [f"defense {record['defense']}"]
    for split in record.get("splits", []):
        caught = (f", risky set precision {split['precision']:.3f} recall {split['recall']:.3f}"
                  if "recall" in split else "")
        lines.append(f"  epoch {split['epoch']}: {100 * split['safe_share']:.1f}% safe{caught}")
    if "matched_epochs" in record:
        lines.append("  pool-matched epochs (from 0): " + ", ".join(map(str, record["matched_epochs"])))
    return lines


@click.command("eval")
@click.option("--model", "model_path", required=True,
              help="CLIP or classifier checkpoint, hf-hub:ORG/NAME, or a CLIP architecture with --pretrained TAG.")
@model_options
@click.option("--arch", default=None, help="Architecture, for checkpoints without a poisonlab sidecar.")
@click.option("--dataset", required=True, help="Test data: embedded name or path.")
@click.option("--split", default="test", show_default=True, help="train or test (embedded and CIFAR data).")
@click.option("--n", "--items", "n", type=int, default=None, help="Items of generated data (--items under torchrun, which claims --n).")
@click.option("--trigger", "trigger_names", multiple=True, help="Trigger to measure ASR with; repeatable.")
@click.option("--trigger-param", "trigger_params", multiple=True, help="KEY=VALUE for the trigger.")
@click.option("--target", default=None, help="Target class (ASR, or text Attack II/III goal).")
@click.option("--source", default=None, help="Source class A of a text-modality attack.")
@click.option("--target-index", "--target-image", "target_image", default=None,
              help="Target image x* of text Attack I (its index in the data, as poison --target-index).")
@click.option("--classnames", default=None,
              help="Zero-shot class names: a file (one per line, in label order) or imagenet1k. Default: the "
                   "dataset's (classnames.txt beside it, ImageNet names for WordNet-id folders).")
@click.option("--templates", default=None,
              help="Zero-shot templates: a file (one per line, {c} for the class), openai (80) or simple (7).")
@click.option("--skip-target-images", is_flag=True,
              help="Triggered passes skip the target class's images before decoding them (ASR only, no asr_all).")
@click.option("--linear-probe", is_flag=True,
              help="Measure a CLIP or classifier by a linear probe on its image features, as an encoder always is "
                   "(`poisonlab probe` is eval with this flag).")
@click.option("--labelled", type=float, default=0.1, show_default=True,
              help="Encoders: share of the probe's labelled data the linear probe is trained on (0.01, 0.1).")
@click.option("--probe-dataset", default=None,
              help="Encoders: labelled data the probe's share comes from (default: --dataset's train split).")
@click.option("--probe-epochs", type=click.IntRange(min=1), default=100, show_default=True,
              help="Encoders: linear probe training epochs.")
@stream_options(training=False)
@json_option
@click.pass_context
def eval_cmd(ctx: click.Context, model_path: str, arch: str | None, dataset: str, split: str, n: int | None,
             trigger_names: tuple[str, ...], trigger_params: tuple[str, ...], target: str | None, source: str | None,
             target_image: str | None, classnames: str | None, templates: str | None, data_config: DataConfig,
             as_json: bool, pretrained: str | None, cache_dir: str | None, skip_target_images: bool,
             linear_probe: bool, labelled: float, probe_dataset: str | None, probe_epochs: int) -> None:
    """Measure CA, retrieval, and ASR / Hit@K / MinRank as they apply.

    The model's family is read from its checkpoint: a CLIP model gets the zero-shot metrics, a
    classifier CA and each trigger's ASR / RA, an image encoder a linear probe trained on a
    labelled share (its clean accuracy, and each trigger's FP(target), ASR and RA).

    \b
    Example:
      poisonlab eval --model runs/poisoned/model.safetensors --dataset shapes --trigger badnet --target star
      poisonlab eval --model runs/ssl/model.safetensors --dataset digits --trigger patch-image --target zero
    """
    params = parse_params(trigger_params, "--trigger-param")
    built = [triggers.create(name, **params) for name in trigger_names]
    if built and target is None:
        raise click.UsageError("--trigger needs --target")
    probing = linear_probe or ctx.info_name == "probe"
    if probing or (pretrained is None and checkpoint_kind(model_path) == CLASSIFIER_FORMAT):
        if source or target_image or arch or skip_target_images:
            raise InputError("--source, --target-index, --arch and --skip-target-images are for zero-shot CLIP "
                             f"evaluation; {model_path} is measured as a classifier or encoder")
        named = dict(zip(trigger_names, built, strict=True))
        probe = Probe(probe_dataset or dataset, labelled, LinearProbe(epochs=probe_epochs), probing)
        summary = classifier_summary(model_path, dataset, split, n, classnames, named, target, probe,
                                     (pretrained, cache_dir))
        emit(summary, as_json, _table(summary))
        return
    bundle = open_model(model_path, arch, pretrained, cache_dir)
    data = load_data(dataset, split=split, size=bundle.image_size, n=n)
    apply_names(data, classnames, templates)
    ev = ClipEvaluator(bundle, data, data_config=data_config, skip_target=skip_target_images)
    summary: dict[str, Any] = {"family": "clip", "retrieval": ev.retrieval(), "data": data_summary(ev.source, data)}
    if data.classnames:
        summary["classnames"] = {"source": data.classnames_source, "count": len(data.classnames),
                                 "first": list(data.classnames[:5])}
        summary["templates"] = {"source": data.templates_source, "count": len(data.templates)}
        summary["ca"] = ev.clean_accuracy()
    for name, trig in zip(trigger_names, built, strict=True):
        summary.setdefault("backdoor", {})[name] = ev.backdoor(trig, target)  # type: ignore[arg-type]
    if len(built) == 1:
        summary.update(summary["backdoor"][trigger_names[0]])
    if source is not None:
        image = None
        if target_image:
            size = (bundle.image_size, bundle.image_size)
            image = F.interpolate(load_image_tensor(target_image)[None], size=size, mode="bilinear")[0]
        res = ev.text_attack(source, target=None if image is not None else target, target_image=image)
        summary["hit_at_k"] = {k: v for k, v in res.items() if k.startswith("hit@")}
        summary["min_rank"] = res["min_rank"]
        summary["baseline"] = res["baseline"]
    emit(summary, as_json, _table(summary))


@dataclasses.dataclass(frozen=True)
class Probe:
    """How ``eval`` measures an image encoder: a linear probe on ``labelled`` of ``dataset``'s train split."""

    dataset: str
    labelled: float
    probe: LinearProbe
    always: bool = False  # a CLIP or classifier too, not only an encoder


def classifier_summary(model_path: str, dataset: str, split: str, n: int | None, classnames: str | None,
                       built: dict[str, Any], target: str | None, probe: Probe,
                       hub: tuple[str | None, str | None] = (None, None)) -> dict[str, Any]:
    """CA and each trigger's ASR / asr_all / RA of a classifier checkpoint on ``dataset``'s ``split``;
    of an encoder (or any model with ``probe.always``), a linear probe's (with FP(target))."""
    names = load_data(dataset, split=split, n=n)
    apply_names(names, classnames, None)
    model = models_open.open_classifier(model_path, names.classnames, names.templates, *hub, device=default_device())
    data = load_data(dataset, split=split, size=model.image_size, n=n)
    apply_names(data, classnames, None)
    if model.family == "encoder" or probe.always:
        return {"family": model.family, "linear_probe": True, **encoder_summary(model, probe, data, n, built, target)}
    found = ClassifierEvaluator(model, data).summary(built, target or 0)
    if len(built) == 1:
        found.update(next(iter(found["backdoor"].values())))
    return {"family": "classifier", **found}


def encoder_summary(model: Any, probe: Probe, test: Any, n: int | None, built: dict[str, Any],
                    target: str | None) -> dict[str, Any]:
    """A linear probe's clean accuracy on ``test`` and, per trigger, its FP(target) / ASR / RA."""
    if not test.classnames:
        raise InputError("the linear probe needs labelled data with class names")
    if target is not None and target not in test.classnames:
        raise InputError(f"target class {target!r} is not in the data; valid: {', '.join(test.classnames)}")
    train = label_tensors(load_data(probe.dataset, size=model.image_size, n=n), model.image_size)
    train = train.subset(trusted_indices(len(train), probe.labelled, probe.probe.seed))
    tst = label_tensors(test, model.image_size)
    goal = test.classnames.index(target) if target is not None else 0
    report = {name: probe_report(model, train.images, train.labels, tst.images, tst.labels, trig, goal,
                                 len(test.classnames), probe.probe) for name, trig in {**built, "": None}.items()}
    clean = report.pop("")
    out: dict[str, Any] = {"ca": clean["clean_acc"], "labelled": clean["labelled"], "test": clean["test"]}
    if report:
        out["backdoor"] = report
    if len(report) == 1:
        out.update(next(iter(report.values())))
    return out


def data_line(data: dict[str, Any]) -> str:
    """``stream, 2 workers, 1 skipped`` for the human-readable summary."""
    parts = [data.get("mode", "?")]
    if "workers" in data:
        parts.append(f"{data['workers']} workers")
    skipped = data.get("skipped_images", 0) + data.get("skipped_samples", 0)
    if skipped:
        parts.append(f"{skipped} skipped")
    return ", ".join(parts)


def _table(summary: dict[str, Any]) -> list[str]:
    lines = []
    if summary.get("linear_probe"):
        lines.append(f"CA        {100 * summary['ca']:6.2f}%   (linear probe on {summary['labelled']} labelled images)")
        lines += [f"ASR {name:<18} {100 * res['asr']:6.2f}%   RA {100 * res['ra']:6.2f}%   "
                  f"FP(target) {res['fp']} of {res['test']} test images" for name, res in summary.get("backdoor", {}).items()]
        return lines
    if summary.get("family") == "classifier":
        lines.append(f"CA        {100 * summary['ca']:6.2f}%")
    elif "ca" in summary:
        names, temps = summary["classnames"], summary["templates"]
        lines.append(f"CA        {100 * summary['ca']:6.2f}%   ({names['count']} classes from {names['source']}, "
                     f"{temps['count']} templates from {temps['source']})")
    for name, res in summary.get("backdoor", {}).items():
        extra = (f"asr_all {100 * res['asr_all']:.2f}%" if "asr_all" in res
                 else f"{res['target_images_skipped']} target-class images skipped")
        lines.append(f"ASR {name:<18} {100 * res['asr']:6.2f}%   RA {100 * res['ra']:6.2f}%   ({extra})")
    if "min_rank" in summary:
        hits = "  ".join(f"{k} {v:.3f}" for k, v in summary["hit_at_k"].items())
        lines.append(f"text attack: {hits}  MinRank {summary['min_rank']:.2f} "
                     f"(baseline {summary['baseline']['min_rank']:.2f})")
    if "retrieval" in summary:
        lines.append("retrieval " + "  ".join(f"{k} {100 * v:.1f}" for k, v in summary["retrieval"].items()))
    return lines


@click.command("models")
@click.argument("arch", required=False)
@json_option
def models_cmd(arch: str | None, as_json: bool) -> None:
    """List CLIP architectures and their open_clip pretrained tags (ARCH: only that one).

    \b
    Example:
      poisonlab models RN50
    """
    tags = pretrained_tags(arch)
    emit(tags, as_json, [f"{name:<40} {', '.join(t) or '-'}" for name, t in tags.items()])

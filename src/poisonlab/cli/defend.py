"""``poisonlab clean`` and ``poisonlab audit``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click

from poisonlab import defenses, triggers
from poisonlab.cli.classifier import repair_cmd
from poisonlab.cli.clip import model_options, open_model
from poisonlab.cli.common import (
    LiveEpilog,
    caught_line,
    emit,
    force_option,
    json_option,
    load_data,
    method_help,
    out_option,
    parse_params,
    stream_options,
)
from poisonlab.cli.ssl import clean_encoder_cmd
from poisonlab.defenses import RunOptions
from poisonlab.errors import InputError
from poisonlab.metrics import ClipEvaluator
from poisonlab.models import ClipBundle
from poisonlab.models.open import model_family
from poisonlab.registry import parameters
from poisonlab.train import init_from_env
from poisonlab.train.stream import DataConfig
from poisonlab.utils.io import write_json
from poisonlab.utils.output import TRAIN_OUTPUTS, claim_output


def summarize(bundle: ClipBundle, test: Any, trigger_list: list[Any], names: list[str], target: str | None,
              data_config: DataConfig | None = None) -> dict[str, Any]:
    ev = ClipEvaluator(bundle, test, data_config=data_config)
    out: dict[str, Any] = {"ca": ev.clean_accuracy(), "retrieval": ev.retrieval()}
    for name, trig in zip(names, trigger_list, strict=True):
        out.setdefault("backdoor", {})[name] = ev.backdoor(trig, target)  # type: ignore[arg-type]
    return out


@click.command("clean", epilog=method_help(defenses.DEFENSES, "clip", "cleaning"))
@click.option("--defense", required=True, help="A CLIP cleaning defense: " + ", ".join(defenses.available("clip", "cleaning")) + ".")
@click.option("--model", "model_path", required=True,
              help="Suspect CLIP checkpoint, hf-hub:ORG/NAME, or an architecture with --pretrained TAG.")
@model_options
@click.option("--arch", default=None, help="Architecture, for checkpoints without a poisonlab sidecar.")
@click.option("--dataset", required=True, help="Cleaning pairs: embedded name (e.g. shapes-outline) or path.")
@click.option("--n", "--items", "n", type=int, default=None, help="Items of generated cleaning data.")
@click.option("--data-seed", type=int, default=2, show_default=True,
              help="Seed of generated cleaning data (2, not the training data's 0: the defender's pairs are new ones).")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Optimiser steps (or --epochs).")
@click.option("--epochs", type=float, default=None, help="Epochs over the cleaning data (default 1).")
@click.option("--batch-size", type=int, default=None, help="Global batch size (default: the defense's).")
@click.option("--lr", type=float, default=None, help="Peak learning rate (default: the defense's).")
@click.option("--param", "params", multiple=True, help="Defense hyper-parameter KEY=VALUE (e.g. tau=2.15).")
@click.option("--test-dataset", default="shapes", show_default=True, help="Test split for the before/after summary.")
@click.option("--test-n", type=int, default=2000, show_default=True, help="Test items of generated data.")
@click.option("--trigger", "trigger_names", multiple=True, help="Trigger to report ASR for; repeatable.")
@click.option("--trigger-param", "trigger_params", multiple=True, help="KEY=VALUE for the trigger(s).")
@click.option("--target", default=None, help="Target class for ASR.")
@click.option("--seed", type=int, default=0, show_default=True, help="Training seed of the defense.")
@out_option
@force_option
@stream_options()
@json_option
def clean_cmd(defense: str, model_path: str, arch: str | None, dataset: str, n: int | None, data_seed: int,
              steps: int | None,
              epochs: float | None, batch_size: int | None, lr: float | None, params: tuple[str, ...],
              test_dataset: str, test_n: int, trigger_names: tuple[str, ...], trigger_params: tuple[str, ...],
              target: str | None, seed: int,
              out: Path, force: bool, data_config: DataConfig, as_json: bool, pretrained: str | None,
              cache_dir: str | None) -> None:
    """Clean a suspect CLIP checkpoint; writes OUT/model.safetensors and OUT/summary.json."""
    given = {"steps": steps, "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed}
    config = {k: v for k, v in given.items() if v is not None} | parse_params(params, "--param")
    method = defenses.create(defense, family="clip", kind="cleaning", **config)
    tparams = parse_params(trigger_params, "--trigger-param")
    trig = [triggers.create(t, **tparams) for t in trigger_names]
    if trig and target is None:
        raise InputError("--trigger needs --target")
    suspect = open_model(model_path, arch, pretrained, cache_dir)
    data = load_data(dataset, size=suspect.image_size, n=n, seed=data_seed, skip_bad=data_config.skip_bad_images)
    test = load_data(test_dataset, split="test", size=suspect.image_size, n=test_n)
    test_config = dataclasses.replace(data_config, skip_bad_images=False)
    before = summarize(suspect, test, trig, list(trigger_names), target, test_config)
    claim_output(out, (*TRAIN_OUTPUTS, "summary.json"), force=force, inputs=(model_path, dataset, pretrained))
    result = method.run(suspect, data, out=out, options=RunOptions(dist=init_from_env(), data_config=data_config))
    after = summarize(result.model, test, trig, list(trigger_names), target, test_config)
    summary = {"defense": defense, "report": result.report, "before": before, "after": after,
               "model": str(out / "model.safetensors")}
    write_json(out / "summary.json", summary)
    lines = [f"{defense}: {result.report['steps']} steps in {result.report['seconds']}s",
             f"CA   {100 * before['ca']:6.2f}% -> {100 * after['ca']:6.2f}%"]
    for name in trigger_names:
        lines.append(f"ASR {name:<16} {100 * before['backdoor'][name]['asr']:6.2f}% -> "
                     f"{100 * after['backdoor'][name]['asr']:6.2f}%")
    lines.append(f"checkpoint: {summary['model']}")
    emit(summary, as_json, lines)


@click.command("audit", epilog=method_help(defenses.DEFENSES, "clip", "filter"))
@click.option("--model", "model_path", required=True,
              help="filter: a separate CLEAN CLIP to score pairs with; kdist / slof / dao: the SUSPECT trained on "
                   "the pairs (checkpoint, hf-hub:, or ARCH --pretrained TAG).")
@model_options
@click.option("--arch", default=None, help="Architecture, for checkpoints without a poisonlab sidecar.")
@click.option("--dataset", required=True, help="Pairs to audit: a poison plan (.json), embedded name or path.")
@click.option("--method", default="filter", show_default=True,
              help="A CLIP pair filter or detector: " + ", ".join(defenses.available("clip", "filter")) + ".")
@click.option("--threshold", type=float, default=None, help="filter: drop pairs with cosine distance above this (0.8).")
@click.option("--drop-fraction", type=float, default=None, help="Drop this share of the worst pairs instead.")
@click.option("--clean-reference", default=None,
              help="kdist / slof / dao: pairs known to be clean; the threshold is the (1 - fpr) quantile of their "
                   "scores (default: of the audited set's own scores).")
@click.option("--clean-n", type=int, default=None, help="Items of a generated --clean-reference (seed 2).")
@click.option("--embeddings", "embeddings_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="kdist / slof / dao: score the embeddings an earlier audit wrote (its OUT/embeddings) instead of "
                   "embedding again; refused unless made from the same --dataset by the same --model.")
@click.option("--param", "params", multiple=True, help="Method hyper-parameter KEY=VALUE (k=16, embeddings=both, fpr=0.01).")
@out_option
@force_option
@stream_options(training=False)
@json_option
def audit_cmd(model_path: str, arch: str | None, dataset: str, method: str, threshold: float | None,
              drop_fraction: float | None, clean_reference: str | None, clean_n: int | None,
              embeddings_dir: Path | None, params: tuple[str, ...],
              out: Path, force: bool, data_config: DataConfig, as_json: bool, pretrained: str | None,
              cache_dir: str | None) -> None:
    """Score every pair of a training set for poison; write scores.csv and kept.json (the kept indices).

    filter: 1 - cos(image, caption) under a separate clean model. kdist, slof, dao: how much the
    pair's image is a local outlier of the suspect's embeddings (Huang et al., ICLR 2025); these
    also write flagged.json (the flagged keys) and the embeddings.
    """
    chosen = {k: v for k, v in (("threshold", threshold), ("drop_fraction", drop_fraction)) if v is not None}
    if "drop_fraction" in chosen and "threshold" in parameters(defenses.DEFENSES.get(method, "clip", "filter")):
        chosen.setdefault("threshold", None)  # one criterion: the share replaces the default threshold
    flt = defenses.create(method, family="clip", kind="filter", **chosen, **parse_params(params, "--param"))
    if (clean_reference or embeddings_dir) is not None and not isinstance(flt, defenses.LocalOutlierFilter):
        raise InputError(f"--clean-reference and --embeddings are for the detectors; {method} does not use them")
    bundle = open_model(model_path, arch, pretrained, cache_dir)
    data = load_data(dataset, size=bundle.image_size)
    reference = None if clean_reference is None else load_data(clean_reference, size=bundle.image_size, n=clean_n, seed=2)
    claim_output(out, AUDIT_OUTPUTS, force=force, inputs=(model_path, dataset, clean_reference))
    options = RunOptions(data_config=data_config, reference=reference, embeddings=embeddings_dir)
    result = flt.run(bundle, data, out=out, options=options)
    report = result.report
    summary = {k: v for k, v in report.items() if k not in ("distances", "scores")} | {"kept": len(result.kept or [])}
    lines = [f"kept {summary['kept']} of {len(data)} pairs (removed {len(data) - summary['kept']})"]
    if "threshold_from" in report:
        lines.append(f"threshold {report['threshold']:.4g} from {report['threshold_from']}")
    if "auroc" in report:
        lines.append(f"poisons caught {report['caught']}/{report['poisoned']}: precision {report['precision']:.3f}, "
                     f"recall {report['recall']:.3f}, F1 {report['f1']:.3f}; AUROC {report['auroc']:.3f}, "
                     f"AUPRC {report['auprc']:.3f}")
    elif "recall" in report:
        lines.append(f"{caught_line(report)}, clean pairs lost {report['clean_lost']}")
    emit(summary, as_json, lines)


AUDIT_OUTPUTS = ("scores.csv", "kept.json", "flagged.json", "embeddings")
"""What ``audit`` writes into its output folder (the detectors also ``flagged.json`` and the embeddings)."""


@click.command("defend", cls=LiveEpilog, epilog=lambda: method_help(defenses.DEFENSES))
@click.option("--method", required=True, help="Any registered defense (see `poisonlab list`; the list below).")
@click.option("--model", "model_path", required=True,
              help="The suspect (for a pair filter: a separate clean CLIP): checkpoint, hf-hub:ORG/NAME, or a CLIP "
                   "ARCH with --pretrained TAG. Its family picks the method's variant.")
@model_options
@click.option("--arch", default=None, help="CLIP architecture, for open_clip checkpoints without a poisonlab sidecar.")
@click.option("--dataset", required=True,
              help="What the defense learns from: cleaning pairs, the trusted data, or the training set to filter.")
@click.option("--n", "--items", "n", type=int, default=None, help="Items of generated data.")
@click.option("--data-seed", type=int, default=None, help="Seed of generated data (default: the method's command's).")
@click.option("--param", "params", multiple=True, help="Method hyper-parameter KEY=VALUE (steps, lr, tau, ...).")
@click.option("--trusted-share", type=float, default=None, help="Repairs: share of --dataset the defender trusts.")
@click.option("--test-dataset", default=None, help="Test split for the before/after summary.")
@click.option("--test-n", type=int, default=None, help="Test items of generated data.")
@click.option("--trigger", "trigger_names", multiple=True, help="Trigger to report ASR for; repeatable.")
@click.option("--trigger-param", "trigger_params", multiple=True, help="KEY=VALUE for the trigger(s).")
@click.option("--target", default=None, help="Target class for ASR.")
@click.option("--trace-every", type=click.IntRange(min=0), default=None, help="Repairs: measure CA / ASR every N steps.")
@out_option
@force_option
@stream_options(raw=True)
@json_option
@click.pass_context
def defend_cmd(ctx: click.Context, method: str, model_path: str, pretrained: str | None, arch: str | None,
               **given: Any) -> None:
    """Run any defense on a model of any family; the family is read from the checkpoint.

    The method's registry entry (its family and kind) chooses what runs: a CLIP cleaning (as
    ``clean``), a CLIP pair filter (``audit``), a classifier repair (``repair``) or an encoder
    defense (``clean-encoder``), with the same options and outputs as that command.

    \b
    Example:
      poisonlab defend --method par --model runs/poisoned/model.safetensors --dataset shapes-outline \\
          --param epochs=2 --trigger blended --target star --out runs/par
    """
    family = model_family(model_path, pretrained, arch)
    entry = defenses.DEFENSES.entry(method, family=family)
    if (entry.family, entry.kind) not in DEFEND_ROUTES:
        raise InputError(f"{method} is a {entry.kind}-time defense of {entry.family} models: it trains a model rather "
                         f"than defending one; use `poisonlab train {entry.family} --defense {method}`")
    command = DEFEND_ROUTES[(entry.family, entry.kind)]
    accepted = {p.name for p in command.params}
    named = {"model_path": model_path, "pretrained": pretrained, "arch": arch, **given}
    chosen = {k: v for k, v in named.items()
              if ctx.get_parameter_source(k) is not click.core.ParameterSource.DEFAULT}
    extra = sorted(set(chosen) - accepted)
    if extra:
        raise click.UsageError(f"--{extra[0].replace('_', '-')} does not apply to {method} "
                               f"({entry.family} {entry.kind}, as `poisonlab {command.name}`)")
    target_name = "defense" if "defense" in accepted else "method"
    ctx.invoke(command, **{target_name: method, **chosen})


DEFEND_ROUTES: dict[tuple[str, str], click.Command] = {
    ("clip", "cleaning"): clean_cmd, ("clip", "filter"): audit_cmd, ("classifier", "repair"): repair_cmd,
    ("encoder", "cleaning"): clean_encoder_cmd, ("encoder", "filter"): clean_encoder_cmd,
}
"""The command each (family, kind) of defense runs as; ``defend`` hands the options on to it."""

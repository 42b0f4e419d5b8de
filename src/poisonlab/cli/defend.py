"""``poisonlab defend``: every defense of every model family, one command.

``clean``, ``audit``, ``repair`` and ``clean-encoder`` are names of the same command held to one
family and kind (:data:`ALIASES`); what runs is chosen by the method's registry entry, never by
its name (:data:`KINDS`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from poisonlab import defenses
from poisonlab.cli.classifier import open_classifier, trigger_dict, trusted_set
from poisonlab.cli.clip import model_options, open_model
from poisonlab.cli.common import (
    LiveEpilog,
    at_model_size,
    caught_line,
    load_data,
    method_help,
    stream_options,
)
from poisonlab.cli.options import emit, force_option, json_option, out_option, parse_params
from poisonlab.defenses import RunOptions
from poisonlab.errors import InputError
from poisonlab.metrics import ClipEvaluator
from poisonlab.metrics.classifier_eval import ClassifierEvaluator
from poisonlab.models import ClipBundle
from poisonlab.models.open import model_family
from poisonlab.registry import parameters
from poisonlab.train import init_from_env
from poisonlab.train.stream import DataConfig
from poisonlab.utils.io import write_json
from poisonlab.utils.output import TRAIN_OUTPUTS, claim_output

Options = dict[str, Any]


def summarize(bundle: ClipBundle, test: Any, trigger_list: list[Any], names: list[str], target: str | None,
              data_config: DataConfig | None = None) -> dict[str, Any]:
    """Zero-shot CA, retrieval and each trigger's backdoor metrics of a CLIP model on ``test``."""
    ev = ClipEvaluator(bundle, test, data_config=data_config)
    out: dict[str, Any] = {"ca": ev.clean_accuracy(), "retrieval": ev.retrieval()}
    for name, trig in zip(names, trigger_list, strict=True):
        out.setdefault("backdoor", {})[name] = ev.backdoor(trig, target)  # type: ignore[arg-type]
    return out


def data_config(o: Options) -> DataConfig:
    return DataConfig(o["data_mode"], o["workers"], skip_bad_images=o["skip_bad_images"])


def clean_clip(method: str, o: Options) -> tuple[dict[str, Any], list[str]]:
    """A CLIP cleaning defense: the cleaned checkpoint and CA / ASR before and after."""
    budget = {k: o[k] for k in ("steps", "epochs", "batch_size", "lr", "seed") if o[k] is not None}
    defense = defenses.create(method, family="clip", kind="cleaning", **budget | parse_params(o["params"], "--param"))
    built = trigger_dict(o["trigger_names"], o["trigger_params"], o["target"])
    suspect = open_model(o["model_path"], o["arch"], o["pretrained"], o["cache_dir"])
    config = data_config(o)
    data = load_data(o["dataset"], size=suspect.image_size, n=o["n"], seed=o["data_seed"], skip_bad=config.skip_bad_images)
    test = load_data(o["test_dataset"], split="test", size=suspect.image_size, n=o["test_n"])
    test_config = dataclasses.replace(config, skip_bad_images=False)
    names, trigs = list(built), list(built.values())
    before = summarize(suspect, test, trigs, names, o["target"], test_config)
    claim_output(o["out"], (*TRAIN_OUTPUTS, "summary.json"), force=o["force"],
                 inputs=(o["model_path"], o["dataset"], o["pretrained"]))
    result = defense.run(suspect, data, out=o["out"], options=RunOptions(dist=init_from_env(), data_config=config))
    after = summarize(result.model, test, trigs, names, o["target"], test_config)
    summary = {"defense": method, "report": result.report, "before": before, "after": after,
               "model": str(o["out"] / "model.safetensors")}
    write_json(o["out"] / "summary.json", summary)
    lines = [f"{method}: {result.report['steps']} steps in {result.report['seconds']}s",
             f"CA   {100 * before['ca']:6.2f}% -> {100 * after['ca']:6.2f}%"]
    lines += [f"ASR {name:<16} {100 * before['backdoor'][name]['asr']:6.2f}% -> "
              f"{100 * after['backdoor'][name]['asr']:6.2f}%" for name in names]
    return summary, [*lines, f"checkpoint: {summary['model']}"]


AUDIT_OUTPUTS = ("scores.csv", "kept.json", "flagged.json", "embeddings")
"""What a CLIP pair filter writes into its output folder (the detectors also ``flagged.json`` and
the embeddings)."""


def filter_clip(method: str, o: Options) -> tuple[dict[str, Any], list[str]]:
    """A CLIP pair filter: every pair's score (scores.csv) and the kept indices (kept.json)."""
    chosen = {k: o[k] for k in ("threshold", "drop_fraction") if o[k] is not None}
    if "drop_fraction" in chosen and "threshold" in parameters(defenses.DEFENSES.get(method, "clip", "filter")):
        chosen.setdefault("threshold", None)  # one criterion: the share replaces the default threshold
    flt = defenses.create(method, family="clip", kind="filter", **chosen | parse_params(o["params"], "--param"))
    if (o["clean_reference"] or o["embeddings_dir"]) is not None and not isinstance(flt, defenses.LocalOutlierFilter):
        raise InputError(f"--clean-reference and --embeddings are for the detectors; {method} does not use them")
    bundle = open_model(o["model_path"], o["arch"], o["pretrained"], o["cache_dir"])
    data = load_data(o["dataset"], size=bundle.image_size, n=o["n"], seed=o["data_seed"])
    reference = (None if o["clean_reference"] is None
                 else load_data(o["clean_reference"], size=bundle.image_size, n=o["clean_n"], seed=2))
    claim_output(o["out"], AUDIT_OUTPUTS, force=o["force"], inputs=(o["model_path"], o["dataset"], o["clean_reference"]))
    options = RunOptions(data_config=data_config(o), reference=reference, embeddings=o["embeddings_dir"])
    result = flt.run(bundle, data, out=o["out"], options=options)
    report = result.report
    summary = {k: v for k, v in report.items() if k not in ("distances", "scores")} | {"kept": len(result.kept or [])}
    lines = [f"kept {summary['kept']} of {len(data)} pairs (removed {len(data) - summary['kept']})"]
    if "threshold_from" in report:
        lines.append(f"threshold {report['threshold']:.4g} from {report['threshold_from']}")
    if "auroc" in report:
        lines.append(f"{caught_line(report)}, F1 {report['f1']:.3f}; AUROC {report['auroc']:.3f}, "
                     f"AUPRC {report['auprc']:.3f}")
    elif "recall" in report:
        lines.append(f"{caught_line(report)}, clean pairs lost {report['clean_lost']}")
    return summary, lines


def repair_classifier(method: str, o: Options) -> tuple[dict[str, Any], list[str]]:
    """A classifier repair on a trusted share of labelled data: the repaired checkpoint and CA /
    ASR / ARR before and after (every ``--trace-every`` steps too)."""
    repair = defenses.create(method, family="classifier", kind="repair", **parse_params(o["params"], "--param"))
    built = trigger_dict(o["trigger_names"], o["trigger_params"], o["target"])
    data = load_data(o["dataset"], n=o["n"], seed=o["data_seed"])
    suspect = open_classifier(o["model_path"], data, o["pretrained"], o["cache_dir"])
    data = at_model_size(o["dataset"], data, suspect.image_size, o["n"], o["data_seed"])
    trusted = trusted_set(data, o["trusted_share"], suspect.image_size, repair.seed)
    test = load_data(o["test_dataset"], split="test", size=suspect.image_size, n=o["test_n"])
    evaluator = ClassifierEvaluator(suspect, test)
    target = o["target"] or 0
    before = evaluator.summary(built, target)

    def monitor(clf: object) -> dict[str, float]:
        found = evaluator.with_model(clf).summary(built, target)
        return {"ca": found["ca"], **{f"asr:{k}": v["asr"] for k, v in found.get("backdoor", {}).items()}}

    claim_output(o["out"], (*TRAIN_OUTPUTS, "summary.json"), force=o["force"], inputs=(o["model_path"], o["dataset"]))
    result = repair.run(suspect, trusted, out=o["out"], options=RunOptions(monitor=monitor, monitor_every=o["trace_every"]))
    after = evaluator.with_model(result.model).summary(built, target)
    path = o["out"] / "model.safetensors"
    summary = {"method": method, "report": result.report, "before": before, "after": after, "model": str(path)}
    write_json(o["out"] / "summary.json", summary)
    lines = [f"{method}: {result.report['steps']} steps on {result.report['trusted']} trusted items",
             f"CA   {100 * before['ca']:6.2f}% -> {100 * after['ca']:6.2f}%"]
    for name in built:
        b, a = before["backdoor"][name], after["backdoor"][name]
        lines.append(f"ASR {name:<14} {100 * b['asr']:6.2f}% -> {100 * a['asr']:6.2f}%   "
                     f"ARR {100 * b['arr']:6.2f}% -> {100 * a['arr']:6.2f}%")
    return summary, [*lines, f"checkpoint: {path}"]


def defend_encoder(method: str, o: Options) -> tuple[dict[str, Any], list[str]]:
    """An encoder defense: a cleaned encoder (distillation) or the kept training images (PatchSearch)."""
    defense = defenses.create(method, family="encoder", **parse_params(o["params"], "--param"))
    data = load_data(o["dataset"], n=o["n"], seed=o["data_seed"])
    encoder = open_classifier(o["model_path"], data, o["pretrained"], o["cache_dir"])
    data = at_model_size(o["dataset"], data, encoder.image_size, o["n"], o["data_seed"])
    claim_output(o["out"], (*TRAIN_OUTPUTS, "summary.json", "kept.json"), force=o["force"],
                 inputs=(o["model_path"], o["dataset"]))
    result = defense.run(encoder, data, out=o["out"])
    report, lines = result.report, []
    if result.model is not None:
        report["model"] = str(o["out"] / "model.safetensors")
        lines.append(f"{method}: a cleaned encoder, checkpoint {report['model']}")
    if result.kept is not None:
        lines.append(f"kept {len(result.kept)} of {len(data)} training images (removed {report['removed']})")
    if "recall" in report:
        lines.append(caught_line(report))
    write_json(o["out"] / "summary.json", report)
    return report, lines


@dataclasses.dataclass(frozen=True)
class Kind:
    """How ``defend`` runs the defenses of one (family, kind): the function, the options that
    apply to it beyond the shared ones, and its defaults for options left unset."""

    run: Callable[[str, Options], tuple[dict[str, Any], list[str]]]
    options: frozenset[str]
    defaults: dict[str, Any]


MEASURED = frozenset({"test_dataset", "test_n", "trigger_names", "trigger_params", "target"})
CLIP_DATA = frozenset({"arch", "data_mode", "workers"})
KINDS: dict[tuple[str, str], Kind] = {
    ("clip", "cleaning"): Kind(clean_clip, MEASURED | CLIP_DATA | {"steps", "epochs", "batch_size", "lr", "seed",
                                                                    "skip_bad_images"},
                               {"data_seed": 2, "test_dataset": "shapes", "test_n": 2000, "seed": 0}),
    ("clip", "filter"): Kind(filter_clip, CLIP_DATA | {"threshold", "drop_fraction", "clean_reference", "clean_n",
                                                      "embeddings_dir"}, {"data_seed": 0}),
    ("classifier", "repair"): Kind(repair_classifier, MEASURED | {"trusted_share", "trace_every"},
                                   {"data_seed": 5, "trusted_share": 0.01, "test_dataset": "shapes", "test_n": 1000,
                                    "trace_every": 0}),
    ("encoder", "cleaning"): Kind(defend_encoder, frozenset(), {"data_seed": 2}),
    ("encoder", "filter"): Kind(defend_encoder, frozenset(), {"data_seed": 2}),
}
"""What ``defend`` runs for each (family, kind) of registered defense."""

ALIASES: dict[str, tuple[str, str | None, str | None]] = {
    "clean": ("clip", "cleaning", None), "audit": ("clip", "filter", "filter"),
    "repair": ("classifier", "repair", None), "clean-encoder": ("encoder", None, None),
}
"""The other names of ``defend``: the family and kind each is held to (a CLIP model is read as a
zero-shot classifier by ``repair`` and as its image tower by ``clean-encoder``) and its default
method."""


@click.command("defend", cls=LiveEpilog, epilog=lambda: method_help(defenses.DEFENSES))
@click.option("--method", "--defense", "method", default=None,
              help="Any registered defense (see `poisonlab list`; the list below).")
@click.option("--model", "model_path", required=True,
              help="The suspect (for a pair filter: a separate clean CLIP): checkpoint, hf-hub:ORG/NAME, or a CLIP "
                   "ARCH with --pretrained TAG. Its family picks the method's variant.")
@model_options
@click.option("--arch", default=None, help="CLIP architecture, for open_clip checkpoints without a poisonlab sidecar.")
@click.option("--dataset", required=True,
              help="What the defense learns from: cleaning pairs, the trusted data, or the training set to filter "
                   "(a poison plan .json, an embedded name or a path).")
@click.option("--n", "--items", "n", type=int, default=None, help="Items of generated data.")
@click.option("--data-seed", type=int, default=None,
              help="Seed of generated data (CLIP cleaning 2 and encoders 2: the defender's data are new ones; "
                   "repairs 5; filters 0, the training set's).")
@click.option("--param", "params", multiple=True, help="Method hyper-parameter KEY=VALUE (steps, lr, tau, k, ...).")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="CLIP cleaning: optimiser steps (or --epochs).")
@click.option("--epochs", type=float, default=None, help="CLIP cleaning: epochs over the cleaning data (default 1).")
@click.option("--batch-size", type=int, default=None, help="CLIP cleaning: global batch size (default: the defense's).")
@click.option("--lr", type=float, default=None, help="CLIP cleaning: peak learning rate (default: the defense's).")
@click.option("--seed", type=int, default=None, help="CLIP cleaning: training seed of the defense (0).")
@click.option("--trusted-share", type=float, default=None, help="Repairs: share of --dataset the defender trusts (0.01).")
@click.option("--trace-every", type=click.IntRange(min=0), default=None,
              help="Repairs: also measure test CA and ASR every N steps (summary.json's report.trace).")
@click.option("--threshold", type=float, default=None, help="Pair filter: drop pairs with cosine distance above this (0.8).")
@click.option("--drop-fraction", type=float, default=None, help="Pair filters: drop this share of the worst pairs instead.")
@click.option("--clean-reference", default=None,
              help="kdist / slof / dao: pairs known to be clean; the threshold is the (1 - fpr) quantile of their "
                   "scores (default: of the audited set's own scores).")
@click.option("--clean-n", type=int, default=None, help="Items of a generated --clean-reference (seed 2).")
@click.option("--embeddings", "embeddings_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="kdist / slof / dao: score the embeddings an earlier audit wrote (its OUT/embeddings) instead of "
                   "embedding again; refused unless made from the same --dataset by the same --model.")
@click.option("--test-dataset", default=None, help="Cleaning and repairs: test split for the before/after summary (shapes).")
@click.option("--test-n", type=int, default=None, help="Test items of generated data (cleaning 2000, repairs 1000).")
@click.option("--trigger", "trigger_names", multiple=True, help="Trigger to report ASR for; repeatable.")
@click.option("--trigger-param", "trigger_params", multiple=True, help="KEY=VALUE for the trigger(s).")
@click.option("--target", default=None, help="Target class for ASR.")
@out_option
@force_option
@stream_options(raw=True)
@json_option
@click.pass_context
def defend_cmd(ctx: click.Context, method: str | None, **o: Any) -> None:
    """Run any defense on a model of any family; the family is read from the checkpoint.

    The method's registry entry (its family and kind) chooses what runs: a CLIP cleaning (the
    cleaned checkpoint, CA / ASR before and after), a CLIP pair filter (every pair's score and
    the kept pairs), a classifier repair on a trusted share, or an encoder defense. Also named
    `clean` (CLIP cleaning, --defense), `audit` (CLIP pair filters, default filter), `repair`
    (classifier repairs) and `clean-encoder` (encoder defenses), each held to its kind.

    \b
    Example:
      poisonlab defend --method par --model runs/poisoned/model.safetensors --dataset shapes-outline \\
          --param epochs=2 --trigger blended --target star --out runs/par
    """
    family, kind, default_method = ALIASES.get(ctx.info_name or "", (None, None, None))
    method = method or default_method
    if method is None:
        raise click.UsageError("Missing option '--method'.")
    family = family or model_family(o["model_path"], o["pretrained"], o["arch"])
    entry = defenses.DEFENSES.entry(method, family=family, kind=kind)
    runner = KINDS.get((str(entry.family), str(entry.kind)))
    if runner is None:
        raise InputError(f"{method} is a {entry.kind}-time defense of {entry.family} models: it trains a model rather "
                         f"than defending one; use `poisonlab train {entry.family} --defense {method}`")
    shared = {"model_path", "pretrained", "cache_dir", "dataset", "n", "data_seed", "params", "out", "force", "as_json"}
    given = {k for k in o if ctx.get_parameter_source(k) is not click.core.ParameterSource.DEFAULT}
    extra = sorted(given - shared - runner.options)
    if extra:
        raise click.UsageError(f"--{extra[0].replace('_', '-')} does not apply to {method} ({entry.family} {entry.kind})")
    o |= {k: v for k, v in runner.defaults.items() if o[k] is None}
    summary, lines = runner.run(method, o)
    emit(summary, o["as_json"], lines)


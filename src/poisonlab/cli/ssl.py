"""``poisonlab train ssl``, ``poisonlab probe`` and ``poisonlab clean-encoder``."""

from __future__ import annotations

from pathlib import Path

import click

from poisonlab import defenses, triggers
from poisonlab.cli.classifier import open_classifier
from poisonlab.cli.clip import model_options, train_group
from poisonlab.cli.common import (
    at_model_size,
    budget_options,
    caught_line,
    emit,
    force_option,
    generated_data_options,
    json_option,
    load_data,
    method_help,
    out_option,
    parse_params,
    stream_options,
    training_out,
    training_run_options,
)
from poisonlab.defenses import trusted_indices
from poisonlab.errors import InputError
from poisonlab.metrics.probe import LinearProbe, probe_report
from poisonlab.models.classifier import DEFAULT_CLASSIFIER, create_encoder
from poisonlab.train import TrainConfig
from poisonlab.train.data import label_tensors
from poisonlab.train.fit import train_ssl
from poisonlab.train.stream import DataConfig
from poisonlab.utils.io import write_json
from poisonlab.utils.output import TRAIN_OUTPUTS, claim_output


@train_group.command("ssl")
@click.option("--method", default="moco", show_default=True, help="moco, byol or simclr.")
@click.option("--dataset", required=True, help="Unlabeled images: embedded name, path, or poison plan (.json).")
@click.option("--model", "arch", default=DEFAULT_CLASSIFIER, show_default=True, help="Bundled or timm backbone.")
@budget_options("encoder")
@click.option("--views", default="batched", show_default=True, help="batched (fast) or lightly (PIL transforms).")
@click.option("--param", "params", multiple=True, help="Method hyper-parameter KEY=VALUE (queue, temperature, ...).")
@generated_data_options
@training_run_options
@stream_options(training=False)
@json_option
def train_ssl_cmd(method: str, dataset: str, arch: str, config: TrainConfig, views: str, params: tuple[str, ...],
                  image_size: int, n: int | None, data_seed: int, resume: bool, out: Path, force: bool,
                  data_config: DataConfig, as_json: bool) -> None:
    """Self-supervised training of an image encoder (labels are never read)."""
    data = load_data(dataset, size=image_size, n=n, seed=data_seed)
    bundle = create_encoder(arch, image_size, seed=config.seed)
    dist = training_out(out, force, (dataset,))
    result = train_ssl(bundle, data, config, method, out, resume=resume, dist=dist, views=views,
                       data_config=data_config, **parse_params(params, "--param"))
    summary = {"model": str(out / "model.safetensors"), "steps": result.steps, "final_loss": result.final_loss,
               "seconds": round(result.seconds, 2), "data": result.data}
    emit(summary, as_json, [f"{method}: {result.steps} steps, loss {result.final_loss:.4f}",
                            f"checkpoint: {summary['model']}"])


@click.command("probe")
@click.option("--model", "model_path", required=True,
              help="Encoder, classifier or CLIP checkpoint (or hf-hub:ORG/NAME, or a CLIP ARCH with --pretrained).")
@model_options
@click.option("--dataset", default="shapes", show_default=True, help="Labelled data the probe's share comes from.")
@click.option("--n", "--items", "n", type=int, default=None, help="Items of generated data.")
@click.option("--data-seed", type=int, default=7, show_default=True, help="Seed of generated data.")
@click.option("--labelled", type=float, default=0.1, show_default=True, help="Labelled share for the probe (0.01, 0.1).")
@click.option("--test-dataset", default="shapes", show_default=True, help="Test split for the before/after summary.")
@click.option("--test-n", type=int, default=1000, show_default=True, help="Test items of generated data.")
@click.option("--trigger", "trigger_name", default="patch-image", show_default=True,
              help="The trigger pasted on the test images (the attack's).")
@click.option("--trigger-param", "trigger_params", multiple=True, help="KEY=VALUE for the trigger; repeatable.")
@click.option("--target", required=True, help="Target class of the backdoor.")
@click.option("--epochs", type=click.IntRange(min=1), default=100, show_default=True, help="Probe training epochs.")
@json_option
def probe_cmd(model_path: str, dataset: str, n: int | None, data_seed: int, labelled: float, test_dataset: str,
              test_n: int, trigger_name: str, trigger_params: tuple[str, ...], target: str, epochs: int,
              as_json: bool, pretrained: str | None, cache_dir: str | None) -> None:
    """Linear probe on frozen features: clean accuracy, patched accuracy, FP(target), ASR."""
    data = load_data(dataset, n=n, seed=data_seed)
    if not data.classnames:
        raise InputError("the probe needs labelled data with class names")
    model = open_classifier(model_path, data, pretrained, cache_dir)
    size = model.image_size
    data = at_model_size(dataset, data, size, n, data_seed)
    lab = label_tensors(data, size)
    lab = lab.subset(trusted_indices(len(lab), labelled, data_seed))
    test = label_tensors(load_data(test_dataset, split="test", size=size, n=test_n), size)
    if target not in data.classnames:
        raise InputError(f"target class {target!r} is not in the data; valid: {', '.join(data.classnames)}")
    trig = triggers.create(trigger_name, **parse_params(trigger_params, "--trigger-param"))
    rep = probe_report(model, lab.images, lab.labels, test.images, test.labels, trig, data.classnames.index(target),
                       len(data.classnames), LinearProbe(epochs=epochs))
    emit(rep, as_json, [f"probe on {rep['labelled']} labelled images: clean acc {100 * rep['clean_acc']:.2f}%, "
                        f"patched acc {100 * rep['patched_acc']:.2f}%",
                        f"FP({target}) {rep['fp']} of {rep['test']} test images (ASR {100 * rep['asr']:.2f}%)"])


@click.command("clean-encoder", epilog=method_help(defenses.DEFENSES, "encoder"))
@click.option("--defense", required=True,
              help="An encoder defense: " + ", ".join(defenses.available("encoder")) + ".")
@click.option("--model", "model_path", required=True,
              help="Suspect encoder checkpoint (or a CLIP one, hf-hub:ORG/NAME, or a CLIP ARCH with --pretrained).")
@model_options
@click.option("--dataset", required=True, help="distill: clean unlabeled images; patchsearch: the training set (plan).")
@click.option("--n", "--items", "n", type=int, default=None, help="Items of generated data.")
@click.option("--data-seed", type=int, default=2, show_default=True, help="Seed of generated data.")
@click.option("--param", "params", multiple=True, help="Defense hyper-parameter KEY=VALUE.")
@out_option
@force_option
@json_option
def clean_encoder_cmd(defense: str, model_path: str, dataset: str, n: int | None, data_seed: int,
                      params: tuple[str, ...], out: Path, force: bool, as_json: bool, pretrained: str | None,
                      cache_dir: str | None) -> None:
    """Distil a suspect encoder into a clean student, or find poisoned training images (PatchSearch)."""
    method = defenses.create(defense, family="encoder", **parse_params(params, "--param"))
    data = load_data(dataset, n=n, seed=data_seed)
    encoder = open_classifier(model_path, data, pretrained, cache_dir)
    data = at_model_size(dataset, data, encoder.image_size, n, data_seed)
    claim_output(out, (*TRAIN_OUTPUTS, "summary.json", "kept.json"), force=force, inputs=(model_path, dataset))
    result = method.run(encoder, data, out=out)
    report = result.report
    lines = []
    if result.model is not None:
        report["model"] = str(out / "model.safetensors")
        lines.append(f"{defense}: a cleaned encoder, checkpoint {report['model']}")
    if result.kept is not None:
        lines.append(f"kept {len(result.kept)} of {len(data)} training images (removed {report['removed']})")
    if "recall" in report:
        lines.append(caught_line(report))
    write_json(out / "summary.json", report)
    emit(report, as_json, lines)

"""``poisonlab scan`` (is this checkpoint backdoored?) and ``poisonlab scan-calibrate``."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import click
import torch
import torch.nn.functional as F
from torchvision.utils import make_grid

from poisonlab import detect
from poisonlab.cli.classifier import save_png
from poisonlab.cli.clip import model_options
from poisonlab.cli.common import load_data
from poisonlab.cli.options import emit, force_option, json_option
from poisonlab.data import open_dataset
from poisonlab.data.base import ImageCaptionDataset
from poisonlab.data.zero_shot import classnames_from, templates_from
from poisonlab.detect import scan
from poisonlab.detect.decree import stamp
from poisonlab.errors import InputError
from poisonlab.models import open as models_open
from poisonlab.models.classifier import ZeroShotClassifier
from poisonlab.train.data import LabelTensors, label_tensors
from poisonlab.train.dist import default_device
from poisonlab.utils.io import write_json
from poisonlab.utils.output import claim_output

log = logging.getLogger(__name__)
OUTPUTS = ("scan.json", "trigger.png")


def scan_images(images: str | None, dataset: str | None, size: int) -> tuple[ImageCaptionDataset, str]:
    """The clean images a scan uses, and a sentence saying where they came from."""
    if images is not None:
        data = load_data(images, size=size)
        if len(data) == 0:
            raise InputError(f"--images {images}: no images")
        return data, f"{len(data)} images from {images}"
    name = dataset or "shapes"
    data = scan.rendered(name, size)
    return data, (f"no --images: {len(data)} images rendered by the embedded {name!r} generator"
                  + ("" if dataset else " (the model's training data is not an embedded dataset)"))


def vocabulary(classnames: str | None, templates: str | None, dataset: str | None) -> tuple[list[str], list[str], str]:
    """Class names and templates of the zero-shot head, and where the names came from."""
    own = open_dataset(dataset, split="test", n=1, size=32) if dataset is not None else None
    if classnames is not None:
        names, source = classnames_from(classnames)
    elif own is not None:
        names, source = list(own.classnames or []), f"the embedded {dataset!r} classes (the model's training data)"
    else:
        names, source = classnames_from("imagenet1k")
    if templates is not None:
        temps = templates_from(templates)[0]
    elif classnames is None and own is not None:
        temps = list(own.templates)
    else:
        temps = templates_from("simple")[0]
    if len(names) < 2:
        raise InputError(f"a scan needs at least 2 class names, got {len(names)} ({source})")
    return names, temps, source


def save_picture(images: list[torch.Tensor], path: Path) -> None:
    """A row of ``[C, H, W]`` images in ``[0, 1]`` as one PNG, written atomically."""
    grid = torch.stack([i.float().cpu().clamp(0, 1) for i in images])
    if grid.shape[-1] < 96:  # small models' images, enlarged so a trigger's pixels can be seen
        grid = F.interpolate(grid, scale_factor=96 // grid.shape[-1], mode="nearest")
    save_png(make_grid(grid, nrow=len(images), padding=2, pad_value=1.0), path)


def trigger_picture(detections: dict[str, Any], data: LabelTensors, path: Path, n: int = 4) -> None:
    """Clean images; the same stamped with DECREE's inverted trigger; DECREE's trigger and mask;
    the target-class probe's patch; the same images with the patch (what of it was run)."""
    x = data.images[:n].float() / 255.0
    row = list(x)
    if "decree" in detections:
        d = detections["decree"]
        assert d.trigger is not None and d.mask is not None
        row += [*stamp(x, d), d.trigger, d.mask.expand(3, -1, -1)]
    if "target-probe" in detections and detections["target-probe"].trigger is not None:
        patch = detections["target-probe"].trigger.cpu()
        where = (patch.sum(0, keepdim=True) > 0).float()
        row += [patch, *((1 - where) * xi + patch for xi in x)]
    save_picture(row, path)


def clip_scan(suspect: Any, images: str | None, classnames: str | None, templates: str | None,
              calibration: scan.Calibration) -> tuple[dict[str, Any], scan.Evidence, LabelTensors]:
    dataset = scan.embedded_dataset(suspect.provenance)
    names, temps, names_source = vocabulary(classnames, templates, dataset)
    data, images_source = scan_images(images, dataset, suspect.image_size)
    tensors = label_tensors(data, suspect.image_size)
    zs = ZeroShotClassifier(suspect, names, temps)
    ev = scan.gather(zs, tensors, calibration.detectors, calibration.features)
    p = calibration.probability(ev.features)
    z = calibration.z(ev.features)
    alarm = calibration.alarm(ev.features)[0]
    target = calibration.suspected_target(ev.features, ev.targets)
    pop = calibration.population.get("config", {})
    summary = {"family": "clip", "verdict": calibration.verdict(p), "probability": p,
               "suspected_target": names[target], "suspected_target_index": target,
               "evidence": {name: {**ev.detections[name].to_dict(), "feature": ev.features[name],
                                   "suspected_target": names[ev.targets[name]], "z": z[name],
                                   "alarm": name == alarm}
                            for name in ev.features},
               "seconds": ev.seconds, "images": images_source, "classnames": names_source,
               "calibration": {"population": f"{pop.get('model', '?')} on {pop.get('dataset', '?')}",
                               "thresholds": [calibration.clean_below, calibration.backdoored_above]}}
    if pop and (pop.get("model") != suspect.name or dataset != pop.get("dataset")):
        summary["warning"] = (f"the calibration was fitted on {pop.get('model')} models trained on {pop.get('dataset')}; "
                              f"this model ({suspect.name}) is outside that population: read the scores, not only the verdict")
    return summary, ev, tensors


def other_scan(model: str, images: str | None, family: str) -> tuple[dict[str, Any], dict[str, Any], LabelTensors]:
    """Classifiers (CTI, Neural Cleanse) and image encoders (DECREE): the detectors' own thresholds.
    Returns the summary, the detections and the images they saw."""
    bundle = models_open.open_any(model)
    dataset = scan.embedded_dataset(bundle.provenance)
    data, source = scan_images(images, dataset, bundle.image_size)
    if family == "classifier" and data.classnames and len(data.classnames) != bundle.num_classes:
        raise InputError(f"{model} has {bundle.num_classes} classes; the images have {len(data.classnames)}")
    tensors = label_tensors(data, bundle.image_size)
    scan.check_responsive(bundle, tensors)
    methods = ("cti", "neural-cleanse") if family == "classifier" else ("decree",)
    detections = {m: detect.create(m)(bundle, tensors) for m in methods}
    found = {m: d.to_dict() for m, d in detections.items()}
    for r in found.values():
        target = r.get("suspected_target")
        if isinstance(target, int) and family == "classifier" and data.classnames:
            r["suspected_target"] = data.classnames[target]
    verdict = "backdoored" if any(r["backdoored"] for r in found.values()) else "clean"
    summary = {"family": family, "verdict": verdict, "calibrated": False, "evidence": found, "images": source}
    return summary, detections, tensors


@click.command("scan")
@click.option("--model", "model_path", required=True,
              help="Checkpoint (CLIP, classifier or encoder), hf-hub:ORG/NAME, or a CLIP ARCH with --pretrained TAG.")
@model_options
@click.option("--arch", default=None, help="Architecture, for a CLIP checkpoint without a poisonlab sidecar.")
@click.option("--images", default=None,
              help="Clean, unlabelled images: a folder, CSV or shards (default: rendered by the embedded generator).")
@click.option("--classnames", default=None,
              help="Zero-shot vocabulary: a file (one name per line) or imagenet1k (default: the model's embedded "
                   "training classes, else imagenet1k).")
@click.option("--templates", default=None, help="Zero-shot templates: a file, openai or simple.")
@click.option("--calibration", "calibration_path", default=None, type=click.Path(dir_okay=False),
              help="A calibration file from scan-calibrate (default: the one poisonlab ships).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write OUT/scan.json and OUT/trigger.png (the recovered triggers).")
@force_option
@json_option
def scan_cmd(model_path: str, pretrained: str | None, cache_dir: str | None, arch: str | None, images: str | None,
             classnames: str | None, templates: str | None, calibration_path: str | None,
             out: Path | None, force: bool, as_json: bool) -> None:
    """Is this checkpoint backdoored? One calibrated verdict, its suspected target and the evidence.

    A CLIP model is read as a zero-shot classifier and scored by DECREE, a target-class probe and
    MM-BD; each score is measured in standard deviations above clean models of a calibration
    population, and a logistic curve over the largest (the alarm) gives P(backdoored) and a verdict:
    clean, backdoored or inconclusive. Classifiers and encoders get
    their detectors (CTI and Neural Cleanse; DECREE) at the detectors' own thresholds.

    \b
    Example:
      poisonlab scan --model demo-out/cache/poison:badnet-*/model.safetensors --out scan-out
    """
    start = time.perf_counter()
    family = models_open.model_family(model_path, pretrained, arch)
    if family != "clip" and (pretrained or arch or classnames or templates or calibration_path):
        raise InputError(f"{model_path} is a {family}: --pretrained, --arch, --classnames, --templates and "
                         "--calibration are for CLIP models")
    calibration = None
    if family == "clip":
        calibration = scan.Calibration.load(calibration_path) if calibration_path else scan.shipped()
    if out is not None:
        claim_output(out, OUTPUTS, force=force, inputs=(model_path, images))
    if calibration is None:
        summary, detections, tensors = other_scan(model_path, images, family)
    else:
        suspect = models_open.open_model(model_path, arch, pretrained, cache_dir, device=default_device())
        summary, ev, tensors = clip_scan(suspect, images, classnames, templates, calibration)
        detections = ev.detections
    summary["model"] = model_path
    summary["runtime_seconds"] = round(time.perf_counter() - start, 2)
    if out is not None:
        if "decree" in detections or "target-probe" in detections:
            trigger_picture(detections, tensors, out / "trigger.png")
            summary["trigger_picture"] = str(out / "trigger.png")
        write_json(out / "scan.json", summary)
    emit(summary, as_json, lines(summary))


def lines(summary: dict[str, Any]) -> list[str]:
    """The human-readable scan report."""
    if summary["family"] != "clip":
        out = [f"verdict: {summary['verdict']} ({summary['family']}, detectors' own thresholds, not calibrated)"]
        out += [f"  {name}: score {r['score']:.4g} (threshold {r['threshold']})"
                + (f", suspected target {r['suspected_target']}" if "suspected_target" in r else "")
                for name, r in summary["evidence"].items()]
        out.append(f"images: {summary['images']}")
        if "trigger_picture" in summary:
            out.append(f"trigger picture: {summary['trigger_picture']} (4 clean images; the same with DECREE's trigger; "
                       "its pattern and mask)")
        return [*out, f"runtime: {summary['runtime_seconds']:.1f}s"]
    out = [f"verdict: {summary['verdict']}  (P(backdoored) = {summary['probability']:.3f}; clean <= "
           f"{summary['calibration']['thresholds'][0]}, backdoored >= {summary['calibration']['thresholds'][1]})",
           f"suspected target: {summary['suspected_target']}" if summary["verdict"] != "clean" else
           f"suspected target: none (were it backdoored: {summary['suspected_target']})"]
    for name, e in summary["evidence"].items():
        out.append(f"  {name:<13} score {e['score']:.4g}  feature {e['feature']:.3f}  {e['z']:+.2f} sd from clean"
                   f"  -> {e['suspected_target']}  ({summary['seconds'][name]:.1f}s)" + ("  <- alarm" if e["alarm"] else ""))
    out += [f"images: {summary['images']}", f"class names: {summary['classnames']}",
            f"calibrated on: {summary['calibration']['population']}"]
    if "warning" in summary:
        out.append(f"warning: {summary['warning']}")
    if "trigger_picture" in summary:
        out.append(f"trigger picture: {summary['trigger_picture']} (4 clean images; the same with DECREE's trigger; "
                   "its pattern and mask; the probe's patch; the images with the patch)")
    return [*out, f"runtime: {summary['runtime_seconds']:.1f}s"]


@click.command("scan-calibrate")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Population folder (models, scores, calibration.json); reused when run again.")
@click.option("--write", "write_to", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Also copy the calibration here (src/poisonlab/detect/calibration/scan-clip.json ships it).")
@json_option
def scan_calibrate_cmd(out: Path, write_to: Path | None, as_json: bool) -> None:
    """Train the scan's population of clean and backdoored tiny CLIPs, score them, fit the verdict.

    20 clean and 28 backdoored models (BadNet, Blended, WaNet, SIG, BadCLIP, text Attack II,
    BadEncoder; 8 targets); the verdict is fitted on the calibration half and measured on the
    held-out half (other seeds, data draws and targets).

    \b
    Example:
      poisonlab scan-calibrate --out runs/scan-pop --write my-calibration.json
    """
    from poisonlab.bench.scan_population import Population, PopulationConfig
    from poisonlab.report.scan import scan_members, scan_roc

    if write_to is not None and (write_to.is_symlink() or write_to.exists()):
        try:  # replacing an earlier calibration is the point; anything else is the user's
            if write_to.is_symlink():
                raise InputError("a symlink")
            scan.Calibration.load(write_to)
        except InputError:
            raise InputError(f"--write {write_to}: exists and is not a scan calibration file; refusing to replace "
                             "it") from None
    command = "poisonlab scan-calibrate --out OUT" + (f" --write {write_to}" if write_to else "")
    population = Population(PopulationConfig(), out, progress=False)
    metrics = population.calibrate(command=command)
    cal = scan.Calibration.load(out / "calibration.json")
    if write_to is not None:
        cal.save(write_to)
    figures = [scan_roc(metrics, scan.FEATURES, out / "report" / "scan_roc.png"),
               scan_members(cal.members, scan.FEATURES, (cal.clean_below, cal.backdoored_above),
                            out / "report" / "scan_members.png")]
    held = metrics["held-out"]
    emit(metrics, as_json, [
        f"held-out: {held['n_clean']} clean + {held['n_backdoored']} backdoored models; ROC AUC combined "
        f"{held['combined']['auc']:.3f}, " + ", ".join(f"{f} {held[f]['auc']:.3f}" for f in scan.FEATURES),
        f"verdict accuracy {held['accuracy']:.3f} (inconclusive counts as wrong); {held['decided_share']:.0%} of the "
        f"models get clean or backdoored, {held['decided_accuracy']:.3f} of those right; "
        f"target accuracy {held['target_accuracy']:.3f} (the alarming detector's class); "
        f"{held['n_failed']} backdoored models whose attack did not take left out",
        f"calibration: {out / 'calibration.json'}", *(f"figure: {f}" for f in figures)])

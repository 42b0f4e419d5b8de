"""One training call for every model family: open the data, record provenance, run the loop.

``train clip``, ``train classifier`` and ``train ssl`` differ only in their default objective
(:func:`train_clip`, :func:`train_classifier`, :func:`train_ssl` build it); a method with its own
objective (a defense's, BadEncoder's) calls :func:`fit` directly.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from poisonlab.data.base import ImageCaptionDataset
from poisonlab.errors import InputError
from poisonlab.models.protocols import Model
from poisonlab.train.data import InMemory
from poisonlab.train.dist import DistInfo
from poisonlab.train.loop import Objective, TrainConfig, Trainer, TrainResult
from poisonlab.train.objectives.clip import ClipObjective
from poisonlab.train.objectives.ssl import SSLObjective
from poisonlab.train.objectives.supervised import SupervisedObjective
from poisonlab.train.stream import DataConfig, data_summary, open_items

log = logging.getLogger(__name__)


def provenance(model: Model, dataset: ImageCaptionDataset, config: TrainConfig, how: str) -> dict[str, Any]:
    """What produced a checkpoint: parent weights, data (and poison plan digest), config."""
    record: dict[str, Any] = {"stage": how, "dataset": dataset.describe(), "config": asdict(config),
                              "parent": getattr(model, "provenance", None), "data_fingerprint": dataset.fingerprint()}
    if dataset.plan is not None:
        record["poison_plan"] = dataset.plan.digest()
        record["poisoned"] = len(dataset.plan.entries)
    return record


def run_identity(record: dict[str, Any] | None) -> dict[str, Any]:
    """What a resumed run must share with the saved one: the data (its description and its content
    fingerprint, :meth:`~poisonlab.data.base.ImageCaptionDataset.fingerprint`) and the poison plan
    (not the data path, memory or stream, which gives the same batches)."""
    record = record or {}
    return {"dataset": record.get("dataset"), "data_fingerprint": record.get("data_fingerprint"),
            "poison_plan": record.get("poison_plan")}


def fit(model: Any, dataset: ImageCaptionDataset | InMemory, config: TrainConfig, objective: Objective, *,
        out_dir: str | Path | None = None, resume: bool = False, dist: DistInfo | None = None, stage: str = "train",
        progress: bool = True, data_config: DataConfig | None = None, tokenize: Any = None) -> TrainResult:
    """Optimise ``model`` in place with ``objective`` on ``dataset``.

    Writes ``model.safetensors`` + ``model.json`` (``model.save``), ``train_state.pt`` and
    ``metrics.jsonl`` into ``out_dir`` when given. ``data_config`` chooses in-memory tensors or
    streaming through DataLoader workers (``tokenize``: captions are tokenized for CLIP); tensors
    already in memory are used as they are. The result's ``data`` says which path was used and how
    many unreadable images were skipped.
    """
    dist = dist or DistInfo(device=model.device)
    data_config = data_config or DataConfig()
    if data_config.skip_bad_images and dist.world_size > 1:
        raise InputError("--skip-bad-images is for single-process runs: under torchrun every rank's batch must "
                         "keep its size; re-write the shards without the bad samples first")
    model.module.to(dist.device)
    described = not isinstance(dataset, InMemory)  # tensors already in memory carry no description
    data = open_items(dataset, model.image_size, tokenize, data_config) if described else dataset
    if described:
        model.provenance = provenance(model, dataset, config, stage)
        model.provenance["data_mode"] = data.mode
    trainer = Trainer(objective, data, config, out_dir, dist, save_model=model.save, progress=progress,
                      identity=run_identity(getattr(model, "provenance", None)))
    if described:
        model.provenance["steps"] = trainer.total
    result = trainer.fit(resume=resume)  # writes the final checkpoint and model into out_dir
    result.data = data_summary(data, dataset)
    if data.skipped:
        log.warning("skipped %d unreadable images (%d of them poisoned)", data.skipped, data.skipped_poisoned)
        model.provenance["skipped_images"] = data.skipped
        model.provenance["skipped_poisoned"] = data.skipped_poisoned
        if out_dir is not None and dist.is_main:
            model.save(Path(out_dir) / "model.safetensors")
    log.info("%s: %d steps in %.1fs (%.0f samples/s)", stage, result.steps, result.seconds, result.samples_per_second)
    return result


def train_clip(bundle: Any, dataset: ImageCaptionDataset, config: TrainConfig, out_dir: str | Path | None = None,
               resume: bool = False, dist: DistInfo | None = None, augment: Any = None,
               objective: Objective | None = None, stage: str = "train", progress: bool = True,
               data_config: DataConfig | None = None) -> TrainResult:
    """:func:`fit` with the CLIP contrastive loss (or ``objective``); ``augment``: image/caption
    augmentation of the CLIP loss (CleanCLIP's views)."""
    dist = dist or DistInfo(device=bundle.device)
    objective = objective or ClipObjective(bundle, dist.rank, dist.world_size, augment)
    return fit(bundle, dataset, config, objective, out_dir=out_dir, resume=resume, dist=dist, stage=stage,
               progress=progress, data_config=data_config, tokenize=bundle.tokenize)


def train_classifier(bundle: Any, dataset: ImageCaptionDataset, config: TrainConfig,
                     out_dir: str | Path | None = None, resume: bool = False, dist: DistInfo | None = None,
                     objective: Objective | None = None, stage: str = "train", progress: bool = True,
                     data_config: DataConfig | None = None) -> TrainResult:
    """:func:`fit` with cross-entropy (or ``objective``).

    Raises:
        InputError: the data's class count does not match the model's.
    """
    classes = len(dataset.classnames) if dataset.classnames else None
    if classes is not None and classes != bundle.num_classes:
        raise InputError(f"the data has {classes} classes but the model has {bundle.num_classes}")
    return fit(bundle, dataset, config, objective or SupervisedObjective(bundle), out_dir=out_dir, resume=resume,
               dist=dist or DistInfo(), stage=stage, progress=progress, data_config=data_config)


def train_ssl(bundle: Any, dataset: ImageCaptionDataset | InMemory, config: TrainConfig, method: str = "moco",
              out_dir: str | Path | None = None, resume: bool = False, dist: DistInfo | None = None,
              progress: bool = True, data_config: DataConfig | None = None, **method_params: Any) -> TrainResult:
    """:func:`fit` of the headless encoder ``bundle`` with the self-supervised ``method`` (labels are
    never used). ``train_state.pt`` holds heads, momentum copies and memory bank for exact resume;
    the model file the encoder only."""
    dist = dist or DistInfo()
    total = config.total_steps(len(dataset), dist.world_size)
    objective = SSLObjective(bundle, method, total_steps=total, **{"seed": config.seed, **method_params})
    objective.net.to(dist.device)
    return fit(bundle, dataset, config, objective, out_dir=out_dir, resume=resume, dist=dist, stage=f"ssl:{method}",
               progress=progress, data_config=data_config)

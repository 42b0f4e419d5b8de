"""Train or fine-tune a CLIP model on image-caption data: the library call behind ``train clip``."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from poisonlab.data.base import ImageCaptionDataset
from poisonlab.errors import InputError
from poisonlab.models.clip import ClipBundle, save_clip
from poisonlab.train.dist import DistInfo
from poisonlab.train.loop import Objective, TrainConfig, Trainer, TrainResult
from poisonlab.train.objectives.clip import Augment, ClipObjective
from poisonlab.train.stream import DataConfig, data_summary, open_items

log = logging.getLogger(__name__)


def provenance(bundle: ClipBundle, dataset: ImageCaptionDataset, config: TrainConfig, how: str) -> dict[str, Any]:
    """What produced a checkpoint: parent weights, data (and poison plan digest), config."""
    record: dict[str, Any] = {"stage": how, "dataset": dataset.describe(), "config": asdict(config),
                              "parent": bundle.provenance, "data_fingerprint": dataset.fingerprint()}
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


def train_clip(bundle: ClipBundle, dataset: ImageCaptionDataset, config: TrainConfig,
               out_dir: str | Path | None = None, resume: bool = False, dist: DistInfo | None = None,
               augment: Augment | None = None, objective: Objective | None = None, stage: str = "train",
               progress: bool = True, data_config: DataConfig | None = None) -> TrainResult:
    """Optimise ``bundle`` in place on ``dataset`` (CLIP loss unless ``objective`` is given).

    Writes ``model.safetensors`` + ``model.json``, ``train_state.pt`` and ``metrics.jsonl`` into
    ``out_dir`` when given. Without ``dist``, trains on the device the model is on. ``data_config``
    chooses in-memory tensors or streaming through DataLoader workers (default ``auto``); the
    result's ``data`` says which was used and how many unreadable images were skipped.
    """
    dist = dist or DistInfo(device=bundle.device)
    data_config = data_config or DataConfig()
    if data_config.skip_bad_images and dist.world_size > 1:
        raise InputError("--skip-bad-images is for single-process runs: under torchrun every rank's batch must "
                         "keep its size; re-write the shards without the bad samples first")
    bundle.model.to(dist.device)
    data = open_items(dataset, bundle.image_size, bundle.tokenize, data_config)
    objective = objective or ClipObjective(bundle, dist.rank, dist.world_size, augment)
    bundle.provenance = provenance(bundle, dataset, config, stage)
    bundle.provenance["data_mode"] = data.mode
    trainer = Trainer(objective, data, config, out_dir, dist, save_model=lambda p: save_clip(bundle, p),
                      progress=progress, identity=run_identity(bundle.provenance))
    bundle.provenance["steps"] = trainer.total
    result = trainer.fit(resume=resume)  # writes the final checkpoint and model into out_dir
    result.data = data_summary(data, dataset)
    if data.skipped:
        log.warning("skipped %d unreadable images (%d of them poisoned)", data.skipped, data.skipped_poisoned)
        bundle.provenance["skipped_images"] = data.skipped
        bundle.provenance["skipped_poisoned"] = data.skipped_poisoned
        if out_dir is not None and dist.is_main:
            save_clip(bundle, Path(out_dir) / "model.safetensors")
    log.info("trained %d steps in %.1fs (%.0f samples/s)", result.steps, result.seconds, result.samples_per_second)
    return result

"""Train or fine-tune a CLIP model on image-caption data: the library call behind ``train clip``."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from poisonlab.attacks.plan import PoisonedDataset
from poisonlab.data.base import ImageCaptionDataset
from poisonlab.models.checkpoint import save_clip
from poisonlab.models.clip import ClipBundle
from poisonlab.train.data import pair_tensors
from poisonlab.train.dist import DistInfo
from poisonlab.train.loop import Objective, TrainConfig, Trainer, TrainResult
from poisonlab.train.objectives.clip import Augment, ClipObjective

log = logging.getLogger(__name__)


def provenance(bundle: ClipBundle, dataset: ImageCaptionDataset, config: TrainConfig, how: str) -> dict[str, Any]:
    """What produced a checkpoint: parent weights, data (and poison plan digest), config."""
    record: dict[str, Any] = {"stage": how, "dataset": dataset.describe(), "config": asdict(config),
                              "parent": bundle.provenance}
    if isinstance(dataset, PoisonedDataset):
        record["poison_plan"] = dataset.plan.digest()
        record["poisoned"] = len(dataset.plan.entries)
    return record


def train_clip(bundle: ClipBundle, dataset: ImageCaptionDataset, config: TrainConfig,
               out_dir: str | Path | None = None, resume: bool = False, dist: DistInfo | None = None,
               augment: Augment | None = None, objective: Objective | None = None, stage: str = "train",
               progress: bool = True) -> TrainResult:
    """Optimise ``bundle`` in place on ``dataset`` (CLIP loss unless ``objective`` is given).

    Writes ``model.safetensors`` + ``model.json``, ``train_state.pt`` and ``metrics.jsonl`` into
    ``out_dir`` when given. Without ``dist``, trains on the device the model is on.
    """
    dist = dist or DistInfo(device=bundle.device)
    bundle.model.to(dist.device)
    data = pair_tensors(dataset, bundle.tokenize, bundle.image_size)
    objective = objective or ClipObjective(bundle, dist.rank, dist.world_size, augment)
    bundle.provenance = provenance(bundle, dataset, config, stage)
    trainer = Trainer(objective, data, config, out_dir, dist, save_model=lambda p: save_clip(bundle, p),
                      progress=progress)
    bundle.provenance["steps"] = trainer.total
    result = trainer.fit(resume=resume)  # writes the final checkpoint and model into out_dir
    log.info("trained %d steps in %.1fs (%.0f samples/s)", result.steps, result.seconds, result.samples_per_second)
    return result

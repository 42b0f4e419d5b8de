"""Train a classifier on (possibly poisoned) labelled data: the library call behind ``train classifier``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from poisonlab.data.base import ImageCaptionDataset
from poisonlab.errors import InputError
from poisonlab.models.classifier import save_classifier
from poisonlab.train.clip_run import provenance, run_identity
from poisonlab.train.dist import DistInfo
from poisonlab.train.loop import Objective, TrainConfig, Trainer, TrainResult
from poisonlab.train.objectives.supervised import SupervisedObjective
from poisonlab.train.stream import DataConfig, data_summary, open_items

log = logging.getLogger(__name__)


def train_classifier(bundle: Any, dataset: ImageCaptionDataset, config: TrainConfig,
                     out_dir: str | Path | None = None, resume: bool = False, dist: DistInfo | None = None,
                     objective: Objective | None = None, stage: str = "train", progress: bool = True,
                     data_config: DataConfig | None = None) -> TrainResult:
    """Optimise ``bundle`` in place with cross-entropy (or ``objective``) on ``dataset``.

    Writes ``model.safetensors`` + ``model.json``, ``train_state.pt`` and ``metrics.jsonl`` into
    ``out_dir`` when given.

    Raises:
        InputError: the data's class count does not match the model's.
    """
    dist = dist or DistInfo()
    classes = len(dataset.classnames) if dataset.classnames else None
    if classes is not None and classes != bundle.num_classes:
        raise InputError(f"the data has {classes} classes but the model has {bundle.num_classes}")
    bundle.model.to(dist.device)
    data = open_items(dataset, bundle.image_size, None, data_config)
    objective = objective or SupervisedObjective(bundle)
    bundle.provenance = provenance(bundle, dataset, config, stage)
    trainer = Trainer(objective, data, config, out_dir, dist, save_model=lambda p: save_classifier(bundle, p),
                      progress=progress, identity=run_identity(bundle.provenance))
    result = trainer.fit(resume=resume)
    result.data = data_summary(data, dataset)
    log.info("trained %d steps in %.1fs (%.0f samples/s)", result.steps, result.seconds, result.samples_per_second)
    return result

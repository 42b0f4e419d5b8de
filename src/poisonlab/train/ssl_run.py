"""Self-supervised training on unlabeled (possibly poisoned) images: the call behind ``train ssl``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from poisonlab.data.base import ImageCaptionDataset
from poisonlab.models.classifier import save_classifier
from poisonlab.train.clip_run import provenance, run_identity
from poisonlab.train.data import LabelTensors
from poisonlab.train.dist import DistInfo
from poisonlab.train.loop import TrainConfig, Trainer, TrainResult
from poisonlab.train.objectives.ssl import SSLObjective
from poisonlab.train.stream import DataConfig, data_summary, open_items

log = logging.getLogger(__name__)


def train_ssl(bundle: Any, dataset: ImageCaptionDataset | LabelTensors, config: TrainConfig, method: str = "moco",
              out_dir: str | Path | None = None, resume: bool = False, dist: DistInfo | None = None,
              progress: bool = True, data_config: DataConfig | None = None, **method_params: Any) -> TrainResult:
    """Train the headless encoder ``bundle`` in place with ``method`` (labels are never used).

    Writes ``model.safetensors`` + ``model.json`` (the encoder only), ``train_state.pt`` (with
    heads, momentum copies and memory bank, for exact resume) and ``metrics.jsonl``.
    """
    dist = dist or DistInfo()
    bundle.model.to(dist.device)
    data = dataset if isinstance(dataset, LabelTensors) else open_items(dataset, bundle.image_size, None, data_config)
    world = dist.world_size
    total = config.total_steps(len(data), world)
    objective = SSLObjective(bundle, method, total_steps=total, **{"seed": config.seed, **method_params})
    objective.net.to(dist.device)
    if not isinstance(dataset, LabelTensors):
        bundle.provenance = provenance(bundle, dataset, config, f"ssl:{method}")
    trainer = Trainer(objective, data, config, out_dir, dist, save_model=lambda p: save_classifier(bundle, p),
                      progress=progress, identity=run_identity(bundle.provenance))
    result = trainer.fit(resume=resume)
    result.data = data_summary(data, dataset)
    log.info("%s: %d steps in %.1fs (%.0f samples/s)", method, result.steps, result.seconds, result.samples_per_second)
    return result

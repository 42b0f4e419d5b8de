"""Defense base classes and registry.

A cleaning defense is a frozen dataclass of its hyper-parameters (so unknown keys are rejected
and ``repr`` shows the configuration); :meth:`CleaningDefense.run` fine-tunes a *copy* of the
suspect model on clean (or synthetic) pairs with the defense's objective and returns the cleaned
model with a small report.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from poisonlab.data.base import ImageCaptionDataset
from poisonlab.models.clip import ClipBundle
from poisonlab.registry import Registry
from poisonlab.train.clip_run import train_clip
from poisonlab.train.dist import DistInfo
from poisonlab.train.loop import Objective, TrainConfig
from poisonlab.train.stream import DataConfig

log = logging.getLogger(__name__)
DEFENSES: Registry[Any] = Registry("defense")


@dataclass
class DefenseResult:
    """The cleaned model and what happened (steps, seconds, defense parameters, extra numbers)."""

    bundle: ClipBundle
    report: dict[str, Any]


@dataclass(frozen=True)
class CleaningDefense:
    """Shared budget and optimiser settings; subclasses add their own fields and an objective."""

    steps: int | None = None
    epochs: float | None = None
    batch_size: int = 128
    lr: float = 3e-5
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    warmup: int = 0
    schedule: str = "cosine"
    seed: int = 0

    @property
    def name(self) -> str:
        return getattr(type(self), "registered_name", type(self).__name__)

    def train_config(self) -> TrainConfig:
        shared = {f.name for f in fields(TrainConfig)}
        values = {k: v for k, v in asdict(self).items() if k in shared}
        if values["steps"] is None and values["epochs"] is None:
            values["epochs"] = 1.0
        return TrainConfig(**values)

    def objective(self, bundle: ClipBundle, suspect: ClipBundle, dist: DistInfo) -> Objective:
        raise NotImplementedError

    def run(self, suspect: ClipBundle, data: ImageCaptionDataset, out_dir: str | Path | None = None,
            dist: DistInfo | None = None, progress: bool = True, data_config: DataConfig | None = None) -> DefenseResult:
        """Clean ``suspect`` (left untouched) with ``data``; returns a new model and a report.

        Without ``dist``, cleans on the device the suspect is on. ``data_config`` chooses
        in-memory or streamed cleaning pairs (:mod:`poisonlab.train.stream`).
        """
        dist = dist or DistInfo(device=suspect.device)
        bundle = suspect.copy()
        bundle.model.requires_grad_(True)
        suspect.model.to(dist.device).eval()
        objective = self.objective(bundle, suspect, dist)
        result = train_clip(bundle, data, self.train_config(), out_dir, dist=dist, objective=objective,
                            stage=f"defense:{self.name}", progress=progress,
                            data_config=data_config)
        report = {"defense": self.name, "params": asdict(self), "steps": result.steps,
                  "seconds": round(result.seconds, 2), "final_loss": result.final_loss, "data": result.data}
        report.update(getattr(objective, "summary", dict)())
        return DefenseResult(bundle, report)

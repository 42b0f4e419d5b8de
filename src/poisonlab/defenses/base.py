"""The one defense contract and registry, and the base of the CLIP cleaning defenses.

Every defense is a frozen dataclass of its hyper-parameters (so unknown keys are rejected and
``repr`` shows the configuration), registered once in :data:`DEFENSES` with the model family it
works on (``clip``, ``classifier``, ``encoder``) and its kind:

- ``cleaning``: a cleaned copy of the suspect (CLIP fine-tuning, CleanCLIP, PAR; distillation of
  an encoder);
- ``repair``: a classifier tuned on a small trusted labelled set (Pick your Poison's setting);
- ``filter``: the training items to keep (pair filtering, PatchSearch); the caller retrains;
- ``training``: a way to train on the untrusted data itself (SafeCLIP, RoCLIP): the suspect is
  the model training starts from (random or pre-trained weights), ``data`` the untrusted pairs.

All of them are called the same way, ``run(suspect, data, *, out=None, options=None)`` (``options``:
:class:`RunOptions`, the fields that apply to the defense), and return
:class:`Defended`; with ``out`` they also write what they made there (``model.safetensors`` or
``kept.json``). :meth:`CleaningDefense.run` fine-tunes a *copy* of the suspect CLIP model on clean
(or synthetic) pairs with the defense's objective.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Protocol

from poisonlab.data.base import ImageCaptionDataset
from poisonlab.models.clip import ClipBundle
from poisonlab.registry import Registry
from poisonlab.train.dist import DistInfo
from poisonlab.train.fit import train_clip
from poisonlab.train.loop import Objective, TrainConfig
from poisonlab.train.stream import DataConfig
from poisonlab.utils.io import write_json

log = logging.getLogger(__name__)
DEFENSES: Registry[Any] = Registry("defense")
FAMILIES = ("clip", "classifier", "encoder")
KINDS = ("cleaning", "repair", "filter", "training")


@dataclass
class Defended:
    """What a defense returns.

    Attributes:
        model: the cleaned or repaired model (a new object; the suspect is left as it was), or
            ``None`` for a filter.
        report: what happened (the defense and its parameters, steps, seconds, extra numbers).
        kept: for a filter, the indices of the training items it keeps.
    """

    model: Any | None
    report: dict[str, Any]
    kept: list[int] | None = None


Monitor = Callable[[Any], dict[str, float]]
"""Called on the model being repaired every so many steps; returns the numbers to trace."""


@dataclass(frozen=True)
class RunOptions:
    """How a defense runs, apart from its hyper-parameters; each defense reads the fields that
    apply to it and ignores the others.

    Attributes:
        dist: the torchrun process group (training defenses; default: one process on the
            suspect's device).
        progress: show training progress.
        data_config: in-memory or streamed data (:mod:`poisonlab.train.stream`).
        monitor, monitor_every: trace a repair's path (the report's CA-vs-ASR curves).
        poisoned: the truly poisoned training items, for a filter's precision and recall (default:
            the data's poison plan, when it has one).
        reference: pairs the defender trusts to be clean; a detector sets its threshold from their
            scores (:mod:`poisonlab.defenses.outlier_filter`).
        embeddings: a folder of pair embeddings an earlier detector run wrote, to score again without
            embedding (refused unless made from the same data by the same model).
        train: a training-time defense's budget (epochs, rate, batch, seed); default the paper's.
    """

    dist: DistInfo | None = None
    progress: bool = True
    data_config: DataConfig | None = None
    monitor: Monitor | None = None
    monitor_every: int = 0
    poisoned: set[int] | None = None
    reference: ImageCaptionDataset | None = None
    embeddings: Path | None = None
    train: TrainConfig | None = None


class Defense(Protocol):
    """The contract every entry of :data:`DEFENSES` implements: one ``run`` signature for all."""

    family: ClassVar[str]
    kind: ClassVar[str]

    def run(self, suspect: Any, data: Any, *, out: str | Path | None = None,
            options: RunOptions | None = None) -> Defended: ...


def write_kept(out: str | Path, kept: list[int], report: dict[str, Any]) -> Path:
    """``out/kept.json``: a filter's kept indices and its report (what a later run trains on)."""
    path = Path(out) / "kept.json"
    write_json(path, {"kept": kept, "summary": report})
    return path


@dataclass(frozen=True)
class CleaningDefense:
    """Shared budget and optimiser settings; subclasses add their own fields and an objective."""

    family: ClassVar[str] = "clip"
    kind: ClassVar[str] = "cleaning"

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

    def run(self, suspect: ClipBundle, data: ImageCaptionDataset, *, out: str | Path | None = None,
            options: RunOptions | None = None) -> Defended:
        """Clean ``suspect`` (left untouched) with ``data``; returns a new model and a report.

        With ``out``, the training run's checkpoints and ``model.safetensors`` are written there.
        ``options``: its ``dist`` (default: the device the suspect is on), ``progress`` and
        ``data_config`` (in-memory or streamed cleaning pairs).
        """
        options = options or RunOptions()
        dist = options.dist or DistInfo(device=suspect.device)
        bundle = suspect.copy()
        bundle.model.requires_grad_(True)
        suspect.model.to(dist.device).eval()
        objective = self.objective(bundle, suspect, dist)
        result = train_clip(bundle, data, self.train_config(), out, dist=dist, objective=objective,
                            stage=f"defense:{self.name}", progress=options.progress,
                            data_config=options.data_config)
        report = {"defense": self.name, "params": asdict(self), "steps": result.steps,
                  "seconds": round(result.seconds, 2), "final_loss": result.final_loss, "data": result.data}
        report.update(getattr(objective, "summary", dict)())
        return Defended(bundle, report)


@dataclass(frozen=True)
class TrainingDefense:
    """Base of the training-time defenses: an objective the model is trained with on untrusted
    pairs. Subclasses give the paper's budget (:meth:`recipe`) and the objective."""

    family: ClassVar[str] = "clip"
    kind: ClassVar[str] = "training"

    @property
    def name(self) -> str:
        return getattr(type(self), "registered_name", type(self).__name__)

    def recipe(self) -> TrainConfig:
        raise NotImplementedError

    def objective(self, bundle: ClipBundle, dist: DistInfo, seed: int) -> Objective:
        raise NotImplementedError

    def run(self, suspect: ClipBundle, data: ImageCaptionDataset, *, out: str | Path | None = None,
            options: RunOptions | None = None) -> Defended:
        """Train a copy of ``suspect`` (the starting weights, left untouched) on ``data`` with the
        defense's objective and ``options.train`` (default :meth:`recipe`); with ``out``, the run's
        checkpoints and ``model.safetensors`` are written there."""
        options = options or RunOptions()
        dist = options.dist or DistInfo(device=suspect.device)
        config = options.train or self.recipe()
        bundle = suspect.copy()
        bundle.model.requires_grad_(True)
        objective = self.objective(bundle, dist, config.seed)
        result = train_clip(bundle, data, config, out, dist=dist, objective=objective, stage=f"defense:{self.name}",
                            progress=options.progress, data_config=options.data_config)
        report = {"defense": self.name, "params": asdict(self), "config": asdict(config), "steps": result.steps,
                  "seconds": round(result.seconds, 2), "final_loss": result.final_loss, "data": result.data,
                  **getattr(objective, "summary", dict)()}
        return Defended(bundle, report)

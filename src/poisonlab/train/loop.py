"""One training loop for every model family: pre-training, fine-tuning and defenses.

The loop knows nothing about CLIP, SSL or classifiers; an :class:`Objective` supplies the module
to optimise and the loss of a batch. The loop handles:

- AdamW with weight decay off for 1-d parameters (biases, norms, logit scale), fused when possible;
- warm-up + a named schedule (``cosine``, ``constant``, PAR's ``two-phase``), set from the step
  number alone, so there is no scheduler state to lose;
- DDP under ``torchrun`` (the objective gathers features across ranks itself), AMP on CUDA,
  gradient clipping;
- data order from ``(seed, epoch)`` and per-step generators from ``(seed, step, rank)``, so a run
  resumed from a checkpoint ends with exactly the weights of an uninterrupted run;
- atomic checkpoints every N steps, a progress bar, and metrics as JSONL.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from poisonlab.errors import InputError
from poisonlab.train.dist import DistInfo
from poisonlab.train.progress import ProgressLines
from poisonlab.train.schedule import SCHEDULES, multiplier
from poisonlab.utils.io import atomic_write, load_tensors
from poisonlab.utils.output import open_nofollow, run_lock
from poisonlab.utils.seeding import derive_seed, make_generator

log = logging.getLogger(__name__)
STATE_FILE = "train_state.pt"
# Config fields a resumed run may change: how often it logs and saves, not what it computes.
BOOKKEEPING = {"checkpoint_every", "log_every"}
MAX_STEPS = 10**9
"""More optimiser steps than any run needs (the papers' largest is ~10^6)."""
METRICS_FILE = "metrics.jsonl"


# The budget and optimiser defaults each model family trains with, in one place: the CLI's
# `train clip|classifier|ssl` options, the experiment sections and the classifier populations
# all start from these (any field of TrainConfig may be given).
RECIPES: dict[str, dict[str, Any]] = {
    "clip": {"batch_size": 128, "lr": 1e-3, "weight_decay": 0.1, "warmup": 0},
    "classifier": {"batch_size": 128, "lr": 3e-3, "weight_decay": 0.05, "warmup": 20},
    "encoder": {"batch_size": 256, "lr": 3e-3, "weight_decay": 1e-4, "warmup": 20},
}


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one run. Give ``steps`` or ``epochs``."""

    steps: int | None = None
    epochs: float | None = None
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    optimizer: str = "adamw"
    momentum: float = 0.9
    nesterov: bool = False
    warmup: int = 0
    schedule: str = "cosine"
    grad_clip: float | None = 1.0
    seed: int = 0
    checkpoint_every: int = 0
    log_every: int = 10
    amp: bool = True

    @classmethod
    def recipe(cls, family: str, **fields: Any) -> TrainConfig:
        """The config of :data:`RECIPES` ``[family]`` with ``fields`` on top."""
        return cls(**{**RECIPES[family], **fields})

    def __post_init__(self) -> None:
        _finite(self, "lr", "weight_decay", "eps", "momentum", "epochs", "grad_clip", *("betas",))
        for name in ("warmup", "checkpoint_every"):
            if not 0 <= getattr(self, name) <= MAX_STEPS:
                raise InputError(f"{name.replace('_', '-')} must be in 0..{MAX_STEPS}, got {getattr(self, name)}")
        if self.log_every < 1 or not 0 <= self.seed < 2**63:
            raise InputError(f"log every must be >= 1 and seed in 0..2^63-1, got {self.log_every}, {self.seed}")
        if self.weight_decay < 0 or self.eps <= 0 or not all(0 <= b < 1 for b in self.betas):
            raise InputError(f"weight decay must be >= 0, eps > 0 and betas in [0, 1), got {self.weight_decay}, "
                             f"{self.eps}, {self.betas}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise InputError(f"grad clip must be > 0 (or off), got {self.grad_clip}")
        if (self.steps is None) == (self.epochs is None):
            raise InputError("give exactly one of steps or epochs")
        if (self.steps is not None and self.steps < 0) or (self.epochs is not None and self.epochs <= 0):
            raise InputError("steps must be >= 0 and epochs > 0")
        if self.batch_size < 1 or self.lr < 0:
            raise InputError(f"batch size must be >= 1 and lr >= 0, got {self.batch_size}, {self.lr}")
        SCHEDULES.get(self.schedule)
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"unknown optimizer {self.optimizer!r}; valid: {', '.join(sorted(OPTIMIZERS))}")

    def total_steps(self, num_samples: int, world_size: int = 1) -> int:
        """Optimiser steps of the run; ``InputError`` past :data:`MAX_STEPS` (a typo, not a plan)."""
        steps = self.steps if self.steps is not None else \
            max(1, int(self.epochs * num_samples // (self.batch_size * world_size)))  # type: ignore[operator]
        if steps > MAX_STEPS:
            raise InputError(f"{steps} optimiser steps is more than {MAX_STEPS}: check --steps / --epochs")
        return steps


def _finite(cfg: Any, *names: str) -> None:
    """``InputError`` naming the first of ``names`` that is NaN or infinite (``None`` is allowed)."""
    for name in names:
        value = getattr(cfg, name)
        for v in value if isinstance(value, tuple) else (value,):
            if v is not None and not math.isfinite(v):
                raise InputError(f"{name.replace('_', '-')} must be a finite number, got {v}")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the run stops (exit 1) without a final checkpoint."""


class Objective:
    """What the loop optimises. Subclasses set ``self.model`` and implement :meth:`loss`.

    ``model`` is the trainable module; the loop may replace it by a DDP wrapper during training
    and puts the original back afterwards, so subclasses call ``self.model(...)`` for the
    trainable forward pass.
    """

    model: nn.Module

    def loss(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one batch and extra scalars to log; random choices come from ``generator``."""
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after every optimiser step (e.g. to clamp a parameter)."""

    def should_stop(self, step: int) -> bool:
        """Checked after every step; ``True`` ends training early (e.g. an accuracy floor)."""
        return False

    def prepare(self, items: int, steps_per_epoch: int, total_steps: int) -> None:
        """Called once before training with the run's size; raise ``InputError`` for a run the
        objective cannot do (a memory pool larger than the data, a warm-up longer than the run)."""

    def start_epoch(self, epoch: int, data: Any, device: torch.device) -> None:
        """Called before the first step of every epoch (and of a resumed run, mid-epoch): an
        objective that decides per item (SafeCLIP's split) reads the whole ``data`` here, leaves
        ``model`` in training mode, and keeps what it decides in buffers of ``model`` so that a
        resumed run finds it again."""

    def learning_rate(self, step: int, lr: float) -> float:
        """The rate of ``step`` given the schedule's ``lr`` (an objective with phases overrides it)."""
        return lr

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    seconds: float
    samples_per_second: float
    data: dict[str, Any] | None = None


def param_groups(named: list[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices and conv kernels only; none on biases, norms, scales (1-d)."""
    decay = [p for n, p in named if p.ndim >= 2]
    no_decay = [p for n, p in named if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _adamw(groups: list[dict[str, Any]], cfg: TrainConfig, fused: bool) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused)


def _sgd(groups: list[dict[str, Any]], cfg: TrainConfig, fused: bool) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, fused=fused)


OPTIMIZERS = {"adamw": _adamw, "sgd": _sgd}


def make_optimizer(objective: Objective, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW (default) or SGD with momentum (``optimizer="sgd"``), same weight-decay groups."""
    groups = param_groups(objective.trainable_parameters(), cfg.weight_decay)
    return OPTIMIZERS[cfg.optimizer](groups, cfg, device.type in ("cpu", "cuda"))


class Trainer:
    """Runs an :class:`Objective` over tensor data with a :class:`TrainConfig`.

    Args:
        objective: the loss and the trainable module.
        data: anything with ``__len__`` and ``batches(index_sets, device) -> iterator of dicts``:
            :class:`~poisonlab.train.data.PairTensors` / ``LabelTensors`` in memory or
            :class:`~poisonlab.train.stream.StreamItems` (DataLoader workers); the loop chooses
            every batch's indices either way, so both give the same run.
        config: hyper-parameters.
        out_dir: where checkpoints and ``metrics.jsonl`` go (``None``: nothing is written).
        dist: rank, world size and device (defaults: one CPU process).
        save_model: ``save_model(path)`` writes the model checkpoint (rank 0 only).
        identity: what the run trains on (dataset description, poison plan digest), kept in the
            resume state: ``--resume`` refuses a state saved for other data or another config.
    """

    def __init__(self, objective: Objective, data: Any, config: TrainConfig, out_dir: str | Path | None = None,
                 dist: DistInfo | None = None, save_model: Any = None, progress: bool = True,
                 identity: dict[str, Any] | None = None) -> None:
        self.objective, self.data, self.cfg = objective, data, config
        self.identity = json.loads(json.dumps(identity or {}, sort_keys=True, default=str))
        self.out = Path(out_dir) if out_dir is not None else None
        self.dist = dist or DistInfo()
        self.save_model = save_model
        self.progress = progress
        per_step = config.batch_size * self.dist.world_size
        if len(data) < per_step:
            raise InputError(f"{len(data)} training items are fewer than one global batch ({per_step})")
        if config.batch_size < 2 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in objective.model.modules()):
            raise InputError("a batch of one image cannot train a model with batch normalisation (the bundled "
                             "ResNets): use --batch-size 2 or more")
        self.steps_per_epoch = len(data) // per_step
        dropped = len(data) - self.steps_per_epoch * per_step
        if dropped:
            log.info("each epoch uses %d of %d items in %d global batches of %d; the %d left over change with "
                     "the epoch's seeded order", len(data) - dropped, len(data), self.steps_per_epoch, per_step, dropped)
        self.total = config.total_steps(len(data), self.dist.world_size)
        objective.prepare(len(data), self.steps_per_epoch, self.total)
        self.optimizer = make_optimizer(objective, config, self.dist.device)
        self.step = 0
        self._perm: tuple[int, torch.Tensor] | None = None

    # -- data order -------------------------------------------------------------------------
    def indices(self, step: int) -> torch.Tensor:
        """This rank's sample indices for ``step``: a slice of the epoch's seeded permutation."""
        epoch, k = divmod(step, self.steps_per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(derive_seed("order", self.cfg.seed, epoch))
            self._perm = (epoch, torch.randperm(len(self.data), generator=g))
        b, w, r = self.cfg.batch_size, self.dist.world_size, self.dist.rank
        start = (k * w + r) * b
        return self._perm[1][start : start + b]

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        model = self.objective.model
        model = model.module if hasattr(model, "module") else model
        return {"step": self.step, "model": model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "rng": torch.get_rng_state(), "config": json.dumps(asdict(self.cfg), sort_keys=True),
                "identity": json.dumps(self.identity, sort_keys=True)}

    def save_checkpoint(self) -> None:
        if self.out is None or not self.dist.is_main:
            return
        with atomic_write(self.out / STATE_FILE) as f:
            torch.save(self.state_dict(), f)
        if self.save_model is not None:
            self.save_model(self.out / "model.safetensors")

    def resume(self) -> None:
        """Continue from ``out_dir/train_state.pt`` (loaded ``weights_only``).

        Raises:
            InputError: there is no saved state, the state is not a training state, the saved run
                had another config or other data (the differing fields are named), or it is finished.
        """
        path = self.out / STATE_FILE if self.out is not None else None
        if path is None or not path.is_file():
            raise InputError(f"nothing to resume: no {STATE_FILE} in {self.out} (run without --resume to start)")
        state = load_tensors(path, "resume state")
        if not isinstance(state, dict) or not {"step", "model", "optimizer", "rng", "config"} <= set(state):
            raise InputError(f"{path} is not a poisonlab training state (no step, model, optimizer and config)")
        saved = [_json_field(state, key, path) for key in ("config", "identity")]
        self.check_same_run(saved[0], saved[1], path)
        step = state["step"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise InputError(f"{path}: step must be a non-negative integer, got {type(step).__name__}")
        if step >= self.total:
            raise InputError(f"the run in {self.out} is finished ({step} of {self.total} steps): nothing to resume")
        model = self.objective.model
        (model.module if hasattr(model, "module") else model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        self.step = step
        self._drop_metrics_after(step)
        log.info("resumed from %s at step %d", path, self.step)

    def check_same_run(self, config: dict[str, Any], identity: dict[str, Any], path: Path) -> None:
        """``InputError`` naming every field where the saved run differs from this one."""
        def differ(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
            return [f"{k} (saved {saved.get(k)!r}, now {now.get(k)!r})" for k in sorted(set(saved) | set(now))
                    if saved.get(k) != now.get(k) and k not in BOOKKEEPING]

        diffs = differ(config, json.loads(json.dumps(asdict(self.cfg), sort_keys=True)))
        if identity:
            diffs += differ(identity, self.identity)
        if diffs:
            raise InputError(f"--resume: the run saved in {path.parent} differs in " + "; ".join(diffs))

    def _drop_metrics_after(self, step: int) -> None:
        """Keep each step once in ``metrics.jsonl``: rows past the resumed step are dropped."""
        path = self.out / METRICS_FILE if self.out is not None else None
        if path is None or not path.is_file() or not self.dist.is_main:
            return
        if path.is_symlink():
            raise InputError(f"{path} is a symlink: poisonlab never writes through one; remove it")
        kept = [line for line in path.read_text(errors="replace").splitlines() if _step_of(line) <= step]
        with atomic_write(path, "w") as f:
            f.write("".join(line + "\n" for line in kept))

    # -- the loop ---------------------------------------------------------------------------
    def _set_lr(self) -> float:
        lr = self.cfg.lr * multiplier(self.cfg.schedule, self.step, self.total, self.cfg.warmup)
        lr = self.objective.learning_rate(self.step, lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def step_indices(self, start: int) -> Iterator[torch.Tensor]:
        """This rank's index set for every step from ``start`` to the end of the run."""
        for step in range(start, self.total):
            yield self.indices(step)

    def _train_step(self, batch: dict[str, Any], scaler: torch.amp.GradScaler | None) -> tuple[float, dict[str, float]]:
        batch = {k: v.to(self.dist.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                 for k, v in batch.items()}
        g = make_generator("step", self.cfg.seed, self.step, self.dist.rank)
        use_amp = scaler is not None
        with torch.autocast(device_type=self.dist.device.type, enabled=use_amp):
            loss, extra = self.objective.loss(batch, g)
        self.optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for _, p in self.objective.trainable_parameters()], self.cfg.grad_clip)
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        self.objective.after_step()
        return float(loss.detach()), extra

    def fit(self, resume: bool = False) -> TrainResult:
        """Train to ``total`` steps (continuing from a checkpoint when ``resume``).

        The output folder is locked for the run (a second writer exits with a clear error) and
        cleared of the temp files an interrupted run left there.
        """
        if self.out is None or not self.dist.is_main:
            return self._fit(resume)
        with run_lock(self.out):
            return self._fit(resume)

    def _fit(self, resume: bool) -> TrainResult:
        if resume:
            self.resume()
        original = self.objective.model
        if self.dist.world_size > 1:
            self.objective.model = nn.parallel.DistributedDataParallel(original)
        use_amp = self.cfg.amp and self.dist.device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda") if use_amp else None
        self.objective.model.train()
        if self.out is not None and self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        metrics = None
        if self.out is not None and self.dist.is_main:
            metrics = os.fdopen(open_nofollow(self.out / METRICS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "a")
        show = self.progress and self.dist.is_main and sys.stderr.isatty()
        bar = tqdm(total=self.total, initial=self.step, disable=not show,
                   desc="train", leave=False, dynamic_ncols=True)
        lines = ProgressLines(self.total, self.step) if self.progress and self.dist.is_main and not show else None
        start, first, loss = time.perf_counter(), self.step, float("nan")
        last_finite = float("nan")
        batches = self.data.batches(self.step_indices(self.step), self.dist.device)
        try:
            for batch in batches:
                if self.step % self.steps_per_epoch == 0 or self.step == first:
                    self.objective.start_epoch(self.step // self.steps_per_epoch, self.data, self.dist.device)
                lr = self._set_lr()
                loss, extra = self._train_step(batch, scaler)
                if not math.isfinite(loss):
                    raise TrainingDiverged(f"the loss is {loss} at step {self.step + 1} (last finite loss "
                                           f"{last_finite:.4f}); lower --lr or check the data; no final checkpoint written")
                last_finite = loss
                self.step += 1
                bar.update(1)
                if lines is not None:
                    lines.update(self.step, loss)
                if metrics is not None and (self.step % self.cfg.log_every == 0 or self.step == self.total):
                    metrics.write(json.dumps({"step": self.step, "loss": round(loss, 6), "lr": lr, **extra}) + "\n")
                    metrics.flush()
                    bar.set_postfix(loss=f"{loss:.3f}")
                if self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                if self.objective.should_stop(self.step):
                    log.info("objective stopped training at step %d", self.step)
                    break
        finally:
            batches.close()
            bar.close()
            if metrics is not None:
                metrics.close()
            self.objective.model = original
        seconds = time.perf_counter() - start
        done = (self.step - first) * self.cfg.batch_size * self.dist.world_size
        just_saved = bool(self.cfg.checkpoint_every) and self.step % self.cfg.checkpoint_every == 0 and self.step > first
        if self.out is not None and not just_saved:
            self.save_checkpoint()
        return TrainResult(self.step, loss, seconds, done / seconds if seconds > 0 else 0.0)


def _json_field(state: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    """A training state's JSON text field ``key`` as a mapping (``{}`` when absent, as in old states)."""
    text = state.get(key, "{}")
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise InputError(f"{path}: {key} is not the JSON text of a mapping; not a poisonlab training state")
    return value


def _step_of(line: str) -> float:
    """The step of a ``metrics.jsonl`` line; infinity for a line that is no metrics row (a line a
    killed run left half-written is dropped on resume, not parsed into a traceback)."""
    try:
        row = json.loads(line)
    except (ValueError, RecursionError):
        return math.inf
    step = row.get("step") if isinstance(row, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else math.inf

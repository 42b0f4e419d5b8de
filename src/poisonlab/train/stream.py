"""Streaming data: worker processes decode, resize and poison each item; memory flat in dataset size.

The in-memory sources of :mod:`poisonlab.train.data` decode a whole dataset before the first
step, which is right for the embedded data and wrong for web-scale shards (250K CC3M pairs at
224 px are 37 GB decoded). :class:`StreamItems` gives the loop the same batches through a
``torch.utils.data.DataLoader``: the loop still chooses every batch's indices (the seeded epoch
order, this rank's slice of it, the step it resumes at), a batch sampler hands them to the
workers, and each worker reads, decodes, resizes, applies the poison plan (whose trigger draws
from a generator seeded by the plan's seed and the item's index, so the order of reading does not
matter) and quantises to ``uint8`` with :func:`~poisonlab.train.data.item_uint8`, exactly what
the in-memory path stores. Images cross to the device as ``uint8`` and become float there.

:func:`open_items` chooses between the two paths (``DataConfig.mode``: ``memory``, ``stream`` or
``auto``, which streams when the decoded set would exceed ``memory_budget`` bytes).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from poisonlab.data.base import ImageCaptionDataset
from poisonlab.errors import InputError
from poisonlab.train.data import (
    LabelTensors,
    PairTensors,
    as_float,
    item_uint8,
    label_tensors,
    pair_tensors,
)

log = logging.getLogger(__name__)
MODES = ("auto", "memory", "stream")


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class DataConfig:
    """How training, cleaning, auditing and evaluation read their data.

    Args:
        mode: ``memory`` (decode everything first), ``stream`` (decode in workers, batch by
            batch) or ``auto`` (stream when the decoded set would exceed ``memory_budget``).
        workers: DataLoader worker processes in stream mode (``None``: the cores available;
            0 decodes in the main process).
        memory_budget: bytes of decoded ``uint8`` images above which ``auto`` streams.
        prefetch: batches each worker prepares ahead.
        skip_bad_images: drop unreadable images from their batch (counted) instead of stopping.
    """

    mode: str = "auto"
    workers: int | None = None
    memory_budget: int = 2 * 1024**3
    prefetch: int = 4
    skip_bad_images: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"data mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.workers is not None and not 0 <= self.workers <= 256:
            raise InputError(f"workers must be in 0..256, got {self.workers}")
        if self.memory_budget < 1 or self.prefetch < 1:
            raise InputError(f"memory budget and prefetch must be >= 1, got {self.memory_budget}, {self.prefetch}")

    def num_workers(self) -> int:
        return available_cores() if self.workers is None else self.workers


def decoded_bytes(n: int, size: int) -> int:
    """Bytes of ``n`` decoded RGB ``uint8`` images of side ``size``."""
    return n * 3 * size * size


def choose_mode(dataset: ImageCaptionDataset, size: int, config: DataConfig) -> str:
    """``memory`` or ``stream`` for ``dataset`` at ``size`` under ``config`` (logged)."""
    need = decoded_bytes(len(dataset), size)
    if config.mode != "auto":
        mode = config.mode
    else:
        mode = "stream" if need > config.memory_budget else "memory"
    log.info("data: %s mode for %d items at %d px (%.2f GiB decoded, budget %.2f GiB)", mode, len(dataset), size,
             need / 2**30, config.memory_budget / 2**30)
    return mode


class _Items(Dataset):
    """What a worker does for one index: read (with the plan applied), resize, quantise."""

    def __init__(self, dataset: ImageCaptionDataset, size: int) -> None:
        self.dataset, self.size = dataset, size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str, int]:
        try:
            image, caption, label = self.dataset[index]
        except InputError as err:  # an unreadable item: the collate decides (stop or skip)
            return index, None, str(err), -1
        return index, item_uint8(image, self.size), caption, label


class _Collate:
    """Stacks a batch in the worker; tokenizes captions there when a tokenizer is given."""

    def __init__(self, tokenize: Callable[[list[str]], torch.Tensor] | None, poisoned: set[int],
                 skip_bad: bool) -> None:
        self.tokenize, self.poisoned, self.skip_bad = tokenize, poisoned, skip_bad

    def __call__(self, items: list[tuple[int, torch.Tensor | None, str, int]]) -> dict[str, Any]:
        bad = [it for it in items if it[1] is None]
        if bad and not self.skip_bad:
            return {"error": bad[0][2]}
        good = [it for it in items if it[1] is not None]
        if not good:
            return {"error": f"every image of a batch is unreadable (first: {bad[0][2]})"}
        index = torch.tensor([it[0] for it in good], dtype=torch.long)
        captions = [it[2] for it in good]
        out: dict[str, Any] = {"images": torch.stack([it[1] for it in good]),  # type: ignore[misc]
                               "labels": torch.tensor([it[3] for it in good], dtype=torch.long), "index": index,
                               "poisoned": torch.tensor([it[0] in self.poisoned for it in good]),
                               "captions": captions,
                               "skipped": len(bad), "skipped_poisoned": sum(it[0] in self.poisoned for it in bad)}
        if self.tokenize is not None:
            out["tokens"] = self.tokenize(captions)
        return out


class _IndexPlan:
    """The batch sampler: yields the index sets of the current pass (set before each pass)."""

    def __init__(self) -> None:
        self.pending: Iterable[torch.Tensor] = ()

    def __iter__(self) -> Iterator[list[int]]:
        for index in self.pending:
            yield [int(i) for i in index]


class StreamItems:
    """A dataset read batch by batch through DataLoader workers (the same batches as in memory).

    Args:
        dataset: any poisonlab dataset (a :class:`~poisonlab.attacks.PoisonedDataset` applies
            its plan in the workers).
        size: image side the model reads.
        tokenize: captions -> tokens (CLIP); ``None`` for classifiers and SSL encoders.
        config: workers, prefetch, bad-image policy.

    ``skipped`` and ``skipped_poisoned`` count the unreadable images dropped so far.
    """

    mode = "stream"

    def __init__(self, dataset: ImageCaptionDataset, size: int,
                 tokenize: Callable[[list[str]], torch.Tensor] | None = None,
                 config: DataConfig | None = None) -> None:
        if len(dataset) == 0:
            raise InputError("the dataset is empty")
        self.config = config or DataConfig(mode="stream")
        self.dataset, self.size, self.tokenize = dataset, size, tokenize
        self.labels = torch.tensor(dataset.labels(), dtype=torch.long)
        self.captions = dataset.captions()
        self.skipped = 0
        self.skipped_poisoned = 0
        self.workers = self.config.num_workers()
        self._plan = _IndexPlan()
        self._loaders: dict[str, DataLoader] = {}

    def __len__(self) -> int:
        return len(self.labels)

    def _loader(self, device: torch.device | None) -> DataLoader:
        """One loader per device kind, its workers kept alive between passes."""
        kind = device.type if device is not None else "cpu"
        if kind not in self._loaders:
            extra: dict[str, Any] = {}
            if self.workers:
                extra = {"prefetch_factor": self.config.prefetch, "persistent_workers": True}
            collate = _Collate(self.tokenize, set(self.dataset.poisoned_indices()), self.config.skip_bad_images)
            self._loaders[kind] = DataLoader(_Items(self.dataset, self.size), batch_sampler=self._plan,
                                             num_workers=self.workers, collate_fn=collate,
                                             pin_memory=kind == "cuda", **extra)
        return self._loaders[kind]

    def batches(self, indices: Iterable[torch.Tensor], device: torch.device | None = None) -> Iterator[dict[str, Any]]:
        """The batch of each index set, in order; images float in ``[0, 1]`` on ``device``.

        Raises:
            InputError: an image is unreadable (naming its file, or shard and key) and
                ``skip_bad_images`` is off.
        """
        self._plan.pending = indices
        for raw in self._loader(device):
            if "error" in raw:
                raise InputError(raw["error"] + ("" if self.config.skip_bad_images
                                                 else " (--skip-bad-images drops such images)"))
            self.skipped += raw.pop("skipped")
            self.skipped_poisoned += raw.pop("skipped_poisoned")
            raw["images"] = as_float(raw["images"], device)
            yield raw

    def batch(self, index: torch.Tensor, device: torch.device | None = None) -> dict[str, Any]:
        """One batch (for callers that index directly)."""
        one = self.batches([index], device)
        try:
            return next(one)
        finally:
            one.close()

    def close(self) -> None:
        """Stop the workers."""
        self._loaders.clear()


def sequential(n: int, batch_size: int) -> list[torch.Tensor]:
    """Index sets ``0..n-1`` in order, ``batch_size`` at a time (evaluation and scoring passes)."""
    return [torch.arange(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def open_items(dataset: ImageCaptionDataset, size: int,
               tokenize: Callable[[list[str]], torch.Tensor] | None = None,
               config: DataConfig | None = None) -> PairTensors | LabelTensors | StreamItems:
    """The data source for ``dataset``: tensors in memory or a stream, as ``config`` chooses.

    With ``tokenize``, in-memory data are :class:`PairTensors` (and captions are required);
    without, :class:`LabelTensors`.
    """
    config = config or DataConfig()
    if config.skip_bad_images and config.mode == "memory":
        raise InputError("--skip-bad-images needs --data stream or auto: memory mode decodes every image up front")
    if config.skip_bad_images:
        config = DataConfig("stream", config.workers, config.memory_budget, config.prefetch, True)
    if choose_mode(dataset, size, config) == "stream":
        if tokenize is not None and not all(c.strip() for c in dataset.captions()):
            raise InputError("the dataset has items without a caption; CLIP training needs image-caption pairs")
        return StreamItems(dataset, size, tokenize, config)
    if tokenize is not None:
        return pair_tensors(dataset, tokenize, size)
    return label_tensors(dataset, size)


def data_summary(source: Any, dataset: ImageCaptionDataset) -> dict[str, Any]:
    """What a run's ``--json`` summary and metadata say about its data path: the mode, the images
    dropped while reading and the malformed samples the reader left out of ``dataset``."""
    out: dict[str, Any] = {"mode": source.mode, "items": len(source)}
    if source.mode == "stream":
        out["workers"] = source.workers
    out["skipped_images"] = source.skipped
    if source.skipped_poisoned:
        out["skipped_poisoned"] = source.skipped_poisoned
    if dataset.skipped:
        out["skipped_samples"] = dataset.skipped
    return out

"""Training data held as tensors: the loop indexes batches instead of decoding images.

:func:`pair_tensors` reads an image-caption dataset once (applying a poison plan's triggers if the
dataset is a :class:`~poisonlab.attacks.PoisonedDataset`), stores images as ``uint8`` like
images on disk, and tokenizes every caption once. Every item goes through :func:`item_uint8`,
the same function the streaming path (:mod:`poisonlab.train.stream`) applies in its workers, so
both paths give the same bytes for the same item.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from poisonlab.data.base import ImageCaptionDataset, TensorDataset
from poisonlab.errors import InputError


def as_float(images: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """``uint8`` images -> float in ``[0, 1]``, moved to ``device`` (if given) before converting."""
    return (images if device is None else images.to(device, non_blocking=True)).float().div_(255.0)


def item_uint8(image: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """One ``[C, H, W]`` float image in ``[0, 1]`` -> ``uint8``, resized to ``size`` if it differs."""
    if size is not None and image.shape[-1] != size:
        image = torch.nn.functional.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True)[0]
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def poisoned_mask(dataset: ImageCaptionDataset) -> torch.Tensor:
    """``bool [N]``: which items a poison plan changed."""
    mask = torch.zeros(len(dataset), dtype=torch.bool)
    mask[torch.as_tensor(dataset.poisoned_indices(), dtype=torch.long)] = True
    return mask


class InMemory:
    """Shared by the tensor sources: ``batches`` yields :meth:`batch` for each index set."""

    mode = "memory"
    skipped = 0
    skipped_poisoned = 0

    def batch(self, index: torch.Tensor, device: torch.device | None = None) -> dict[str, Any]:
        raise NotImplementedError

    def batches(self, indices: Iterable[torch.Tensor], device: torch.device | None = None) -> Iterator[dict[str, Any]]:
        """The batch of each index set, in order (the streaming sources have the same method)."""
        for index in indices:
            yield self.batch(index, device)


@dataclass
class PairTensors(InMemory):
    """Images ``uint8 [N, C, H, W]``, tokens ``long [N, L]``, labels ``long [N]``, raw captions,
    and which items are poisoned (``bool [N]``)."""

    images: torch.Tensor
    tokens: torch.Tensor
    labels: torch.Tensor
    captions: list[str] | None = None
    poisoned: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, index: torch.Tensor, device: torch.device | None = None) -> dict[str, Any]:
        """The items at ``index`` with images as float in ``[0, 1]`` (and their captions).

        With ``device``, the images travel there as ``uint8`` and become float there (a quarter
        of the bytes over the bus, and the conversion off the CPU).
        """
        out: dict[str, Any] = {"images": as_float(self.images[index], device), "tokens": self.tokens[index],
                               "labels": self.labels[index], "index": index}
        if self.poisoned is not None:
            out["poisoned"] = self.poisoned[index]
        if self.captions is not None:
            out["captions"] = [self.captions[int(i)] for i in index]
        return out


def dataset_images(dataset: ImageCaptionDataset, size: int | None = None) -> torch.Tensor:
    """All images of ``dataset`` as ``uint8 [N, C, H, W]`` (fast path for in-memory data)."""
    if isinstance(dataset, TensorDataset) and (size is None or dataset.images.shape[-1] == size):
        return dataset.images
    first = item_uint8(dataset[0][0], size)
    out = torch.empty((len(dataset), *first.shape), dtype=torch.uint8)  # filled in place: one copy at peak
    out[0] = first
    for i in range(1, len(dataset)):
        image = item_uint8(dataset[i][0], size)
        if image.shape != first.shape:
            raise InputError(f"item {i} has shape {tuple(image.shape)}, item 0 {tuple(first.shape)}")
        out[i] = image
    return out


def pair_tensors(dataset: ImageCaptionDataset, tokenize: Callable[[list[str]], torch.Tensor],
                 size: int | None = None, require_captions: bool = True) -> PairTensors:
    """Read ``dataset`` once into :class:`PairTensors`.

    Raises:
        InputError: the dataset is empty, or has empty captions when ``require_captions``.
    """
    if len(dataset) == 0:
        raise InputError("the dataset is empty")
    captions = dataset.captions()
    if require_captions and not all(c.strip() for c in captions):
        raise InputError("the dataset has items without a caption; CLIP training needs image-caption pairs")
    return PairTensors(dataset_images(dataset, size), tokenize(captions),
                       torch.tensor(dataset.labels(), dtype=torch.long), captions, poisoned_mask(dataset))


@dataclass
class LabelTensors(InMemory):
    """Images ``uint8 [N, C, H, W]`` and labels ``long [N]`` (classifier and SSL training)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, index: torch.Tensor, device: torch.device | None = None) -> dict[str, Any]:
        """The items at ``index`` with images as float in ``[0, 1]`` (on ``device`` if given)."""
        return {"images": as_float(self.images[index], device), "labels": self.labels[index], "index": index}

    def subset(self, index: torch.Tensor | list[int]) -> LabelTensors:
        index = torch.as_tensor(index, dtype=torch.long)
        return LabelTensors(self.images[index], self.labels[index])


def label_tensors(dataset: ImageCaptionDataset, size: int | None = None) -> LabelTensors:
    """Read ``dataset`` once into :class:`LabelTensors` (triggers of a poison plan applied)."""
    if len(dataset) == 0:
        raise InputError("the dataset is empty")
    return LabelTensors(dataset_images(dataset, size), torch.tensor(dataset.labels(), dtype=torch.long))

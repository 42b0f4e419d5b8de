"""The item interface every dataset in poisonlab follows, and the dataset registry.

A dataset yields ``(image, caption, label)``: ``image`` a float tensor ``[C, H, W]`` in
``[0, 1]``, ``caption`` a string, ``label`` an int class index (``-1`` where unknown). It also
carries ``classnames`` (``None`` when it has no classes) and the zero-shot ``templates``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset

from poisonlab.registry import Registry

Item = tuple[torch.Tensor, str, int]

DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a close-up photo of a {}.",
    "a rendering of a {}.",
)


class ImageCaptionDataset(Dataset):
    """Base class for image-caption-label datasets.

    Subclasses implement ``__len__`` and ``__getitem__``; ``describe()`` returns a small,
    JSON-serialisable description (no absolute paths) used in poison plans and provenance.
    """

    classnames: list[str] | None = None
    templates: Sequence[str] = DEFAULT_TEMPLATES
    skipped: int = 0
    """Malformed samples a reader left out (webdataset shards opened with ``skip_bad``)."""
    plan: Any = None
    """The poison plan applied to the items (:class:`~poisonlab.attacks.PoisonedDataset`), else None."""
    classnames_source: str = "dataset"
    templates_source: str = "poisonlab default"

    def rename_classes(self, names: list[str], source: str) -> None:
        """Use ``names`` (in label order) as the class names; readers whose captions are made
        from class names rebuild them."""
        self.classnames = list(names)
        self.classnames_source = source

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Item:
        raise NotImplementedError

    def labels(self) -> list[int]:
        """All labels, in order (subclasses override when this is cheaper than loading images)."""
        return [self[i][2] for i in range(len(self))]

    def captions(self) -> list[str]:
        """All captions, in order."""
        return [self[i][1] for i in range(len(self))]

    def poisoned_indices(self) -> list[int]:
        """Indices of the items a poison plan changed (none for clean data)."""
        return []

    def keys(self) -> list[str] | None:
        """A stable name per item (webdataset ``__key__``, the CSV's path, the relative file path).

        ``None`` for generated data, whose items are named by position and generation seed.
        Poison plans record the key of every item they change, so a plan is never applied to a
        dataset whose items differ.
        """
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": type(self).__name__, "size": len(self)}


@dataclass
class TensorDataset(ImageCaptionDataset):
    """Images held in memory as ``uint8 [N, C, H, W]`` (the loop is then not bound by PIL)."""

    images: torch.Tensor
    caption_list: list[str]
    label_list: list[int]
    classnames: list[str] | None = None
    templates: Sequence[str] = DEFAULT_TEMPLATES
    description: dict[str, Any] = field(default_factory=dict)
    key_list: list[str] | None = None

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError("TensorDataset images must be uint8 [N, C, H, W]")
        if len(self.caption_list) != n or len(self.label_list) != n:
            raise ValueError("TensorDataset needs one caption and one label per image")

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Item:
        return self.images[index].float() / 255.0, self.caption_list[index], int(self.label_list[index])

    def labels(self) -> list[int]:
        return list(self.label_list)

    def captions(self) -> list[str]:
        return list(self.caption_list)

    def keys(self) -> list[str] | None:
        return None if self.key_list is None else list(self.key_list)

    def describe(self) -> dict[str, Any]:
        return dict(self.description) or {"name": "tensor", "size": len(self)}


class Subset(ImageCaptionDataset):
    """The items of ``base`` at ``indices``, in that order (the pairs a filter kept).

    Class names, templates, keys and the poisoned items follow the base: item ``k`` is
    ``base[indices[k]]``, and it counts as poisoned when that base item is.
    """

    def __init__(self, base: ImageCaptionDataset, indices: Sequence[int]) -> None:
        self.base, self.indices = base, [int(i) for i in indices]
        if any(not 0 <= i < len(base) for i in self.indices):
            raise ValueError(f"subset indices must lie in 0..{len(base) - 1}")
        self.classnames, self.templates = base.classnames, base.templates
        self.classnames_source, self.templates_source = base.classnames_source, base.templates_source

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Item:
        return self.base[self.indices[index]]

    def labels(self) -> list[int]:
        labels = self.base.labels()
        return [labels[i] for i in self.indices]

    def captions(self) -> list[str]:
        captions = self.base.captions()
        return [captions[i] for i in self.indices]

    def poisoned_indices(self) -> list[int]:
        poisoned = set(self.base.poisoned_indices())
        return [k for k, i in enumerate(self.indices) if i in poisoned]

    def keys(self) -> list[str] | None:
        keys = self.base.keys()
        return None if keys is None else [keys[i] for i in self.indices]

    def describe(self) -> dict[str, Any]:
        return {"name": "subset", "size": len(self), "of": self.base.describe()}


DATASETS: Registry[ImageCaptionDataset] = Registry("dataset")

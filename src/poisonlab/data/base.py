"""The item interface every dataset in poisonlab follows, and the dataset registry.

A dataset yields ``(image, caption, label)``: ``image`` a float tensor ``[C, H, W]`` in
``[0, 1]``, ``caption`` a string, ``label`` an int class index (``-1`` where unknown). It also
carries ``classnames`` (``None`` when it has no classes) and the zero-shot ``templates``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torchvision.transforms.functional as TF
from torch.utils.data import Dataset

from poisonlab.errors import InputError
from poisonlab.registry import Registry
from poisonlab.utils.seeding import make_generator

Item = tuple[torch.Tensor, str, int]

DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a close-up photo of a {}.",
    "a rendering of a {}.",
)


@dataclass(frozen=True)
class ReadAs:
    """How to turn a decoded image into the model's input: ``transform`` maps a PIL image to a float
    ``[3, size, size]`` tensor in ``[0, 1]`` (the model's own open_clip preprocess without its
    normalisation, :func:`poisonlab.metrics.evaluator.model_preprocess`)."""

    size: int
    transform: Any


def read_as(dataset: ImageCaptionDataset, how: ReadAs | None) -> None:
    """Read the images of ``dataset`` (and of the data under its plan or subset) with ``how``
    instead of the readers' own resize; ``None`` goes back to it."""
    while dataset is not None:
        dataset.read = how
        dataset = getattr(dataset, "base", None)


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
    read: ReadAs | None = None
    """Set by :func:`read_as`: images decoded as the model's preprocess would (evaluation)."""

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

    def fingerprint(self) -> str | None:
        """A digest of what the items are, which a resumed training run must find unchanged.

        Readers of files digest every item's key, caption and label with each file's size and
        modification time (so a replaced image or caption is noticed without reading the
        images); data in memory digests its pixels. ``None`` where nothing identifies the items.
        """
        return None


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
        image = self.images[index]
        if self.read is not None and tuple(image.shape[-2:]) != (self.read.size, self.read.size):
            return self.read.transform(TF.to_pil_image(image)), self.caption_list[index], int(self.label_list[index])
        return image.float() / 255.0, self.caption_list[index], int(self.label_list[index])

    def labels(self) -> list[int]:
        return list(self.label_list)

    def captions(self) -> list[str]:
        return list(self.caption_list)

    def keys(self) -> list[str] | None:
        return None if self.key_list is None else list(self.key_list)

    def describe(self) -> dict[str, Any]:
        return dict(self.description) or {"name": "tensor", "size": len(self)}

    def fingerprint(self) -> str:
        """The digest of the pixels, captions and labels."""
        return digest_parts(self.images.numpy().tobytes(), self.caption_list, [int(y) for y in self.label_list])


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

    def fingerprint(self) -> str | None:
        base = self.base.fingerprint()
        return None if base is None else digest_parts(base, self.indices)


def check_classnames(names: Sequence[str], source: str) -> list[str]:
    """``names`` as a list, refused when one is empty or two are the same (a zero-shot head with
    two identical classes, or a nameless one, measures nothing). Applied to names read from a
    user's files and folders; open_clip's ImageNet list is the field's as it is (it names two
    pairs of classes alike, as every paper's evaluation does)."""
    names = [str(n) for n in names]
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if not name.strip():
            raise InputError(f"{source}: class {i} has an empty name")
        if name in seen:
            raise InputError(f"{source}: classes {seen[name]} and {i} have the same name {name!r}")
        seen[name] = i
    return names


def digest_parts(*parts: Any) -> str:
    """16 hex digits of the SHA-256 of ``parts`` (bytes as they are, the rest as JSON)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True).encode())
        h.update(b"\x1f")
    return h.hexdigest()[:16]


DATASETS: Registry[ImageCaptionDataset] = Registry("dataset")


def poisoned_indices(dataset: ImageCaptionDataset) -> set[int] | None:
    """The indices a poison plan poisons, or ``None`` when ``dataset`` carries no plan (then a
    defense cannot score itself against the truth)."""
    return set(dataset.plan.indices) if getattr(dataset, "plan", None) is not None else None


def trusted_indices(total: int, share: float, seed: int = 0) -> list[int]:
    """``round(share * total)`` indices drawn with ``seed``: the defender's trusted subset.

    Raises:
        InputError: ``share`` is not in ``(0, 1]`` or the subset would be empty.
    """
    if not 0.0 < share <= 1.0:
        raise InputError(f"trusted share must be in (0, 1], got {share}")
    count = round(share * total)
    if count < 1:
        raise InputError(f"a trusted share of {share} of {total} items is an empty trusted set")
    perm = torch.randperm(total, generator=make_generator("trusted", seed))
    return sorted(int(i) for i in perm[:count])

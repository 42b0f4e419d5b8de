"""Readers for user data, all with the ``(image, caption, label)`` item interface.

- :class:`CsvDataset`: a CSV of ``path,caption[,label]`` (paths relative to the CSV);
- :class:`FolderDataset`: an ImageFolder tree ``root/<class>/<image>``;
- :class:`Cifar10Dataset`: CIFAR-10 python batches in a local folder (read with a restricted
  unpickler that only rebuilds numpy arrays, never arbitrary objects);
- :class:`WebDatasetShards`: webdataset ``.tar`` shards (``key.jpg|png`` + ``key.txt`` [+ ``key.cls``]),
  read by offset so a seeded order can visit them without loading them.

Images are decoded lazily with PIL, converted to RGB and resized (shorter side, then centre
crop) to ``size``. A missing or unreadable image raises :class:`InputError` naming its row.
"""

from __future__ import annotations

import csv
import io
import logging
import numbers
import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, UnidentifiedImageError

from poisonlab.data.base import (
    DEFAULT_TEMPLATES,
    ImageCaptionDataset,
    Item,
    ReadAs,
    TensorDataset,
    check_classnames,
    digest_parts,
)
from poisonlab.data.zero_shot import BUILTIN_TEMPLATES, synset_classnames
from poisonlab.errors import InputError

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif"}


DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def decode_image(data: bytes | Path, size: int, where: str, read: ReadAs | None = None) -> torch.Tensor:
    """Decode an image (bytes or file) to float ``[3, size, size]``; ``InputError`` naming ``where``.

    The shorter side is resized to ``size`` (antialiased, on ``uint8`` like the pixels on disk),
    then the centre is cropped. JPEGs are decoded at the smallest DCT scale that still covers
    ``size`` (PIL's ``draft``), which makes web-sized photos several times cheaper to read.

    With ``read`` (evaluation), the image is decoded in full and handed to ``read.transform``, the
    model's own open_clip preprocess (bicubic resize in PIL, centre crop): the pixels
    clip_benchmark and the papers evaluate.
    """
    try:
        src = io.BytesIO(data) if isinstance(data, bytes) else data
        with Image.open(src) as im:
            if read is not None:  # RGB first, as torchvision's ImageFolder loader does for clip_benchmark
                return read.transform(_to_rgb(im, where))
            if im.format == "JPEG":
                im.draft("RGB", (size, size))
            rgb = _to_rgb(im, where)
    except FileNotFoundError:
        raise InputError(f"{where}: image file not found") from None
    except DECODE_ERRORS as err:
        raise InputError(f"{where}: cannot read image ({err})") from None
    tensor = TF.resize(TF.pil_to_tensor(rgb), size, antialias=True)
    return TF.center_crop(tensor, [size, size]).float() / 255.0


WIDE_MODES = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535, "F": 1}
"""Single-channel modes wider than 8 bits, and the value that is white in each (16-bit PNGs and
TIFFs open as ``I;16``/``I``; float TIFFs as ``F`` in [0, 1])."""


def _to_rgb(im: Image.Image, where: str) -> Image.Image:
    """``im`` as 8-bit RGB, wide greyscale scaled to 8 bits (PIL's ``convert`` clips it: a 16-bit mid
    grey would become white)."""
    white = WIDE_MODES.get(im.mode)
    if white is None:
        return im.convert("RGB")
    values = np.asarray(im, dtype=np.float64)
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > white:
        raise InputError(f"{where}: {im.mode} image values outside 0..{white}; save it as an 8- or 16-bit image")
    grey = np.rint(values * (255.0 / white)).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def _class_captions(classnames: list[str], labels: list[int]) -> list[str]:
    return [DEFAULT_TEMPLATES[0].format(classnames[y]) for y in labels]


class _ImageFiles(ImageCaptionDataset):
    """Images listed as files, with captions and labels held in lists."""

    paths: list[Path]
    caption_list: list[str]
    label_list: list[int]
    size: int

    def where(self, index: int) -> str:
        """How an error message names item ``index``."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Item:
        return decode_image(self.paths[index], self.size, self.where(index), self.read), \
            self.caption_list[index], self.label_list[index]

    def labels(self) -> list[int]:
        return list(self.label_list)

    def captions(self) -> list[str]:
        return list(self.caption_list)

    def fingerprint(self) -> str:
        """Keys, captions, labels, and each image file's size and modification time."""
        files = []
        for p in self.paths:
            st = p.stat()
            files.append([st.st_size, st.st_mtime_ns])
        return digest_parts(self.keys(), self.caption_list, self.label_list, files)


class CsvDataset(_ImageFiles):
    """``path,caption[,label]`` rows; an optional header row ``path,caption[,label]`` is skipped.

    Labels may be integers or class names (then ``classnames`` is their sorted set).
    """

    def __init__(self, csv_path: str | Path, size: int = 32) -> None:
        self.csv_path = Path(csv_path)
        if not self.csv_path.is_file():
            raise InputError(f"CSV file not found: {self.csv_path}")
        self.size = size
        rows = self._read_rows()
        self.paths = [self.csv_path.parent / r[0] for r in rows]
        self.key_list = [r[0] for r in rows]
        self.caption_list = [r[1] for r in rows]
        self.label_list, self.classnames = self._parse_labels([r[2] if len(r) > 2 else "" for r in rows])
        for i, p in enumerate(self.paths):
            if not p.is_file():
                raise InputError(f"{self.csv_path.name} row {i + 1}: image {rows[i][0]!r} not found")

    def _read_rows(self) -> list[list[str]]:
        limit = csv.field_size_limit()
        csv.field_size_limit(max(limit, 1 << 26))  # a long caption is kept (the tokenizer truncates it)
        try:
            with open(self.csv_path, newline="", encoding="utf-8") as f:
                rows = [r for r in csv.reader(f) if r]
        except UnicodeDecodeError as err:
            line = self.csv_path.read_bytes()[: err.start].count(b"\n") + 1
            raise InputError(f"{self.csv_path.name} line {line}: not UTF-8 text (byte {err.object[err.start]:#x}); "
                             "save the CSV as UTF-8") from None
        except csv.Error as err:
            raise InputError(f"{self.csv_path.name}: not a readable CSV ({err})") from None
        finally:
            csv.field_size_limit(limit)
        if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "caption"]:
            rows = rows[1:]
        for i, r in enumerate(rows):
            if len(r) < 2 or not r[0].strip():
                raise InputError(f"{self.csv_path.name} row {i + 1}: expected path,caption[,label]")
        if not rows:
            raise InputError(f"{self.csv_path.name}: no rows")
        return rows

    def _parse_labels(self, raw: list[str]) -> tuple[list[int], list[str] | None]:
        if all(s == "" for s in raw):
            return [-1] * len(raw), None
        empty = [i for i, s in enumerate(raw) if not s.strip()]
        if empty:
            raise InputError(f"{self.csv_path.name} row {empty[0] + 1}: empty label (give every row a label, or none)")
        if all(s.lstrip("-").isdigit() for s in raw):
            return [int(s) for s in raw], None
        names = sorted(set(raw))
        index = {name: i for i, name in enumerate(names)}
        return [index[s] for s in raw], names

    def where(self, index: int) -> str:
        return f"{self.csv_path.name} row {index + 1} ({self.paths[index].name})"

    def keys(self) -> list[str]:
        return list(self.key_list)

    def rename_classes(self, names: list[str], source: str) -> None:
        """Names for integer labels, or a new order for the CSV's own class-name labels."""
        if self.classnames is not None:
            missing = [c for c in self.classnames if c not in names]
            if missing:
                raise InputError(f"{source}: the CSV's label {missing[0]!r} is not among the class names")
            self.label_list = [names.index(self.classnames[y]) for y in self.label_list]
        super().rename_classes(names, source)

    def describe(self) -> dict[str, Any]:
        return {"name": "csv", "file": self.csv_path.name, "size": self.size, "n": len(self)}


class FolderDataset(_ImageFiles):
    """ImageFolder tree; caption = "a photo of a {class}." with ``_`` read as a space."""

    def __init__(self, root: str | Path, size: int = 32) -> None:
        self.root = Path(root)
        self.size = size
        classes = sorted(d.name for d in self.root.iterdir() if d.is_dir())
        if not classes:
            raise InputError(f"{self.root}: no class folders (expected root/<class>/<image>)")
        imagenet = synset_classnames(classes)
        if imagenet is not None:
            self.classnames, self.classnames_source = imagenet, "imagenet1k (WordNet-id folders, timm synsets)"
            self.templates, self.templates_source = BUILTIN_TEMPLATES["openai"](), "openai (open_clip zero_shot_metadata)"
        else:
            names = check_classnames([c.replace("_", " ") for c in classes], f"{self.root} (class folders)")
            self.classnames, self.classnames_source = names, "folder names"
        self.paths: list[Path] = []
        self.label_list: list[int] = []
        for y, c in enumerate(classes):
            files = sorted(p for p in (self.root / c).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            self.paths += files
            self.label_list += [y] * len(files)
        if not self.paths:
            raise InputError(f"{self.root}: no images in the class folders")
        self.caption_list = _class_captions(self.classnames, self.label_list)

    def where(self, index: int) -> str:
        return str(self.paths[index].relative_to(self.root))

    def keys(self) -> list[str]:
        return [p.relative_to(self.root).as_posix() for p in self.paths]

    def rename_classes(self, names: list[str], source: str) -> None:
        super().rename_classes(names, source)
        self.caption_list = _class_captions(self.classnames, self.label_list)  # type: ignore[arg-type]

    def describe(self) -> dict[str, Any]:
        return {"name": "imagefolder", "folder": self.root.name, "size": self.size, "n": len(self)}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds plain containers and numpy arrays only; anything else is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _load_cifar_batch(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as err:
        raise InputError(f"{path.name}: not a CIFAR-10 python batch ({err})") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path.name}: not a CIFAR-10 python batch (a {type(raw).__name__}, not a dict)")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}


def _check_cifar_batch(path: Path, batch: dict[str, Any]) -> None:
    """``InputError`` unless the batch has ``data`` ``uint8 [N, 3072]`` and ``N`` integer ``labels`` in 0..9."""
    if "data" not in batch or "labels" not in batch:
        raise InputError(f"{path.name}: a CIFAR-10 batch needs 'data' and 'labels' (found: {', '.join(map(str, batch))})")
    data, labels = batch["data"], batch["labels"]
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
        shape = getattr(data, "shape", type(data).__name__)
        raise InputError(f"{path.name}: 'data' must be uint8 [N, 3072] (32x32 RGB rows), got {shape}")
    if len(labels) != data.shape[0] or not all(isinstance(y, numbers.Integral) and 0 <= y < 10 for y in labels):
        raise InputError(f"{path.name}: 'labels' must be {data.shape[0]} integers in 0..9")


def Cifar10Dataset(root: str | Path, split: str = "train", size: int = 32) -> TensorDataset:  # noqa: N802
    """CIFAR-10 python batches (``data_batch_1..5``, ``test_batch``, ``batches.meta``) as tensors."""
    root = Path(root)
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    files = [root / n for n in names if (root / n).is_file()]
    if not files:
        raise InputError(f"{root}: no CIFAR-10 {split} batches ({', '.join(names)})")
    batches = [_load_cifar_batch(p) for p in files]
    for p, b in zip(files, batches, strict=True):
        _check_cifar_batch(p, b)
    data = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32)
    labels = [int(y) for b in batches for y in b["labels"]]
    keys = [f"{p.name}/{i}" for p, b in zip(files, batches, strict=True) for i in range(len(b["labels"]))]
    meta = root / "batches.meta"
    if meta.is_file():
        classnames = check_classnames([n.decode() if isinstance(n, bytes) else n
                                       for n in _load_cifar_batch(meta)["label_names"]], str(meta))
    else:
        classnames = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    images = torch.from_numpy(np.ascontiguousarray(data, dtype=np.uint8))
    if size != 32:
        images = TF.resize(images, [size, size], antialias=True)
    desc = {"name": "cifar10", "folder": root.name, "split": split, "size": size}
    return TensorDataset(images, _class_captions(classnames, labels), labels, classnames, DEFAULT_TEMPLATES, desc, keys)


IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def _inside(name: str) -> bool:
    """Whether a tar member's name stays inside the archive's folder (relative, no ``..`` part): a
    name that does not is never copied into a shard poisonlab writes."""
    parts = name.replace("\\", "/").split("/")
    return not name.startswith(("/", "\\")) and ".." not in parts


def _truncated(shard: Path, end: int) -> bool:
    """Whether a tar archive whose last member ends at ``end`` stops short of its end marker
    (at least one 512-byte block of zeros, and nothing but zeros after it)."""
    size = shard.stat().st_size
    if size - end < 512:
        return True
    with open(shard, "rb") as f:
        f.seek(end)
        tail = f.read(min(size - end, 1 << 20))
    return tail.count(0) != len(tail)


@dataclass(frozen=True)
class ShardSample:
    """Where one webdataset sample lives: its shard, ``__key__``, image bytes and caption/label."""

    shard: int
    key: str
    ext: str
    offset: int
    nbytes: int
    caption: str | None
    label: int


def split_member(name: str) -> tuple[str, str]:
    """``"dir/000123.jpg"`` -> ``("dir/000123", "jpg")``: webdataset's key is the path up to the
    first dot of the file name; the extension is the rest, lower-cased."""
    head, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext.lower()


class WebDatasetShards(ImageCaptionDataset):
    """Samples from webdataset tar shards: ``key.{jpg,png,...}`` + ``key.txt`` [+ ``key.cls``].

    Opening a shard reads its tar headers and the small text members only; each image is read
    later by offset (``os.pread``, safe in forked DataLoader workers), so the samples can be
    visited in any seeded order without holding the shards in memory.

    Args:
        shards: the ``.tar`` files, in order.
        size: image side in pixels.
        skip_bad: skip samples without an image or caption, or with a caption that is not UTF-8
            or a ``.cls`` that is not an integer (counted in ``skipped``), instead of raising.

    Raises:
        InputError: a shard cannot be read, or (without ``skip_bad``) a sample is malformed,
            naming the shard and the key.
    """

    def __init__(self, shards: list[str | Path], size: int = 32, skip_bad: bool = False) -> None:
        self.shards = [Path(s) for s in shards]
        self.size = size
        self.skip_bad = skip_bad
        self.skipped = 0
        self.truncated: list[str] = []
        self.samples: list[ShardSample] = []
        for si, shard in enumerate(self.shards):
            self.samples += self._index(si, shard)
        if not self.samples:
            raise InputError(f"no samples with an image and a .txt caption or .cls label in "
                             f"{', '.join(map(str, shards))}")
        self._fds: dict[tuple[int, int], int] = {}

    def _bad(self, shard: Path, key: str, why: str) -> None:
        if not self.skip_bad:
            raise InputError(f"{shard.name}: sample {key!r} {why} (--skip-bad-images skips such samples)")
        self.skipped += 1

    def _sample(self, si: int, tar: tarfile.TarFile, key: str, group: dict[str, tarfile.TarInfo]) -> ShardSample | None:
        shard = self.shards[si]
        ext = next((e for e in IMAGE_EXTS if e in group), None)
        if ext is None or not {"txt", "cls"} & set(group):
            self._bad(shard, key, "has no image" if ext is None else "has neither a .txt caption nor a .cls label")
            return None
        caption = None  # a classification shard (clip_benchmark's layout): captioned from its class name
        try:
            if "txt" in group:
                caption = tar.extractfile(group["txt"]).read().decode("utf-8").strip()  # type: ignore[union-attr]
        except UnicodeDecodeError:
            self._bad(shard, key, "has a caption that is not UTF-8")
            return None
        label = -1
        if "cls" in group:
            raw = tar.extractfile(group["cls"]).read().strip()  # type: ignore[union-attr]
            if not raw.lstrip(b"-").isdigit():
                self._bad(shard, key, f"has a .cls that is not an integer ({raw[:20]!r})")
                return None
            label = int(raw)
        image = group[ext]
        return ShardSample(si, key, ext, image.offset_data, image.size, caption, label)

    def _index(self, si: int, shard: Path) -> list[ShardSample]:
        try:
            with tarfile.open(shard, "r:") as tar:
                groups: dict[str, dict[str, tarfile.TarInfo]] = {}
                for m in tar:
                    if m.isfile() and not _inside(m.name):
                        self._bad(shard, m.name, "is a member whose name leaves the archive's folder (absolute or ..)")
                    elif m.isfile():
                        key, ext = split_member(m.name)
                        if ext:
                            groups.setdefault(key, {})[ext] = m
                truncated = _truncated(shard, tar.offset)
                if truncated and not self.skip_bad:
                    raise InputError(f"{shard}: the shard is truncated (it ends without tar's end marker, after "
                                     f"{len(groups)} sample keys); copy it again, or pass --skip-bad-images to use "
                                     "its complete samples")
                samples = [self._sample(si, tar, key, groups[key]) for key in groups]
        except (tarfile.TarError, OSError) as err:
            raise InputError(f"{shard}: cannot read webdataset shard ({err})") from None
        kept = [s for s in samples if s is not None]
        if truncated:
            whole = [s for s in kept if s.offset + s.nbytes <= shard.stat().st_size]
            log.warning("%s is truncated: using its %d complete samples", shard, len(whole))
            self.skipped += len(kept) - len(whole)
            self.truncated.append(shard.name)
            kept = whole
        return kept

    def __len__(self) -> int:
        return len(self.samples)

    def image_bytes(self, index: int) -> bytes:
        """The stored (encoded) image of item ``index``."""
        s = self.samples[index]
        fd_key = (os.getpid(), s.shard)
        fd = self._fds.get(fd_key)
        if fd is None:
            fd = self._fds[fd_key] = os.open(self.shards[s.shard], os.O_RDONLY)
        return os.pread(fd, s.nbytes, s.offset)

    def where(self, index: int) -> str:
        s = self.samples[index]
        return f"{self.shards[s.shard].name}: sample {s.key!r}"

    def __getitem__(self, index: int) -> Item:
        s = self.samples[index]
        return decode_image(self.image_bytes(index), self.size, self.where(index), self.read), self._caption(s), s.label

    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    def captions(self) -> list[str]:
        return [self._caption(s) for s in self.samples]

    def _caption(self, s: ShardSample) -> str:
        """The sample's ``.txt``, or for a sample with only a ``.cls`` (clip_benchmark's
        classification shards) "a photo of a {class}." once class names are known."""
        if s.caption is not None:
            return s.caption
        names = self.classnames or []
        return DEFAULT_TEMPLATES[0].format(names[s.label] if 0 <= s.label < len(names) else f"class {s.label}")

    def keys(self) -> list[str]:
        return [s.key for s in self.samples]

    def describe(self) -> dict[str, Any]:
        return {"name": "webdataset", "shards": [s.name for s in self.shards], "size": self.size}

    def fingerprint(self) -> str:
        """Every sample's key, caption, label and place in its shard, and each shard's size and
        modification time."""
        shards = [[p.stat().st_size, p.stat().st_mtime_ns] for p in self.shards]
        return digest_parts([[s.shard, s.key, s.caption, s.label, s.offset, s.nbytes] for s in self.samples], shards)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fds"] = {}
        return state

"""One streaming pass over an image-caption set: every pair's image and caption embedding, kept as
float16 ``.npy`` files on disk and read back memory-mapped.

Images are decoded by the streaming path's workers (:mod:`poisonlab.train.stream`) a batch at a
time and each batch's embeddings are appended to the files, so memory does not grow with the set:
500K pairs of a 1024-d model take 2 GB on disk and a batch of images in RAM. A manifest beside
the arrays names the dataset (item count, keys, fingerprint) and the model, so embeddings are never
reused for another set or another model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from poisonlab.data.base import ImageCaptionDataset, digest_parts
from poisonlab.errors import InputError
from poisonlab.models.clip import ClipBundle
from poisonlab.train.stream import DataConfig, open_items, sequential
from poisonlab.utils.io import atomic_write, write_json

FILES = ("images.npy", "texts.npy", "embeddings.json")


@dataclass
class PairEmbeddings:
    """Image and caption embeddings ``[N, D]`` (float16, memory-mapped) and the item keys."""

    images: np.ndarray
    texts: np.ndarray
    keys: list[str]


def item_keys(dataset: ImageCaptionDataset) -> list[str]:
    """The dataset's keys, or ``#<position>`` for generated data that has none."""
    return dataset.keys() or [f"#{i}" for i in range(len(dataset))]


def dataset_identity(dataset: ImageCaptionDataset) -> str:
    """A digest of what the embeddings were made from: item count, keys, fingerprint, description."""
    return digest_parts(len(dataset), item_keys(dataset), dataset.fingerprint(), dataset.describe())


def model_digest(bundle: ClipBundle) -> str:
    """SHA-256 of the model's architecture name and every parameter and buffer."""
    h = hashlib.sha256(bundle.name.encode())
    for name, tensor in sorted(bundle.model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def embed_pairs(bundle: ClipBundle, dataset: ImageCaptionDataset, folder: str | Path, *, normalize: bool = False,
                batch_size: int = 256, data_config: DataConfig | None = None, progress: bool = True) -> PairEmbeddings:
    """Embed every pair of ``dataset`` with ``bundle`` into ``folder`` (``images.npy``,
    ``texts.npy``, ``embeddings.json``), each file written under a temporary name and renamed.

    ``normalize=False`` keeps ``encode_image``/``encode_text``'s raw output (the detectors' input in
    Huang et al.). The manifest records the model's digest (:func:`model_digest`).
    """
    if len(dataset) == 0:
        raise InputError("the dataset is empty: there is nothing to embed")
    cfg = data_config or DataConfig()
    if cfg.skip_bad_images:
        raise InputError("scoring needs every pair: --skip-bad-images is for training data")
    bundle.model.eval()
    folder = Path(folder)
    data = open_items(dataset, bundle.image_size, bundle.tokenize, cfg)
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(atomic_write(folder / name, "wb")) for name in FILES[:2]]
        written = 0
        for batch in tqdm(data.batches(sequential(len(data), batch_size)), total=-(-len(data) // batch_size),
                          disable=not (progress and sys.stderr.isatty()), leave=False, desc="embedding pairs",
                          unit="batch"):
            parts = [bundle.encode_image(batch["images"], normalize=normalize),
                     bundle.encode_text(batch["tokens"], normalize=normalize)]
            for f, part in zip(files, parts, strict=True):
                if written == 0:
                    np.lib.format.write_array_header_1_0(
                        f, {"descr": "<f2", "fortran_order": False, "shape": (len(dataset), part.shape[1])})
                f.write(part.float().cpu().numpy().astype("<f2").tobytes())
            written += len(batch["index"])
        if written != len(dataset):
            raise InputError(f"read {written} of {len(dataset)} pairs")
    keys = item_keys(dataset)
    write_json(folder / FILES[2], {"items": len(dataset), "dataset": dataset_identity(dataset),
                                   "model": model_digest(bundle), "normalize": normalize, "keys": keys})
    images, texts = (np.load(folder / name, mmap_mode="r", allow_pickle=False) for name in FILES[:2])
    return PairEmbeddings(images, texts, keys)


def load_embeddings(folder: str | Path, dataset: ImageCaptionDataset, model: str | None = None,
                    normalize: bool | None = None) -> PairEmbeddings:
    """The embeddings in ``folder``, memory-mapped; ``InputError`` unless they were made from
    ``dataset`` (same keys and content) and, when given, by the model of digest ``model`` with
    ``normalize``."""
    folder = Path(folder)
    try:
        manifest: dict[str, Any] = json.loads((folder / FILES[2]).read_text())
        images, texts = (np.load(folder / name, mmap_mode="r", allow_pickle=False) for name in FILES[:2])
    except (OSError, ValueError) as err:
        raise InputError(f"{folder}: not a folder of pair embeddings ({err})") from err
    if manifest.get("dataset") != dataset_identity(dataset) or len(images) != len(dataset) or len(texts) != len(dataset):
        raise InputError(f"{folder}: the embeddings were made from another dataset (its keys or content differ)")
    if model is not None and manifest.get("model") != model:
        raise InputError(f"{folder}: the embeddings were made by another model")
    if normalize is not None and manifest.get("normalize") != normalize:
        raise InputError(f"{folder}: the embeddings were made with normalize={manifest.get('normalize')}")
    return PairEmbeddings(images, texts, list(manifest["keys"]))

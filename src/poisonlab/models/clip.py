"""CLIP models through open_clip: creation, normalisation and encoders on ``[0, 1]`` images.

poisonlab's bundled tiny configs (``poisonlab-tiny-rn``, ``poisonlab-tiny-vit``) live as JSON
files in ``poisonlab/model_configs`` and are registered with open_clip's own config mechanism
(``open_clip.add_model_config``), so they are created exactly like ``RN50`` or ``ViT-B-32``.

Images everywhere in poisonlab are in ``[0, 1]`` (triggers act there); :class:`ClipBundle`
normalises them with the model's mean and std right before the image tower.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from poisonlab.errors import InputError
from poisonlab.models.normalize import normalize_images

log = logging.getLogger(__name__)
CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"
DEFAULT_MODEL = "poisonlab-tiny-rn"
_registered = False


def register_configs() -> None:
    """Register poisonlab's bundled architectures with open_clip (idempotent)."""
    global _registered
    if not _registered:
        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


def register_config(name: str, config: dict[str, Any]) -> str:
    """Make ``config`` known to open_clip; returns the name it is registered under.

    A known name with the same config is reused; otherwise the config is written to a
    process-private folder under a name derived from its content and added with
    ``open_clip.add_model_config`` (open_clip's public mechanism).
    """
    register_configs()
    if name in open_clip.list_models() and open_clip.get_model_config(name) == config:
        return name
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]
    new_name = f"{name}-{digest}"
    folder = Path(tempfile.gettempdir()) / f"poisonlab-configs-{os.getpid()}"
    folder.mkdir(exist_ok=True)
    (folder / f"{new_name}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder / f"{new_name}.json")
    return new_name


def available_models() -> list[str]:
    """Every architecture name open_clip knows, the bundled tiny ones included."""
    register_configs()
    return open_clip.list_models()


@dataclass
class ClipBundle:
    """An open_clip model with everything needed to use it on ``[0, 1]`` images and raw text.

    Attributes:
        model: the open_clip ``CLIP`` module.
        name: the architecture name (an open_clip config name).
        config: the full open_clip model config (saved in checkpoint sidecars).
        mean, std: image normalisation.
        provenance: where the weights came from (dataset, plan digest, steps, ...).
    """

    model: nn.Module
    name: str
    config: dict[str, Any]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tokenizer = open_clip.get_tokenizer(self.name)

    @property
    def image_size(self) -> int:
        size = self.config["vision_cfg"].get("image_size", 224)
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return normalize_images(images, self.mean, self.std)

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        """``[N, L]`` token ids; each distinct caption is tokenized once (generated captions repeat)."""
        unique = list(dict.fromkeys(captions))
        if len(unique) == len(captions):
            return self.tokenizer(captions)
        row = {caption: i for i, caption in enumerate(unique)}
        return self.tokenizer(unique)[torch.tensor([row[c] for c in captions], dtype=torch.long)]

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """``[B, C, H, W]`` images in ``[0, 1]`` -> ``[B, D]`` embeddings (unit length if ``normalize``)."""
        feats = self.model.encode_image(self.normalize(images.to(self.device)))
        return F.normalize(feats, dim=-1) if normalize else feats

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """``[B, L]`` token ids -> ``[B, D]`` embeddings (unit length if ``normalize``)."""
        feats = self.model.encode_text(tokens.to(self.device))
        return F.normalize(feats, dim=-1) if normalize else feats

    def copy(self) -> ClipBundle:
        """A deep copy (for frozen reference models in defenses)."""
        return ClipBundle(copy.deepcopy(self.model), self.name, copy.deepcopy(self.config), self.mean,
                          self.std, dict(self.provenance))


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@contextlib.contextmanager
def _quiet_root_warnings() -> Iterator[None]:
    """open_clip warns on the root logger when no pretrained weights load: expected here."""
    flt = _DropRandomInitWarning()
    root = logging.getLogger()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


def create_clip(name: str = DEFAULT_MODEL, pretrained: str | None = None, seed: int = 0,
                device: str | torch.device = "cpu") -> ClipBundle:
    """Create an open_clip model by name, randomly initialised with ``seed`` or from a file.

    Args:
        name: any open_clip architecture (``RN50``, ``ViT-B-32``, ``poisonlab-tiny-rn``, ...).
        pretrained: a local checkpoint: poisonlab safetensors (with its JSON sidecar), an open_clip
            ``.pt``/``.bin`` (loaded with ``weights_only=True``) or a plain state dict.
        seed: seed of the random initialisation.

    Raises:
        InputError: unknown architecture, or a checkpoint that is missing, unreadable or of
            another architecture.
    """
    register_configs()
    if name not in open_clip.list_models():
        raise InputError(f"unknown CLIP architecture {name!r}; bundled: poisonlab-tiny-rn, poisonlab-tiny-vit; "
                         "any open_clip name (RN50, ViT-B-32, ...) works too")
    with torch.random.fork_rng(devices=[]), _quiet_root_warnings():
        torch.manual_seed(seed)
        model = open_clip.create_model(name, device=device, output_dict=True)
    config = copy.deepcopy(open_clip.get_model_config(name))
    pp = model.visual.preprocess_cfg if hasattr(model.visual, "preprocess_cfg") else {}
    mean = tuple(pp.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(pp.get("std", open_clip.OPENAI_DATASET_STD))
    bundle = ClipBundle(model, name, config, mean, std, {"init": "random", "seed": seed})
    if pretrained is not None:
        from poisonlab.models.checkpoint import load_weights

        load_weights(bundle, pretrained)
    return bundle

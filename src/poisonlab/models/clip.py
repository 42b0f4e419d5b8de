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
from poisonlab.models.checkpoint import (
    SIDECAR_FORMAT,
    checked_preprocess,
    load_weights,
    read_sidecar,
    safetensors_bytes,
    sidecar_path,
)
from poisonlab.models.finite import check_finite
from poisonlab.models.normalize import normalize_images
from poisonlab.utils.io import atomic_write, write_json
from poisonlab.utils.machine import check_fits
from poisonlab.utils.output import NAME

log = logging.getLogger(__name__)
CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"
DEFAULT_MODEL = "poisonlab-tiny-rn"
HF_HUB_PREFIX = "hf-hub:"
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
    if not isinstance(name, str) or not NAME.match(name):
        raise InputError(f"architecture name {str(name)[:60]!r} is not a name (letters, digits, . _ + - only)")
    if not isinstance(config, dict) or not isinstance(config.get("vision_cfg"), dict) \
            or not isinstance(config.get("text_cfg"), dict):
        raise InputError(f"the config of architecture {name!r} is not an open_clip model config "
                         "(a mapping with vision_cfg and text_cfg)")
    if name in open_clip.list_models() and open_clip.get_model_config(name) == config:
        return name
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]
    new_name = f"{name}-{digest}"
    folder = Path(tempfile.gettempdir()) / f"poisonlab-configs-{os.getpid()}"
    folder.mkdir(exist_ok=True)
    with atomic_write(folder / f"{new_name}.json", "w") as f:
        f.write(json.dumps(config))
    open_clip.add_model_config(folder / f"{new_name}.json")
    _check_size(new_name, name)
    return new_name


def _check_size(name: str, shown: str) -> None:
    """Build architecture ``name`` on the meta device (no memory) and refuse it, before any
    allocation, when its weights would not fit in half of this machine's memory or the config
    does not build at all."""
    try:
        with _quiet_root_warnings(), torch.device("meta"):
            model = open_clip.create_model(name, device="meta")
    except Exception as err:  # noqa: BLE001 - a config from a file may break open_clip in any way
        raise InputError(f"the config of architecture {shown!r} does not build an open_clip model "
                         f"({type(err).__name__}: {str(err).strip()[:160]})") from None
    check_fits(sum(p.numel() * p.element_size() for p in model.parameters()),
               f"the weights of architecture {shown!r} (its config read from a file)")


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

    family = "clip"

    def __post_init__(self) -> None:
        self.tokenizer = open_clip.get_tokenizer(self.name)

    @property
    def module(self) -> nn.Module:
        """The trained module (the open_clip ``CLIP``)."""
        return self.model

    def save(self, path: str | Path) -> Path:
        """Weights to ``path`` (safetensors) and the architecture to its sidecar."""
        return save_clip(self, path)

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
                device: str | torch.device = "cpu", cache_dir: str | None = None) -> ClipBundle:
    """Create an open_clip model by name, randomly initialised with ``seed``, from a pretrained tag,
    from the Hugging Face hub, or from a file.

    Args:
        name: any open_clip architecture (``RN50``, ``ViT-B-32``, ``poisonlab-tiny-rn``, ...) or
            ``hf-hub:ORG/NAME`` (config and weights of an open_clip model on the hub).
        pretrained: an open_clip pretrained tag of ``name`` (``openai``, ``laion2b_s34b_b79k``, ...;
            see ``poisonlab models``) or a local checkpoint: poisonlab safetensors (with its JSON
            sidecar), an open_clip ``.pt``/``.bin`` (loaded with ``weights_only=True``) or a plain
            state dict.
        seed: seed of the random initialisation.
        cache_dir: where open_clip keeps downloaded weights (default: the Hugging Face cache,
            ``HF_HOME``). poisonlab itself never downloads: open_clip resolves tags and hub
            names, from the cache when offline (``HF_HUB_OFFLINE=1``).

    Raises:
        InputError: unknown architecture or tag, weights neither cached nor downloadable, or a
            checkpoint that is missing, unreadable or of another architecture.
    """
    register_configs()
    if name.startswith(HF_HUB_PREFIX):
        return _from_hub(name[len(HF_HUB_PREFIX):], cache_dir, device)
    if name not in open_clip.list_models():
        raise InputError(f"unknown CLIP architecture {name!r}; bundled: poisonlab-tiny-rn, poisonlab-tiny-vit; "
                         "any open_clip name (RN50, ViT-B-32, ...) or hf-hub:ORG/NAME works too")
    if pretrained is not None and not Path(pretrained).exists():
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained in tags:
            return _from_tag(name, pretrained, cache_dir, device)
        if not any(sep in pretrained for sep in "/\\.") or not tags:
            raise InputError(f"{pretrained!r} is neither a file nor a pretrained tag of {name} "
                             f"(tags: {', '.join(tags) or 'none'})")
    bundle = _random(name, seed, device)
    if pretrained is not None:
        load_weights(bundle, pretrained)
    return bundle


def _random(name: str, seed: int, device: str | torch.device, quick_gelu: bool = False) -> ClipBundle:
    with torch.random.fork_rng(devices=[]), _quiet_root_warnings():
        torch.manual_seed(seed)
        model = open_clip.create_model(name, device=device, output_dict=True, force_quick_gelu=quick_gelu)
    config = copy.deepcopy(open_clip.get_model_config(name))
    if quick_gelu:
        config["quick_gelu"] = True
    pp = model.visual.preprocess_cfg if hasattr(model.visual, "preprocess_cfg") else {}
    mean = tuple(pp.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(pp.get("std", open_clip.OPENAI_DATASET_STD))
    return ClipBundle(model, name, config, mean, std, {"init": "random", "seed": seed})


def _where(cache_dir: str | None) -> str:
    home = os.environ.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")
    offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") else ""
    return f"{cache_dir or home}{offline}"


def _fetch(what: str, cache_dir: str | None, get: Any) -> Path:
    """Run open_clip's resolver ``get()``; any failure becomes one clear ``InputError``."""
    try:
        path = get()
    except Exception as err:  # noqa: BLE001 - network, cache and hub errors all mean "not available"
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
        raise InputError(f"{what}: weights not available offline and not cached in {_where(cache_dir)}; "
                         f"connect once to download them, or pass --cache-dir to the cache that holds them "
                         f"({type(err).__name__}{': ' + first if first else ''})") from None
    if not path or not Path(path).is_file():
        raise InputError(f"{what}: open_clip returned no weights file (looked in {_where(cache_dir)})")
    return Path(path)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _from_tag(name: str, tag: str, cache_dir: str | None, device: str | torch.device) -> ClipBundle:
    """An open_clip architecture with the weights of one of its pretrained tags."""
    cfg = open_clip.get_pretrained_cfg(name, tag)
    path = _fetch(f"model {name}, pretrained {tag!r}", cache_dir,
                  lambda: open_clip.download_pretrained(cfg, cache_dir=cache_dir))
    bundle = _random(name, 0, "cpu", quick_gelu=bool(cfg.get("quick_gelu")))
    try:
        with _quiet_root_warnings():
            open_clip.load_checkpoint(bundle.model, str(path), strict=True, weights_only=True)
    except (RuntimeError, OSError, ValueError, EOFError) as err:  # a truncated or foreign cache file
        raise InputError(f"model {name}, pretrained {tag!r}: the cached file {path} is unreadable or does not "
                         f"fit ({str(err).splitlines()[0][:160]}); remove it so open_clip downloads it again") from None
    check_finite(bundle.model.state_dict(), path)
    bundle.mean = tuple(cfg.get("mean", bundle.mean))
    bundle.std = tuple(cfg.get("std", bundle.std))
    bundle.provenance = {"init": "pretrained", "model": name, "tag": tag, "file": path.name,
                         "sha256": file_sha256(path)}
    bundle.model.to(device)
    return bundle


def _from_hub(model_id: str, cache_dir: str | None, device: str | torch.device) -> ClipBundle:
    """An open_clip model from the Hugging Face hub (``open_clip_config.json`` + weights)."""
    from open_clip.pretrained import download_pretrained_from_hf

    what = f"model hf-hub:{model_id}"
    config_path = _fetch(what, cache_dir, lambda: download_pretrained_from_hf(
        model_id, filename="open_clip_config.json", cache_dir=cache_dir))
    try:
        body = json.loads(config_path.read_text())
        model_cfg = body["model_cfg"]
    except (ValueError, KeyError, TypeError, RecursionError) as err:
        raise InputError(f"{what}: open_clip_config.json has no model_cfg ({type(err).__name__})") from None
    pre = checked_preprocess(body, f"{what}: open_clip_config.json")
    weights = None
    for filename in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        try:
            weights = _fetch(what, cache_dir, lambda f=filename: download_pretrained_from_hf(
                model_id, filename=f, cache_dir=cache_dir))
            break
        except InputError as err:
            last = err
    if weights is None:
        raise last
    bundle = _random(register_config("hf-hub-" + model_id.replace("/", "-"), model_cfg), 0, device)
    load_weights(bundle, weights)
    bundle.mean = tuple(pre.get("mean", bundle.mean))
    bundle.std = tuple(pre.get("std", bundle.std))
    bundle.provenance = {"init": "pretrained", "model": f"hf-hub:{model_id}", "file": weights.name,
                         "sha256": file_sha256(weights)}
    return bundle


def pretrained_tags(name: str | None = None) -> dict[str, list[str]]:
    """Architectures and their open_clip pretrained tags (all, or ``name``'s)."""
    register_configs()
    names = [name] if name is not None else open_clip.list_models()
    if name is not None and name not in open_clip.list_models():
        raise InputError(f"unknown CLIP architecture {name!r}")
    return {n: list(open_clip.list_pretrained_tags_by_model(n)) for n in names}


def save_clip(bundle: ClipBundle, path: str | Path) -> Path:
    """Write ``bundle`` as safetensors + JSON sidecar (both atomically); returns the weights path."""
    path = Path(path).with_suffix(".safetensors")
    state = {k: v.detach().contiguous().cpu() for k, v in bundle.model.state_dict().items()}
    with atomic_write(path) as f:
        f.write(safetensors_bytes(state, {"format": SIDECAR_FORMAT, "model": bundle.name}))
    meta = {
        "format": SIDECAR_FORMAT,
        "model_name": bundle.name,
        "tokenizer": {"context_length": bundle.config["text_cfg"].get("context_length", 77),
                      "kind": bundle.config["text_cfg"].get("hf_tokenizer_name", "open_clip SimpleTokenizer")},
        "provenance": bundle.provenance,
    }
    preprocess = {"size": bundle.image_size, "mean": list(bundle.mean), "std": list(bundle.std)}
    write_json(sidecar_path(path), {"model_cfg": bundle.config, "preprocess_cfg": preprocess, "poisonlab": meta})
    return path


def load_clip(path: str | Path, device: str = "cpu") -> ClipBundle:
    """Load a poisonlab checkpoint (architecture from its sidecar)."""
    side = read_sidecar(path)
    if side is None:
        raise InputError(f"{path}: no sidecar {sidecar_path(path).name}; pass the architecture with --arch")
    name = register_config(side["model_name"], side["model_config"])
    bundle = create_clip(name, device=device)
    if side["mean"] and side["std"]:
        bundle.mean, bundle.std = tuple(side["mean"]), tuple(side["std"])
    load_weights(bundle, path)
    return bundle

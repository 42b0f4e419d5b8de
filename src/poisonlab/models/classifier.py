"""Image classifiers through timm, and CLIP used as a zero-shot classifier, behind one interface.

Every repair and detection method of the classifier part (Pick your Poison) works on a :class:`Classifier`:
``logits(x)`` and ``features(x)`` on ``[0, 1]`` images (normalisation happens inside),
``head(z)`` from penultimate features to logits, ``module`` (what fine-tuning updates) and
``copy()``. Two implementations:

- :class:`ClassifierBundle`: a timm model (``resnet18``, ``vit_tiny_patch16_224``, ... or a
  bundled narrow variant such as ``poisonlab-resnet-tiny`` for the CPU);
- :class:`ZeroShotClassifier`: a CLIP image tower with a fixed text head built from class names
  and the template ensemble (features = normalised image embedding), so the same methods serve
  the CLIP models as well.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from poisonlab.errors import InputError
from poisonlab.models.checkpoint import (
    CLASSIFIER_FORMAT,
    check_classifier_meta,
    checked_preprocess,
    load_weights,
    safetensors_bytes,
    sidecar_body,
    sidecar_path,
)
from poisonlab.models.normalize import normalize_images
from poisonlab.models.zero_shot import zero_shot_weights
from poisonlab.utils.io import atomic_write, write_json
from poisonlab.utils.machine import check_fits

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Narrow timm variants for CPU runs: ``name -> (timm architecture, constructor overrides)``.
BUNDLED: dict[str, tuple[str, dict[str, Any]]] = {
    "poisonlab-resnet-tiny": ("resnet18", {"layers": [1, 1, 1, 1], "channels": [16, 32, 64, 128], "stem_type": "deep",
                                        "stem_width": 8}),
    "poisonlab-resnet-small": ("resnet18", {"channels": [32, 64, 128, 256], "stem_width": 32}),
}
DEFAULT_CLASSIFIER = "poisonlab-resnet-tiny"


@dataclass
class ClassifierBundle:
    """A timm classifier with its architecture recipe, normalisation and provenance."""

    model: nn.Module
    name: str
    timm_name: str
    timm_kwargs: dict[str, Any]
    num_classes: int
    image_size: int
    classnames: list[str] | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    provenance: dict[str, Any] = field(default_factory=dict)
    kind: str = "classifier"

    @property
    def family(self) -> str:
        """``classifier``, or ``encoder`` for a self-supervised backbone without a head."""
        return self.kind

    @property
    def module(self) -> nn.Module:
        return self.model

    def save(self, path: str | Path) -> Path:
        """Weights to ``path`` (safetensors) and the timm recipe to its sidecar."""
        return save_classifier(self, path)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return normalize_images(images, self.mean, self.std)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(images))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features (after global pooling, before the linear head)."""
        x = self.model.forward_features(normalize_images(images, self.mean, self.std))
        return self.model.forward_head(x, pre_logits=True)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.get_classifier()(features)

    @torch.no_grad()
    def mask_features(self, keep: torch.Tensor) -> None:
        """Cut the penultimate units where ``keep`` is False off the head (fine-pruning)."""
        self.model.get_classifier().weight[:, ~keep.to(self.device)] = 0.0

    def copy(self) -> ClassifierBundle:
        return ClassifierBundle(copy.deepcopy(self.model), self.name, self.timm_name, dict(self.timm_kwargs),
                                self.num_classes, self.image_size, self.classnames, self.mean, self.std,
                                copy.deepcopy(self.provenance))


def _build(name: str, num_classes: int, image_size: int, classnames: list[str] | None, seed: int,
           overrides: dict[str, Any]) -> ClassifierBundle:
    timm_name, kwargs = BUNDLED.get(name, (name, {}))
    kwargs = {**kwargs, **overrides}
    if not timm.is_model(timm_name):
        raise InputError(f"unknown model {name!r}: not bundled ({', '.join(BUNDLED)}) and not a timm model")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(timm_name, pretrained=False, num_classes=num_classes, **kwargs)
    return ClassifierBundle(model, name, timm_name, kwargs, num_classes, image_size, classnames)


def create_classifier(name: str = DEFAULT_CLASSIFIER, num_classes: int = 10, image_size: int = 32,
                      classnames: list[str] | None = None, seed: int = 0, **overrides: Any) -> ClassifierBundle:
    """A randomly initialised classifier: a bundled name or any timm architecture name.

    Raises:
        InputError: unknown architecture or a class count below 2.
    """
    if num_classes < 2:
        raise InputError(f"a classifier needs at least 2 classes, got {num_classes}")
    if classnames is not None and len(classnames) != num_classes:
        raise InputError(f"{len(classnames)} class names for {num_classes} classes")
    return _build(name, num_classes, image_size, classnames, seed, overrides)


def create_encoder(name: str = DEFAULT_CLASSIFIER, image_size: int = 32, seed: int = 0,
                   **overrides: Any) -> ClassifierBundle:
    """A headless timm backbone (``num_classes=0``): the image encoder of self-supervised training.

    ``logits`` and ``features`` both return the pooled features.
    """
    bundle = _build(name, 0, image_size, None, seed, overrides)
    bundle.kind = "encoder"
    return bundle


class _ZeroShotModule(nn.Module):
    """CLIP image tower + fixed class-embedding head (a buffer, never trained)."""

    def __init__(self, visual: nn.Module, weights: torch.Tensor, logit_scale: float) -> None:
        super().__init__()
        self.visual = visual
        self.register_buffer("class_weights", weights.detach().clone())
        self.logit_scale = logit_scale

    def features(self, normalized: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(normalized), dim=-1)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * features @ self.class_weights.T

    def forward(self, normalized: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(normalized))


class ZeroShotClassifier:
    """A CLIP model used as a classifier: its image tower and a zero-shot text head.

    Only the image tower is tuned; :meth:`to_clip` writes the tuned tower back into a copy of the
    CLIP bundle (text tower untouched) so it can be saved and evaluated as CLIP again.
    """

    kind = "clip-zero-shot"
    family = "classifier"

    def __init__(self, bundle: Any, classnames: list[str], templates: Any, logit_scale: float | None = None) -> None:
        self.bundle = bundle
        self.classnames = list(classnames)
        self.num_classes = len(classnames)
        self.image_size = bundle.image_size
        self.templates = tuple(templates)
        weights = zero_shot_weights(bundle, self.classnames, self.templates).to(bundle.device)
        scale = float(bundle.model.logit_scale.detach().exp()) if logit_scale is None else logit_scale
        self.model = _ZeroShotModule(bundle.model.visual, weights, scale)
        self.provenance = bundle.provenance

    @property
    def name(self) -> str:
        return self.bundle.name

    @property
    def module(self) -> nn.Module:
        return self.model

    @property
    def device(self) -> torch.device:
        return self.bundle.device

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return self.bundle.normalize(images)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.bundle.normalize(images))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.features(self.bundle.normalize(images))

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.head(features)

    @torch.no_grad()
    def mask_features(self, keep: torch.Tensor) -> None:
        """Cut embedding dimensions where ``keep`` is False off the text head (fine-pruning)."""
        self.model.class_weights[:, ~keep.to(self.model.class_weights.device)] = 0.0

    def copy(self) -> ZeroShotClassifier:
        clone = copy.copy(self)
        clone.bundle = self.bundle.copy()
        clone.model = _ZeroShotModule(clone.bundle.model.visual, self.model.class_weights, self.model.logit_scale)
        return clone

    def to_clip(self) -> Any:
        """The CLIP bundle whose image tower is this classifier's (shared, not copied)."""
        return self.bundle

    def save(self, path: str | Path) -> Path:
        """Saved as the CLIP model it is (tuned image tower, text tower untouched)."""
        return self.bundle.save(path)


def save_classifier(bundle: ClassifierBundle, path: str | Path) -> Path:
    """Write a timm classifier as safetensors + a sidecar holding its architecture recipe."""
    path = Path(path).with_suffix(".safetensors")
    state = {k: v.detach().contiguous().cpu() for k, v in bundle.model.state_dict().items()}
    with atomic_write(path) as f:
        f.write(safetensors_bytes(state, {"format": CLASSIFIER_FORMAT, "model": bundle.name}))
    meta = {"format": CLASSIFIER_FORMAT, "model_name": bundle.name, "timm_name": bundle.timm_name,
            "timm_kwargs": bundle.timm_kwargs, "num_classes": bundle.num_classes, "classnames": bundle.classnames, "kind": bundle.kind,
            "provenance": bundle.provenance}
    write_json(sidecar_path(path), {"preprocess_cfg": {"size": bundle.image_size, "mean": list(bundle.mean),
                                                       "std": list(bundle.std)}, "poisonlab": meta})
    return path


def load_classifier(path: str | Path, num_classes: int | None = None) -> ClassifierBundle:
    """Load a classifier saved by :func:`save_classifier`.

    Raises:
        InputError: no classifier sidecar, unreadable weights, or ``num_classes`` given and not the
            checkpoint's class count.
    """
    body = sidecar_body(path)
    meta = (body or {}).get("poisonlab") or {}
    if meta.get("format") != CLASSIFIER_FORMAT:
        raise InputError(f"{path}: not a poisonlab classifier checkpoint (no {CLASSIFIER_FORMAT} sidecar)")
    missing = [k for k in ("model_name", "timm_name", "timm_kwargs", "num_classes") if k not in meta]
    if missing:
        raise InputError(f"{sidecar_path(path)}: the classifier sidecar lacks {', '.join(missing)}")
    check_classifier_meta(meta, sidecar_path(path))
    if num_classes is not None and num_classes != meta["num_classes"]:
        raise InputError(f"{path} has {meta['num_classes']} classes but the data has {num_classes}")
    pre = checked_preprocess(body, sidecar_path(path))  # type: ignore[arg-type]
    if "mean" not in pre or "std" not in pre:
        raise InputError(f"{sidecar_path(path)}: the classifier sidecar lacks preprocess_cfg mean and std")
    build = functools.partial(timm.create_model, meta["timm_name"], pretrained=False,
                              num_classes=meta["num_classes"], **meta["timm_kwargs"])
    try:
        with torch.device("meta"):
            need = sum(p.numel() * p.element_size() for p in build().parameters())
    except Exception as err:  # noqa: BLE001 - a sidecar may break timm in any way
        raise InputError(f"{sidecar_path(path)}: timm_name {meta['timm_name']!r} with these timm_kwargs builds no "
                         f"model ({type(err).__name__}: {str(err).strip()[:160]})") from None
    check_fits(need, f"{sidecar_path(path)}: the model's weights")
    model = build()
    bundle = ClassifierBundle(model, meta["model_name"], meta["timm_name"], meta["timm_kwargs"], meta["num_classes"],
                              int(pre.get("size", 32)), meta.get("classnames"), tuple(pre.get("mean")),
                              tuple(pre.get("std")))
    bundle.kind = meta.get("kind", "classifier")
    load_weights(bundle, path)
    return bundle

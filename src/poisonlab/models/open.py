"""Open a model the way the command line names it, from Python exactly as the CLI does.

Example:
    >>> from poisonlab.models.open import open_model                     # doctest: +SKIP
    >>> clip = open_model("RN50", pretrained="openai")                   # doctest: +SKIP
    >>> clip = open_model("out/model.safetensors")  # a poisonlab checkpoint  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from poisonlab.errors import InputError
from poisonlab.models.checkpoint import (
    CLASSIFIER_FORMAT,
    SIDECAR_FORMAT,
    checkpoint_kind,
    read_sidecar,
    sidecar_body,
)
from poisonlab.models.classifier import ZeroShotClassifier, load_classifier
from poisonlab.models.clip import (
    DEFAULT_MODEL,
    HF_HUB_PREFIX,
    ClipBundle,
    available_models,
    create_clip,
    load_clip,
    pretrained_tags,
)


def open_model(model: str, arch: str | None = None, pretrained: str | None = None, cache_dir: str | None = None,
               device: str | torch.device = "cpu") -> ClipBundle:
    """A CLIP model on ``device``, named as ``--model`` names it:

    - ``ARCH`` with ``pretrained=TAG`` (an open_clip tag, or a checkpoint file for ``ARCH``);
    - ``hf-hub:ORG/NAME``;
    - ``FILE``: a poisonlab checkpoint (architecture from its sidecar), or any open_clip checkpoint
      with ``arch``.
    """
    if pretrained is not None:
        bundle = create_clip(model, pretrained=pretrained, cache_dir=cache_dir)
    elif model.startswith(HF_HUB_PREFIX):
        bundle = create_clip(model, cache_dir=cache_dir)
    elif arch is None and read_sidecar(model) is not None:
        bundle = load_clip(model)
    elif arch is None and not Path(model).exists() and model in available_models():
        tags = ", ".join(pretrained_tags(model)[model]) or "none"
        raise InputError(f"--model {model} is an architecture: add --pretrained TAG (tags: {tags}) or a checkpoint")
    else:
        bundle = create_clip(arch or DEFAULT_MODEL, pretrained=model, cache_dir=cache_dir)
    bundle.model.to(device)
    return bundle


def open_classifier(path: str, classnames: Sequence[str] | None, templates: Sequence[str] = (),
                    pretrained: str | None = None, cache_dir: str | None = None,
                    device: str | torch.device = "cpu") -> Any:
    """A classifier or encoder checkpoint, or a CLIP model (a checkpoint, ``hf-hub:ORG/NAME``, or
    an architecture with a ``pretrained`` tag) as a zero-shot classifier over ``classnames``.

    Checkpoint files open on the CPU (the trainers move them); ``device`` places a CLIP model
    named by a tag or the hub.

    Raises:
        InputError: the checkpoint's classes differ from ``classnames``, a CLIP model comes without
            class names, or ``path`` is no poisonlab checkpoint.
    """
    def zero_shot(bundle: ClipBundle) -> ZeroShotClassifier:
        if not classnames:
            raise InputError("a CLIP model used as a classifier needs data with class names")
        return ZeroShotClassifier(bundle, list(classnames), templates)

    if pretrained is not None or path.startswith(HF_HUB_PREFIX):
        return zero_shot(open_model(path, pretrained=pretrained, cache_dir=cache_dir, device=device))
    kind = checkpoint_kind(path)
    if kind == SIDECAR_FORMAT:
        return zero_shot(load_clip(path))
    if kind != CLASSIFIER_FORMAT:
        raise InputError(f"{path}: not a poisonlab classifier or CLIP checkpoint (no sidecar)")
    model = load_classifier(path)
    if model.family == "classifier" and classnames and len(classnames) != model.num_classes:
        raise InputError(f"{path} has {model.num_classes} classes but the data has {len(classnames)}")
    return model


def model_family(model: str, pretrained: str | None = None, arch: str | None = None) -> str:
    """The family of the model ``--model`` names (``clip``, ``classifier`` or ``encoder``), read from
    its checkpoint: open_clip tags, ``hf-hub:`` names, poisonlab CLIP checkpoints and open_clip
    files with ``arch`` are CLIP; a classifier sidecar says ``classifier`` or ``encoder``.

    Raises:
        InputError: a file without a poisonlab sidecar and no ``arch``.
    """
    if pretrained is not None or arch is not None or model.startswith(HF_HUB_PREFIX):
        return "clip"
    kind = checkpoint_kind(model)
    if kind == SIDECAR_FORMAT:
        return "clip"
    if kind == CLASSIFIER_FORMAT:
        meta = (sidecar_body(model) or {}).get("poisonlab") or {}
        return "encoder" if meta.get("kind") == "encoder" else "classifier"
    raise InputError(f"{model}: no poisonlab sidecar says which model family it is (a CLIP checkpoint of open_clip: "
                     "add --arch)")


def open_any(model: str, pretrained: str | None = None, cache_dir: str | None = None,
             device: str | torch.device = "cpu") -> Any:
    """The model ``--model`` names, of whichever family its checkpoint says (:func:`model_family`):
    a CLIP bundle, or a classifier or encoder bundle."""
    if model_family(model, pretrained) == "clip":
        return open_model(model, pretrained=pretrained, cache_dir=cache_dir, device=device)
    bundle = load_classifier(model)
    bundle.model.to(device)
    return bundle

"""Models: CLIP through open_clip, timm classifiers and SSL backbones, and their checkpoints."""

from poisonlab.models.checkpoint import load_weights, read_sidecar
from poisonlab.models.clip import (
    DEFAULT_MODEL,
    ClipBundle,
    available_models,
    create_clip,
    load_clip,
    register_configs,
    save_clip,
)

__all__ = ["DEFAULT_MODEL", "ClipBundle", "available_models", "create_clip", "load_clip", "load_weights",
           "read_sidecar", "register_configs", "save_clip"]

"""Models: CLIP through open_clip, timm classifiers and SSL backbones, and their checkpoints."""

from poisonlab.models.checkpoint import load_clip, load_weights, read_sidecar, save_clip
from poisonlab.models.clip import (
           DEFAULT_MODEL,
           ClipBundle,
           available_models,
           create_clip,
           register_configs,
)

__all__ = ["DEFAULT_MODEL", "ClipBundle", "available_models", "create_clip", "load_clip", "load_weights",
           "read_sidecar", "register_configs", "save_clip"]

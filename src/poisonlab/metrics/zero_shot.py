"""Zero-shot classification with CLIP (the head lives beside the CLIP bundle, in
:mod:`poisonlab.models.zero_shot`; metrics use it from here)."""

from __future__ import annotations

from poisonlab.models.zero_shot import zero_shot_predict, zero_shot_weights

__all__ = ["zero_shot_predict", "zero_shot_weights"]

"""Training objectives (losses) used by the generic loop."""

from poisonlab.train.objectives.clip import ClipObjective

__all__ = ["ClipObjective"]

"""Pictures and reports written from results (never by hand)."""

from poisonlab.report.gallery import plan_gallery, trigger_gallery

__all__ = ["plan_gallery", "trigger_gallery"]

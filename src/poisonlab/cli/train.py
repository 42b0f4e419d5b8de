"""``poisonlab train``: the group, with its ``clip``, ``classifier`` and ``ssl`` commands (each module
adds its own)."""

from __future__ import annotations

import poisonlab.cli.classifier  # noqa: F401 - adds ``train classifier``
import poisonlab.cli.ssl  # noqa: F401 - adds ``train ssl``
from poisonlab.cli.clip import train_group

__all__ = ["train_group"]

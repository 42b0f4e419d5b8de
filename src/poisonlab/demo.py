"""The main job on the embedded default data (``make demo``): ``poisonlab run`` with the demo preset.

Pre-train a clean tiny CLIP on ``shapes``; poison fine-tuning data with five triggers; fine-tune
one poisoned model per trigger; clean each with fine-tuning, CleanCLIP, PAR and PAR on synthetic
data; write ``OUT/report/index.html`` and ``OUT/report/README.md``. Stages are cached in
``OUT/cache`` and reused on a second run. ``python -m poisonlab.demo ARGS`` is
``poisonlab run ARGS`` (:mod:`poisonlab.cli.run`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from poisonlab.cli.main import main as cli_main
from poisonlab.cli.run import run

__all__ = ["main", "run"]


def main(argv: Sequence[str] | None = None) -> int:
    """``poisonlab run`` with ``argv``; returns the exit code."""
    return cli_main(["run", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())

"""The main job on the embedded default data (``make demo``)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from poisonlab.cli import main as cli_main

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="demo-out")
    args = parser.parse_args(argv)
    steps = [
        ["show", "--image-size", "64", "--rows", "4", "--out", f"{args.out}/triggers.png"],
        ["poison", "--dataset", "shapes", "--n", "2000", "--attack", "clip-dirty", "--target", "star",
         "--rate", "0.03", "--trigger", "badnet-stripes", "--out", f"{args.out}/plan-badnet-stripes"],
    ]
    for step in steps:
        code = cli_main(step)
        if code:
            return code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How long ``poisonlab --help``, ``--version`` and ``list`` take, beside ``python -c pass`` in the same run.

    python benchmarks/cli_startup.py [--repeat 10]

Prints the median wall time of each and their ratio. The CLI imports a command's module only when
that command runs, so ``--help`` and ``--version`` never import torch; ``list`` reads the
registered names from the source (:func:`poisonlab.registry.declared`).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def median_seconds(argv: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    python = median_seconds([sys.executable, "-c", "pass"], args.repeat)
    for what in (["--help"], ["--version"], ["list"]):
        cli = median_seconds([sys.executable, "-m", "poisonlab", *what], args.repeat)
        print(f"poisonlab {what[0]:<10} {cli:.3f} s   python -c pass {python:.3f} s   ratio {cli / python:.1f}x")


if __name__ == "__main__":
    main()

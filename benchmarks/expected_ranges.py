"""Write a preset's expected ranges from finished runs of it (``presets/<name>.expected.yaml``).

Usage:
    python benchmarks/expected_ranges.py --preset demo --margin 0.03 \
        --run demo-out "make demo" "2-core AMD EPYC, 2 processes x 1 thread" \
        --run demo-serial "python -m poisonlab.demo --serial --out demo-serial" "same machine, 1 process x 2 threads"

With ``--keep FILE`` the ranges of an existing file (and its runs) are kept and widened to hold the
new runs too: a run on another machine or with other seeds joins the ranges without re-running
the old ones.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from poisonlab.bench.spec import PRESETS
from poisonlab.bench.store import ResultsStore
from poisonlab.report.check import envelope, headline_seeds, load_expected, union, write_expected


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", required=True)
    p.add_argument("--run", nargs=3, action="append", required=True, metavar=("DIR", "COMMAND", "MACHINE"))
    p.add_argument("--margin", type=float, default=0.03)
    p.add_argument("--min-runs", type=int, default=2, help="Keep numbers that at least this many runs have.")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--keep", type=Path, default=None, help="An expected-ranges file whose ranges and runs to keep.")
    a = p.parse_args()
    values, runs = [], []
    if a.keep is not None:
        runs = list(yaml.safe_load(a.keep.read_text()).get("runs", []))
    for folder, command, machine in a.run:
        store = ResultsStore(Path(folder) / "results.db")
        values.append(headline_seeds(store, a.preset))
        store.close()
        runs.append({"command": command, "machine": machine})
    numbers = envelope(values, a.margin, a.min_runs)
    if a.keep is not None:
        numbers = union(load_expected(a.keep), numbers)
    out = a.out or PRESETS / f"{a.preset}.expected.yaml"
    write_expected(out, a.preset, numbers, runs, a.margin)
    spread = sorted(((e.high - e.low, e.label) for e in numbers), reverse=True)[:5]
    print(f"{len(numbers)} numbers -> {out}; widest ranges:")
    for width, label in spread:
        print(f"  {width:.3f}  {label}")


if __name__ == "__main__":
    main()

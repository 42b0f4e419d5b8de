"""Write the README's result tables from a finished run of a preset.

Usage:
    python benchmarks/readme_headline.py --run demo-out --command "make demo"

Reads ``DIR/results.db`` (the numbers and the machine the run recorded) and rewrites the block of
``README.md`` between its two result-table marker lines.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from poisonlab.bench.spec import load_spec
from poisonlab.bench.store import ResultsStore
from poisonlab.report.headline import headline_block, replace_block
from poisonlab.utils.io import atomic_write


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="The run's output folder (holds results.db).")
    p.add_argument("--spec", default="demo", help="The spec or preset the run ran.")
    p.add_argument("--command", default="make demo", help="The command that made the run, printed above the tables.")
    p.add_argument("--readme", type=Path, default=Path(__file__).resolve().parent.parent / "README.md")
    a = p.parse_args()
    store = ResultsStore(a.run / "results.db")
    block = headline_block(store, load_spec(a.spec), a.command)
    text = replace_block(a.readme.read_text(), block)
    with atomic_write(a.readme, "w") as f:
        f.write(text)
    print(f"{a.readme}: {block.count(chr(10))} lines of result tables from {a.run}")


if __name__ == "__main__":
    main()

"""Wall time of one study of an experiment spec, alone and uncached (the demo budget check).

Usage: python benchmarks/section_time.py --section ssl [--spec demo] [--out bench-out/section]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from poisonlab.bench.runner import Runner
from poisonlab.bench.spec import load_spec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--section", required=True, help="a study's name in the spec (ssl, classifier, text, ...)")
    p.add_argument("--spec", default="demo")
    p.add_argument("--out", type=Path, default=Path("bench-out/section"))
    a = p.parse_args()
    spec = load_spec(a.spec)
    shutil.rmtree(a.out, ignore_errors=True)
    runner = Runner(spec, a.out, progress=False, only=[a.section])
    section = runner.studies[a.section]
    start = time.perf_counter()
    for _, job in section.jobs():
        job()
    print(f"{a.section} section: {time.perf_counter() - start:.0f} s")
    for stage, seconds, _ in runner.store.stages(spec.name):
        print(f"  {stage}: {seconds:.0f} s")


if __name__ == "__main__":
    main()

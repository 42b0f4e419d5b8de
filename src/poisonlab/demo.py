"""The main job on the embedded default data (``make demo``).

Pre-train a clean tiny CLIP on ``shapes``; poison fine-tuning data with five triggers; fine-tune
one poisoned model per trigger; clean each with fine-tuning, CleanCLIP, PAR and PAR on synthetic
data; write ``OUT/report/index.html`` and ``OUT/report/README.md``. Stages are cached in
``OUT/cache`` and reused on a second run.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from poisonlab import triggers
from poisonlab.bench.parallel import configure_logging
from poisonlab.bench.runner import Runner
from poisonlab.bench.spec import PRESETS, load_spec
from poisonlab.data import open_dataset
from poisonlab.errors import InputError
from poisonlab.report.check import check, load_expected, range_table
from poisonlab.report.experiment import write_report
from poisonlab.report.gallery import trigger_gallery
from poisonlab.report.roc import roc_figure
from poisonlab.report.sections import classifier_sections, ssl_sections
from poisonlab.report.text import dose_response, text_sections
from poisonlab.report.trace import repair_curves

log = logging.getLogger("poisonlab.demo")


def run(spec_name: str, out: Path, progress: bool = True, parallel: bool = False) -> Path:
    """Run the spec into ``out`` and write the report; ``parallel``: sections in a second process."""
    spec = load_spec(spec_name)
    start = time.perf_counter()
    runner = Runner(spec, out, progress=progress)
    runner.run(parallel=parallel)
    report = out / "report"
    samples = open_dataset(spec.dataset, split="test", size=64, n=4, seed=spec.test.data_seed)
    if spec.attacks:
        trigger_gallery(samples, [(a.name, triggers.create(a.trigger, **a.params)) for a in spec.attacks],
                        report / "triggers.png")
    more, images = [], []
    if spec.classifier is not None:
        c = spec.classifier
        more += classifier_sections(runner.store, spec.name, [a.name for a in c.attacks], [r.name for r in c.repairs],
                                    c.trusted_share)
        if repair_curves(runner.store, spec.name, [a.name for a in c.attacks], [r.name for r in c.repairs],
                         report / "repairs.png"):
            images.append("repairs.png")
        curves = runner.store.document(spec.name, "population")
        if curves is not None:
            names = list(c.population.detectors) if c.population else []
            roc_figure({d: curves[d] for d in names}, report / "roc.png")
            images.append("roc.png")
    if spec.ssl is not None:
        more += ssl_sections(runner.store, spec.name, spec.ssl.target)
    if spec.text is not None:
        more += text_sections(runner.store, spec.name, spec.text.n)
        if dose_response(runner.store, spec.name, report / "dose_response.png"):
            images.append("dose_response.png")
    expected = PRESETS / f"{spec.name}.expected.yaml"
    if expected.is_file():
        findings = check(runner.store, load_expected(expected))
        off = sum(not f.inside for f in findings)
        more.append((f"Expected ranges ({len(findings) - off} of {len(findings)} inside)", range_table(findings),
                     f"From presets/{expected.name}: each headline number against the interval it was measured "
                     "in (the file names the runs); `poisonlab report --check` exits 1 when any is OFF."))
    extra = {"target class": spec.poison.target, "poison rate": spec.poison.rate,
             "test images": spec.test.n, "wall time of this run (s)": f"{time.perf_counter() - start:.0f}",
             "processes": "2, one thread each (classifier, SSL and text jobs beside the CLIP grid, shared once it is done)"
             if runner.processes == 2 else "1"}
    return write_report(runner.store, spec.name, [a.name for a in spec.attacks], [d.name for d in spec.defenses],
                        report, extra, more, images)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="demo", help="A spec YAML file or a bundled preset name.")
    parser.add_argument("--out", default="demo-out", type=Path)
    parser.add_argument("--serial", action="store_true",
                        help="Run the classifier, SSL and text sections after the CLIP grid in this process "
                             "(default: a second process takes them on beside it when there are 2+ threads).")
    args = parser.parse_args(argv)
    configure_logging(logging.INFO)
    try:
        html = run(args.spec, args.out, parallel=not args.serial)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    readme = html.with_name("README.md")
    print(readme.read_text())
    print(f"\nreport: {html}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

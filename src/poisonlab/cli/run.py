"""``poisonlab run``: an experiment spec (a bundled preset or a YAML file) into one output folder.

Every stage is cached in ``OUT/cache`` and reused on a second run; the report is written to
``OUT/report/index.html`` and ``OUT/report/README.md``. ``make demo`` runs the ``demo`` preset.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import click

from poisonlab.bench.parallel import configure_logging
from poisonlab.bench.runner import PARTS, Runner, retrained
from poisonlab.bench.spec import PRESETS, load_spec, with_seeds
from poisonlab.data import open_dataset
from poisonlab.report.check import check, load_expected, part_of, range_table
from poisonlab.report.detectors import detector_figures, detector_sections
from poisonlab.report.experiment import write_report
from poisonlab.report.gallery import trigger_gallery
from poisonlab.report.roc import roc_figure
from poisonlab.report.sections import classifier_sections, ssl_sections
from poisonlab.report.text import dose_response, text_sections
from poisonlab.report.trace import repair_curves
from poisonlab.report.training import safeclip_splits, training_sections
from poisonlab.utils.machine import one_line

log = logging.getLogger("poisonlab.run")


def run(spec_name: str, out: Path, progress: bool = True, parallel: bool = False,
        only: list[str] | None = None, seeds: list[int] | None = None, force: bool = False) -> Path:
    """Run the spec into ``out`` and write the report; ``parallel``: sections in a second process;
    ``only``: just these parts of the spec (``grid``, ``classifier``, ``ssl``, ``text``, ``training``); ``seeds``:
    more training seeds for every trained cell (:func:`~poisonlab.bench.spec.with_seeds`); ``force``: write into
    a non-empty ``out`` that poisonlab did not write (:func:`~poisonlab.utils.output.claim_output`)."""
    spec = with_seeds(load_spec(spec_name), seeds or [])
    start = time.perf_counter()
    runner = Runner(spec, out, progress=progress, only=only, force=force)
    runner.run(parallel=parallel)
    report = out / "report"
    samples = open_dataset(spec.dataset, split="test", size=64, n=4, seed=spec.test.data_seed)
    grid = [a for a in spec.attacks if "grid" in runner.parts]
    if grid:
        trigger_gallery(samples, [(a.name, runner.trigger(a)) for a in grid],
                        report / "triggers.png")
    more, images = [], []
    if spec.classifier is not None and "classifier" in runner.parts:
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
    if grid and spec.detectors:
        names = [d.name for d in spec.detectors]
        more += detector_sections(runner.store, spec.name, [a.name for a in grid], names)
        images += detector_figures(runner.store, spec.name, [a.name for a in grid], names, report)
    if spec.ssl is not None and "ssl" in runner.parts:
        more += ssl_sections(runner.store, spec.name, spec.ssl.target)
    if spec.text is not None and "text" in runner.parts:
        more += text_sections(runner.store, spec.name, spec.text.n)
        if dose_response(runner.store, spec.name, report / "dose_response.png"):
            images.append("dose_response.png")
    if spec.training is not None and "training" in runner.parts:
        t = spec.training
        more += training_sections(runner.store, spec.name, [a.name for a in t.attacks], [d.name for d in t.defenses])
        if safeclip_splits(runner.store, spec.name, report / "safeclip_splits.png", t.seed):
            images.append("safeclip_splits.png")
    expected = PRESETS / f"{spec.name}.expected.yaml"
    if expected.is_file():
        findings = check(runner.store, [e for e in load_expected(expected) if part_of(e.experiment) in runner.parts])
        off = sum(not f.inside for f in findings)
        more.append((f"Expected ranges ({len(findings) - off} of {len(findings)} inside)", range_table(findings),
                     f"From presets/{expected.name}: each headline number against the interval it was measured "
                     "in (the file names the runs); `poisonlab report --check` exits 1 when any is OFF."))
    extra = {"target class": spec.poison.target, "poison rate": spec.poison.rate,
             "test images": spec.test.n, "wall time of this run (s)": f"{time.perf_counter() - start:.0f}",
             "processes": "2, one thread each (classifier, SSL and text jobs beside the CLIP grid, shared once it is done)"
             if runner.processes == 2 else "1"}
    machine = runner.store.document(spec.name, "machine")
    if machine:
        extra["machine"] = one_line(machine)
    if only:
        extra["parts run"] = ", ".join(p for p in PARTS if p in runner.parts)
    conditions = [d.name for d in spec.defenses] + [retrained(d.name) for d in spec.detectors if d.retrain]
    return write_report(runner.store, spec.name, [a.name for a in grid], conditions, report, extra, more, images)



@click.command("run")
@click.argument("spec_arg", metavar="[SPEC]", required=False)
@click.option("--spec", "spec_opt", default=None, help="The same as SPEC (a spec YAML file or a bundled preset name).")
@click.option("--out", default="demo-out", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: the stage cache, results.db and the report.")
@click.option("--serial", is_flag=True,
              help="Run the classifier, SSL and text sections after the CLIP grid in this process (default: a second "
                   "process takes them on beside it when there are 2+ threads).")
@click.option("--only", multiple=True, type=click.Choice(PARTS), metavar="PART",
              help=f"Run just this part of the spec ({', '.join(PARTS)}; repeat for several). The stages another "
                   "part shares (the clean pre-trained model) are run or reused as needed.")
@click.option("--seeds", multiple=True, type=click.IntRange(0, 2**63 - 1), metavar="SEED",
              help="Another training seed for every trained cell (repeat for several); the report then shows "
                   "mean ± sd, the range, and only the orderings that hold on every seed.")
@click.option("--force", is_flag=True,
              help="Write into a non-empty --out folder that poisonlab did not write (only its own entries are replaced).")
def run_cmd(spec_arg: str | None, spec_opt: str | None, out: Path, serial: bool, only: tuple[str, ...],
            seeds: tuple[int, ...], force: bool) -> None:
    """Run an experiment spec (default: the demo preset) and write its report.

    \b
    Example:
      poisonlab run demo --out demo-out
      poisonlab run my-spec.yaml --out runs/mine --seeds 1 --seeds 2 --only grid
    """
    if spec_arg and spec_opt and spec_arg != spec_opt:
        raise click.UsageError("give the spec once (SPEC or --spec)")
    configure_logging(logging.INFO)
    html = run(spec_arg or spec_opt or "demo", out, parallel=not serial, only=list(only) or None,
               seeds=list(seeds), force=force)
    click.echo(html.with_name("README.md").read_text())
    click.echo(f"\nreport: {html}")

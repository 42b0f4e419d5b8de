"""``poisonlab run``: an experiment spec (a bundled preset or a YAML file) into one output folder.

Every stage is cached in ``OUT/cache`` and reused on a second run; the report is written to
``OUT/report/index.html`` and ``OUT/report/README.md``. ``make demo`` runs the ``demo`` preset.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import click

from poisonlab.bench.grid import retrained
from poisonlab.bench.parallel import configure_logging
from poisonlab.bench.runner import Runner
from poisonlab.bench.runner import dry_run as runner_dry_run
from poisonlab.bench.spec import GRID, PRESETS, load_spec, with_seeds
from poisonlab.cli.options import force_option
from poisonlab.data import open_dataset
from poisonlab.report.check import check, load_expected, range_table
from poisonlab.report.detectors import detector_figures, detector_sections
from poisonlab.report.experiment import CAPTIONS, write_report
from poisonlab.report.gallery import trigger_gallery
from poisonlab.report.studies import render
from poisonlab.utils.machine import one_line

log = logging.getLogger("poisonlab.run")


def run(spec_name: str, out: Path, progress: bool = True, parallel: bool = False,
        only: list[str] | None = None, seeds: list[int] | None = None, force: bool = False) -> Path:
    """Run the spec into ``out`` and write the report; ``parallel``: sections in a second process;
    ``only``: just these parts of the spec (``grid`` or a study's name); ``seeds``:
    more training seeds for every trained cell (:func:`~poisonlab.bench.spec.with_seeds`); ``force``: write into
    a non-empty ``out`` that poisonlab did not write (:func:`~poisonlab.utils.output.claim_output`)."""
    spec = with_seeds(load_spec(spec_name), seeds or [])
    start = time.perf_counter()
    runner = Runner(spec, out, progress=progress, only=only, force=force)
    runner.run(parallel=parallel)
    report = out / "report"
    samples = open_dataset(spec.dataset, split="test", size=64, n=4, seed=spec.test.data_seed)
    grid = [a for a in spec.attacks if "grid" in runner.parts]
    shown = [(a.name, trigger) for a in grid if (trigger := runner.grid.trigger(a)) is not None]
    if shown:
        trigger_gallery(samples, shown, report / "triggers.png")
    more, images = [], []
    if grid and spec.detectors:
        names = [d.name for d in spec.detectors]
        more += detector_sections(runner.store, spec.name, [a.name for a in grid], names)
        images += [(f, CAPTIONS[f]) for f in detector_figures(runner.store, spec.name, [a.name for a in grid], names, report)]
    for name, study in runner.studies.items():
        if name in runner.parts and name != GRID:
            sections, figures = render(runner.store, study.kind, name, study.experiment, study.spec, report)
            more += sections
            images += figures
    expected = PRESETS / f"{spec.name}.expected.yaml"
    if expected.is_file():
        parts = {row.experiment: row.study for row in runner.store.studies(spec.name)}
        findings = check(runner.store, [e for e in load_expected(expected) if parts.get(e.experiment) in runner.parts])
        checked = [f for f in findings if not f.not_run]
        off = sum(f.off for f in checked)
        more.append((f"Expected ranges ({len(checked) - off} of {len(checked)} inside)", range_table(findings),
                     f"From presets/{expected.name}: each headline number against the interval it was measured "
                     "in (the file names the runs); `poisonlab report --check` exits 1 when any is OFF."))
    extra = {"target class": spec.poison.target, "poison rate": spec.poison.rate,
             "test images": spec.test.n, "wall time of this run (s)": f"{time.perf_counter() - start:.0f}",
             "processes": "2, one thread each (the studies' jobs beside the CLIP grid, shared once it is done)"
             if runner.processes == 2 else "1"}
    machine = runner.store.document(spec.name, "machine")
    if machine:
        extra["machine"] = one_line(machine)
    if only:
        extra["parts run"] = ", ".join(sorted(runner.parts))
    conditions = [d.name for d in spec.defenses] + [retrained(d.name) for d in spec.detectors if d.retrain]
    return write_report(runner.store, spec.name, [a.name for a in grid], conditions, report, extra, more, images)



@click.command("run")
@click.argument("spec_arg", metavar="[SPEC]", required=False)
@click.option("--spec", "spec_opt", default=None, help="The same as SPEC (a spec YAML file or a bundled preset name).")
@click.option("--out", default="demo-out", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: the stage cache, results.db and the report.")
@click.option("--serial", is_flag=True,
              help="Run the studies (classifier, SSL, text, ...) after the CLIP grid in this process (default: a "
                   "second process takes them on beside it when there are 2+ threads).")
@click.option("--only", multiple=True, metavar="PART",
              help="Run just this part of the spec: 'grid' (the CLIP attack x defense grid) or a study's name "
                   "(the demo's: classifier, ssl, text); repeat for several. The stages another part shares (the "
                   "clean pre-trained model) are run or reused as needed.")
@click.option("--seeds", multiple=True, type=click.IntRange(0, 2**63 - 1), metavar="SEED",
              help="Another training seed for every trained cell (repeat for several); the report then shows "
                   "mean ± sd, the range, and only the orderings that hold on every seed.")
@force_option
@click.option("--dry-run", is_flag=True,
              help="Check the whole spec (every method, trigger and dataset it names) and list the jobs each part "
                   "would run; train nothing, write nothing.")
def run_cmd(spec_arg: str | None, spec_opt: str | None, out: Path, serial: bool, only: tuple[str, ...],
            seeds: tuple[int, ...], force: bool, dry_run: bool) -> None:
    """Run an experiment spec (default: the demo preset) and write its report.

    \b
    Example:
      poisonlab run demo --out demo-out
      poisonlab run my-spec.yaml --out runs/mine --seeds 1 --seeds 2 --only grid
      poisonlab run my-spec.yaml --dry-run     # check it whole and list its jobs first
    """
    if spec_arg and spec_opt and spec_arg != spec_opt:
        raise click.UsageError("give the spec once (SPEC or --spec)")
    if dry_run:
        planned = runner_dry_run(with_seeds(load_spec(spec_arg or spec_opt or "demo"), list(seeds)), list(only) or None)
        for part, jobs in planned.items():
            click.echo(f"{part}: {len(jobs)} job{'s' * (len(jobs) != 1)}")
            click.echo("".join(f"  {job}\n" for job in jobs), nl=False)
        parts = f"{len(planned)} part{'s' * (len(planned) != 1)}"
        click.echo(f"spec checked: {sum(map(len, planned.values()))} jobs in {parts}; nothing run")
        return
    configure_logging(logging.INFO)
    html = run(spec_arg or spec_opt or "demo", out, parallel=not serial, only=list(only) or None,
               seeds=list(seeds), force=force)
    click.echo(html.with_name("README.md").read_text())
    click.echo(f"\nreport: {html}")

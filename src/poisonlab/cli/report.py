"""``poisonlab report``: a finished run's report, and whether its numbers are where they should be."""

from __future__ import annotations

from pathlib import Path

import click

from poisonlab.bench.spec import PRESETS
from poisonlab.bench.store import ResultsStore
from poisonlab.cli.options import emit, json_option
from poisonlab.errors import InputError, RunOffError
from poisonlab.report.check import as_dict, check, expected_file, load_expected, verdict_lines


@click.command("report")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--check", "do_check", is_flag=True,
              help="Compare the run's headline numbers with the preset's expected ranges; exit 1 if any is off.")
@click.option("--expected", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="An expected-ranges file (default: presets/<the run's preset>.expected.yaml).")
@json_option
def report_cmd(run_dir: Path, do_check: bool, expected: Path | None, as_json: bool) -> None:
    """Where RUN_DIR's report is; with --check, the numbers that fall outside their expected ranges.

    \b
    Example:
      poisonlab report --check demo-out
    """
    db = run_dir / "results.db"
    if not db.is_file():
        raise InputError(f"{run_dir}: no results.db (not the output folder of `poisonlab run`)")
    store = ResultsStore(db, read_only=True)
    try:
        summary: dict = {"report": str(run_dir / "report" / "index.html"), "experiments": store.experiments()}
        lines = [f"report: {summary['report']}"]
        if do_check:
            path = expected or expected_file(store, PRESETS)
            if path is None:
                raise InputError(f"no expected ranges for {', '.join(summary['experiments']) or 'this run'}; "
                                 "pass --expected FILE")
            findings = check(store, load_expected(path))
            summary["check"] = {"expected": str(path), **as_dict(findings)}
            lines += verdict_lines(findings)
    finally:
        store.close()
    emit(summary, as_json, lines)
    if do_check and summary["check"]["off"]:
        raise RunOffError(f"{len(summary['check']['off'])} numbers off")

"""Entry point: the click group and the error policy (exit 0 / 1 / 2)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

import click

from poisonlab import attacks, data, defenses, detect, triggers
from poisonlab.cli.classifier import detect_cmd, repair_cmd
from poisonlab.cli.clip import eval_cmd, models_cmd, train_group
from poisonlab.cli.common import emit
from poisonlab.cli.defend import audit_cmd, clean_cmd
from poisonlab.cli.poison import poison, show
from poisonlab.cli.report import report_cmd
from poisonlab.cli.run import run_cmd
from poisonlab.cli.ssl import clean_encoder_cmd, probe_cmd
from poisonlab.errors import InputError, RunOffError, crash_log, one_line
from poisonlab.models.finite import ALLOW_NONFINITE


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.option("--allow-nonfinite", is_flag=True,
              help="Open checkpoints whose weights hold NaN or infinity (refused by default: such a model is broken).")
def cli(verbose: int, allow_nonfinite: bool) -> None:
    """poisonlab: poison, train, measure, detect and remove backdoors in image encoders."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    ALLOW_NONFINITE.set(allow_nonfinite)


@cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def list_names(as_json: bool) -> None:
    """List the registered triggers, attacks, datasets, defenses (with the model family each works
    on and its kind) and detectors."""
    names: dict[str, Any] = {"triggers": triggers.available(), "attacks": attacks.available(),
                             "datasets": data.available()}
    lines = [f"{k}: {', '.join(v)}" for k, v in names.items()]
    for title, registry in (("defenses", defenses.DEFENSES), ("detectors", detect.DETECTORS)):
        rows = [{"name": e.name, "family": e.family, "kind": e.kind} for e in registry.entries()]
        names[title] = rows
        lines.append(f"{title}:")
        lines += [f"  {r['name']:<16} {r['family']:<11} {r['kind']}" for r in rows]
    emit(names, as_json, lines)


cli.add_command(poison)
cli.add_command(show)
cli.add_command(train_group)
cli.add_command(eval_cmd)
cli.add_command(models_cmd)
cli.add_command(clean_cmd)
cli.add_command(audit_cmd)
cli.add_command(repair_cmd)
cli.add_command(detect_cmd)
cli.add_command(probe_cmd)
cli.add_command(clean_encoder_cmd)
cli.add_command(report_cmd)
cli.add_command(run_cmd)


# Errors about a path itself (a folder under a regular file, no permission, a file where a folder
# must be) are bad input; other OS errors (a full disk, a lost mount) are failures of the run.
PATH_ERRORS = (NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv``; returns the exit code instead of exiting (tests call this)."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="poisonlab", standalone_mode=False)
    except InputError as err:
        click.echo(f"error: {err}", err=True)
        return 2
    except RunOffError:
        return 1
    except click.exceptions.Exit as err:
        return int(err.exit_code)
    except click.ClickException as err:
        click.echo(f"error: {err.format_message()}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1
    except PATH_ERRORS as err:  # a path the user gave that cannot be used as asked
        click.echo(f"error: cannot use {err.filename}: {err.strerror or err}", err=True)
        return 2
    except Exception as err:  # noqa: BLE001 - the CLI's last line of defence
        return last_resort(err)
    return 0


def last_resort(err: BaseException) -> int:
    """An unexpected failure: one line naming it and the log file that holds its traceback; exit 1."""
    logging.getLogger("poisonlab").debug("failure", exc_info=True)
    try:
        where = f" (traceback in {crash_log(err)})"
    except OSError:
        where = ""
    click.echo(f"error: {one_line(err)}{where}", err=True)
    return 1


def entry() -> None:
    sys.exit(main())

"""Entry point: the click group and the error policy (exit 0 / 1 / 2).

The group imports a command's module only when that command runs (:class:`LazyGroup`), so
``poisonlab --help`` and ``--version`` start without importing torch.
"""

from __future__ import annotations

import importlib
import logging
import sys
import textwrap
from collections.abc import Sequence

import click

from poisonlab.errors import ALLOW_NONFINITE, InputError, RunOffError, crash_log, one_line

COMMANDS: dict[str, tuple[str, str, str]] = {
    "list": ("poisonlab.cli.listing", "list_names",
        "List the registered triggers, attacks, datasets, defenses (with the model family each works on and "
        "its kind), detectors and study kinds (the parts a spec for `poisonlab run` may hold)."),
    "poison": ("poisonlab.cli.poison", "poison",
        "Make a poison plan (plan.json) for a dataset, a gallery of poisoned pairs, and optionally the "
        "data."),
    "show": ("poisonlab.cli.poison", "show",
        "Write a PNG grid: clean images beside each trigger, or a plan's poisoned pairs."),
    "train": ("poisonlab.cli.train", "train_group",
        "Train or fine-tune a model."),
    "eval": ("poisonlab.cli.clip", "eval_cmd",
        "Measure CA, retrieval, and ASR / Hit@K / MinRank as they apply."),
    "models": ("poisonlab.cli.clip", "models_cmd",
        "List CLIP architectures and their open_clip pretrained tags (ARCH: only that one)."),
    "defend": ("poisonlab.cli.defend", "defend_cmd",
        "Run any defense on a model of any family; the family is read from the checkpoint."),
    "scan": ("poisonlab.cli.scan", "scan_cmd",
        "Is this checkpoint backdoored? One calibrated verdict, its suspected target and the evidence."),
    "scan-calibrate": ("poisonlab.cli.scan", "scan_calibrate_cmd",
        "Train the scan's population of clean and backdoored tiny CLIPs, score them, fit the verdict."),
    "detect": ("poisonlab.cli.classifier", "detect_cmd",
        "Is this model backdoored? Scores one model, or a population with ROC AUC and an ROC plot."),
    "report": ("poisonlab.cli.report", "report_cmd",
        "Where RUN_DIR's report is; with --check, the numbers that fall outside their expected ranges."),
    "run": ("poisonlab.cli.run", "run_cmd",
        "Run an experiment spec (default: the demo preset) and write its report."),
}
"""Each command: its module, its attribute there, and the first paragraph of its help, which
``poisonlab --help`` shortens as click would (tests/test_cli_poison.py keeps it equal to the command's own)."""

ALIASES: dict[str, tuple[str, str]] = {
    "clean": ("defend", "defend held to CLIP cleaning defenses (--defense names the method)."),
    "audit": ("defend", "defend held to CLIP pair filters and detectors (default --method filter): every pair's "
                        "score and the kept pairs."),
    "repair": ("defend", "defend held to classifier repairs with a trusted share of labelled data."),
    "clean-encoder": ("defend", "defend held to image-encoder defenses (distillation, PatchSearch)."),
    "probe": ("eval", "eval; an image encoder is measured by a linear probe."),
}
"""Other names of a command, each with its line in ``poisonlab --help`` (``defend`` reads the name
it was called by to hold itself to that family and kind)."""


class LazyGroup(click.Group):
    """A click group over :data:`COMMANDS` that imports a command's module when it is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*COMMANDS, *ALIASES]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        name = ALIASES.get(name, (name, ""))[0]
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        limit = formatter.width - 6 - max(len(name) for name in self.list_commands(ctx))
        for title, rows in (("Commands", {k: v[2] for k, v in COMMANDS.items()}),
                            ("Aliases", {k: f"= {v[1]}" for k, v in ALIASES.items()})):
            with formatter.section(title):
                formatter.write_dl([(name, textwrap.shorten(text, limit, placeholder='...')) for name, text in rows.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="poisonlab", prog_name="poisonlab")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.option("--allow-nonfinite", is_flag=True,
              help="Open checkpoints whose weights hold NaN or infinity (refused by default: such a model is broken).")
def cli(verbose: int, allow_nonfinite: bool) -> None:
    """poisonlab: poison, train, measure, detect and remove backdoors in image encoders.

    \b
    Example:
      poisonlab run demo --out demo-out      # the whole attack x defense study on the embedded data
      poisonlab list                         # every trigger, attack, dataset, defense and detector
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("poisonlab.progress").setLevel(min(level, logging.INFO))  # a run's progress, always shown
    ALLOW_NONFINITE.set(allow_nonfinite)


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

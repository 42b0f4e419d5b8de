from __future__ import annotations

import csv
import json

import pytest
from conftest import write_png

from poisonlab.cli import main
from poisonlab.data import CsvDataset


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_poison_writes_identical_plans(tmp_path, capsys):
    args = ["poison", "--dataset", "shapes", "--n", "200", "--attack", "clip-dirty", "--target", "star",
            "--rate", "0.05", "--trigger", "blended", "--trigger-param", "alpha=0.3", "--seed", "4"]
    code, out, _ = run(capsys, *args, "--out", str(tmp_path / "a"), "--json")
    assert code == 0 and json.loads(out)["poisoned"] == 10
    assert run(capsys, *args, "--out", str(tmp_path / "b"))[0] == 0
    a, b = (tmp_path / "a" / "plan.json").read_bytes(), (tmp_path / "b" / "plan.json").read_bytes()
    assert a == b and str(tmp_path) not in a.decode()
    assert (tmp_path / "a" / "poisoned.png").stat().st_size > 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_materialize_roundtrips_through_csv_reader(tmp_path, capsys):
    out = tmp_path / "m"
    code, _, _ = run(capsys, "poison", "--dataset", "shapes", "--n", "40", "--attack", "clip-dirty", "--target",
                     "star", "--count", "4", "--trigger", "badnet-stripes", "--out", str(out), "--materialize")
    assert code == 0
    rows = list(csv.reader(open(out / "data.csv")))
    assert rows[0] == ["path", "caption", "label"] and len(rows) == 41
    data = CsvDataset(out / "data.csv")
    plan = json.loads((out / "plan.json").read_text())
    for e in plan["entries"]:
        assert data.caption_list[e["index"]] == e["caption"] and "star" in e["caption"]


def test_show_triggers_and_plan(tmp_path, capsys):
    assert run(capsys, "show", "--out", str(tmp_path / "g.png"), "--triggers", "badnet,wanet")[0] == 0
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
    run(capsys, "poison", "--dataset", "shapes", "--n", "50", "--attack", "text-attack-2", "--source", "circle",
        "--target", "star", "--count", "3", "--out", str(tmp_path / "p"))
    assert run(capsys, "show", "--plan", str(tmp_path / "p" / "plan.json"), "--out", str(tmp_path / "p.png"))[0] == 0


@pytest.mark.parametrize("argv, needle", [
    (["poison", "--dataset", "shapes", "--attack", "nope", "--out", "X"], "valid: badclip, badencoder, clip-dirty"),
    (["poison", "--dataset", "nope", "--attack", "clip-dirty", "--target", "star", "--rate", "0.1", "--out", "X"], "neither a known name"),
    (["poison", "--dataset", "shapes", "--n", "50", "--attack", "clip-dirty", "--target", "star", "--rate", "2", "--out", "X"], "rate must be in (0, 1]"),
    (["poison", "--dataset", "shapes", "--n", "50", "--attack", "clip-dirty", "--target", "banana", "--rate", "0.1", "--out", "X"], "not in the dataset"),
    (["poison", "--dataset", "shapes", "--attack", "clip-dirty", "--target", "star", "--rate", "0.1", "--trigger", "zap", "--out", "X"], "unknown trigger"),
    (["poison", "--dataset", "/no/such/folder", "--attack", "clip-dirty", "--target", "star", "--rate", "0.1", "--out", "X"], "neither"),
    (["poison", "--dataset", "shapes"], "Missing option"),
    (["show", "--triggers", "zap", "--out", "X.png"], "unknown trigger"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, needle):
    argv = [a.replace("X", str(tmp_path / "x")) if a.startswith("X") else a for a in argv]
    code, _, err = run(capsys, *argv)
    assert code == 2, err
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_csv_with_missing_image_names_the_row(tmp_path, capsys):
    write_png(tmp_path / "a.png")
    (tmp_path / "d.csv").write_text("a.png,a cat,cat\ngone.png,a dog,dog\n")
    code, _, err = run(capsys, "poison", "--dataset", str(tmp_path / "d.csv"), "--attack", "clip-dirty",
                       "--target", "cat", "--count", "1", "--out", str(tmp_path / "o"))
    assert code == 2 and "row 2" in err


def test_list_and_help(capsys):
    code, out, _ = run(capsys, "list", "--json")
    assert code == 0 and "wanet" in json.loads(out)["triggers"]
    assert run(capsys, "poison", "--help")[0] == 0


def test_outputs_have_normal_permissions(tmp_path, capsys):
    import os
    import stat

    assert main(["show", "--triggers", "blended", "--rows", "1", "--out", str(tmp_path / "g.png")]) == 0
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "g.png").stat().st_mode) == 0o666 & ~mask


def test_poison_never_deletes_user_files(tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "sub").mkdir(parents=True)
    (out / "thesis.txt").write_text("years of work")
    (out / "sub" / "notes.txt").write_text("more")
    args = ["poison", "--dataset", "shapes", "--n", "60", "--attack", "clip-dirty", "--target", "star",
            "--trigger", "badnet", "--rate", "0.05", "--out", str(out)]
    code, _, err = run(capsys, *args)
    assert code == 2 and "did not write" in err and len(err.strip().splitlines()) == 1
    assert not (out / "plan.json").exists()
    code, _, err = run(capsys, *args, "--force", "--materialize")
    assert code == 0, err
    assert (out / "plan.json").is_file() and (out / "data.csv").is_file()
    code, _, err = run(capsys, *args)  # poisonlab's own folder now: no --force needed
    assert code == 0, err
    assert not (out / "data.csv").exists() and not (out / "images").exists()  # stale outputs of ours removed
    assert (out / "thesis.txt").read_text() == "years of work" and (out / "sub" / "notes.txt").read_text() == "more"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_data_reopened_at_the_model_size(tmp_path):
    from poisonlab.cli.common import at_model_size, load_data

    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        write_png(tmp_path / c / "0.png", size=(80, 60))
    first = load_data(str(tmp_path))
    assert at_model_size(str(tmp_path), first, 32, None, 0) is first
    again = at_model_size(str(tmp_path), first, 64, None, 0)
    assert again[0][0].shape == (3, 64, 64) and again.classnames == first.classnames


def test_poison_sweeps_only_its_own_killed_temp_folders(tmp_path, capsys):
    """A staging folder inside ``--out`` that carries the folder's marker and that no live process
    holds is a killed run's: the next run removes it. One a live writer holds stays, and so does
    every entry named like a temp file that poisonlab did not make (inside or beside ``--out``)."""
    import fcntl
    import json
    import os

    from poisonlab.cli import main

    out = tmp_path / "plan"
    argv = ["poison", "--dataset", "shapes", "--n", "40", "--attack", "clip-dirty", "--target", "star",
            "--rate", "0.1", "--trigger", "badnet", "--out", str(out)]
    assert main(argv) == 0
    marker = json.loads((out / ".poisonlab-output.json").read_text())["marker"]
    dead = out / f".stage.{marker}.dead0001.tmp"
    dead.mkdir()
    (dead / "plan.json").write_text("half")
    live = out / f".stage.{marker}.live0001.tmp"
    live.mkdir()
    users = [out / ".plan.dead0001.tmp", tmp_path / ".plan.dead0001.tmp", out / f".x.{'0' * 16}.abcdefgh.tmp"]
    for path in users:
        path.mkdir()
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        code = main(argv)
    finally:
        os.close(fd)
    capsys.readouterr()
    assert code == 0 and (out / "plan.json").is_file()
    assert not dead.exists() and live.exists() and all(p.exists() for p in users)


def test_the_lazy_command_table_matches_the_commands():
    """``poisonlab --help`` lists every command from a table without importing it; the table's
    help text is each command's own first paragraph, and nothing is registered past the table."""
    import importlib
    import inspect

    from poisonlab.cli.main import COMMANDS

    for name, (module, attr, text) in COMMANDS.items():
        command = getattr(importlib.import_module(module), attr)
        assert command.name == name
        assert text == " ".join(inspect.cleandoc(command.help or "").split("\n\n")[0].split()), name


def test_help_version_and_list_do_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; from poisonlab.cli.main import main; rc = main(['--help']); rc2 = main(['--version']);"
            " rc3 = main(['list']); print('torch' in sys.modules, rc, rc2, rc3)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False 0 0 0"
    assert "clean-encoder" in out and "poisonlab, version" in out and "pivotal-tuning   classifier  repair" in out


def test_list_reads_from_the_source_what_the_registries_hold():
    from poisonlab import attacks, data, defenses, detect, triggers
    from poisonlab.bench import studies
    from poisonlab.registry import declared

    found = declared()
    for variable, registry in (("TRIGGERS", triggers.TRIGGERS), ("ATTACKS", attacks.ATTACKS),
                               ("DATASETS", data.DATASETS), ("DEFENSES", defenses.DEFENSES),
                               ("DETECTORS", detect.DETECTORS), ("STUDIES", studies.STUDIES)):
        held = {(e.name, e.family, e.kind) for e in registry.entries()}
        assert found[variable] == held and len(held) >= 3, variable


def leaf_commands():
    """Every command the CLI runs (``train clip`` and its siblings one by one), with its path."""
    import importlib

    import click

    from poisonlab.cli.main import COMMANDS

    def leaves(command, path):
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                yield from leaves(sub, f"{path} {name}")
        else:
            yield path, command

    for name, (module, attr, _) in COMMANDS.items():
        yield from leaves(getattr(importlib.import_module(module), attr), name)


def test_every_option_of_every_command_has_help():
    import click

    for path, command in leaf_commands():
        bare = [p.opts[0] for p in command.params if isinstance(p, click.Option) and not p.help]
        assert not bare, f"{path}: {bare}"


def test_the_readme_defines_the_metrics_list_prints(capsys):
    from pathlib import Path

    from poisonlab.glossary import METRICS

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    table = readme.split("## The metrics, once", 1)[1].split("\n\n", 2)[1]
    rows = [line.strip("|").split(" | ", 1) for line in table.splitlines()[2:]]
    assert {name.strip(): text.strip() for name, text in rows} == METRICS
    assert main(["list", "--metrics"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == f"ASR: {METRICS['ASR']}"


def test_every_command_shows_an_example():
    for path, command in leaf_commands():
        assert "Example" in (command.help or ""), path

"""Every file poisonlab reads may be hostile: names inside files never become paths outside their
folder, output folders never follow symlinks or claim a user's files, read-only commands write
nothing, broken models are refused, resumes check the data's content, decoding is faithful, and
every bad input is one line and exit 2. Each case builds its fixture here, in the test."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from poisonlab.cli import main
from poisonlab.models import create_clip
from poisonlab.models.classifier import create_classifier, save_classifier
from poisonlab.models.clip import save_clip
from poisonlab.utils.output import TRAIN_OUTPUTS, claim_output
from tests.conftest import write_png

POISON = ["poison", "--dataset", "shapes", "--n", "40", "--attack", "clip-dirty", "--target", "star",
          "--rate", "0.1", "--trigger", "badnet"]
TRAIN = ["train", "clip", "--dataset", "shapes", "--n", "32", "--batch-size", "16", "--steps", "1"]
EVAL = ["eval", "--dataset", "shapes", "--split", "test", "--n", "20"]
SHAPES = ["circle", "square", "triangle", "star", "cross", "diamond", "hexagon", "ring", "crescent", "heart"]


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _clip_with(folder, change=None, side=None) -> str:
    """A tiny CLIP checkpoint in ``folder``; ``change(state)`` edits its tensors, ``side(body)`` its sidecar."""
    bundle = create_clip("poisonlab-tiny-rn")
    if change is not None:
        with torch.no_grad():
            change(bundle.model.state_dict())
    path = save_clip(bundle, folder / "model.safetensors")
    if side is not None:
        body = json.loads((folder / "model.json").read_text())
        side(body)
        (folder / "model.json").write_text(json.dumps(body))
    return str(path)


def _classifier_with(folder, change=None, side=None) -> str:
    bundle = create_classifier("poisonlab-resnet-tiny", 10, 32, SHAPES)
    if change is not None:
        with torch.no_grad():
            change(bundle.model.state_dict())
    path = save_classifier(bundle, folder / "model.safetensors")
    if side is not None:
        body = json.loads((folder / "model.json").read_text())
        side(body["poisonlab"])
        (folder / "model.json").write_text(json.dumps(body))
    return str(path)


def _first(state):
    return next(v for v in state.values() if v.is_floating_point())


def _csv(folder, rows: list[tuple[str, str, str]]) -> str:
    for name, _, _ in rows:
        if not (folder / name).exists():
            write_png(folder / name)
    (folder / "data.csv").write_text("path,caption,label\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    return str(folder / "data.csv")


def _shard(path, n: int = 8) -> bytes:
    with tarfile.open(path, "w") as tar:
        for k in range(n):
            buf = io.BytesIO()
            Image.new("RGB", (8, 8), (k * 20, 0, 0)).save(buf, format="PNG")
            for ext, data in (("png", buf.getvalue()), ("txt", b"a red circle"), ("cls", b"0")):
                info = tarfile.TarInfo(f"{k:04d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path.read_bytes()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("untrusted")
    f = {"dir": str(d)}
    for name, change in (("nan", lambda s: _first(s).fill_(float("nan"))),
                         ("inf", lambda s: _first(s).view(-1)[0].fill_(float("inf")))):
        (d / name).mkdir()
        f[name] = _clip_with(d / name, change)
        (d / f"clf-{name}").mkdir()
        f[f"clf_{name}"] = _classifier_with(d / f"clf-{name}", change)
    (d / "overflow").mkdir()
    f["overflow"] = _clip_with(d / "overflow", lambda s: [v.mul_(1e30) for k, v in s.items()
                                                           if k.startswith("visual") and v.dim() > 1])
    sidecars = {
        "arch_path": lambda b: b["poisonlab"].update(model_name="../../../tmp/poisonlab-escape"),
        "arch_abs": lambda b: b["poisonlab"].update(model_name=str(d / "abs-escape")),
        "cfg_list": lambda b: b.update(model_cfg=[1, 2]),
        "cfg_huge": lambda b: b["model_cfg"]["text_cfg"].update(width=10**7, heads=8),
        "cfg_broken": lambda b: b["model_cfg"]["vision_cfg"].update(layers="many"),
    }
    for name, side in sidecars.items():
        (d / name).mkdir()
        f[name] = _clip_with(d / name, side=side)
    (d / "deep").mkdir()
    f["deep_sidecar"] = _clip_with(d / "deep")
    (d / "deep" / "model.json").write_text("[" * 200_000)
    (d / "deep-plan.json").write_text("{" + '"a": {' * 50_000)
    f["deep_plan"] = str(d / "deep-plan.json")
    classifier_sidecars = {
        "timm_path": lambda m: m.update(timm_name="../x"),
        "timm_classes": lambda m: m.update(num_classes=10**12),
        "timm_kwargs": lambda m: m.update(timm_kwargs={"depth": [[1], 2]}),
        "timm_kind": lambda m: m.update(kind="../../x"),
    }
    for name, side in classifier_sidecars.items():
        (d / name).mkdir()
        f[name] = _classifier_with(d / name, side=side)
    (d / "dup").mkdir()
    (d / "dup" / "names.txt").write_text("\n".join(SHAPES[:-1] + ["circle"]) + "\n")
    f["dup_names"] = str(d / "dup" / "names.txt")
    (d / "dup" / "blank.txt").write_text("\n".join(SHAPES[:4] + [""] + SHAPES[4:9]) + "\n")
    f["blank_names"] = str(d / "dup" / "blank.txt")
    (d / "csv-empty").mkdir()
    f["empty_label"] = _csv(d / "csv-empty", [("a.png", "a cat", "cat"), ("b.png", "a dog", ""), ("c.png", "a cat", "cat")])
    for a, b in (("a_b", "a b"),):
        (d / "folders" / a).mkdir(parents=True)
        (d / "folders" / b).mkdir(parents=True)
        write_png(d / "folders" / a / "0.png")
        write_png(d / "folders" / b / "0.png")
    f["dup_folders"] = str(d / "folders")
    with tarfile.open(d / "escape.tar", "w") as tar:
        for name, data in (("../0.png", b"x"), ("../0.txt", b"a cat"), ("/abs/1.png", b"x"), ("/abs/1.txt", b"a cat")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    f["escape_shard"] = str(d / "escape.tar")
    data = _shard(d / "whole.tar")
    (d / "cut.tar").write_bytes(data[: len(data) * 2 // 3 // 512 * 512])
    f["cut_shard"] = str(d / "cut.tar")
    plan = {"attack": "clip-dirty", "params": {}, "seed": 0, "num_samples": 40, "format": "poisonlab.plan/1",
            "trigger": {"name": "badnet", "params": {}},
            "dataset": {"name": "shapes", "open": {"spec": "shapes", "n": 40}},
            "entries": [{"index": 3, "triggered": True, "caption": "a star"}]}
    bad_plans = {
        "plan_index_text": {"entries": [{"index": "3", "triggered": True}]},
        "plan_index_bool": {"entries": [{"index": True}]},
        "plan_entries_map": {"entries": {"index": 3}},
        "plan_triggered_text": {"entries": [{"index": 3, "triggered": "yes"}]},
        "plan_caption_number": {"entries": [{"index": 3, "caption": 7}]},
        "plan_seed_float": {"seed": 0.5},
        "plan_params_list": {"params": [1]},
        "plan_unknown_field": {"extra": 1},
        "plan_trigger_name_number": {"trigger": {"name": 5, "params": {}}},
        "plan_no_entries": {"entries": None},
        "plan_open_n_text": {"dataset": {"name": "shapes", "open": {"spec": "shapes", "n": "40"}}},
        "plan_open_unknown": {"dataset": {"name": "shapes", "open": {"spec": "shapes", "n": 40, "evil": 1}}},
        "plan_open_spec_number": {"dataset": {"name": "shapes", "open": {"spec": 7}}},
        "plan_index_twice": {"entries": [{"index": 3, "caption": "a star"}, {"index": 3, "caption": "a cross"}]},
    }
    for name, change in bad_plans.items():
        body = {**plan, **change}
        if change.get("entries") is None and "entries" in change:
            body.pop("entries")
        (d / f"{name}.json").write_text(json.dumps(body))
        f[name] = str(d / f"{name}.json")
    (d / "file").write_text("x")
    f["file"] = str(d / "file")
    (d / "spec-binary.yaml").write_bytes(bytes(range(256)) * 4)
    f["spec_binary"] = str(d / "spec-binary.yaml")
    (d / "spec-latin1.yaml").write_bytes("name: d\xe9mo\n".encode("latin-1"))
    f["spec_latin1"] = str(d / "spec-latin1.yaml")
    (d / "spec-list.yaml").write_text("- 1\n- 2\n")
    f["spec_list"] = str(d / "spec-list.yaml")
    return f


def _spec(tmp_path, **change) -> str:
    """The demo preset with ``change`` applied (dotted keys reach inside), as a file."""
    import yaml

    from poisonlab.bench.spec import PRESETS

    body = yaml.safe_load((PRESETS / "demo.yaml").read_text())
    for key, value in change.items():
        *head, last = key.split("__")
        target = body
        for part in head:
            target = target[int(part)] if part.isdigit() else target[part]
        target[last] = value
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(body))
    return str(path)


CASES = {
    # broken models and sidecars read from strangers
    "eval NaN weights": [*EVAL, "--model", "{nan}"],
    "eval infinite weight": [*EVAL, "--model", "{inf}"],
    "audit NaN model": ["audit", "--model", "{nan}", "--dataset", "shapes", "--json", "--out", "{out}"],
    "audit dao NaN model": ["audit", "--method", "dao", "--model", "{nan}", "--dataset", "shapes", "--json",
                            "--out", "{out}"],
    "clean NaN model": ["clean", "--defense", "finetune", "--model", "{nan}", "--dataset", "shapes", "--n", "20",
                        "--steps", "1", "--test-n", "20", "--out", "{out}"],
    "repair NaN classifier": ["repair", "--method", "finetune", "--model", "{clf_nan}", "--dataset", "shapes",
                              "--n", "200", "--out", "{out}"],
    "detect infinite classifier": ["detect", "--method", "cti", "--model", "{clf_inf}", "--dataset", "shapes",
                                   "--n", "200", "--out", "{out}"],
    "finite weights that overflow": [*EVAL, "--model", "{overflow}"],
    "sidecar architecture is a path": [*EVAL, "--model", "{arch_path}"],
    "sidecar architecture is absolute": [*EVAL, "--model", "{arch_abs}"],
    "sidecar model_cfg a list": [*EVAL, "--model", "{cfg_list}"],
    "sidecar model_cfg too big": [*EVAL, "--model", "{cfg_huge}"],
    "sidecar model_cfg broken": [*EVAL, "--model", "{cfg_broken}"],
    "classifier sidecar timm name a path": ["repair", "--method", "finetune", "--model", "{timm_path}", "--dataset",
                                            "shapes", "--n", "200", "--out", "{out}"],
    "classifier sidecar 10^12 classes": ["repair", "--method", "finetune", "--model", "{timm_classes}", "--dataset",
                                         "shapes", "--n", "200", "--out", "{out}"],
    "classifier sidecar kwargs a list": ["repair", "--method", "finetune", "--model", "{timm_kwargs}", "--dataset",
                                         "shapes", "--n", "200", "--out", "{out}"],
    "classifier sidecar kind a path": ["repair", "--method", "finetune", "--model", "{timm_kind}", "--dataset",
                                       "shapes", "--n", "200", "--out", "{out}"],
    "sidecar nested past the stack": [*EVAL, "--model", "{deep_sidecar}"],
    # plans of the wrong types
    "plan nested past the stack": [*TRAIN[:3], "{deep_plan}", "--steps", "1", "--out", "{out}"],
    "plan index a string": [*TRAIN[:3], "{plan_index_text}", "--steps", "1", "--out", "{out}"],
    "plan index a boolean": [*TRAIN[:3], "{plan_index_bool}", "--steps", "1", "--out", "{out}"],
    "plan entries a mapping": [*TRAIN[:3], "{plan_entries_map}", "--steps", "1", "--out", "{out}"],
    "plan triggered a string": [*TRAIN[:3], "{plan_triggered_text}", "--steps", "1", "--out", "{out}"],
    "plan caption a number": [*TRAIN[:3], "{plan_caption_number}", "--steps", "1", "--out", "{out}"],
    "plan seed a fraction": [*TRAIN[:3], "{plan_seed_float}", "--steps", "1", "--out", "{out}"],
    "plan params a list": [*TRAIN[:3], "{plan_params_list}", "--steps", "1", "--out", "{out}"],
    "plan unknown field": [*TRAIN[:3], "{plan_unknown_field}", "--steps", "1", "--out", "{out}"],
    "plan trigger name a number": [*TRAIN[:3], "{plan_trigger_name_number}", "--steps", "1", "--out", "{out}"],
    "plan without entries": [*TRAIN[:3], "{plan_no_entries}", "--steps", "1", "--out", "{out}"],
    "plan open n a string": [*TRAIN[:3], "{plan_open_n_text}", "--steps", "1", "--out", "{out}"],
    "plan open unknown field": [*TRAIN[:3], "{plan_open_unknown}", "--steps", "1", "--out", "{out}"],
    "plan open spec a number": [*TRAIN[:3], "{plan_open_spec_number}", "--steps", "1", "--out", "{out}"],
    "plan lists an item twice": [*TRAIN[:3], "{plan_index_twice}", "--steps", "1", "--out", "{out}"],
    # sizes checked before anything is allocated
    "n 10^12": [*POISON[:3], "--n", "1000000000000", *POISON[5:], "--out", "{out}"],
    "image size 100000": [*POISON, "--image-size", "100000", "--out", "{out}"],
    "train n 10^11": [*TRAIN[:3], "--n", "100000000000", "--steps", "1", "--out", "{out}"],
    "brace pattern of 10^8 shards": [*TRAIN[:3], "{dir}/s-{{00000000..99999999}}.tar", "--steps", "1", "--out", "{out}"],
    "brace pattern unbalanced": [*TRAIN[:3], "{dir}/s-{{0..3.tar", "--steps", "1", "--out", "{out}"],
    # decoding and class names
    "truncated shard": [*TRAIN[:3], "{cut_shard}", "--steps", "1", "--batch-size", "2", "--out", "{out}"],
    "shard member names leave the archive": ["poison", "--dataset", "{escape_shard}", "--attack", "clip-dirty",
                                             "--target", "0", "--count", "1", "--trigger", "badnet", "--materialize",
                                             "--out", "{out}"],
    "batch of one with batch norm": ["train", "classifier", "--dataset", "shapes", "--n", "32", "--batch-size", "1",
                                     "--steps", "1", "--out", "{out}"],
    "warmup of 10^20 steps": [*TRAIN, "--warmup", "100000000000000000000", "--out", "{out}"],
    "epochs 10^12": [*TRAIN[:-2], "--epochs", "1000000000000", "--out", "{out}"],
    "detect a population of 10^9": ["detect", "--method", "cti", "--population", "1000000000", "--out", "{out}"],
    "csv empty label": [*TRAIN[:3], "{empty_label}", "--steps", "1", "--batch-size", "2", "--out", "{out}"],
    "class names duplicated": [*EVAL, "--model", "{arch_abs}", "--classnames", "{dup_names}"],
    "class names with a blank line": ["eval", "--dataset", "shapes", "--n", "20", "--model", "{nan}",
                                      "--classnames", "{blank_names}"],
    "class folders named alike": ["train", "classifier", "--dataset", "{dup_folders}", "--steps", "1",
                                  "--batch-size", "2", "--out", "{out}"],
    "classifier on a truncated shard": ["train", "classifier", "--dataset", "{cut_shard}", "--steps", "1",
                                        "--batch-size", "2", "--out", "{out}"],
    "eval with a binary templates file": [*EVAL, "--model", "{arch_abs}", "--templates", "{spec_binary}"],
    "eval n 10^12": [*EVAL[:-2], "--n", "1000000000000", "--model", "{nan}"],
    "clean n 10^12": ["clean", "--defense", "finetune", "--model", "{nan}", "--dataset", "shapes",
                      "--n", "1000000000000", "--steps", "1", "--out", "{out}"],
    "repair n 10^12": ["repair", "--method", "finetune", "--model", "{clf_nan}", "--dataset", "shapes",
                       "--n", "1000000000000", "--out", "{out}"],
    "ssl n 10^12": ["train", "ssl", "--dataset", "shapes", "--n", "1000000000000", "--steps", "1", "--out", "{out}"],
    "classifier image size 100000": ["train", "classifier", "--dataset", "shapes", "--n", "32", "--image-size",
                                     "100000", "--steps", "1", "--out", "{out}"],
    "ssl image size 0": ["train", "ssl", "--dataset", "shapes", "--n", "32", "--image-size", "0", "--steps", "1",
                         "--out", "{out}"],
    "show n 10^12": ["show", "--n", "1000000000000", "--out", "{out}/x.png"],
    "eval on a brace pattern of 10^8 shards": [*EVAL[:2], "{dir}/s-{{00000000..99999999}}.tar", "--model", "{nan}"],
    # output folders that cannot be one
    "poison out is a file": [*POISON, "--out", "{file}"],
    "train out is a file": [*TRAIN, "--out", "{file}"],
    "clean out is a file": ["clean", "--defense", "finetune", "--model", "{arch_abs}", "--dataset", "shapes", "--n",
                            "20", "--steps", "1", "--out", "{file}"],
    "detect out is a file": ["detect", "--method", "cti", "--model", "{timm_path}", "--dataset", "shapes", "--n", "200",
                             "--out", "{file}"],
    "report on a file": ["report", "{file}"],
    "report of a folder without a store": ["report", "{dir}"],
    # the experiment runner
    "run binary spec": ["run", "{spec_binary}", "--out", "{out}"],
    "run spec not UTF-8": ["run", "{spec_latin1}", "--out", "{out}"],
    "run spec a list": ["run", "{spec_list}", "--out", "{out}"],
    "run out is a file": ["run", "demo", "--out", "{file}"],
    "run out under a file": ["run", "demo", "--out", "{file}/sub"],
    "run unknown part": ["run", "demo", "--only", "nope", "--out", "{out}"],
    "run seed too big": ["run", "demo", "--seeds", "12345678901234567890123", "--out", "{out}"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_with_one_line(case, files, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [a.format(out=out, **files) for a in CASES[case]]
    code = main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, f"{case}: exit {code}: {err[-800:]}"
    assert "Traceback" not in err and len(err.splitlines()) == 1, f"{case}: {err[-800:]}"
    assert "No such option" not in err, f"{case}: refused for its command line, not its file: {err}"
    written = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert not any(p.name in ("model.safetensors", "plan.json", "kept.json", "summary.json") for p in written), written


SPEC_CASES = {
    "attack name a path": {"attacks__0__name": "x/../../../escape"},
    "attack name absolute": {"attacks__0__name": "/tmp/escape"},
    "defense name with a space": {"defenses__0__name": "par ../x"},
    "seed of 23 digits": {"poison__seed": 12345678901234567890123},
    "n of 10^12": {"pretrain__n": 10**12},
    "negative seed": {"pretrain__data_seed": -1},
    "image size 100000": {"image_size": 100000},
    "experiment name a path": {"name": "../demo"},
    "target a path": {"poison__target": "../../star"},
    "text attack name a path": {"text__attacks__0__name": "../t"},
    "repair name a path": {"classifier__repairs__0__name": "a/b"},
    "lr infinite": {"poison__lr": float("inf")},
}


@pytest.mark.parametrize("case", sorted(SPEC_CASES))
def test_spec_values_are_checked_before_anything_is_written(case, tmp_path, capsys):
    spec = _spec(tmp_path, **SPEC_CASES[case])
    code = main(["run", spec, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "spec.yaml" in err, err[-500:]
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.parent.glob("escape*")) and not (tmp_path / "x").exists()


def test_the_tables_hold_at_least_60_cases():
    assert len(CASES) + len(SPEC_CASES) >= 60


# -- crafted manifests: a name in a file never becomes a path out of the folder -----------------------


@pytest.mark.parametrize("entries", [["../victim"], [None], [""], ["."], [".."], ["a/../../victim"], "victim",
                                     ["/ABS/victim"]])
def test_a_crafted_manifest_deletes_nothing(entries, tmp_path, capsys):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.txt").write_text("years of work")
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("the user's")
    if isinstance(entries, list):
        entries = [str(victim) if e == "/ABS/victim" else e for e in entries]
    (out / ".poisonlab-output.json").write_text(json.dumps({"entries": entries}))
    for argv in ([*POISON, "--out", str(out)], [*TRAIN, "--out", str(out)]):
        code = main(argv)
        err = capsys.readouterr().err.strip()
        assert code == 2 and ".poisonlab-output.json" in err and len(err.splitlines()) == 1, err
    assert (victim / "thesis.txt").read_text() == "years of work" and (out / "mine.txt").read_text() == "the user's"


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"entries": [], "marker": "../x"}'])
def test_a_malformed_manifest_is_refused(body, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".poisonlab-output.json").write_bytes(body)
    assert main([*POISON, "--out", str(out)]) == 2
    assert (out / ".poisonlab-output.json").read_bytes() == body


def test_a_manifest_that_is_a_symlink_is_not_followed(tmp_path, capsys):
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps({"entries": ["x"]}))
    before = digest(target)
    out = tmp_path / "out"
    out.mkdir()
    (out / ".poisonlab-output.json").symlink_to(target)
    assert main([*POISON, "--out", str(out)]) == 2
    assert digest(target) == before


# -- symlinks and user files in output folders -------------------------------------------------------


@pytest.mark.parametrize("name", ["metrics.jsonl", ".poisonlab.lock", "model.safetensors", "model.json",
                                  "train_state.pt"])
def test_train_never_writes_through_a_symlink(name, tmp_path, capsys):
    outside = tmp_path / "outside.txt"
    outside.write_text("not poisonlab's")
    out = tmp_path / "out"
    claim_output(out, TRAIN_OUTPUTS)
    (out / name).symlink_to(outside)
    code = main([*TRAIN, "--out", str(out)])
    capsys.readouterr()
    assert outside.read_text() == "not poisonlab's"
    assert code in (0, 2)
    if code == 0:  # replaced by rename: the link itself is gone, the file it pointed to untouched
        assert not (out / name).is_symlink()


@pytest.mark.parametrize("name", ["plan.json", "images"])
def test_a_symlink_among_poisons_outputs_is_refused_and_its_target_untouched(name, tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not poisonlab's")
    out = tmp_path / "out"
    assert main([*POISON, "--materialize", "--out", str(out)]) == 0
    (out / name).unlink() if (out / name).is_file() else __import__("shutil").rmtree(out / name)
    (out / name).symlink_to(outside)
    code = main([*POISON, "--materialize", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "symlink" in err and len(err.splitlines()) == 1, err
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"] and (out / name).is_symlink()


@pytest.mark.parametrize("argv", [
    TRAIN,
    ["train", "classifier", "--dataset", "shapes", "--n", "32", "--batch-size", "16", "--steps", "1"],
    ["clean", "--defense", "finetune", "--model", "{clip}", "--dataset", "shapes", "--n", "20", "--steps", "1",
     "--test-n", "20"],
    ["audit", "--model", "{clip}", "--dataset", "shapes"],
    POISON,
    ["run", "demo"],
], ids=["train clip", "train classifier", "clean", "audit", "poison", "run"])
def test_a_folder_of_someone_elses_is_refused_without_force(argv, tmp_path, capsys):
    clip = _clip_with(_mk(tmp_path / "m"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.json").write_text("the user's own")
    (out / ".notes.abcdefgh.tmp").write_text("looks like a temp file")
    code = main([*(a.format(clip=clip) for a in argv), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "did not write" in err and len(err.splitlines()) == 1, err
    assert sorted(p.name for p in out.iterdir()) == [".notes.abcdefgh.tmp", "model.json"]


def _mk(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.mark.parametrize("theirs", ["model.json", "metrics.jsonl", "train_state.pt"])
def test_force_never_replaces_a_users_file(theirs, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / theirs).write_text("the user's own")
    code = main([*TRAIN, "--force", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "did not write" in err, err
    assert (out / theirs).read_text() == "the user's own"


def test_force_writes_beside_a_users_files_and_keeps_them(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own")
    (out / ".notes.abcdefgh.tmp").write_text("looks like a temp file")
    assert main([*TRAIN, "--force", "--out", str(out)]) == 0
    capsys.readouterr()
    assert (out / "model.safetensors").is_file() and (out / "notes.txt").read_text() == "the user's own"
    assert (out / ".notes.abcdefgh.tmp").read_text() == "looks like a temp file"
    assert main([*TRAIN, "--out", str(out)]) == 0  # poisonlab's own folder now: no --force needed


def test_poison_never_takes_a_users_outputs_for_its_own(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("plan.json", "data.csv"):
        (out / name).write_text("the user's own")
    (out / "images").mkdir()
    (out / "images" / "cat.png").write_text("the user's own")
    for extra in ([], ["--force"], ["--force", "--materialize"]):
        code = main([*POISON, *extra, "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "did not write" in err, err
    assert all((out / n).read_text() == "the user's own" for n in ("plan.json", "data.csv", "images/cat.png"))


# -- read-only commands ------------------------------------------------------------------------------


def _sqlite(folder, *statements: str):
    """``folder/results.db`` made by someone else: an SQLite file holding what ``statements`` make."""
    folder.mkdir()
    conn = sqlite3.connect(folder / "results.db")
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()
    return folder


def test_report_leaves_someone_elses_sqlite_file_as_it_is(tmp_path, capsys):
    run = _sqlite(tmp_path / "run", "CREATE TABLE results (name TEXT, score REAL)",
                  "INSERT INTO results VALUES ('alice', 3.5)")
    before = digest(run / "results.db")
    code = main(["report", str(run)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "not a poisonlab results store" in err, err
    assert digest(run / "results.db") == before and sorted(p.name for p in run.iterdir()) == ["results.db"]


def test_report_reads_an_old_store_without_changing_it(tmp_path, capsys):
    """A store of the layout before seeds: the report reads it (migrated in memory), the file keeps its bytes."""
    run = _sqlite(tmp_path / "run", "CREATE TABLE results (experiment TEXT, attack TEXT, defense TEXT, metric TEXT, "
                  "value REAL)", "INSERT INTO results VALUES ('demo', 'badnet', 'none', 'asr', 0.9)")
    before = digest(run / "results.db")
    assert main(["report", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["experiments"] == ["demo"]
    assert digest(run / "results.db") == before and sorted(p.name for p in run.iterdir()) == ["results.db"]


def test_report_refuses_a_garbage_store_and_an_empty_expected_list(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.db").write_bytes(b"SQLite format 3\x00" + b"\xff" * 200)
    assert main(["report", str(run)]) == 2
    (run / "results.db").unlink()
    from poisonlab.bench.store import ResultsStore

    ResultsStore(run / "results.db").close()
    (tmp_path / "empty.yaml").write_text("numbers: []\n")
    code = main(["report", str(run), "--check", "--expected", str(tmp_path / "empty.yaml")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "empty" in err, err


def test_the_runner_refuses_a_corrupt_store_in_its_own_folder(tmp_path, capsys):
    from poisonlab.bench.runner import RUN_OUTPUTS

    out = tmp_path / "out"
    claim_output(out, RUN_OUTPUTS)
    (out / "results.db").write_bytes(b"garbage" * 100)
    code = main(["run", "demo", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "results.db" in err and len(err.splitlines()) == 1, err


def test_the_runner_sweeps_its_dead_stage_folders_only(tmp_path):
    from poisonlab.bench.runner import RUN_OUTPUTS, Runner
    from poisonlab.bench.spec import load_spec

    out = tmp_path / "out"
    marker = claim_output(out, RUN_OUTPUTS)
    cache = _mk(out / "cache")
    dead = _mk(cache / f".pretrain-0123456789abcdef.{marker}.a1b2c3d4.tmp")
    (dead / "model.safetensors").write_bytes(b"half")
    look_alike = _mk(cache / ".pretrain-0123456789abcdef.a1b2c3d4.tmp")
    Runner(load_spec("demo"), out, progress=False).store.close()
    assert not dead.exists() and look_alike.exists()


# -- broken models: refused, or measured with valid JSON when the user insists ----------------------------


def test_nonfinite_weights_are_named_and_json_stays_valid(files, capsys):
    code = main([*EVAL, "--model", files["nan"]])
    err = capsys.readouterr().err
    assert code == 2 and "non-finite" in err and "tensor" in err
    code = main(["--allow-nonfinite", *EVAL, "--model", files["nan"], "--json"])
    out = capsys.readouterr().out
    assert code == 0
    body = json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} in JSON output"))
    assert body["retrieval"] is not None
    assert main([*EVAL, "--model", files["nan"]]) == 2  # the flag holds for one command only
    capsys.readouterr()


def test_a_sidecar_name_writes_nothing_outside(files, tmp_path, capsys):
    import tempfile
    from pathlib import Path

    before = set(Path(tempfile.gettempdir()).parent.glob("tmp/poisonlab-escape*"))
    for key in ("arch_path", "arch_abs"):
        assert main([*EVAL, "--model", files[key]]) == 2
    capsys.readouterr()
    assert set(Path(tempfile.gettempdir()).parent.glob("tmp/poisonlab-escape*")) == before
    assert not list(Path(files["dir"]).glob("abs-escape*"))


# -- resume checks the data's content, not its name ---------------------------------------------------------


def test_resume_refuses_data_whose_content_changed(tmp_path, capsys):
    data = _mk(tmp_path / "data")
    rows = [(f"{k}.png", f"a photo {k}", "cat" if k % 2 else "dog") for k in range(8)]
    csv = _csv(data, rows)
    out = tmp_path / "out"
    argv = ["train", "clip", "--dataset", csv, "--batch-size", "4", "--steps", "4", "--checkpoint-every", "2"]
    assert main([*argv[:-2], "--steps", "2", "--out", str(out)]) == 0
    (out / "train_state.pt").unlink() if False else None
    capsys.readouterr()
    # the same run, longer: resuming from the saved state works while the data is unchanged
    state = out / "train_state.pt"
    saved = state.read_bytes()
    (data / "data.csv").write_text("path,caption,label\n" + "".join(f"{a},{b} new,{c}\n" for a, b, c in rows))
    code = main([*argv, "--resume", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "data_fingerprint" in err and len(err.splitlines()) == 1, err
    _csv(data, rows)
    write_png(data / "3.png", rgb=(0, 255, 0))
    code = main([*argv, "--resume", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "data_fingerprint" in err, err
    assert state.read_bytes() == saved


# -- faithful decoding -------------------------------------------------------------------------------------


def test_a_16_bit_png_decodes_to_its_grey_not_white(tmp_path):
    from poisonlab.data.readers import decode_image

    Image.fromarray(np.full((6, 6), 32768, np.uint16)).save(tmp_path / "g.png")
    assert Image.open(tmp_path / "g.png").mode.startswith("I")
    pixels = decode_image(tmp_path / "g.png", 6, "g.png")
    assert torch.allclose(pixels, torch.full_like(pixels, round(32768 / 65535 * 255) / 255))


def test_a_truncated_shard_is_reported_with_skip_bad_images(tmp_path, caplog):
    from poisonlab.data import open_dataset

    data = _shard(tmp_path / "whole.tar", n=8)
    assert len(open_dataset(str(tmp_path / "whole.tar"))) == 8
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 2 // 512 * 512])
    cut = open_dataset(str(tmp_path / "cut.tar"), skip_bad=True)
    assert 0 < len(cut) < 8 and cut.truncated == ["cut.tar"] and "truncated" in caplog.text


# -- the last resort: one line and a log file ------------------------------------------------------------------


def test_an_unexpected_failure_is_one_line_with_its_log(monkeypatch, tmp_path, capsys):
    import re

    from poisonlab.cli import poison as poison_cli

    def boom(*args, **kwargs):
        raise RuntimeError("something poisonlab did not expect\nsecond line")

    monkeypatch.setattr(poison_cli, "plan_gallery", boom)
    code = main([*POISON, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    log = re.search(r"traceback in (\S+)\)", err).group(1)
    assert "RuntimeError" in open(log).read() and "boom" in open(log).read()


@pytest.mark.parametrize("state", [{"config": 5}, {"config": "[1]"}, {"config": "{", "identity": "{}"},
                                   {"identity": 7}, {"step": "3"}])
def test_resume_refuses_a_state_with_fields_of_the_wrong_type(state, tmp_path, capsys):
    out = tmp_path / "run"
    claim_output(out, TRAIN_OUTPUTS)
    body = {"step": 1, "model": {}, "optimizer": {}, "rng": torch.get_rng_state(), "config": "{}", **state}
    torch.save(body, out / "train_state.pt")
    code = main([*TRAIN[:-1], "4", "--resume", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err


def test_resume_drops_a_half_written_metrics_line(tmp_path, capsys, monkeypatch):
    """A run killed mid-write leaves half a metrics row: the resume drops it instead of failing on it."""
    from poisonlab.train.loop import Trainer

    out = tmp_path / "run"
    argv = [*TRAIN[:-1], "30", "--checkpoint-every", "15", "--out", str(out)]
    step = Trainer._train_step

    def killed(self, *args):
        if self.step == 22:
            raise RuntimeError("killed")
        return step(self, *args)

    monkeypatch.setattr(Trainer, "_train_step", killed)
    assert main(argv) == 1
    monkeypatch.setattr(Trainer, "_train_step", step)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 21, "lo')
    assert main([*argv, "--resume"]) == 0
    capsys.readouterr()
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 30]


def test_no_command_overwrites_what_it_reads(tmp_path, capsys):
    """A user pointing --out at the folder of the model or data they pass would lose it."""
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out)]) == 0
    model = out / "model.safetensors"
    before = digest(model)
    for argv in (["clean", "--defense", "finetune", "--model", str(model), "--dataset", "shapes", "--n", "20",
                  "--steps", "1", "--test-n", "20", "--out", str(out)],
                 [*TRAIN, "--pretrained", str(model), "--out", str(out)]):
        code = main(argv)
        err = capsys.readouterr().err.strip()
        assert code == 2 and "reads" in err and len(err.splitlines()) == 1, err
    assert digest(model) == before
    plan = tmp_path / "plan"
    assert main([*POISON, "--materialize", "--out", str(plan)]) == 0
    csv_before = digest(plan / "data.csv")
    code = main(["poison", "--dataset", str(plan / "data.csv"), "--attack", "clip-dirty", "--target", "star",
                 "--rate", "0.1", "--trigger", "badnet", "--materialize", "--out", str(plan)])
    assert code == 2 and digest(plan / "data.csv") == csv_before
    capsys.readouterr()


def test_a_spec_may_name_user_data_by_path_and_a_store_may_not_name_a_file(tmp_path, capsys):
    from poisonlab.bench.spec import load_spec
    from poisonlab.bench.store import ResultsStore

    spec = load_spec(_spec(tmp_path, dataset=str(tmp_path / "data" / "pairs.csv")))
    assert spec.dataset.endswith("pairs.csv")
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "evil.expected.yaml").write_text("numbers: [{experiment: x, attack: a, row: r, metric: m, range: [0, 1]}]\n")
    store = ResultsStore(run / "results.db")
    store.put("../../evil", "a", "r", {"m": 0.5})
    store.close()
    code = main(["report", str(run), "--check"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no expected ranges" in err, err

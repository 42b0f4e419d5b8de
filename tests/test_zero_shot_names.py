"""Zero-shot class names and templates from the data: files beside it, built-ins, WordNet-id folders."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import write_png
from open_clip import zero_shot_metadata
from timm.data import ImageNetInfo

from poisonlab.cli import main
from poisonlab.data import apply_names, open_dataset
from poisonlab.errors import InputError
from poisonlab.models import create_clip
from poisonlab.models.clip import save_clip

# ten ImageNet synsets (ImageNette's), not in label order on purpose
NETTE = ["n03888605", "n01440764", "n02102040", "n02979186", "n03000684",
         "n03028079", "n03394916", "n03417042", "n03425413", "n03445777"]


def _imagefolder(root, folders, per=2):
    for i, name in enumerate(folders):
        (root / name).mkdir(parents=True)
        for j in range(per):
            write_png(root / name / f"{j}.JPEG", rgb=(20 * i % 256, 100, 40 * j % 256))
    return root


def test_wordnet_folders_get_imagenet_names_and_80_templates(tmp_path, capsys):
    root = _imagefolder(tmp_path / "val", NETTE)
    data = open_dataset(str(root))
    synsets = ImageNetInfo().label_names()
    names = zero_shot_metadata.IMAGENET_CLASSNAMES
    expect = [names[synsets.index(s)] for s in sorted(NETTE)]
    assert data.classnames == expect
    assert expect[0] == "tench" and "n01440764" not in " ".join(data.captions())
    assert len(data.templates) == 80 and data.templates[0] == "a bad photo of a {}."
    model = tmp_path / "m" / "model.safetensors"
    model.parent.mkdir()
    save_clip(create_clip("poisonlab-tiny-rn", seed=0), model)
    assert main(["eval", "--model", str(model), "--dataset", str(root), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["classnames"]["count"] == 10 and summary["classnames"]["first"][0] == "tench"
    assert "imagenet1k" in summary["classnames"]["source"]
    assert summary["templates"]["count"] == 80 and "openai" in summary["templates"]["source"]


def test_unknown_wordnet_ids_warn_and_keep_folder_names(tmp_path, caplog):
    root = _imagefolder(tmp_path / "odd", ["n01440764", "n99999999"], per=1)
    data = open_dataset(str(root))
    assert data.classnames == ["n01440764", "n99999999"]
    assert "look like WordNet ids" in caplog.text


def test_clip_benchmark_files_beside_a_csv(tmp_path):
    rows = []
    for i in range(4):
        write_png(tmp_path / f"{i}.png", rgb=(60 * i, 0, 0))
        rows.append([f"{i}.png", f"caption {i}", str(i % 2)])
    with open(tmp_path / "data.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    (tmp_path / "classnames.txt").write_text("golden retriever\ntabby cat\n")
    (tmp_path / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\nart of the {c}.\n")
    data = open_dataset(str(tmp_path / "data.csv"))
    assert data.classnames == ["golden retriever", "tabby cat"] and data.classnames_source == "classnames.txt"
    assert data.templates == ["a photo of a {}.", "art of the {}."]


def test_builtin_and_bad_name_files(tmp_path):
    data = open_dataset("shapes", n=20, split="test")
    with pytest.raises(InputError, match="1000 class names, but the dataset has"):
        apply_names(data, "imagenet1k")
    apply_names(data, templates="openai")
    assert len(data.templates) == 80
    bad = tmp_path / "t.txt"
    bad.write_text("a photo of a thing.\n")
    with pytest.raises(InputError, match="line 1: a template needs exactly one"):
        apply_names(data, templates=str(bad))
    with pytest.raises(InputError, match="class names file not found"):
        apply_names(data, str(tmp_path / "missing.txt"))

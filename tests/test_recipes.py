"""Every recipe in docs/recipes runs, at its miniature values, on data written here.

A recipe holds three bash blocks: ``# paper scale`` and ``# miniature`` (``NAME=value`` lines) and
``# commands`` (poisonlab commands using those names). The test substitutes the miniature values
into the very commands a user copies, so a recipe cannot drift from what the CLI accepts.
"""

from __future__ import annotations

import pickle
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from test_stream import write_shards
from test_zero_shot_names import _imagefolder

from poisonlab.cli import main
from poisonlab.models import create_clip
from poisonlab.models.clip import save_clip

RECIPES = Path(__file__).resolve().parent.parent / "docs" / "recipes"
BLOCK = re.compile(r"```bash\n# (paper scale|miniature[^\n]*|commands)\n(.*?)```", re.S)


def blocks(path: Path) -> dict[str, str]:
    return {name.split(" ")[0]: body for name, body in BLOCK.findall(path.read_text())}


def values(text: str, work: Path) -> dict[str, str]:
    out = {"WORK": str(work)}
    for line in text.splitlines():
        name, _, value = line.partition("=")
        out[name.strip()] = re.sub(r"\$(\w+)", lambda m: out[m.group(1)], value.strip())
    return out


def commands(text: str, env: dict[str, str]) -> list[list[str]]:
    joined = text.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        if line.strip().startswith("poisonlab "):
            line = re.sub(r"\$(\w+)", lambda m: env[m.group(1)], line)
            out.append(shlex.split(line)[1:])
    return out


def _par_data(work: Path) -> None:
    for folder, shards in (("train", 2), ("clean", 1)):  # web pairs: captions only, no class list
        write_shards(work / folder, shards=shards)
        (work / folder / "classnames.txt").unlink()
    _imagefolder(work / "val", ["n07753592", "n01440764", "n02102040", "n03888605"], per=4)
    (work / "init").mkdir()
    save_clip(create_clip("poisonlab-tiny-rn", seed=0), work / "init" / "model.safetensors")


def _cifar_data(work: Path) -> None:
    folder = work / "cifar"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("data_batch_1", 300), ("test_batch", 100)):
        labels = [int(i % 10) for i in range(n)]
        data = rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels}, f)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names}, f)


def _csv(path: Path, n: int, seed: int) -> None:
    from torchvision.utils import save_image

    from poisonlab.data import make_shapes

    data = make_shapes(n=n, seed=seed)
    (path.parent / "images").mkdir(parents=True, exist_ok=True)
    rows = ["path,caption,label"]
    for i in range(n):
        image, caption, label = data[i]
        name = f"images/{path.stem}-{i:04d}.png"
        save_image(image, path.parent / name)
        rows.append(f"{name},{caption},{data.classnames[label]}")
    path.write_text("\n".join(rows) + "\n")


def _coco_data(work: Path) -> None:
    for split, n, seed in (("train", 160, 1), ("clean", 64, 2), ("test", 80, 3)):
        _csv(work / "coco" / f"{split}.csv", n, seed)
    (work / "init").mkdir()
    save_clip(create_clip("poisonlab-tiny-rn", seed=0), work / "init" / "model.safetensors")


def _in100_data(work: Path) -> None:
    synsets = ["n01440764", "n01443537", "n01484850", "n01491361"]  # tench, goldfish, great white shark, tiger shark
    _imagefolder(work / "in100" / "train", synsets, per=12)
    _imagefolder(work / "in100" / "val", synsets, per=4)


DATA = {"par-rn50.md": _par_data, "pick-your-poison-cifar10.md": _cifar_data, "text-attack-2-coco.md": _coco_data,
        "ssl-imagenet100.md": _in100_data}


def test_every_recipe_has_a_miniature():
    found = sorted(p.name for p in RECIPES.glob("*.md"))
    assert found == sorted(DATA)
    for name in found:
        assert set(blocks(RECIPES / name)) == {"paper", "miniature", "commands"}, name


@pytest.mark.parametrize("name", sorted(DATA))
def test_recipe_miniature_runs(name, tmp_path, capsys):
    parts = blocks(RECIPES / name)
    paper, mini = values(parts["paper"], tmp_path), values(parts["miniature"], tmp_path)
    assert set(paper) == set(mini), "the miniature sets the same names as the paper scale"
    DATA[name](tmp_path)
    steps = commands(parts["commands"], mini)
    assert steps
    for argv in steps:
        code = main(argv)
        assert code == 0, f"{' '.join(argv)}\n{capsys.readouterr().err}"

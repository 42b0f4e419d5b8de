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
from poisonlab.models.checkpoint import save_clip

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


DATA = {"par-rn50.md": _par_data, "pick-your-poison-cifar10.md": _cifar_data}


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

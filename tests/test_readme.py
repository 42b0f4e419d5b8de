"""The README's Python blocks run as written: the miniature story, and a new method registered
through the one defense contract."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from poisonlab import defenses
from poisonlab.defenses.base import DEFENSES

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_the_three_blocks():
    assert len(python_blocks()) == 3


def test_readme_story_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(python_blocks()[0], "README.md", "exec"), scope)  # noqa: S102 - the project's own README
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in printed] == ["poisoned CA / ASR", "PAR CA / ASR"]
    assert (tmp_path / "runs" / "py-par" / "model.safetensors").is_file()
    assert scope["cleaned"].report["steps"] == 4 and scope["again"].name == scope["model"].name
    for a, b in zip(scope["again"].model.state_dict().values(), scope["cleaned"].model.model.state_dict().values(),
                    strict=True):
        assert bool((a == b).all())


@pytest.fixture
def scratch_registry():
    before = dict(DEFENSES._items)
    yield
    DEFENSES._items.clear()
    DEFENSES._items.update(before)


def test_readme_new_method_joins_the_registry(scratch_registry):
    exec(compile(python_blocks()[1], "README.md", "exec"), {})  # noqa: S102
    entry = DEFENSES.entry("my-filter")
    assert (entry.family, entry.kind) == ("clip", "filter")
    found = defenses.create("my-filter", family="clip", kind="filter", keep_share=0.5).run(None, list(range(10)))
    assert found.model is None and found.kept == [0, 1, 2, 3, 4]
    assert "my-filter" in defenses.available("clip", "filter")


def test_readme_new_study_runs_in_a_spec(tmp_path):
    """The README's study kind, registered by its block, runs from a spec without a grid and is reported."""
    import yaml

    from poisonlab.bench.store import ResultsStore
    from poisonlab.bench.studies import STUDIES  # the built-in kinds registered before the snapshot
    from poisonlab.cli import main

    before = dict(STUDIES._items)
    try:
        exec(compile(python_blocks()[2], "README.md", "exec"), {})  # noqa: S102
        spec = {"name": "cc", "pretrain": {"n": 64, "epochs": 1, "lr": 1e-3, "batch_size": 32},
                "poison": {"n": 64, "epochs": 1, "lr": 1e-3, "target": "star", "rate": 0.1}, "attacks": [],
                "cleaning": {"n": 128}, "defenses": [], "test": {"n": 40},
                "studies": [{"study": "clean-check", "name": "cc", "defense": "finetune", "steps": 1}]}
        (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
        assert main(["run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "out"), "--serial"]) == 0
    finally:
        STUDIES._items.clear()
        STUDIES._items.update(before)
    rows = ResultsStore(tmp_path / "out" / "results.db", read_only=True).table("cc/cc")
    assert set(rows) == {("none", "clean model"), ("none", "finetune")}
    assert all(0 <= m["ca"] <= 1 for m in rows.values())
    assert "## Study cc: results" in (tmp_path / "out" / "report" / "README.md").read_text()

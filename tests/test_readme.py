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


def test_readme_has_the_two_blocks():
    assert len(python_blocks()) == 2


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

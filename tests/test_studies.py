"""The study contract: a defense and a study registered in a test join `list`, `defend --help`, a
spec run and its report with no other edit (src/poisonlab/bench/study.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import yaml

from poisonlab.bench.cache import MODEL
from poisonlab.bench.config import DefenseSpec, Name, Seed, Strict
from poisonlab.bench.spec import load_spec, study_specs, with_seeds
from poisonlab.bench.store import ResultsStore
from poisonlab.bench.study import STUDIES, Study
from poisonlab.cli import main
from poisonlab.data import open_dataset
from poisonlab.defenses.base import DEFENSES, CleaningDefense
from poisonlab.errors import InputError
from poisonlab.metrics import ClipEvaluator
from poisonlab.models import load_clip
from poisonlab.train.objectives.clip import ClipObjective
from tests.test_bench import TINY, TINY_SSL


@pytest.fixture
def toys():
    """A toy cleaning defense and a toy study, registered for one test and removed after it."""
    before = dict(DEFENSES._items), dict(STUDIES._items)

    @DEFENSES.register("toy-tune")
    @dataclass(frozen=True)
    class ToyTune(CleaningDefense):
        """Fine-tuning with the logit scale frozen (the toy defense)."""

        def objective(self, bundle, suspect, dist):
            return ClipObjective(bundle, dist.rank, dist.world_size, freeze_logit_scale=True)

    class ToySpec(Strict):
        defense: Name
        steps: int = 1
        seed: Seed = 0
        seeds: list[Seed] = []

        def with_seeds(self, seeds: list[int]) -> ToySpec:
            return self.model_copy(update={"seeds": [*self.seeds, *seeds]})

    @STUDIES.register("toy")
    class Toy(Study):
        """Cleans the grid's clean model with the study's defense, per seed, and measures its CA."""

        family: ClassVar[str] = "clip"
        Spec = ToySpec
        headline = ("ca",)

        def jobs(self) -> list[Any]:
            return [(f"{self.name}:{seed}", lambda seed=seed: self.run_seed(seed))
                    for seed in [self.spec.seed, *self.spec.seeds]]

        def run_seed(self, seed: int) -> None:
            runner = self.runner
            clean = runner.pretrain()
            defense = DefenseSpec(name="toy", defense=self.spec.defense,
                                  params={"steps": self.spec.steps, "batch_size": 32, "seed": seed})
            cleaned = runner.cleaned(f"{self.name}:clean:seed{seed}", runner.keys["pretrain"], defense, clean)
            report = json.loads((cleaned / "report.json").read_text())
            ca = ClipEvaluator(load_clip(cleaned / MODEL), runner.test()).clean_accuracy()
            self.put("none", self.spec.defense, {"ca": ca, "steps": report["steps"]}, seed)

    yield ToyTune, Toy
    DEFENSES._items.clear()
    DEFENSES._items.update(before[0])
    STUDIES._items.clear()
    STUDIES._items.update(before[1])


def test_a_toy_defense_and_study_join_list_help_a_run_and_its_report(toys, tmp_path, capsys):
    assert main(["list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {"name": "toy-tune", "family": "clip", "kind": "cleaning"} in listed["defenses"]
    assert {"name": "toy", "family": "clip"} in listed["studies"]
    assert main(["defend", "--help"]) == 0
    assert "toy-tune [clip, cleaning]" in " ".join(capsys.readouterr().out.split())

    spec = dict(TINY, defenses=[{"name": "toy-tune", "defense": "toy-tune", "params": {"steps": 1, "batch_size": 32}}],
                studies=[{"study": "toy", "name": "toy-a", "defense": "toy-tune", "steps": 2}])
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    assert main(["run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "out"), "--serial", "--seeds", "3"]) == 0
    store = ResultsStore(tmp_path / "out" / "results.db", read_only=True)
    assert ("stripes", "toy-tune") in store.table("tiny"), "the toy defense ran in the grid"
    rows = store.spread("tiny/toy-a")
    assert rows[("none", "toy-tune")]["steps"].values == (2.0, 2.0), "one row per seed: 0 and --seeds 3"
    assert [(r.study, r.kind, r.family) for r in store.studies("tiny")] == [("grid", "grid", "clip"),
                                                                            ("toy-a", "toy", "clip")]
    # the stored CA is the cleaned model's, measured again here from its checkpoint
    (model,) = (tmp_path / "out" / "cache").glob("toy-a:clean:seed3-*/model.safetensors")
    test = open_dataset("shapes", split="test", size=32, n=40, seed=0)
    again = ClipEvaluator(load_clip(model), test).clean_accuracy()
    assert rows[("none", "toy-tune")]["ca"].values[1] == pytest.approx(again)
    readme = (tmp_path / "out" / "report" / "README.md").read_text()
    assert "## Study toy-a: results" in readme and "| none | toy-tune |" in readme
    assert "toy-tune CA / ASR" in readme, "the grid's table has the toy defense's column"


def test_study_blocks_names_and_fields_are_checked(toys, tmp_path):
    spec = load_spec(_write(tmp_path, dict(TINY, toy={"defense": "toy-tune"})))
    (study,) = study_specs(spec)
    assert (study.name, study.kind, study.spec.steps) == ("toy", "toy", 1), "a top-level block is a study of its kind"
    assert study_specs(with_seeds(spec, [4]))[0].spec.seeds == [4]
    bad = {"no such kind": dict(TINY, studies=[{"study": "nope", "name": "x"}]),
           "unknown field": dict(TINY, toy={"defense": "toy-tune", "surprise": 1}),
           "name twice": dict(TINY, studies=[{"study": "toy", "name": "a", "defense": "d"}] * 2),
           "reserved name": dict(TINY, studies=[{"study": "toy", "name": "grid", "defense": "d"}]),
           "not a mapping": dict(TINY, toy=3),
           "attack name twice": dict(TINY, attacks=TINY["attacks"] * 2),
           "repair name twice": dict(TINY, classifier={"target": "star", "rate": 0.1, "n": 64, "epochs": 1, "lr": 0.01,
                                                       "attacks": [], "repairs": [{"name": "r", "repair": "finetune"}] * 2})}
    for why, body in bad.items():
        with pytest.raises(InputError) as err:
            load_spec(_write(tmp_path, body))
        assert "\n" not in str(err.value), why


def test_a_wrong_method_name_or_parameter_stops_the_run_before_any_stage(tmp_path, capsys):
    """A typo in a spec costs nothing: every method the parts to run name is built before training."""
    bad = {
        "grid defense": (dict(TINY, defenses=[{"name": "d", "defense": "nope"}]), "grid: unknown defense 'nope'"),
        "grid detector": (dict(TINY, detectors=[{"name": "k", "detector": "kdist", "params": {"nope": 1}}]),
                          "grid: defense 'kdist' has no parameter nope"),
        "trigger": (dict(TINY, attacks=[{"name": "a", "trigger": "badnet", "params": {"nope": 1}}]),
                    "grid: trigger 'badnet' has no parameter nope"),
        "ssl detector": (dict(TINY, attacks=[], ssl=dict(TINY_SSL, detectors={"nope": {}})), "ssl: unknown detector 'nope'"),
        "cleaning data": (dict(TINY, defenses=[{"name": "d", "defense": "par", "dataset": "shapes-outlin"}]),
                          "grid: dataset 'shapes-outlin' is neither a known name"),
    }
    for why, (body, message) in bad.items():
        out = tmp_path / why.replace(" ", "-")
        assert main(["run", _write(tmp_path, body), "--out", str(out), "--serial"]) == 2, why
        assert message in capsys.readouterr().err, why
        assert not any((out / "cache").glob("*")), f"{why}: a stage ran first"


def test_dry_run_checks_the_spec_lists_its_jobs_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    body = dict(TINY, attacks=[*TINY["attacks"], {"name": "blend", "trigger": "blended"}])
    assert main(["run", _write(tmp_path, body), "--dry-run", "--seeds", "3"]) == 0
    out = capsys.readouterr().out
    jobs = ["grid:clean model", "grid:stripes", "grid:stripes:seed3", "grid:blend", "grid:blend:seed3"]
    assert out.splitlines() == ["grid: 5 jobs", *(f"  {j}" for j in jobs), "spec checked: 5 jobs in 1 part; nothing run"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"], "nothing written (no demo-out)"
    bad = dict(TINY, defenses=[{"name": "d", "defense": "nope"}])
    assert main(["run", _write(tmp_path, bad), "--dry-run"]) == 2
    assert "grid: unknown defense 'nope'" in capsys.readouterr().err


def _write(tmp_path, body: dict) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(body))
    return str(path)


def test_two_studies_of_one_kind_never_share_a_title_or_a_figure(tmp_path):
    from poisonlab.report.studies import RENDERERS, render

    before = dict(RENDERERS._items)

    @RENDERERS.register("toy-kind")
    def toy_report(store, experiment, spec, figure):
        path = figure("fig.png")
        path.write_bytes(b"png")
        return [("Toy: numbers", [["a"], [experiment]], "")], [(path.name, "caption")]

    try:
        store = ResultsStore(tmp_path / "r.db")
        same = render(store, "toy-kind", "toy-kind", "e/toy-kind", None, tmp_path)
        other = render(store, "toy-kind", "second", "e/second", None, tmp_path)
    finally:
        RENDERERS._items.clear()
        RENDERERS._items.update(before)
    assert same == ([("Toy: numbers", [["a"], ["e/toy-kind"]], "")], [("fig.png", "caption")])
    assert other == ([("second — Toy: numbers", [["a"], ["e/second"]], "")], [("second-fig.png", "caption")])
    assert (tmp_path / "fig.png").is_file() and (tmp_path / "second-fig.png").is_file()

from __future__ import annotations

import pytest
import torch
import yaml

from poisonlab import demo, detect
from poisonlab.bench.runner import Runner
from poisonlab.bench.spec import PRESETS, load_spec
from poisonlab.bench.store import ResultsStore
from poisonlab.data import open_dataset
from poisonlab.defenses import trusted_indices
from poisonlab.errors import InputError
from poisonlab.models.classifier import load_classifier
from poisonlab.report.trace import repair_paths
from poisonlab.train.data import label_tensors

TINY = {
    "name": "tiny",
    "pretrain": {"n": 64, "epochs": 1, "lr": 1e-3, "batch_size": 32},
    "poison": {"n": 64, "data_seed": 1, "epochs": 1, "lr": 1e-3, "batch_size": 32, "target": "star", "rate": 0.1},
    "attacks": [{"name": "stripes", "trigger": "badnet-stripes", "params": {"size": 4}}],
    "cleaning": {"n": 64},
    "defenses": [
        {"name": "finetune", "defense": "finetune", "params": {"steps": 1, "batch_size": 32}},
        {"name": "par-synthetic", "defense": "par", "dataset": "shapes-outline", "params": {"steps": 1, "batch_size": 32}},
    ],
    "test": {"n": 40},
}
TINY_SSL = {"n": 96, "epochs": 1, "lr": 1e-3, "batch_size": 32, "target": "star", "method": "simclr",
            "trigger_params": {"size": 8}, "probe_share": 0.5,
            "defenses": [{"name": "distill", "defense": "distill", "params": {"epochs": 1, "batch_size": 32}},
                         {"name": "patchsearch", "defense": "patchsearch",
                          "params": {"clusters": 4, "min_clusters": 2, "classifier_steps": 1}}],
            "defense_n": 64, "detectors": {"decree": {"steps": 2}}, "test_n": 40}


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESETS.glob("*.yaml") if not p.stem.endswith(".expected")))
def test_every_bundled_preset_loads_and_builds_its_attacks(preset):
    from poisonlab.bench.spec import study_specs

    spec = load_spec(preset)
    built = [a.build(spec.poison.target, a.poison_rate(spec.poison.rate)) for a in spec.attacks]
    assert len(built) == len(spec.attacks) and all(callable(b) for b in built)
    assert len(study_specs(spec)) == len(spec.studies) and (built or spec.studies)


def test_spec_rejects_unknown_keys(tmp_path):
    bad = dict(TINY, surprise=1)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(InputError, match="surprise"):
        load_spec(tmp_path / "bad.yaml")
    with pytest.raises(InputError, match="demo"):
        load_spec("no-such-preset")
    assert load_spec("demo").poison.target == "star"


def test_runner_caches_and_reports(tmp_path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    html = demo.run(str(tmp_path / "tiny.yaml"), tmp_path / "out", progress=False)
    store = ResultsStore(tmp_path / "out" / "results.db")
    table = store.table("tiny")
    assert {("stripes", "none"), ("stripes", "finetune"), ("stripes", "par-synthetic"), ("stripes", "clean model")} <= set(table)
    assert 0 <= table[("stripes", "par-synthetic")]["asr"] <= 1
    assert "final_s_img" in table[("stripes", "par-synthetic")]
    assert not any(cached for _, _, cached in store.stages("tiny"))
    for name in ("index.html", "README.md", "ca_vs_asr.png", "triggers.png"):
        assert (html.parent / name).stat().st_size > 0
    m = table[("stripes", "par-synthetic")]
    readme = (html.parent / "README.md").read_text()
    assert f"| stripes | {m['final_s_img']:.2f} / {m['final_s_txt']:.2f}" in readme, "PAR's distances are reported"
    runner = Runner(load_spec(tmp_path / "tiny.yaml"), tmp_path / "out", progress=False)
    built = {stage: seconds for stage, seconds, _ in store.stages("tiny")}
    runner.run()
    again = runner.store.stages("tiny")
    assert all(cached for _, _, cached in again), "second run reuses every stage"
    assert {stage: seconds for stage, seconds, _ in again} == pytest.approx(built, abs=0.01), "cached stages keep their build time"


def test_classifier_and_ssl_sections(tmp_path):
    spec = dict(TINY)
    spec["classifier"] = {
        "n": 120, "epochs": 1, "lr": 1e-3, "batch_size": 32, "target": "star", "rate": 0.1,
        "attacks": [{"name": "badnet", "trigger": "badnet", "params": {"size": 4, "location": "bottom-right"}}],
        "trusted_share": 0.5,
        "repairs": [{"name": "pt", "repair": "pivotal-tuning", "params": {"steps": 2}}], "trace_every": 1,
        "detect": {"neural-cleanse": {"steps": 2}},
        "population": {"n": 2, "n_train": 64, "epochs": 1, "detectors": {"neural-cleanse": {"steps": 2}}},
    }
    spec["ssl"] = TINY_SSL
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    html = demo.run(str(tmp_path / "s.yaml"), tmp_path / "out", progress=False)
    store = ResultsStore(tmp_path / "out" / "results.db")
    cls = store.table("tiny/classifier")
    assert {("badnet", "none"), ("badnet", "pt"), ("badnet", "clean model")} <= set(cls)
    assert 0 <= cls[("badnet", "pt")]["arr"] <= 1
    # the repair's path: one traced point per step; the last one is the model the repair returned
    path = repair_paths(store, "tiny/classifier")["badnet"]["pt"]
    assert [step for step, _, _ in path] == [1, 2]
    assert path[-1][1:] == pytest.approx((cls[("badnet", "pt")]["ca"], cls[("badnet", "pt")]["asr"]))
    assert 0 <= store.table("tiny/classifier/detection")[("neural-cleanse", "population")]["auc"] <= 1
    # the section's own models, scored again here from their checkpoints with the same trusted share
    scores = store.table("tiny/classifier/detect")
    shapes = label_tensors(open_dataset("shapes", n=120, seed=5, size=32))
    trusted = shapes.subset(trusted_indices(len(shapes), 0.5, 5))
    for label in ("clean", "badnet"):
        (ckpt,) = (tmp_path / "out" / "cache").glob(f"classifier:{label}-*/model.safetensors")
        torch.manual_seed(0)
        again = detect.create("neural-cleanse", steps=2)(load_classifier(ckpt), trusted)
        assert scores[("neural-cleanse", label)]["score"] == pytest.approx(again.score)
    ssl = store.table("tiny/ssl")
    assert {("clean", "probe"), ("poisoned", "probe"), ("distill", "probe"), ("patchsearch", "probe"),
            ("patchsearch", "filter"), ("poisoned", "decree")} <= set(ssl)
    text = (html.parent / "README.md").read_text()
    assert "| patchsearch |" in text and "decree score (verdict)" in text and "roc.png" in text
    assert "is it backdoored?" in text
    assert (html.parent / "roc.png").stat().st_size > 0
    assert "repairs.png" in text and (html.parent / "repairs.png").stat().st_size > 0


def test_attack_rate_overrides_the_poison_rate_and_keeps_old_cache_keys(tmp_path):
    spec = dict(TINY, attacks=[{"name": "a", "trigger": "badnet"}, {"name": "b", "trigger": "badnet", "rate": 0.25}])
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    runner = Runner(load_spec(tmp_path / "s.yaml"), tmp_path / "out", progress=False)
    plain, strong = (runner.grid.plan(a).plan for a in runner.spec.attacks)
    assert len(plain.indices) == round(0.1 * 64) and len(strong.indices) == 16
    assert "rate" not in runner.spec.attacks[0].model_dump(exclude_none=True)  # no override: same stage key as before


def test_parallel_sections_store_every_result_and_surface_bad_input(tmp_path):
    spec = dict(TINY, ssl=TINY_SSL)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    torch.set_num_threads(2)
    runner = Runner(load_spec(tmp_path / "s.yaml"), tmp_path / "out", progress=False)
    runner.run(parallel=True)
    assert runner.processes == 2 and torch.get_num_threads() == 2, "threads are given back afterwards"
    stages = {stage: cached for stage, _, cached in runner.store.stages("tiny")}
    assert {"pretrain", "poison:stripes", "clean:stripes:finetune", "ssl:clean", "ssl:poisoned", "ssl:distill",
            "ssl:patchsearch"} <= set(stages), "both processes record their stages in the one store"
    assert not any(stages.values()), "a stage one process built is not 'cached' for the other"
    assert ("poisoned", "probe") in runner.store.table("tiny/ssl")
    assert ("stripes", "par-synthetic") in runner.store.table("tiny")
    assert not (tmp_path / "out" / ".claims" / runner.run_id).exists(), "the run's job claims are cleared"
    # whichever process ran a job, its numbers are those of one process at the same thread count
    torch.set_num_threads(1)
    try:
        serial = Runner(load_spec(tmp_path / "s.yaml"), tmp_path / "serial", progress=False)
        serial.run(parallel=True)  # one thread: parallel is ignored
    finally:
        torch.set_num_threads(2)
    assert serial.processes == 1
    for part in ("tiny", "tiny/ssl"):
        assert serial.store.table(part) == runner.store.table(part)
    # bad input found by the section process comes back as one InputError here
    spec["ssl"] = dict(spec["ssl"], target="no-such-class")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(InputError, match="no-such-class"):
        Runner(load_spec(tmp_path / "bad.yaml"), tmp_path / "out", progress=False).run(parallel=True)


def test_section_jobs_are_claimed_once_and_stages_built_once(tmp_path):
    spec = dict(TINY, ssl=TINY_SSL)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    first = Runner(load_spec(tmp_path / "s.yaml"), tmp_path / "out", progress=False)
    assert [name for name, _ in first.all_jobs()] == ["ssl:poisoned", "ssl:clean", "grid:clean model", "grid:stripes"]
    ran = []
    first.all_jobs = lambda: [(n, lambda n=n: ran.append(n)) for n in ("a", "b", "c")]
    (tmp_path / "out" / ".claims" / first.run_id).mkdir(parents=True)
    (tmp_path / "out" / ".claims" / first.run_id / "b").touch()  # the other process holds job b
    first.run_jobs(shared=True, reverse=True)
    assert ran == ["c", "a"]
    first.run_jobs(shared=True)
    assert ran == ["c", "a"], "claimed jobs are not run again"
    # a stage built by another process of the same run is not 'cached'; for a later run it is
    builds = []
    build = lambda tmp: builds.append(tmp)  # noqa: E731
    first.cached("x", {"k": 1}, build)
    Runner(first.spec, tmp_path / "out", progress=False, run_id=first.run_id).cached("x", {"k": 1}, build)
    Runner(first.spec, tmp_path / "out", progress=False).cached("x", {"k": 1}, build)
    assert len(builds) == 1
    rows = [(s, c) for s, _, c in first.store.stages("tiny") if s == "x"]
    assert rows == [("x", True)], "the last record is the later run's cache hit"


def test_training_seeds_keep_one_row_each_and_the_first_seed_keeps_its_stages(tmp_path):
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(TINY))
    demo.run(str(tmp_path / "one.yaml"), tmp_path / "out", progress=False)
    seeded = dict(TINY, poison={**TINY["poison"], "seeds": [3]})
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(seeded))
    html = demo.run(str(tmp_path / "two.yaml"), tmp_path / "out", progress=False)
    store = ResultsStore(tmp_path / "out" / "results.db")
    stages = {stage: cached for stage, _, cached in store.stages("tiny")}
    assert stages["poison:stripes"] and stages["clean:stripes:finetune"], "seed 0 reuses the unseeded run's stages"
    assert not stages["poison:stripes:seed3"] and not stages["clean:stripes:finetune:seed3"]
    rows = store.conn.execute("SELECT seed, value FROM results WHERE experiment = 'tiny' AND attack = 'stripes' "
                              "AND defense = 'none' AND metric = 'asr' ORDER BY seed").fetchall()
    assert [s for s, _ in rows] == [0, 3]
    values = [v for _, v in rows]
    spread = store.spread("tiny")[("stripes", "none")]["asr"]
    mean = sum(values) / 2
    assert spread.mean == pytest.approx(mean) and store.table("tiny")[("stripes", "none")]["asr"] == pytest.approx(mean)
    assert spread.sd == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5)
    runner = Runner(load_spec(tmp_path / "two.yaml"), tmp_path / "out", progress=False)
    assert runner.grid.plan(runner.spec.attacks[0], 0).plan.indices != runner.grid.plan(runner.spec.attacks[0], 3).plan.indices
    assert store.spread("tiny")[("stripes", "clean model")]["ca"].n == 1, "one clean model for every seed"
    readme = (html.parent / "README.md").read_text()
    assert "Seed spread of the grid" in readme and "Orderings of ASR over the seeds" in readme
    assert f"{100 * spread.mean:.1f}±{100 * spread.sd:.1f}" in readme


def test_only_runs_the_named_parts(tmp_path):
    spec = dict(TINY, ssl=TINY_SSL)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    runner = Runner(load_spec(tmp_path / "s.yaml"), tmp_path / "out", progress=False, only=["grid"])
    assert runner.parts == {"grid"} and [name for name, _ in runner.all_jobs()] == ["grid:clean model", "grid:stripes"]
    with pytest.raises(InputError, match="no part 'grids' .it has: grid, ssl"):
        Runner(load_spec(tmp_path / "s.yaml"), tmp_path / "out", progress=False, only=["grids"])
    with pytest.raises(InputError, match="no part 'text' .it has: grid, ssl"):
        Runner(load_spec(tmp_path / "s.yaml"), tmp_path / "o2", progress=False, only=["text"])


def test_a_store_written_before_seeds_reads_as_seed_0(tmp_path):
    import sqlite3

    old = sqlite3.connect(tmp_path / "results.db")
    old.execute("CREATE TABLE results (experiment TEXT NOT NULL, attack TEXT NOT NULL, defense TEXT NOT NULL, "
                "metric TEXT NOT NULL, value REAL, PRIMARY KEY (experiment, attack, defense, metric))")
    old.execute("INSERT INTO results VALUES ('demo', 'badnet', 'none', 'asr', 0.9)")
    old.commit()
    old.close()
    store = ResultsStore(tmp_path / "results.db")
    assert store.table("demo") == {("badnet", "none"): {"asr": 0.9}}
    store.put("demo", "badnet", "none", {"asr": 0.5}, seed=1)
    assert store.spread("demo")[("badnet", "none")]["asr"].values == (0.9, 0.5)

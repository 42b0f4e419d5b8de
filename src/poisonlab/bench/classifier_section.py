"""The classifier study: poisoned classifiers, repairs with a trusted share, detection.

Stages (cached like the CLIP stages): train one clean and one poisoned classifier per attack;
repair each poisoned classifier with each repair method on the trusted share; score the clean and
poisoned classifiers with each ``detect`` detector; train the detection population and score it
with each of its detectors. Results go to the store under the study's experiment name (CA, ASR,
ARR per attack x repair) and three more of its tables: ``detect`` (score and verdict per detector
x model), ``detection`` (population ROC AUC, the curves as the document ``population``) and
``repair-trace`` (CA / ASR along each repair).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from pydantic import Field

from poisonlab import defenses, detect, triggers
from poisonlab.attacks.plan import PoisonedDataset
from poisonlab.bench.cache import MODEL
from poisonlab.bench.config import (
    AttackSpec,
    Count,
    Name,
    Named,
    RepairSpec,
    Seed,
    Strict,
    TrainSpec,
    seeded,
)
from poisonlab.bench.parallel import Job
from poisonlab.bench.store import CLEAN_MODEL
from poisonlab.bench.study import STUDIES, Study
from poisonlab.detect.population import (
    PopulationConfig,
    evaluate_detectors,
    population_trusted,
    score_checkpoint,
    train_population,
)
from poisonlab.metrics.classifier_eval import ClassifierEvaluator
from poisonlab.models.classifier import create_classifier, load_classifier
from poisonlab.train.data import label_tensors
from poisonlab.train.fit import train_classifier
from poisonlab.train.loop import RECIPES
from poisonlab.utils.io import write_json


class PopulationSpec(Strict):
    n: int = Field(default=4, ge=2, le=1000)
    n_train: Count = 5000
    epochs: float = Field(default=8, gt=0, le=100_000)
    detectors: dict[Name, dict[str, Any]] = Field(default_factory=lambda: {"cti": {}, "neural-cleanse": {}})


class ClassifierAttackSpec(AttackSpec):
    """An attack on the classifier's training set: dirty-label poisoning (``label-flip``) unless it
    names another registered attack."""

    attack: Name = "label-flip"


class ClassifierSpec(TrainSpec):
    """Poisoned classifiers, their repair with a trusted share, and detection.

    ``detect`` scores the study's own clean and poisoned classifiers with each named detector
    (cheap: nothing new is trained); ``population`` trains ``n`` clean + ``n`` backdoored models
    and reports each of its detectors' ROC AUC. ``trace_every`` measures test CA / ASR along each
    repair every so many steps (the report's CA-vs-ASR curves; 0 turns it off).
    """

    model: Name = "poisonlab-resnet-tiny"
    target: Name
    rate: float = Field(gt=0, le=1)
    attacks: Named[ClassifierAttackSpec]
    trusted_share: float = Field(default=0.01, gt=0, le=1)
    trusted_seed: Seed = 5
    repairs: Named[RepairSpec]
    trace_every: int = Field(default=50, ge=0)
    detect: dict[Name, dict[str, Any]] = Field(default_factory=dict)
    population: PopulationSpec | None = None


@STUDIES.register("classifier")
class ClassifierSection(Study):
    family = "classifier"
    Spec = ClassifierSpec
    rank = 1
    headline = ("ca", "asr", "arr", "score")


    def check(self) -> None:
        c = self.spec
        for attack in c.attacks:
            attack.check(c.target, attack.poison_rate(c.rate))
        for repair in c.repairs:
            defenses.create(repair.repair, family="classifier", kind="repair", **repair.params)
        for name, params in {**c.detect, **(c.population.detectors if c.population else {})}.items():
            detect.create(name, **params)

    def train(self, attack: AttackSpec | None, seed: int) -> Path:
        """The clean (``attack`` None) or poisoned classifier trained with ``seed``."""
        c = self.spec
        label = attack.name if attack else "clean"
        inputs = {"stage": "classifier", "attack": attack.model_dump(exclude_none=True) if attack else None,
                  **c.budget(exclude={"attacks", "repairs", "detect", "population"}), "seed": seed}

        def build(tmp: Path) -> None:
            data = self.runner.data(self.runner.spec.dataset, c.n, c.data_seed)
            if attack is not None:
                data = PoisonedDataset(data, attack.build(c.target, attack.poison_rate(c.rate))(data, seed=seed))
            model = create_classifier(c.model, len(data.classnames), self.runner.spec.image_size, data.classnames,
                                      seed=seed)
            config = c.train_config(seed, weight_decay=RECIPES["classifier"]["weight_decay"])
            train_classifier(model, data, config, tmp, stage="classifier", progress=self.runner.progress)

        return self.runner.cached(f"classifier:{label}{c.tag(seed)}", inputs, build)

    def trusted(self) -> Any:
        c = self.spec
        data = label_tensors(self.runner.data(self.runner.spec.dataset, c.n, c.trusted_seed))
        return data.subset(defenses.trusted_indices(len(data), c.trusted_share, c.trusted_seed))

    def repair(self, attack: AttackSpec, repair: RepairSpec, suspect: Path, seed: int) -> Path:
        """The classifier poisoned with ``seed`` repaired on the trusted share (the repair's seed: ``seed``)."""
        tag = self.spec.tag(seed)
        parent = self.runner.keys[f"classifier:{attack.name}{tag}"]
        repair = seeded(repair, seed, self.spec.seed)
        inputs = {"stage": "repair", "parent": parent, "repair": repair.model_dump(),
                  "share": self.spec.trusted_share, "seed": self.spec.trusted_seed}
        if self.spec.trace_every:
            inputs["trace_every"] = self.spec.trace_every

        def build(tmp: Path) -> None:
            model = load_classifier(suspect / MODEL)
            result = defenses.create(repair.repair, family="classifier", kind="repair", **repair.params).run(
                model, self.trusted(), out=tmp,
                options=defenses.RunOptions(monitor=self.monitor(model, attack), monitor_every=self.spec.trace_every))
            write_json(tmp / "report.json", result.report)

        return self.runner.cached(f"repair:{attack.name}:{repair.name}{tag}", inputs, build)

    def monitor(self, model: Any, attack: AttackSpec) -> Any:
        """Test CA / ASR / ARR of the model being repaired, for its trace (the defense never sees them)."""
        ev = ClassifierEvaluator(model, self.runner.test())
        return lambda clf: self.scores(ev.with_model(clf), attack)

    def put_trace(self, attack: str, repair: str, path: Path, seed: int) -> None:
        """Each traced point as a point (attack, repair, step, seed) of the study's ``repair-trace`` table."""
        for point in json.loads((path / "report.json").read_text()).get("trace", []):
            metrics = {k: v for k, v in point.items() if k != "step"}
            self.runner.store.put_point(self.table("repair-trace"), attack, repair, point["step"],
                                        seed, metrics)

    def evaluate(self, path: Path, attack: AttackSpec) -> dict[str, float]:
        return self.scores(ClassifierEvaluator(load_classifier(path / MODEL), self.runner.test()), attack)

    def scores(self, ev: ClassifierEvaluator, attack: AttackSpec) -> dict[str, float]:
        """CA, ASR, ASR over all images and ARR of the evaluator's model under the attack's trigger."""
        return {"ca": ev.clean_accuracy(), **ev.backdoor(triggers.create(attack.trigger, **attack.params),
                                                         self.spec.target)}

    def detect(self, label: str, path: Path, seed: int) -> None:
        """Score one of the study's classifiers (trained with ``seed``) with every ``detect`` detector (cached)."""
        tag = self.spec.tag(seed)
        inputs = {"stage": "detect", "parent": self.runner.keys[f"classifier:{label}{tag}"], "detect": self.spec.detect,
                  "share": self.spec.trusted_share, "seed": self.spec.trusted_seed}

        def build(tmp: Path) -> None:
            found, trusted = {}, self.trusted()
            for name, params in self.spec.detect.items():
                found[name] = score_checkpoint(detect.create(name, **params), path / MODEL, trusted).to_dict()
            write_json(tmp / "detect.json", found)

        out = self.runner.cached(f"detect:{label}{tag}", inputs, build)
        for name, d in json.loads((out / "detect.json").read_text()).items():
            self.runner.store.put(self.table("detect"), name, label,
                                  {"score": d["score"], "threshold": d["threshold"], "backdoored": d["backdoored"]}, seed)

    def population(self) -> dict[str, Any] | None:
        p = self.spec.population
        if p is None:
            return None
        cfg = PopulationConfig(n_clean=p.n, n_backdoored=p.n, dataset=self.runner.spec.dataset, n_train=p.n_train,
                               epochs=p.epochs, rate=self.spec.rate,
                               attacks=tuple((a.trigger, a.params) for a in self.spec.attacks))
        inputs = {"stage": "population", **p.model_dump(), "share": self.spec.trusted_share,
                  "attacks": [a.model_dump(exclude_none=True) for a in self.spec.attacks], "rate": self.spec.rate}

        def build(tmp: Path) -> None:
            members = train_population(cfg, tmp / "models")
            trusted = population_trusted(cfg, self.spec.trusted_share, self.spec.trusted_seed)
            result = evaluate_detectors(members, tmp / "models", {d: detect.create(d, **kw) for d, kw in p.detectors.items()}, trusted)
            write_json(tmp / "population.json", result)

        path = self.runner.cached("population", inputs, build)
        result = json.loads((path / "population.json").read_text())
        for d in p.detectors:
            self.runner.store.put(self.table("detection"), d, "population", {"auc": result[d]["auc"]})
        self.runner.store.put_document(self.experiment, "population", result)
        return result

    def jobs(self) -> list[Job]:
        """Independent jobs: the clean classifier and each attack's chain for every seed, the detection population."""
        c = self.spec
        jobs: list[Job] = [(f"classifier:clean{c.tag(s)}", functools.partial(self.run_clean, s)) for s in c.all_seeds()]
        jobs += [(f"classifier:{a.name}{c.tag(s)}", functools.partial(self.run_attack, a, s))
                 for a in c.attacks for s in c.all_seeds()]
        if self.spec.population is not None:
            jobs.append(("population", self.population))
        return jobs

    def run_clean(self, seed: int) -> None:
        """The clean classifier of ``seed``: its CA / ASR under each attack's trigger, each detector's score."""
        clean = self.train(None, seed)
        for attack in self.spec.attacks:
            self.put(attack.name, CLEAN_MODEL, self.evaluate(clean, attack), seed)
        if self.spec.detect:
            self.detect("clean", clean, seed)

    def run_attack(self, attack: AttackSpec, seed: int) -> None:
        """One attack with one seed: the poisoned classifier, each repair of it, each detector's score."""
        suspect = self.train(attack, seed)
        self.put(attack.name, "none", self.evaluate(suspect, attack), seed)
        for repair in self.spec.repairs:
            path = self.repair(attack, repair, suspect, seed)
            stopped = json.loads((path / "report.json").read_text()).get("stopped_at")
            self.put(attack.name, repair.name, {**self.evaluate(path, attack),
                                                **({"stopped_at": stopped} if stopped is not None else {})}, seed)
            self.put_trace(attack.name, repair.name, path, seed)
        if self.spec.detect:
            self.detect(attack.name, suspect, seed)

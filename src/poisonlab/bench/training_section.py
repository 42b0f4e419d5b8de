"""The training-time study: CLIP pre-trained from scratch on poisoned pairs.

For each training seed a model is pre-trained from random weights with the study's budget on
the clean pairs (``clean data``, the reference), and for each attack on the pairs it poisons at
the study's rate: undefended (``none``), on the pairs the cosine filter keeps (``filter``: the
clean model of the same seed scores them, as Yang et al.'s pair filter), and with each
training-time defense (SafeCLIP, RoCLIP). Every model is measured with the same test split (CA,
the trigger's ASR and RA; Hit@K / MinRank for a text attack). Results go to the store under the
study's experiment name; SafeCLIP's split of every epoch as a document.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from pydantic import Field

from poisonlab import attacks, defenses, triggers
from poisonlab.attacks.plan import PoisonedDataset
from poisonlab.bench.cache import MODEL
from poisonlab.bench.config import AttackSpec, DefenseSpec, Name, Named, TrainSpec
from poisonlab.bench.parallel import Job
from poisonlab.bench.study import STUDIES, Study
from poisonlab.bench.text_section import FILTER_KEYS, GOAL_KEYS
from poisonlab.data.base import Subset
from poisonlab.defenses import RunOptions
from poisonlab.metrics import ClipEvaluator
from poisonlab.models import create_clip, load_clip
from poisonlab.train import train_clip
from poisonlab.utils.io import write_json


class TrainingSpec(TrainSpec):
    """Training-time defenses against pre-training on poisoned pairs (SafeCLIP, RoCLIP).

    Every model is pre-trained from random weights with this budget (``n`` pairs of ``data_seed``)
    and each training seed: on the clean pairs (the reference), and per attack on the pairs
    poisoned at its ``rate`` (default the study's; target ``poison.target``) undefended, on the
    pairs the cosine filter keeps (scored by the clean model of the same seed, the trusted model
    the filter assumes; ``filter_fraction`` dropped, default twice the rate), and with each of
    ``defenses`` (registered training-time defenses and their parameters).
    """

    model: Name = "poisonlab-tiny-rn"
    attacks: Named[AttackSpec] = Field(min_length=1)
    rate: float = Field(default=0.03, gt=0, le=1)
    defenses: Named[DefenseSpec] = Field(default_factory=list)
    filter_fraction: float | None = Field(default=None, gt=0, lt=1)


@STUDIES.register("training")
class TrainingSection(Study):
    family = "clip"
    Spec = TrainingSpec
    rank = 4
    headline = ("ca", "asr", "hit@10", "recall", "risky_recall")

    def __init__(self, runner: Any, name: str, spec: TrainingSpec) -> None:
        super().__init__(runner, name, spec)
        self.target = runner.spec.poison.target

    def check(self) -> None:
        for attack in self.spec.attacks:
            attack.check(self.target, attack.poison_rate(self.spec.rate))
        for d in self.spec.defenses:
            defenses.create(d.defense, family="clip", kind="training", **d.params)

    def attack(self, attack: AttackSpec) -> attacks.Attack:
        """The registered attack ``attack`` names at its rate (a trigger attack or a text attack)."""
        return attack.build(self.target, attack.poison_rate(self.spec.rate))

    def base(self) -> Any:
        return self.runner.data(self.runner.spec.dataset, self.spec.n, self.spec.data_seed)

    def plan(self, attack: AttackSpec, seed: int) -> PoisonedDataset:
        """The pre-training pairs poisoned by ``attack`` (its pairs chosen by ``seed``)."""
        return PoisonedDataset(self.base(), self.attack(attack)(self.base(), seed=seed))

    def inputs(self, seed: int) -> dict[str, Any]:
        return {"stage": "pretrain", "dataset": self.runner.spec.dataset, "size": self.runner.spec.image_size,
                **self.spec.budget(exclude={"attacks", "rate", "defenses", "filter_fraction"}), "seed": seed}

    def clean(self, seed: int) -> Path:
        """The model pre-trained on the clean pairs with ``seed``: the reference, and the filter's scorer."""
        def build(tmp: Path) -> None:
            train_clip(create_clip(self.spec.model, seed=seed), self.base(), self.spec.train_config(seed), tmp,
                       stage="pretrain:clean", progress=self.runner.progress)

        return self.runner.cached(f"training:clean{self.spec.tag(seed)}", self.inputs(seed), build)

    def pretrain(self, attack: AttackSpec, condition: str, seed: int, defense: DefenseSpec | None = None) -> Path:
        """The model pre-trained from scratch on the attack's poisoned pairs under ``condition``
        (``none``, ``filter`` or a defense's name)."""
        s = self.spec
        inputs = {**self.inputs(seed), "attack": attack.model_dump(exclude_none=True), "rate": s.rate,
                  "target": self.target, "condition": condition,
                  "defense": defense.model_dump(exclude={"dataset"}) if defense else None}
        if condition == "filter":
            self.clean(seed)
            inputs.update(scorer=self.runner.keys[f"training:clean{s.tag(seed)}"],
                          filter_fraction=self.filter_fraction(attack))

        def build(tmp: Path) -> None:
            data = self.plan(attack, seed)
            data.plan.save(tmp / "plan.json")
            start, config = create_clip(s.model, seed=seed), s.train_config(seed)
            if defense is not None:
                method = defenses.create(defense.defense, family="clip", kind="training", **defense.params)
                result = method.run(start, data, out=tmp, options=RunOptions(train=config, progress=self.runner.progress))
                write_json(tmp / "report.json", result.report)
                return
            report: dict[str, Any] = {}
            if condition == "filter":
                found = defenses.create("filter", threshold=None, drop_fraction=self.filter_fraction(attack)).run(
                    load_clip(self.clean(seed) / MODEL), data)
                report = {k: found.report[k] for k in FILTER_KEYS}
                data = Subset(data, found.kept)
            trained = train_clip(start, data, config, tmp, stage=f"pretrain:{condition}", progress=self.runner.progress)
            write_json(tmp / "report.json", {**report, "seconds": round(trained.seconds, 2)})

        return self.runner.cached(f"training:{attack.name}:{condition}{s.tag(seed)}", inputs, build)

    def filter_fraction(self, attack: AttackSpec) -> float:
        """The share of pairs the filter drops: the study's, else twice the attack's rate (the grid's audit)."""
        return self.spec.filter_fraction or min(2 * attack.poison_rate(self.spec.rate), 0.99)

    def measure(self, path: Path, attack: AttackSpec) -> dict[str, float]:
        """CA and the attack's success: ASR / RA of its trigger, or Hit@K / MinRank of a text attack."""
        ev = ClipEvaluator(load_clip(path / MODEL), self.runner.test())
        out = {"ca": ev.clean_accuracy()}
        source = getattr(self.attack(attack), "source", None)
        if source is not None:
            found = ev.text_attack(source, target=self.target)
            return {**out, **{k: found[k] for k in GOAL_KEYS}, "baseline_hit@10": found["baseline"]["hit@10"]}
        assert attack.trigger is not None
        return {**out, **ev.backdoor(triggers.create(attack.trigger, **attack.params), self.target)}

    def jobs(self) -> list[Job]:
        """One job per (attack, seed): its four or more pre-trainings."""
        return [(f"training:{a.name}:seed{seed}", functools.partial(self.run_cell, a, seed))
                for seed in self.spec.all_seeds() for a in self.spec.attacks]

    def run_cell(self, attack: AttackSpec, seed: int) -> None:
        """Every condition of one attack and seed, measured and stored beside the clean model of the
        seed (the reference the defenses are held to)."""
        self.put(attack.name, "clean data", self.measure(self.clean(seed), attack), seed)
        conditions: list[tuple[str, DefenseSpec | None]] = [("none", None), ("filter", None),
                                                            *((d.name, d) for d in self.spec.defenses)]
        for condition, defense in conditions:
            path = self.pretrain(attack, condition, seed, defense)
            report = json.loads((path / "report.json").read_text())
            metrics = {**self.measure(path, attack), "train_seconds": report["seconds"],
                       **{k: report[k] for k in FILTER_KEYS if k in report}}
            splits = report.get("splits", [])
            if splits:
                metrics.update(risky_precision=splits[-1].get("precision", float("nan")),
                               risky_recall=splits[-1].get("recall", float("nan")), safe_share=splits[-1]["safe_share"])
                self.runner.store.put_document(self.experiment, f"splits:{attack.name}:{condition}{self.spec.tag(seed)}",
                                               {"splits": splits})
            self.put(attack.name, condition, metrics, seed)

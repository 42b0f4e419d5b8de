"""The text-modality study: dose-response of Attacks I-III and the paper's two defenses.

Paper: Yang et al., "Data Poisoning Attacks Against Multimodal Encoders", ICML 2023
(arXiv:2209.15266): captions of a source class are paired with images the attacker chose; the
defenses are pair filtering before training and clean fine-tuning after it.

Stages (cached like the CLIP grid's): for each attack and poison count, the grid's clean
pre-trained model fine-tuned on the study's pairs with ``count`` of them poisoned (count 0: the
same fine-tune on clean pairs, shared by every attack). At the defended count also: the same
fine-tune on the pairs that survive filtering with the clean model, and each cleaning defense of
the study applied to the poisoned model. Every model is measured on the clean test split by
:meth:`TextSection.measure`; each measurement is a point of the study in the store
(condition ``clean model``, ``none``, ``filter`` or a defense's name; dose = poisoned pairs).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from statistics import fmean
from typing import Any

from pydantic import Field

from poisonlab import attacks, defenses
from poisonlab.attacks import PoisonedDataset, TextAttack
from poisonlab.bench.cache import MODEL
from poisonlab.bench.config import DefenseSpec, Dose, Name, Named, Strict, TrainSpec
from poisonlab.bench.parallel import Job
from poisonlab.bench.store import CLEAN_MODEL
from poisonlab.bench.study import STUDIES, Study
from poisonlab.data import ImageCaptionDataset, Subset, check_dataset
from poisonlab.errors import InputError
from poisonlab.metrics import ClipEvaluator
from poisonlab.models import load_clip
from poisonlab.train import train_clip
from poisonlab.utils.io import write_json

BUDGET = {"n", "data_seed", "epochs", "lr", "batch_size", "warmup"}
FILTER_KEYS = ("precision", "recall", "removed", "caught", "poisoned", "clean_lost")
GOAL_KEYS = ("hit@1", "hit@5", "hit@10", "min_rank")


class TextAttackSpec(Strict):
    """One text-modality attack of the text section; ``counts`` overrides the section's doses."""

    name: Name
    attack: Name
    params: dict[str, Any] = Field(default_factory=dict)
    counts: list[Dose] | None = None

    def doses(self, section_counts: list[int]) -> list[int]:
        return self.counts if self.counts is not None else section_counts


class TextSpec(TrainSpec):
    """Text-modality poisoning (Yang et al.): dose-response of poisoned fine-tunes and the defenses.

    Each attack fine-tunes the grid's clean pre-trained model on ``n`` pairs with ``count`` of
    them poisoned, for every count (0: the same fine-tune on clean pairs). ``seed_counts`` are
    trained again with each of ``seeds`` (the attack's pair choice and the training order both
    follow the seed). At ``defend_count`` (default: each attack's largest count) the poisoned set
    is also filtered before training (``filter_fraction`` of the pairs least similar under the
    clean model dropped) and the poisoned model is cleaned by each of ``defenses``.
    """

    attacks: Named[TextAttackSpec]
    counts: list[Dose] = Field(min_length=1)
    seed_counts: list[Dose] = Field(default_factory=list)
    defend_count: Dose | None = None
    filter_fraction: float = Field(default=0.1, gt=0, lt=1)
    defenses: Named[DefenseSpec] = Field(default_factory=list)

    def with_seeds(self, seeds: list[int]) -> TextSpec:
        """More training seeds; without ``seed_counts`` every dose is trained with each of them."""
        more = super().with_seeds(seeds)
        return more if more.seed_counts else more.model_copy(update={"seed_counts": list(more.counts)})


def goal_metrics(ev: ClipEvaluator, atk: TextAttack, base: ImageCaptionDataset, seed: int) -> dict[str, float]:
    """Hit@1/5/10 / MinRank of the attack's goals (the mean over goals for Attack III; Attack I's
    target image is the one its plan of ``seed`` on ``base`` chose) with the two random-caption
    baselines (``baseline_*``: captions drawn from every test caption, as the authors do;
    ``baseline_other_*``: from captions of other classes than the source)."""
    goals = []
    for source, target in atk.retrieval_goals():
        if target is None:
            image = base[atk.target_image(base, seed)][0]  # type: ignore[attr-defined]
            goals.append(ev.text_attack(source, target_image=image, seed=seed))
        else:
            goals.append(ev.text_attack(source, target=target, seed=seed))
    out = {}
    for key in GOAL_KEYS:
        out[key] = fmean(g[key] for g in goals)
        out[f"baseline_{key}"] = fmean(g["baseline"][key] for g in goals)
        out[f"baseline_other_{key}"] = fmean(g["baseline_other"][key] for g in goals)
    return out


@STUDIES.register("text")
class TextSection(Study):
    family = "clip"
    Spec = TextSpec
    rank = 2
    headline_points = ("hit@10", "min_rank")

    def __init__(self, runner: Any, name: str, spec: TextSpec) -> None:
        super().__init__(runner, name, spec)
        for a in spec.attacks:
            if not isinstance(self.attack(a, 1), TextAttack):
                raise InputError(f"study {name!r}: {a.attack!r} is not a text-modality attack "
                                 "(text-attack-1, text-attack-2, text-attack-3)")
            if self.defend_count(a) not in a.doses(spec.counts):
                raise InputError(f"study {name!r}: defend_count {spec.defend_count} is not a count of {a.name!r}")

    def check(self) -> None:
        for d in self.spec.defenses:
            check_dataset(d.dataset)
            defenses.create(d.defense, family="clip", kind="cleaning", **d.params)

    # -- data and stages -------------------------------------------------------------------
    def base(self) -> ImageCaptionDataset:
        return self.runner.data(self.runner.spec.dataset, self.spec.n, self.spec.data_seed)

    def attack(self, attack: TextAttackSpec, count: int) -> TextAttack:
        return attacks.create(attack.attack, count=max(count, 1), **attack.params)  # type: ignore[return-value]

    def defend_count(self, attack: TextAttackSpec) -> int:
        return self.spec.defend_count if self.spec.defend_count is not None else max(attack.doses(self.spec.counts))

    def train_set(self, attack: TextAttackSpec, count: int, seed: int) -> ImageCaptionDataset:
        base = self.base()
        return base if count == 0 else PoisonedDataset(base, self.attack(attack, count)(base, seed=seed))

    def finetune(self, attack: TextAttackSpec, count: int, seed: int, filtered: bool = False) -> tuple[str, Path]:
        """Stage name and folder of the fine-tune at ``count`` poisoned pairs (on the pairs that
        survive the filter if ``filtered``)."""
        s = self.spec
        clean = self.runner.pretrain()
        label = "clean" if count == 0 else f"{attack.name}:{count}"
        stage = f"text:{label}:seed{seed}" + (":filter" if filtered else "")
        inputs: dict[str, Any] = {"stage": "text", "parent": self.runner.keys["pretrain"], "count": count,
                                  "seed": seed, **s.model_dump(include=BUDGET)}
        if count:
            inputs["attack"] = attack.model_dump(include={"attack", "params"})
        if filtered:
            inputs["filter_fraction"] = s.filter_fraction

        def build(tmp: Path) -> None:
            data = self.train_set(attack, count, seed)
            if filtered:
                found = defenses.create("filter", threshold=None, drop_fraction=s.filter_fraction).run(
                    load_clip(clean / MODEL), data)
                write_json(tmp / "filter.json", {k: found.report[k] for k in FILTER_KEYS})
                data = Subset(data, found.kept)
            if isinstance(data, PoisonedDataset):
                data.plan.save(tmp / "plan.json")
            config = s.train_config(seed)
            train_clip(load_clip(clean / MODEL), data, config, tmp, stage="poison", progress=self.runner.progress)

        return stage, self.runner.cached(stage, inputs, build)

    # -- measurement -----------------------------------------------------------------------
    def measure(self, path: Path, attack: TextAttackSpec, seed: int) -> dict[str, float]:
        """Zero-shot CA, R@1/5/10 both ways and the attack's goal metrics (:func:`goal_metrics`)."""
        ev = ClipEvaluator(load_clip(path / MODEL), self.runner.test())
        return {"ca": ev.clean_accuracy(), **ev.retrieval(), **goal_metrics(ev, self.attack(attack, 1), self.base(), seed)}

    def put_point(self, attack: TextAttackSpec, condition: str, count: int, seed: int, metrics: dict[str, float]) -> None:
        self.runner.store.put_point(self.experiment, attack.name, condition, count, seed, metrics)

    # -- jobs ------------------------------------------------------------------------------
    def jobs(self) -> list[Job]:
        """One job per (attack, count, seed); the defended counts first (the longest chains)."""
        s = self.spec
        first: list[Job] = []
        rest: list[Job] = []
        for a in s.attacks:
            for count in a.doses(s.counts):
                extra = [x for x in s.seeds if x != s.seed] if count in s.seed_counts else []
                for seed in [s.seed, *extra]:
                    job = (f"text:{a.name}:{count}:seed{seed}", functools.partial(self.run_point, a, count, seed))
                    (first if count == self.defend_count(a) and seed == s.seed else rest).append(job)
        return first + rest

    def run_point(self, attack: TextAttackSpec, count: int, seed: int) -> None:
        """One fine-tune and its measurement; at count 0 also the pre-trained model's, at the
        defended count (first seed) the filtered fine-tune and each cleaning defense."""
        stage, path = self.finetune(attack, count, seed)
        self.put_point(attack, "none", count, seed, self.measure(path, attack, seed))
        if seed != self.spec.seed:
            return
        if count == 0:
            self.put_point(attack, CLEAN_MODEL, 0, seed, self.measure(self.runner.pretrain(), attack, seed))
        if count != self.defend_count(attack) or count == 0:
            return
        _, filtered = self.finetune(attack, count, seed, filtered=True)
        report = json.loads((filtered / "filter.json").read_text())
        self.put_point(attack, "filter", count, seed, {**self.measure(filtered, attack, seed), **report})
        for defense in self.spec.defenses:
            cleaned = self.runner.cleaned(f"{stage}:{defense.name}", self.runner.keys[stage], defense, path)
            self.put_point(attack, defense.name, count, seed, self.measure(cleaned, attack, seed))

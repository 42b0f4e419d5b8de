"""The CLIP attack x defense grid of an experiment spec: the part every spec's ``attacks`` make.

Stages (cached by the hash of what produced them, :mod:`poisonlab.bench.cache`): the clean model
pre-trained once (:meth:`poisonlab.bench.runner.Runner.pretrain`, shared with the studies); per
attack and training seed, the poisoned fine-tuning set and the poisoned fine-tune; per defense,
the poisoned model cleaned on the cleaning data; per detector, the poisoned set scored (and the
model trained again on the pairs it keeps when asked). Every model is measured once (CA and the
attack's ASR / RA, or Hit@K / MinRank for an attack on captions); each poisoned set is also
audited with the cosine pair filter. With ``poison.seeds`` every cell is run again per training
seed and stored as its own row; the first seed's stages keep their names and keys. Its rows are
stored under the spec's own name.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from poisonlab import attacks, defenses, triggers
from poisonlab.attacks import TextAttack
from poisonlab.attacks.plan import PoisonedDataset, PoisonPlan
from poisonlab.bench.cache import MODEL
from poisonlab.bench.config import AttackSpec, DefenseSpec, is_text, seeded
from poisonlab.bench.parallel import Job
from poisonlab.bench.spec import GRID, DetectorSpec, ExperimentSpec
from poisonlab.bench.store import CLEAN_MODEL, UNDEFENDED
from poisonlab.bench.study import Study
from poisonlab.bench.text_section import goal_metrics
from poisonlab.data import check_dataset
from poisonlab.data.base import Subset
from poisonlab.defenses import RunOptions
from poisonlab.metrics import ClipEvaluator
from poisonlab.metrics.pair_embeddings import load_embeddings
from poisonlab.models import ClipBundle, load_clip
from poisonlab.models.checkpoint import save_tensors
from poisonlab.train import train_clip
from poisonlab.utils.io import write_json
from poisonlab.utils.seeding import make_generator

DETECTION_KEYS = ("test_auroc", "auroc", "auprc", "fpr_at_95_tpr", "precision", "recall", "f1", "flagged", "caught",
                  "clean_lost", "threshold")


class ClipGrid(Study):
    """The grid as a study of its spec (``spec``: the whole :class:`ExperimentSpec`); its jobs come
    last in the shared list, so the main process of a parallel run takes them first."""

    family = "clip"
    rank = -1

    def __init__(self, runner: Any, spec: ExperimentSpec) -> None:
        super().__init__(runner, GRID, spec)
        self.experiment = spec.name

    @property
    def kind(self) -> str:
        return GRID

    def check(self) -> None:
        for attack in self.spec.attacks:
            attack.check(self.spec.poison.target, attack.poison_rate(self.spec.poison.rate))
        for d in self.spec.defenses:
            check_dataset(d.dataset)
            defenses.create(d.defense, family="clip", kind="cleaning", **d.params)
        for det in self.spec.detectors:
            defenses.create(det.detector, family="clip", kind="filter", **det.params)

    def attack(self, attack: AttackSpec) -> attacks.Attack:
        """The registered attack ``attack`` names, toward the grid's target at its poison rate."""
        p = self.spec.poison
        return attack.build(p.target, attack.poison_rate(p.rate))

    def plan(self, attack: AttackSpec, seed: int | None = None) -> PoisonedDataset:
        """The attack's poisoned fine-tuning set; ``seed`` (default ``poison.seed``) picks the poisoned pairs."""
        p = self.spec.poison
        seed = p.seed if seed is None else seed
        base = self.runner.data(self.spec.dataset, p.n, p.data_seed)
        atk = self.attack(attack)
        if atk.needs_model:
            return PoisonedDataset(base, PoisonPlan.load(self.prepared(attack, seed) / "plan.json"))
        return PoisonedDataset(base, atk(base, seed=seed))

    def trigger(self, attack: AttackSpec, seed: int | None = None) -> triggers.Trigger | None:
        """The trigger of the attack's plan with ``seed`` (an optimised one made on the clean model;
        ``None`` for an attack on captions)."""
        if attack.trigger is not None:
            return triggers.create(attack.trigger, **attack.params)
        if is_text(attacks.ATTACKS.get(attack.attack)):
            return None
        return self.plan(attack, seed).plan.build_trigger()

    def prepared(self, attack: AttackSpec, seed: int) -> Path:
        """The plan (and the trigger it carries, e.g. BadCLIP's patch, also as ``trigger.safetensors``) of
        an attack that makes its trigger on the clean pre-trained model."""
        p = self.spec.poison
        clean = self.runner.pretrain()
        inputs = {"stage": "attack", "parent": self.runner.keys["pretrain"], "attack": attack.model_dump(exclude_none=True),
                  "target": p.target, "rate": p.rate, "n": p.n, "data_seed": p.data_seed, "seed": seed}

        def build(tmp: Path) -> None:
            atk = self.attack(attack)
            base = self.runner.data(self.spec.dataset, p.n, p.data_seed)
            made = atk.prepare(load_clip(clean / MODEL), base, seed)
            atk(base, seed=seed).save(tmp / "plan.json")
            if isinstance(made, torch.Tensor):
                save_tensors(tmp / "trigger.safetensors", {"patch": made})

        return self.runner.cached(f"attack:{attack.name}{p.tag(seed)}", inputs, build)

    def poison(self, attack: AttackSpec, clean: Path, seed: int | None = None) -> Path:
        """The attack's poisoned fine-tune of the clean model with training seed ``seed`` (default ``poison.seed``)."""
        p = self.spec.poison
        seed = p.seed if seed is None else seed
        inputs = {"stage": "poison", "parent": self.runner.keys["pretrain"], "attack": attack.model_dump(exclude_none=True),
                  **p.budget(), "seed": seed}
        if self.attack(attack).needs_model:
            self.prepared(attack, seed)
            inputs["plan"] = self.runner.keys[f"attack:{attack.name}{p.tag(seed)}"]

        def build(tmp: Path) -> None:
            data = self.plan(attack, seed)
            data.plan.save(tmp / "plan.json")
            config = p.train_config(seed)
            train_clip(load_clip(clean / MODEL), data, config, tmp, stage="poison", progress=self.runner.progress)

        return self.runner.cached(f"poison:{attack.name}{p.tag(seed)}", inputs, build)

    def clean(self, attack: AttackSpec, defense: DefenseSpec, poisoned: Path, seed: int | None = None) -> Path:
        """``poisoned`` (the attack's fine-tune with ``seed``) cleaned by ``defense`` with the same seed."""
        p = self.spec.poison
        seed = p.seed if seed is None else seed
        tag = p.tag(seed)
        return self.runner.cleaned(f"clean:{attack.name}:{defense.name}{tag}", self.runner.keys[f"poison:{attack.name}{tag}"],
                                   seeded(defense, seed, p.seed), poisoned)

    def detect(self, attack: AttackSpec, detector: DetectorSpec, clean: Path, poisoned: Path, seed: int) -> Path:
        """``detector`` run on the attack's poisoned fine-tuning set (of ``seed``) with the model
        fine-tuned on it (the clean pre-trained model for the cosine pair filter, whose
        ``scores_with`` says so); a detector's threshold from clean pairs of the cleaning data's seed."""
        tag = self.spec.poison.tag(seed)
        method = defenses.create(detector.detector, family="clip", kind="filter", **detector.params)
        inputs = {"stage": "detect", "parent": self.runner.keys[f"poison:{attack.name}{tag}"], "detector": detector.detector,
                  "params": dataclasses.asdict(method), "clean_n": detector.clean_n,
                  "reference_seed": self.spec.cleaning.data_seed, "test_time": self.spec.test.model_dump()}

        def build(tmp: Path) -> None:
            reference = self.runner.data(self.spec.dataset, detector.clean_n, self.spec.cleaning.data_seed)
            model = clean if getattr(method, "scores_with", "suspect") == "clean" else poisoned
            suspect, data = load_clip(model / MODEL), self.plan(attack, seed)
            result = method.run(suspect, data, out=tmp, options=RunOptions(progress=self.runner.progress, reference=reference))
            trigger = self.trigger(attack, seed)
            if hasattr(method, "score_inputs") and trigger is not None:
                embeddings = load_embeddings(tmp / "embeddings", data)
                result.report["test_auroc"] = self.test_time_auroc(method, suspect, embeddings, trigger, seed)
            write_json(tmp / "report.json", result.report)

        return self.runner.cached(f"detect:{attack.name}:{detector.name}{tag}", inputs, build)

    def test_time_auroc(self, method: Any, suspect: ClipBundle, embeddings: Any, trigger: triggers.Trigger,
                        seed: int) -> float:
        """AUROC of ``method``'s scores separating the test images (non-target classes) stamped with
        ``trigger`` from the same images clean, each scored against the poisoned set (Huang et al.'s
        test-time use)."""
        test = self.runner.test()
        target = test.classnames.index(self.spec.poison.target)
        images = torch.stack([test[i][0] for i, label in enumerate(test.labels()) if label != target])
        triggered = trigger(images, generator=make_generator("eval-trigger", seed))
        scores = method.score_inputs(suspect, embeddings, torch.cat([images, triggered]))
        return float(roc_auc_score(np.r_[np.zeros(len(images)), np.ones(len(triggered))], scores))

    def retrain(self, attack: AttackSpec, detector: DetectorSpec, clean: Path, detected: Path, seed: int) -> Path:
        """The attack's poisoned fine-tune (of ``seed``) done again on the pairs ``detector`` keeps."""
        p = self.spec.poison
        tag = p.tag(seed)
        inputs = {"stage": "retrain", "parent": self.runner.keys[f"detect:{attack.name}:{detector.name}{tag}"],
                  "clean": self.runner.keys["pretrain"], **p.budget(), "seed": seed}

        def build(tmp: Path) -> None:
            kept = json.loads((detected / "kept.json").read_text())["kept"]
            train_clip(load_clip(clean / MODEL), Subset(self.plan(attack, seed), kept), p.train_config(seed), tmp,
                       stage="retrain", progress=self.runner.progress)

        return self.runner.cached(f"retrain:{attack.name}:{detector.name}{tag}", inputs, build)

    def run_detectors(self, attack: AttackSpec, clean: Path, poisoned: Path, seed: int) -> None:
        """Each detector of the spec on one poisoned set: its detection numbers (and the scores, as a
        document for the report's curves), and the retrained model's CA / ASR where asked."""
        tag = self.spec.poison.tag(seed)
        poisoned_items = sorted(self.plan(attack, seed).plan.indices) if self.spec.detectors else []
        for det in self.spec.detectors:
            detected = self.detect(attack, det, clean, poisoned, seed)
            report = json.loads((detected / "report.json").read_text())
            self.put(attack.name, f"{det.name} (detect)", {k: report[k] for k in DETECTION_KEYS if k in report}, seed)
            self.runner.store.put_document(self.experiment, f"scores:{attack.name}:{det.name}{tag}",
                                           {"scores": report["scores"], "poisoned": poisoned_items,
                                            "threshold": report["threshold"]})
            if det.retrain:
                model = self.retrain(attack, det, clean, detected, seed)
                self.put(attack.name, retrained(det.name),
                         self.evaluate(load_clip(model / MODEL), [attack], seed)[attack.name], seed)

    def audit(self, attack: AttackSpec, clean: Path, seed: int | None = None) -> dict[str, Any]:
        """Pair filtering of the poisoned fine-tuning set (of ``seed``) with the clean pre-trained model."""
        report = defenses.create("filter", threshold=None, drop_fraction=attack.poison_rate(self.spec.poison.rate) * 2).run(
            load_clip(clean / MODEL), self.plan(attack, seed)).report
        return {k: report[k] for k in ("precision", "recall", "removed", "caught", "clean_lost")}

    # -- evaluation ------------------------------------------------------------------------
    def evaluate(self, bundle: ClipBundle, attack_list: list[AttackSpec], seed: int | None = None) -> dict[str, dict[str, float]]:
        """CA and each attack's backdoor metrics: ASR / RA with the trigger of its plan of ``seed``, or
        Hit@K / MinRank of an attack on captions (:func:`~poisonlab.bench.text_section.goal_metrics`)."""
        ev = ClipEvaluator(bundle, self.runner.test())
        ca = ev.clean_accuracy()
        out = {}
        for a in attack_list:
            atk = self.attack(a)
            if isinstance(atk, TextAttack):
                base = self.runner.data(self.spec.dataset, self.spec.poison.n, self.spec.poison.data_seed)
                res = goal_metrics(ev, atk, base, self.spec.poison.seed if seed is None else seed)
            else:
                res = ev.backdoor(self.trigger(a, seed), self.spec.poison.target)
            out[a.name] = {"ca": ca, **res}
        return out

    def jobs(self) -> list[Job]:
        """The clean model's row, then one job per (attack, training seed): its poisoned model, the
        audit, the detectors and every defense of it."""
        return [("grid:clean model", self.run_clean),
                *((f"grid:{a.name}{self.spec.poison.tag(seed)}", functools.partial(self.run_cell, a, seed))
                  for a in self.spec.attacks for seed in self.spec.poison.all_seeds())]

    def run_clean(self) -> None:
        """Each attack's numbers on the never-poisoned model (what the trigger does without a backdoor)."""
        clean = self.runner.pretrain()
        for attack, metrics in self.evaluate(load_clip(clean / MODEL), self.spec.attacks).items():
            self.put(attack, CLEAN_MODEL, metrics, self.spec.poison.seed)

    def run_cell(self, attack: AttackSpec, seed: int) -> None:
        """One attack with one training seed: its poisoned model, the audit, every defense of it."""
        clean = self.runner.pretrain()
        poisoned = self.poison(attack, clean, seed)
        self.put(attack.name, UNDEFENDED, self.evaluate(load_clip(poisoned / MODEL), [attack], seed)[attack.name], seed)
        self.put(attack.name, "filter (audit)", self.audit(attack, clean, seed), seed)
        self.run_detectors(attack, clean, poisoned, seed)
        for defense in self.spec.defenses:
            cleaned = self.clean(attack, defense, poisoned, seed)
            metrics = self.evaluate(load_clip(cleaned / MODEL), [attack], seed)[attack.name]
            report = json.loads((cleaned / "report.json").read_text())
            metrics.update({k: v for k, v in report.items() if k.startswith("final_s_")})
            self.put(attack.name, defense.name, metrics, seed)


def retrained(detector: str) -> str:
    """The grid's condition name of the model retrained on the pairs ``detector`` keeps."""
    return f"{detector} + retrain"

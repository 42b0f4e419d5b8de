"""Run an experiment spec: the CLIP grid here, its studies beside it; every stage cached by
the hash of what produced it (:mod:`poisonlab.bench.cache`), scheduled by :mod:`poisonlab.bench.parallel`.

Stages: pre-train a clean model; per attack, poison the fine-tuning data and fine-tune; per
(attack, defense), clean the poisoned model; evaluate each model once (CA and the attack's ASR);
audit each poisoned set with pair filtering. A stage whose output folder already exists under
``OUT/cache/<stage>-<hash>`` is reused, so a second run only redoes what changed. With
``poison.seeds`` every cell (poisoned fine-tune, audit, cleanings) is run again per training seed
and stored as its own row; the first seed's stages keep their names and keys.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import shutil
import uuid
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from poisonlab import attacks, defenses, triggers
from poisonlab.attacks import TextAttack
from poisonlab.attacks.plan import PoisonedDataset, PoisonPlan
from poisonlab.bench.cache import MODEL, StageCache
from poisonlab.bench.config import AttackSpec, DefenseSpec, seeded
from poisonlab.bench.parallel import Job, sections_beside
from poisonlab.bench.spec import GRID, DetectorSpec, ExperimentSpec, study_specs
from poisonlab.bench.store import CLEAN_MODEL, ResultsStore, StudyRow
from poisonlab.bench.study import STUDIES, Study
from poisonlab.bench.text_section import goal_metrics
from poisonlab.data import open_dataset
from poisonlab.data.base import Subset
from poisonlab.defenses import RunOptions
from poisonlab.errors import InputError
from poisonlab.metrics import ClipEvaluator
from poisonlab.metrics.pair_embeddings import load_embeddings
from poisonlab.models import ClipBundle, create_clip, load_clip
from poisonlab.models.checkpoint import save_tensors
from poisonlab.registry import parameters
from poisonlab.train import train_clip
from poisonlab.utils.io import write_json
from poisonlab.utils.machine import describe
from poisonlab.utils.output import claim, claim_output, sweep
from poisonlab.utils.seeding import make_generator

log = logging.getLogger(__name__)
DETECTION_KEYS = ("test_auroc", "auroc", "auprc", "fpr_at_95_tpr", "precision", "recall", "f1", "flagged", "caught", "clean_lost",
                  "threshold")
RUN_OUTPUTS = ("results.db", "results.db-journal", "results.db-wal", "results.db-shm", "cache", "report", ".claims")
"""What a run writes into its output folder."""


class Runner:
    """Executes an :class:`ExperimentSpec` into ``out_dir`` (cache, results.db)."""

    def __init__(self, spec: ExperimentSpec, out_dir: str | Path, progress: bool = True,
                 run_id: str | None = None, only: Collection[str] | None = None, force: bool = False) -> None:
        """``only``: run just these parts of the spec (``grid`` or a study's name; default every
        part it has); ``force``: write into a non-empty ``out_dir`` that poisonlab did not write (only
        its own entries are replaced there). A killed run's temporary stage folders are swept."""
        self.spec, self.out, self.progress = spec, Path(out_dir), progress
        self.studies: dict[str, Study] = {s.name: STUDIES.get(s.kind)(self, s.name, s.spec)  # type: ignore[call-arg]
                                          for s in study_specs(spec)}
        have = [GRID] * bool(spec.attacks) + list(self.studies)
        missing = [p for p in only or () if p not in have]
        if missing:
            raise InputError(f"the spec has no part {missing[0]!r} (it has: {', '.join(have) or 'none'})")
        self.parts = frozenset(p for p in have if only is None or p in only)
        self.run_id = run_id or uuid.uuid4().hex  # shared by the two processes of a parallel run
        marker = claim_output(self.out, RUN_OUTPUTS, force=force, legacy=("results.db",))
        if (self.out / "cache").is_dir() and run_id is None:
            sweep(self.out / "cache", marker)
        self.store = ResultsStore(self.out / "results.db")
        self.cache = StageCache(self.out, spec.name, self.run_id, self.store)
        self.keys = self.cache.keys
        self.processes = 1
        self._data: dict[tuple[str, int, int, str], Any] = {}

    def cached(self, stage: str, inputs: dict[str, Any], build: Callable[[Path], None]) -> Path:
        """The stage's output folder from the stage cache (:class:`~poisonlab.bench.cache.StageCache`)."""
        return self.cache(stage, inputs, build)

    # -- data ------------------------------------------------------------------------------
    def data(self, name: str, n: int, seed: int, split: str = "train") -> Any:
        """A generated dataset, made once per run (every attack and defense shares it)."""
        key = (name, n, seed, split)
        if key not in self._data:
            self._data[key] = open_dataset(name, split=split, size=self.spec.image_size, n=n, seed=seed)
        return self._data[key]

    def test(self) -> Any:
        return self.data(self.spec.dataset, self.spec.test.n, self.spec.test.data_seed, "test")

    def attack(self, attack: AttackSpec) -> attacks.Attack:
        """The registered attack ``attack`` names, built with its parameters (``InputError`` when
        it takes a trigger and has none, or makes its own or poisons captions and is given one)."""
        p = self.spec.poison
        factory = attacks.ATTACKS.get(attack.attack)
        params = {"rate": attack.poison_rate(p.rate), **attack.attack_params}
        if "target" in parameters(factory) and "target" not in params:
            params["target"] = p.target
        if getattr(factory, "needs_model", False) or is_text(factory):
            if attack.trigger is not None:
                how = "poisons captions" if is_text(factory) else "makes its own trigger"
                raise InputError(f"attack {attack.name!r}: {attack.attack} {how}; give it no trigger")
        elif attack.trigger is None:
            raise InputError(f"attack {attack.name!r}: {attack.attack} needs a trigger")
        else:
            params.update(trigger=attack.trigger, trigger_params=attack.params)
        return attacks.create(attack.attack, **params)

    def plan(self, attack: AttackSpec, seed: int | None = None) -> PoisonedDataset:
        """The attack's poisoned fine-tuning set; ``seed`` (default ``poison.seed``) picks the poisoned pairs."""
        p = self.spec.poison
        seed = p.seed if seed is None else seed
        base = self.data(self.spec.dataset, p.n, p.data_seed)
        atk = self.attack(attack)
        if atk.needs_model:
            return PoisonedDataset(base, PoisonPlan.load(self.prepared(attack, seed) / "plan.json"))
        return PoisonedDataset(base, atk(base, seed=seed))

    def trigger(self, attack: AttackSpec, seed: int | None = None) -> triggers.Trigger | None:
        """The trigger of the attack's plan with ``seed`` (an optimised one made on the clean model;
        ``None`` for an attack on captions)."""
        if attack.trigger is not None:
            return triggers.create(attack.trigger, **attack.params)
        return self.plan(attack, seed).plan.build_trigger()

    # -- stages ----------------------------------------------------------------------------
    def pretrain(self) -> Path:
        p = self.spec.pretrain
        inputs = {"stage": "pretrain", "dataset": self.spec.dataset, "size": self.spec.image_size, **p.budget()}

        def build(tmp: Path) -> None:
            bundle = create_clip(p.model, seed=p.seed)
            config = p.train_config()
            train_clip(bundle, self.data(self.spec.dataset, p.n, p.data_seed), config, tmp, progress=self.progress)

        return self.cached("pretrain", inputs, build)

    def prepared(self, attack: AttackSpec, seed: int) -> Path:
        """The plan (and the trigger it carries, e.g. BadCLIP's patch, also as ``trigger.safetensors``) of
        an attack that makes its trigger on the clean pre-trained model."""
        p = self.spec.poison
        clean = self.pretrain()
        inputs = {"stage": "attack", "parent": self.keys["pretrain"], "attack": attack.model_dump(exclude_none=True),
                  "target": p.target, "rate": p.rate, "n": p.n, "data_seed": p.data_seed, "seed": seed}

        def build(tmp: Path) -> None:
            atk = self.attack(attack)
            base = self.data(self.spec.dataset, p.n, p.data_seed)
            made = atk.prepare(load_clip(clean / MODEL), base, seed)
            atk(base, seed=seed).save(tmp / "plan.json")
            if isinstance(made, torch.Tensor):
                save_tensors(tmp / "trigger.safetensors", {"patch": made})

        return self.cached(f"attack:{attack.name}{p.tag(seed)}", inputs, build)

    def poison(self, attack: AttackSpec, clean: Path, seed: int | None = None) -> Path:
        """The attack's poisoned fine-tune of the clean model with training seed ``seed`` (default ``poison.seed``)."""
        p = self.spec.poison
        seed = p.seed if seed is None else seed
        inputs = {"stage": "poison", "parent": self.keys["pretrain"], "attack": attack.model_dump(exclude_none=True),
                  **p.budget(), "seed": seed}
        if self.attack(attack).needs_model:
            self.prepared(attack, seed)
            inputs["plan"] = self.keys[f"attack:{attack.name}{p.tag(seed)}"]

        def build(tmp: Path) -> None:
            data = self.plan(attack, seed)
            data.plan.save(tmp / "plan.json")
            config = p.train_config(seed)
            train_clip(load_clip(clean / MODEL), data, config, tmp, stage="poison", progress=self.progress)

        return self.cached(f"poison:{attack.name}{p.tag(seed)}", inputs, build)

    def clean(self, attack: AttackSpec, defense: DefenseSpec, poisoned: Path, seed: int | None = None) -> Path:
        """``poisoned`` (the attack's fine-tune with ``seed``) cleaned by ``defense`` with the same seed."""
        p = self.spec.poison
        seed = p.seed if seed is None else seed
        tag = p.tag(seed)
        return self.cleaned(f"clean:{attack.name}:{defense.name}{tag}", self.keys[f"poison:{attack.name}{tag}"],
                            seeded(defense, seed, p.seed), poisoned)

    def cleaned(self, stage: str, parent: str, defense: DefenseSpec, poisoned: Path) -> Path:
        """``poisoned`` (the output of the stage whose key is ``parent``) cleaned by ``defense`` on
        the experiment's cleaning data."""
        c = self.spec.cleaning
        inputs = {"stage": "clean", "parent": parent, "defense": defense.model_dump(), **c.model_dump()}

        def build(tmp: Path) -> None:
            method = defenses.create(defense.defense, family="clip", kind="cleaning", **defense.params)
            data = self.data(defense.dataset, c.n, c.data_seed)
            result = method.run(load_clip(poisoned / MODEL), data, out=tmp, options=RunOptions(progress=self.progress))
            write_json(tmp / "report.json", result.report)

        return self.cached(stage, inputs, build)

    def detect(self, attack: AttackSpec, detector: DetectorSpec, clean: Path, poisoned: Path, seed: int) -> Path:
        """``detector`` run on the attack's poisoned fine-tuning set (of ``seed``) with the model
        fine-tuned on it (the clean pre-trained model for the cosine pair filter, whose
        ``scores_with`` says so); a detector's threshold from clean pairs of the cleaning data's seed."""
        tag = self.spec.poison.tag(seed)
        method = defenses.create(detector.detector, family="clip", kind="filter", **detector.params)
        inputs = {"stage": "detect", "parent": self.keys[f"poison:{attack.name}{tag}"], "detector": detector.detector,
                  "params": dataclasses.asdict(method), "clean_n": detector.clean_n,
                  "reference_seed": self.spec.cleaning.data_seed, "test_time": self.spec.test.model_dump()}

        def build(tmp: Path) -> None:
            reference = self.data(self.spec.dataset, detector.clean_n, self.spec.cleaning.data_seed)
            model = clean if getattr(method, "scores_with", "suspect") == "clean" else poisoned
            suspect, data = load_clip(model / MODEL), self.plan(attack, seed)
            result = method.run(suspect, data, out=tmp, options=RunOptions(progress=self.progress, reference=reference))
            if hasattr(method, "score_inputs") and self.trigger(attack, seed) is not None:
                embeddings = load_embeddings(tmp / "embeddings", data)
                result.report["test_auroc"] = self.test_time_auroc(method, suspect, embeddings, attack, seed)
            write_json(tmp / "report.json", result.report)

        return self.cached(f"detect:{attack.name}:{detector.name}{tag}", inputs, build)

    def test_time_auroc(self, method: Any, suspect: ClipBundle, embeddings: Any, attack: AttackSpec, seed: int) -> float:
        """AUROC of ``method``'s scores separating the triggered test images (non-target classes)
        from the same images clean, each scored against the poisoned set (Huang et al.'s test-time use)."""
        test = self.test()
        target = test.classnames.index(self.spec.poison.target)
        images = torch.stack([test[i][0] for i, label in enumerate(test.labels()) if label != target])
        trigger = self.trigger(attack, seed)
        assert trigger is not None
        triggered = trigger(images, generator=make_generator("eval-trigger", seed))
        scores = method.score_inputs(suspect, embeddings, torch.cat([images, triggered]))
        return float(roc_auc_score(np.r_[np.zeros(len(images)), np.ones(len(triggered))], scores))

    def retrain(self, attack: AttackSpec, detector: DetectorSpec, clean: Path, detected: Path, seed: int) -> Path:
        """The attack's poisoned fine-tune (of ``seed``) done again on the pairs ``detector`` keeps."""
        p = self.spec.poison
        tag = p.tag(seed)
        inputs = {"stage": "retrain", "parent": self.keys[f"detect:{attack.name}:{detector.name}{tag}"],
                  "clean": self.keys["pretrain"], **p.budget(), "seed": seed}

        def build(tmp: Path) -> None:
            kept = json.loads((detected / "kept.json").read_text())["kept"]
            train_clip(load_clip(clean / MODEL), Subset(self.plan(attack, seed), kept), p.train_config(seed), tmp,
                       stage="retrain", progress=self.progress)

        return self.cached(f"retrain:{attack.name}:{detector.name}{tag}", inputs, build)

    def run_detectors(self, attack: AttackSpec, clean: Path, poisoned: Path, seed: int) -> None:
        """Each detector of the spec on one poisoned set: its detection numbers (and the scores, as a
        document for the report's curves), and the retrained model's CA / ASR where asked."""
        name, tag = self.spec.name, self.spec.poison.tag(seed)
        poisoned_items = sorted(self.plan(attack, seed).plan.indices) if self.spec.detectors else []
        for det in self.spec.detectors:
            detected = self.detect(attack, det, clean, poisoned, seed)
            report = json.loads((detected / "report.json").read_text())
            self.store.put(name, attack.name, f"{det.name} (detect)",
                           {k: report[k] for k in DETECTION_KEYS if k in report}, seed)
            self.store.put_document(name, f"scores:{attack.name}:{det.name}{tag}",
                                    {"scores": report["scores"], "poisoned": poisoned_items,
                                     "threshold": report["threshold"]})
            if det.retrain:
                model = self.retrain(attack, det, clean, detected, seed)
                self.store.put(name, attack.name, retrained(det.name),
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
        ev = ClipEvaluator(bundle, self.test())
        ca = ev.clean_accuracy()
        out = {}
        for a in attack_list:
            atk = self.attack(a)
            if isinstance(atk, TextAttack):
                base = self.data(self.spec.dataset, self.spec.poison.n, self.spec.poison.data_seed)
                res = goal_metrics(ev, atk, base, self.spec.poison.seed if seed is None else seed)
            else:
                res = ev.backdoor(self.trigger(a, seed), self.spec.poison.target)
            out[a.name] = {"ca": ca, **res}
        return out

    def run_grid(self) -> None:
        """The CLIP attack x defense grid: pre-train, poison, clean, evaluate, audit."""
        name = self.spec.name
        clean = self.pretrain()
        for attack, metrics in self.evaluate(load_clip(clean / MODEL), self.spec.attacks).items():
            self.store.put(name, attack, CLEAN_MODEL, metrics, self.spec.poison.seed)
        for attack in self.spec.attacks:
            for seed in self.spec.poison.all_seeds():
                self.run_cell(attack, clean, seed)

    def run_cell(self, attack: AttackSpec, clean: Path, seed: int) -> None:
        """One attack with one training seed: its poisoned model, the audit, every defense of it."""
        name = self.spec.name
        poisoned = self.poison(attack, clean, seed)
        self.store.put(name, attack.name, "none", self.evaluate(load_clip(poisoned / MODEL), [attack], seed)[attack.name],
                       seed)
        self.store.put(name, attack.name, "filter (audit)", self.audit(attack, clean, seed), seed)
        self.run_detectors(attack, clean, poisoned, seed)
        for defense in self.spec.defenses:
            cleaned = self.clean(attack, defense, poisoned, seed)
            metrics = self.evaluate(load_clip(cleaned / MODEL), [attack], seed)[attack.name]
            report = json.loads((cleaned / "report.json").read_text())
            metrics.update({k: v for k, v in report.items() if k.startswith("final_s_")})
            self.store.put(name, attack.name, defense.name, metrics, seed)

    def has_sections(self) -> bool:
        return bool(self.parts - {GRID})

    def section_jobs(self) -> list[Job]:
        """The jobs of every study that runs, studies of a higher ``rank`` (longer chains) first."""
        chosen = sorted((s for name, s in self.studies.items() if name in self.parts), key=lambda s: -s.rank)
        return [job for study in chosen for job in study.jobs()]

    def run_sections(self, shared: bool = False, reverse: bool = False) -> None:
        """Run the section jobs in order (``reverse``: last first).

        ``shared``: another process of this run works through the same list, so take only the jobs
        nobody has claimed yet. Every job computes the same numbers whichever process runs it
        (both processes have the same thread count).
        """
        jobs = self.section_jobs()
        for name, job in reversed(jobs) if reverse else jobs:
            if not shared or claim(self.out / ".claims" / self.run_id / name):
                log.info("section job %s", name)
                job()

    def run(self, parallel: bool = False) -> dict[tuple[str, str], dict[str, float]]:
        """Run (or reuse) every stage; returns the attack x defense table.

        ``parallel``: a second process works through the studies' jobs beside the CLIP grid
        and this process joins it from the other end when the grid is done, each with half the
        threads (:mod:`poisonlab.bench.parallel`); ignored with one thread.
        """
        self.processes = 2 if parallel and self.has_sections() and torch.get_num_threads() >= 2 else 1
        threads = torch.get_num_threads() // self.processes
        self.store.put_document(self.spec.name, "machine", describe(self.processes, threads))
        if GRID in self.parts:
            self.store.put_study(StudyRow(self.spec.name, self.spec.name, GRID, GRID, "clip"))
        for name in sorted(self.parts - {GRID}):
            self.store.put_study(self.studies[name].row())
        if self.processes == 2:
            try:
                with sections_beside(functools.partial(shared_sections, self.spec.model_dump_json(), str(self.out),
                                                       self.run_id, sorted(self.parts))):
                    if GRID in self.parts:
                        self.run_grid()
                    self.run_sections(shared=True, reverse=True)
            finally:
                shutil.rmtree(self.out / ".claims" / self.run_id, ignore_errors=True)
        else:
            if GRID in self.parts:
                self.run_grid()
            self.run_sections()
        return self.store.table(self.spec.name)


def is_text(factory: Any) -> bool:
    """Whether a registered attack poisons captions (no trigger; measured by Hit@K / MinRank)."""
    return isinstance(factory, type) and issubclass(factory, TextAttack)


def retrained(detector: str) -> str:
    """The grid's condition name of the model retrained on the pairs ``detector`` keeps."""
    return f"{detector} + retrain"


def shared_sections(spec_json: str, out: str, run_id: str, parts: list[str]) -> None:
    """The second process of a parallel run: the section jobs nobody has claimed yet."""
    Runner(ExperimentSpec.model_validate_json(spec_json), out, progress=False, run_id=run_id,
           only=parts).run_sections(shared=True)

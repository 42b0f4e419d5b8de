"""The SSL study: clean vs patch-poisoned encoders and each encoder defense of the poisoned one.

Saha et al., "Backdoor Attacks on Self-Supervised Learning", CVPR 2022 (arXiv:2105.10123).
Stages (cached): SSL training on clean and on patch-poisoned unlabeled data; each registered
encoder defense of the spec on the poisoned encoder (a cleaning defense such as CompRess
distillation on a clean subset; a filter such as PatchSearch on the poisoned training set, then SSL
retraining on the images it keeps); each detector (DECREE) on the clean and the poisoned encoder.
Every encoder is measured with the same linear probe (clean accuracy, FP(target), ASR, RA);
results go to the store under the study's experiment name.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from pydantic import Field

from poisonlab import attacks, defenses, detect, triggers
from poisonlab.attacks.plan import PoisonedDataset, class_index
from poisonlab.bench.cache import MODEL
from poisonlab.bench.config import (
    Count,
    DataName,
    DefenseSpec,
    Name,
    Named,
    Seed,
    TrainSpec,
    seeded_params,
)
from poisonlab.bench.parallel import Job
from poisonlab.bench.study import STUDIES, Study
from poisonlab.data import check_dataset
from poisonlab.metrics.probe import LinearProbe, probe_report
from poisonlab.models.classifier import create_encoder, load_classifier
from poisonlab.train.data import label_tensors
from poisonlab.train.fit import train_ssl
from poisonlab.utils.io import write_json


class SslSpec(TrainSpec):
    """SSL encoders: clean and patch-poisoned, each encoder defense of ``defenses`` applied to the
    poisoned one, each detector of ``detectors`` run on the clean and the poisoned one.

    A cleaning defense (distillation) gets clean copies of the first ``defense_n`` training images;
    a filter (PatchSearch) scans the poisoned training set and the encoder is trained again on
    the images it keeps. ``attack`` poisons the training set (Saha et al.'s patch on ``rate`` of
    the ``target`` class's images, ``ssl-patch``, unless it names another registered attack).
    """

    dataset: DataName = "shapes"
    method: Name = "moco"
    model: Name = "poisonlab-resnet-tiny"
    min_scale: float = Field(default=0.2, gt=0, le=1)
    test_n: Count | None = None
    target: Name
    rate: float = Field(default=0.5, gt=0, le=1)
    attack: Name = "ssl-patch"
    trigger: Name = "patch-image"
    trigger_params: dict[str, Any] = Field(default_factory=dict)
    probe_share: float = Field(default=0.1, gt=0, le=1)
    probe_seed: Seed = 7
    defenses: Named[DefenseSpec] = Field(default_factory=list)
    defense_n: Count = 2500
    detectors: dict[Name, dict[str, Any]] = Field(default_factory=dict)


@STUDIES.register("ssl")
class SslSection(Study):
    family = "encoder"
    Spec = SslSpec
    rank = 3
    headline = ("clean_acc", "fp", "asr", "precision", "recall", "score")


    def test(self) -> Any:
        """The SSL dataset's test split (``test_n`` items of generated data; all of a fixed set)."""
        return self.runner.data(self.spec.dataset, self.spec.test_n, self.runner.spec.test.data_seed, "test")

    def check(self) -> None:
        s = self.spec
        check_dataset(s.dataset)
        self.attack()
        triggers.create(s.trigger, **s.trigger_params)
        for d in s.defenses:
            defenses.create(d.defense, family="encoder", **d.params)
        for name, params in s.detectors.items():
            detect.create(name, **params)

    def base_inputs(self, seed: int) -> dict[str, Any]:
        s = self.spec
        default = {"attack"} if s.attack == SslSpec.model_fields["attack"].default else set()  # earlier stages' keys
        return {**s.budget(exclude={"defenses", "defense_n", "detectors", "probe_share", "probe_seed", "test_n",
                                    *default}), "seed": seed}

    def poisoned_data(self, seed: int) -> PoisonedDataset:
        s = self.spec
        data = self.runner.data(s.dataset, s.n, s.data_seed)
        return PoisonedDataset(data, self.attack()(data, seed=seed))

    def attack(self) -> attacks.Attack:
        """The registered attack that poisons the study's training set."""
        s = self.spec
        return attacks.create(s.attack, target=s.target, trigger=s.trigger, trigger_params=s.trigger_params, rate=s.rate)

    def _train(self, data: Any, tmp: Path, seed: int) -> None:
        s = self.spec
        config = s.train_config(seed, weight_decay=1e-4)
        train_ssl(create_encoder(s.model, self.runner.spec.image_size, seed=seed), data, config, s.method, tmp,
                  progress=self.runner.progress, min_scale=s.min_scale)

    def encoder(self, label: str, seed: int) -> Path:
        """The clean or the poisoned encoder trained with ``seed``."""
        s = self.spec
        inputs = {"stage": "ssl", "label": label, **self.base_inputs(seed)}

        def build(tmp: Path) -> None:
            data = self.runner.data(s.dataset, s.n, s.data_seed)
            self._train(self.poisoned_data(seed) if label == "poisoned" else data, tmp, seed)

        return self.runner.cached(f"ssl:{label}{s.tag(seed)}", inputs, build)

    def defend(self, defense: DefenseSpec, poisoned: Path, seed: int) -> Path:
        """The poisoned encoder of ``seed`` defended by ``defense``: cleaned with the defender's clean
        images, or (a filter) trained again on the poisoned training images it keeps."""
        s = self.spec
        tag, params = s.tag(seed), seeded_params(defense.params, seed, s.seed)
        method = defenses.create(defense.defense, family="encoder", **params)
        inputs = {"stage": defense.defense, "parent": self.runner.keys[f"ssl:poisoned{tag}"], "params": params}
        if method.kind != "filter":
            inputs["n"] = s.defense_n

        def build(tmp: Path) -> None:
            suspect = load_classifier(poisoned / MODEL)
            if method.kind != "filter":
                # the defender's clean subset: clean copies of the first defense_n training images
                clean = label_tensors(self.runner.data(s.dataset, s.defense_n, s.data_seed))
                write_json(tmp / "report.json", method.run(suspect, clean, out=tmp).report)
                return
            data = self.poisoned_data(seed)
            images = label_tensors(data)
            found = method.run(suspect, images, options=defenses.RunOptions(poisoned=set(data.plan.indices)))
            self._train(images.subset(found.kept), tmp, seed)
            write_json(tmp / "report.json", {**found.report, "kept": found.kept})

        return self.runner.cached(f"ssl:{defense.name}{tag}", inputs, build)

    def probe(self, path: Path) -> dict[str, float]:
        s = self.spec
        lab = label_tensors(self.runner.data(s.dataset, s.n, s.data_seed))  # labels of a share of the train split
        lab = lab.subset(defenses.trusted_indices(len(lab), s.probe_share, s.probe_seed))
        test = self.test()
        tst = label_tensors(test)
        trig = triggers.create(s.trigger, **s.trigger_params)
        rep = probe_report(load_classifier(path / MODEL), lab.images, lab.labels, tst.images, tst.labels, trig,
                           class_index(test, s.target), len(test.classnames), LinearProbe())
        return {k: v for k, v in rep.items() if isinstance(v, (int, float))}

    def detect(self, label: str, path: Path, seed: int) -> None:
        """Each detector of the study on one encoder (on the test split's images): its score, threshold,
        verdict and numeric details, a row ``(label, detector)``."""
        data = label_tensors(self.test())
        for name, params in self.spec.detectors.items():
            det = detect.create(name, **params)(load_classifier(path / MODEL), data)
            details = {k: float(v) for k, v in det.details.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.startswith("_")}
            self.put(label, name, {**details, "score": det.score, "threshold": det.threshold,
                                   "backdoored": float(det.verdict)}, seed)

    def jobs(self) -> list[Job]:
        """Independent jobs per seed: the poisoned encoder with its defenses (the longer), the clean encoder."""
        s = self.spec
        return [job for seed in s.all_seeds()
                for job in ((f"ssl:poisoned{s.tag(seed)}", functools.partial(self.run_poisoned, seed)),
                            (f"ssl:clean{s.tag(seed)}", functools.partial(self.run_clean, seed)))]

    def run_clean(self, seed: int) -> None:
        class_index(self.test(), self.spec.target)  # bad input stops the job before any training
        clean = self.encoder("clean", seed)
        self.put("clean", "probe", self.probe(clean), seed)
        self.detect("clean", clean, seed)

    def run_poisoned(self, seed: int) -> None:
        """The poisoned encoder of ``seed`` and each of its defenses: probes, filter rows, detectors."""
        poisoned = self.encoder("poisoned", seed)
        self.put("poisoned", "probe", self.probe(poisoned), seed)
        for defense in self.spec.defenses:
            path = self.defend(defense, poisoned, seed)
            self.put(defense.name, "probe", self.probe(path), seed)
            report = json.loads((path / "report.json").read_text())
            if "kept" in report:
                self.put(defense.name, "filter",
                         {k: report[k] for k in ("precision", "recall", "removed", "caught", "poisoned")}, seed)
        self.detect("poisoned", poisoned, seed)

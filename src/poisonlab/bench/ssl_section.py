"""The SSL section of an experiment: clean vs poisoned vs distilled vs PatchSearch-filtered encoders.

Stages (cached): SSL training on clean and on patch-poisoned unlabeled data; CompRess
distillation of the poisoned encoder on a clean subset; PatchSearch on the poisoned training set
and SSL retraining on the images it keeps; DECREE on the clean and the poisoned encoder. Every
encoder is measured with the same linear probe (clean accuracy, FP(target), ASR); results go to
the store under ``<experiment>/ssl``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from poisonlab import attacks, defenses, detect, triggers
from poisonlab.attacks.plan import PoisonedDataset, class_index
from poisonlab.bench.cache import MODEL
from poisonlab.bench.parallel import Job
from poisonlab.bench.spec import SslSpec, seeded_params
from poisonlab.metrics.probe import LinearProbe, probe_report
from poisonlab.models.classifier import create_encoder, load_classifier
from poisonlab.train.data import label_tensors
from poisonlab.train.fit import train_ssl
from poisonlab.utils.io import write_json


class SslSection:
    def __init__(self, runner: Any, spec: SslSpec) -> None:
        self.runner, self.spec = runner, spec
        self.name = f"{runner.spec.name}/ssl"

    def test(self) -> Any:
        """The SSL dataset's test split (``test_n`` items of generated data; all of a fixed set)."""
        return self.runner.data(self.spec.dataset, self.spec.test_n, self.runner.spec.test.data_seed, "test")

    def base_inputs(self, seed: int) -> dict[str, Any]:
        return {**self.spec.budget(exclude={"distill", "distill_n", "patchsearch", "decree", "probe_share",
                                            "probe_seed", "test_n"}), "seed": seed}

    def poisoned_data(self, seed: int) -> PoisonedDataset:
        s = self.spec
        data = self.runner.data(s.dataset, s.n, s.data_seed)
        atk = attacks.create("ssl-patch", target=s.target, trigger=s.trigger, trigger_params=s.trigger_params, rate=s.rate)
        return PoisonedDataset(data, atk(data, seed=seed))

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

    def distill(self, poisoned: Path, seed: int) -> Path:
        s = self.spec
        tag, params = s.tag(seed), seeded_params(s.distill, seed, s.seed)
        inputs = {"stage": "distill", "parent": self.runner.keys[f"ssl:poisoned{tag}"], "params": params,
                  "n": s.distill_n}

        def build(tmp: Path) -> None:
            # the defender's clean subset: clean copies of the first distill_n training images
            clean = label_tensors(self.runner.data(s.dataset, s.distill_n, s.data_seed))
            result = defenses.Distill(**params).run(load_classifier(poisoned / MODEL), clean, out=tmp)
            write_json(tmp / "report.json", result.report)

        return self.runner.cached(f"ssl:distill{tag}", inputs, build)

    def patchsearch(self, poisoned: Path, seed: int) -> Path:
        s = self.spec
        tag, params = s.tag(seed), seeded_params(s.patchsearch, seed, s.seed)
        inputs = {"stage": "patchsearch", "parent": self.runner.keys[f"ssl:poisoned{tag}"], "params": params}

        def build(tmp: Path) -> None:
            data = self.poisoned_data(seed)
            images = label_tensors(data)
            found = defenses.PatchSearch(**params).run(load_classifier(poisoned / MODEL), images,
                                                       options=defenses.RunOptions(poisoned=set(data.plan.indices)))
            self._train(images.subset(found.kept), tmp, seed)
            write_json(tmp / "report.json", {**found.report, "kept": found.kept})

        return self.runner.cached(f"ssl:patchsearch{tag}", inputs, build)

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

    def decree(self, path: Path) -> dict[str, float]:
        data = label_tensors(self.test())
        det = detect.create("decree", **self.spec.decree)(load_classifier(path / MODEL), data)
        return {"pl1": det.score, "similarity": det.details["similarity"], "backdoored": float(det.verdict)}

    def jobs(self) -> list[Job]:
        """Independent jobs per seed: the poisoned encoder with its defenses (the longer), the clean encoder."""
        s = self.spec
        return [job for seed in s.all_seeds()
                for job in ((f"ssl:poisoned{s.tag(seed)}", functools.partial(self.run_poisoned, seed)),
                            (f"ssl:clean{s.tag(seed)}", functools.partial(self.run_clean, seed)))]

    def run_clean(self, seed: int) -> None:
        class_index(self.test(), self.spec.target)  # bad input stops the job before any training
        clean = self.encoder("clean", seed)
        self.runner.store.put(self.name, "clean", "probe", self.probe(clean), seed)
        self.runner.store.put(self.name, "clean", "decree", self.decree(clean), seed)

    def run_poisoned(self, seed: int) -> None:
        """The poisoned encoder of ``seed``, its distilled student and its PatchSearch retrain: probes,
        filter, DECREE."""
        poisoned = self.encoder("poisoned", seed)
        encoders = {"poisoned": poisoned, "distill": self.distill(poisoned, seed),
                    "patchsearch": self.patchsearch(poisoned, seed)}
        for label, path in encoders.items():
            self.runner.store.put(self.name, label, "probe", self.probe(path), seed)
        rep = json.loads((encoders["patchsearch"] / "report.json").read_text())
        self.runner.store.put(self.name, "patchsearch", "filter",
                              {k: rep[k] for k in ("precision", "recall", "removed", "caught", "poisoned")}, seed)
        self.runner.store.put(self.name, "poisoned", "decree", self.decree(poisoned), seed)

"""The population ``poisonlab scan`` is calibrated on: many small clean and backdoored CLIP models.

A scan's detectors give numbers; whether a number means "backdoored" is learned from models whose
answer is known. Following the population evaluation of Pick your Poison (Lukas & Kerschbaum,
arXiv:2305.03355) and :mod:`poisonlab.detect.population` for classifiers, this trains

- clean members: clean models pre-trained from different seeds and data sizes (the *bases*), and
  clean fine-tunes of each base (different seeds, data draws and sizes), trained exactly as the
  backdoored ones but on clean data, so fine-tuning itself is not what the scan learns to see;
- backdoored members: poisoned fine-tunes of each base with every data-poisoning attack (BadNet,
  Blended, WaNet, SIG, BadCLIP, and Yang et al.'s text Attack II: captions of ``square`` paired
  with images of the target), and each base poisoned directly by BadEncoder, toward different
  target classes, with different seeds;

then scores each member with the scan's detectors (:func:`poisonlab.detect.scan.gather`),
fits the verdict on the *calibration* half and measures it on the *held-out* half (other seeds,
data draws and the second base; :func:`poisonlab.detect.scan.held_out_metrics`). Every member and
every score is a cached stage (:class:`~poisonlab.bench.cache.StageCache`), so adding a detector
rescores without retraining. ``poisonlab scan-calibrate`` runs it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from poisonlab import attacks
from poisonlab.attacks.plan import PoisonedDataset, PoisonPlan
from poisonlab.bench.cache import MODEL, StageCache
from poisonlab.bench.store import ResultsStore
from poisonlab.data import open_dataset
from poisonlab.detect import scan
from poisonlab.metrics import ClipEvaluator
from poisonlab.models import create_clip, load_clip
from poisonlab.models.checkpoint import save_tensors
from poisonlab.models.classifier import ZeroShotClassifier
from poisonlab.train import train_clip
from poisonlab.train.data import label_tensors
from poisonlab.train.loop import TrainConfig
from poisonlab.utils.io import write_json
from poisonlab.utils.output import claim_output

log = logging.getLogger(__name__)
OUTPUTS = ("results.db", "results.db-journal", "results.db-wal", "results.db-shm", "cache", "population.json",
           "calibration.json", "report")
EXPERIMENT = "scan-population"


@dataclass(frozen=True)
class Base:
    """A clean pre-trained model of the population (its seed, data size and data draw)."""

    name: str
    seed: int
    n: int
    data_seed: int


@dataclass(frozen=True)
class PopulationAttack:
    """One attack of the population, as the grid's attacks are written (``poisonlab/presets``)."""

    name: str
    attack: str = "clip-dirty"
    trigger: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    attack_params: dict[str, Any] = field(default_factory=dict)
    rate: float | None = 0.1
    """Share of the pairs poisoned; ``None`` for an attack that poisons the model itself."""


DEFAULT_ATTACKS = (
    PopulationAttack("badnet", trigger="badnet", params={"size": 7}, rate=0.12),
    PopulationAttack("blended", trigger="blended", rate=0.1),
    PopulationAttack("wanet", trigger="wanet", params={"s": 8.0}, rate=0.2),
    PopulationAttack("sig", trigger="sig", rate=0.1),
    PopulationAttack("badclip", attack="badclip", attack_params={"optimizer": {"share": 0.22, "steps": 400}}, rate=0.01),
    PopulationAttack("badencoder", attack="badencoder", attack_params={"epochs": 8}, rate=None),
    PopulationAttack("text2", attack="text-attack-2", attack_params={"source": "square"}, rate=0.05),
)


@dataclass(frozen=True)
class PopulationConfig:
    """What to train. The defaults are the demo's tiny CLIP and budgets (``presets/demo.yaml``):
    2 bases, 9 clean fine-tunes per base, 7 attacks x 2 seeds per base: 20 clean, 28 backdoored."""

    dataset: str = "shapes"
    image_size: int = 32
    model: str = "poisonlab-tiny-rn"
    bases: tuple[Base, ...] = (Base("base0", 0, 8000, 0), Base("base1", 1, 6000, 3))
    pretrain_epochs: float = 9.0
    pretrain_lr: float = 3e-3
    pretrain_warmup: int = 50
    finetune_sizes: tuple[int, ...] = (4000, 3000, 2000)
    finetune_epochs: float = 6.0
    finetune_lr: float = 2e-3
    finetune_warmup: int = 20
    clean_per_base: int = 9
    seeds_per_attack: int = 2
    attacks: tuple[PopulationAttack, ...] = DEFAULT_ATTACKS
    targets: tuple[str, ...] = ("star", "heart", "circle", "cross", "hexagon", "triangle", "ring", "diamond")
    test_n: int = 1000
    min_asr: float = 0.5
    """A backdoored member whose attack reached a lower ASR (a text attack: Hit@10) on the test split
    is not a backdoored model: it stays out of the fit and of the metrics, listed as failed."""


@dataclass(frozen=True)
class MemberSpec:
    """One model of the population: which base it starts from, what poisons it, which half it is in."""

    name: str
    base: str
    attack: str | None
    target: str | None
    seed: int
    n: int
    data_seed: int
    split: str

    @property
    def backdoored(self) -> bool:
        return self.attack is not None


def member_specs(cfg: PopulationConfig) -> list[MemberSpec]:
    """Every member, in a fixed order. Alternate members of each base (the base itself first on the
    first base, second on the second) are the calibration half; the rest is held out: other seeds,
    data draws and targets, and both bases' attacks."""
    out: list[MemberSpec] = []
    for b, base in enumerate(cfg.bases):
        def split(i: int, b: int = b) -> str:
            return "calibration" if (i + b) % 2 == 0 else "held-out"

        out.append(MemberSpec(base.name, base.name, None, None, base.seed, base.n, base.data_seed, split(0)))
        for i in range(cfg.clean_per_base):
            n = cfg.finetune_sizes[i % len(cfg.finetune_sizes)]
            out.append(MemberSpec(f"{base.name}-clean{i}", base.name, None, None, 100 * b + i, n, 10 + 100 * b + i,
                                  split(i + 1)))
        for a, atk in enumerate(cfg.attacks):
            for s in range(cfg.seeds_per_attack):
                j = (b * len(cfg.attacks) + a) * cfg.seeds_per_attack + s
                target = cfg.targets[j % len(cfg.targets)]
                out.append(MemberSpec(f"{base.name}-{atk.name}{s}", base.name, atk.name, target, 100 * b + 50 + j,
                                      cfg.finetune_sizes[0], 60 + 100 * b + j, split(s)))
    return out


class Population:
    """Trains (or reuses) the members of ``cfg`` under ``out`` and measures each one's CA and ASR."""

    def __init__(self, cfg: PopulationConfig, out: str | Path, progress: bool = False) -> None:
        self.cfg, self.out, self.progress = cfg, Path(out), progress
        claim_output(self.out, OUTPUTS)
        self.store = ResultsStore(self.out / "results.db")
        self.cache = StageCache(self.out, EXPERIMENT, f"scan-{time.time_ns()}", self.store)
        self._test: Any = None

    def data(self, n: int, seed: int, split: str = "train") -> Any:
        return open_dataset(self.cfg.dataset, split=split, size=self.cfg.image_size, n=n, seed=seed)

    def test(self) -> Any:
        if self._test is None:
            self._test = self.data(self.cfg.test_n, 0, "test")
        return self._test

    def base(self, base: Base) -> Path:
        c = self.cfg
        inputs = {"stage": "base", "dataset": c.dataset, "size": c.image_size, "model": c.model, **asdict(base),
                  "epochs": c.pretrain_epochs, "lr": c.pretrain_lr, "warmup": c.pretrain_warmup}

        def build(tmp: Path) -> None:
            config = TrainConfig(epochs=c.pretrain_epochs, lr=c.pretrain_lr, warmup=c.pretrain_warmup, seed=base.seed)
            train_clip(create_clip(c.model, seed=base.seed), self.data(base.n, base.data_seed), config, tmp,
                       progress=self.progress)

        return self.cache(f"base:{base.name}", inputs, build)

    def attack_of(self, m: MemberSpec) -> tuple[PopulationAttack, Any]:
        spec = next(a for a in self.cfg.attacks if a.name == m.attack)
        params: dict[str, Any] = {"target": m.target, **spec.attack_params}
        if spec.rate is not None:
            params["rate"] = spec.rate
        if spec.trigger is not None:
            params.update(trigger=spec.trigger, trigger_params=spec.params)
        return spec, attacks.create(spec.attack, **params)

    def member(self, m: MemberSpec) -> Path:
        """The member's folder: ``model.safetensors``, ``member.json`` (what it is, CA, ASR), and the
        poison plan of a backdoored one."""
        base_spec = next(b for b in self.cfg.bases if b.name == m.base)
        base = self.base(base_spec)
        if m.name == m.base:
            return base
        c = self.cfg
        inputs = {"stage": "member", "parent": self.cache.keys[f"base:{m.base}"], **asdict(m),
                  "attack_spec": asdict(self.attack_of(m)[0]) if m.backdoored else None,
                  "epochs": c.finetune_epochs, "lr": c.finetune_lr, "warmup": c.finetune_warmup}
        inputs.pop("split")

        def build(tmp: Path) -> None:
            data = self.data(m.n, m.data_seed)
            if m.backdoored:
                _, atk = self.attack_of(m)
                if getattr(atk, "kind", None) == "model":  # BadEncoder: the model poisoned on shadow data
                    atk(load_clip(base / MODEL), data, m.seed, out_dir=tmp, progress=self.progress)
                    return
                made = atk.prepare(load_clip(base / MODEL), data, m.seed)
                if isinstance(made, torch.Tensor):
                    save_tensors(tmp / "trigger.safetensors", {"patch": made})
                data = PoisonedDataset(data, atk(data, seed=m.seed))
                data.plan.save(tmp / "plan.json")
            config = TrainConfig(epochs=c.finetune_epochs, lr=c.finetune_lr, warmup=c.finetune_warmup, seed=m.seed)
            train_clip(load_clip(base / MODEL), data, config, tmp, stage="poison" if m.backdoored else "finetune",
                       progress=self.progress)

        return self.cache(f"member:{m.name}", inputs, build)

    def measured(self, m: MemberSpec) -> dict[str, Any]:
        """What the member is, with its CA and (backdoored) ASR toward its target, on the test split
        (a text attack: Hit@10 of its source class's captions toward the target's images)."""
        folder = self.member(m)
        ev = ClipEvaluator(load_clip(folder / MODEL), self.test())
        row: dict[str, Any] = {**asdict(m), "backdoored": m.backdoored, "path": str(folder / MODEL),
                               "ca": ev.clean_accuracy()}
        if m.backdoored:
            atk = self.attack_of(m)[1]
            assert m.target is not None
            if getattr(atk, "source", None) is not None:  # a text attack: Hit@10 of the source's captions
                row["asr"] = ev.text_attack(atk.source, m.target)["hit@10"]
                return row
            trigger = (atk.trigger_for(self.cfg.image_size) if getattr(atk, "kind", None) == "model"
                       else PoisonPlan.load(folder / "plan.json").build_trigger())
            assert trigger is not None
            row["asr"] = ev.backdoor(trigger, m.target)["asr"]
        return row

    def train(self) -> list[dict[str, Any]]:
        """Every member trained and measured; also written to ``population.json``."""
        rows = []
        for m in member_specs(self.cfg):
            rows.append(self.measured(m))
            log.info("member %s: CA %.3f%s", m.name, rows[-1]["ca"],
                     f", ASR {rows[-1]['asr']:.3f} toward {m.target}" if m.backdoored else "")
        write_json(self.out / "population.json", {"config": asdict(self.cfg), "members": rows})
        return rows

    def scored(self, m: MemberSpec, params: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """The scan's evidence on the member (a cached stage keyed on the member and the detectors'
        parameters), with the images a scan renders itself."""
        folder = self.member(m)
        parent = self.cache.keys[f"member:{m.name}" if m.name != m.base else f"base:{m.base}"]
        inputs = {"stage": "scan", "parent": parent, "detectors": params, "images": [scan.RENDERED_IMAGES, scan.RENDER_SEED]}

        def build(tmp: Path) -> None:
            ds = scan.rendered(self.cfg.dataset, self.cfg.image_size)
            zs = ZeroShotClassifier(load_clip(folder / MODEL), ds.classnames, ds.templates)
            write_json(tmp / "evidence.json", scan.gather(zs, label_tensors(ds), params).to_dict())

        done = self.cache(f"scan:{m.name}", inputs, build)
        return json.loads((done / "evidence.json").read_text())

    def scan_target(self, m: MemberSpec, classnames: list[str]) -> int | None:
        """The class a scan should name for the member: its target, when a trigger leads to it (a text
        attack has none: its captions of one class retrieve another's images)."""
        if m.target is None or getattr(self.attack_of(m)[1], "source", None) is not None:
            return None
        return classnames.index(m.target)

    def calibrate(self, params: dict[str, dict[str, Any]] | None = None, command: str = "") -> dict[str, Any]:
        """Train and score every member, fit the verdict on the calibration half and measure it on the
        held-out half (members whose attack did not take left out of both); writes
        ``calibration.json`` and returns the metrics of both halves."""
        params = {**scan.DEFAULT_PARAMS, **(params or {})}
        members = self.train()
        classnames = self.test().classnames
        rows = []
        for m, row in zip(member_specs(self.cfg), members, strict=True):
            ev = self.scored(m, params)
            rows.append({k: row[k] for k in ("name", "base", "split", "backdoored", "attack", "target", "ca")}
                        | {"asr": row.get("asr"), "features": ev["features"], "targets": ev["targets"],
                           "seconds": ev["seconds"],
                           "target_index": self.scan_target(m, classnames)})
        for r in rows:
            r["took"] = not r["backdoored"] or r["asr"] >= self.cfg.min_asr
        calibration = [r for r in rows if r["split"] == "calibration" and r["took"]]
        held = [r for r in rows if r["split"] == "held-out" and r["took"]]
        cal = scan.fit(calibration, detectors=params, command=command,
                       population={"config": asdict(self.cfg), "classnames": classnames})
        for r in rows:
            r["probability"] = cal.probability(r["features"])
            r["verdict"] = cal.verdict(r["probability"])
            r["suspected_target"] = cal.suspected_target(r["features"], r["targets"])
        cal.members = rows
        metrics = {"held-out": scan.held_out_metrics(cal, held), "calibration": scan.held_out_metrics(cal, calibration)}
        for split, part in metrics.items():
            part["n_failed"] = sum(not r["took"] for r in rows if r["split"] == split)
        cal.population["metrics"] = metrics
        cal.save(self.out / "calibration.json")
        self.store.put_document(EXPERIMENT, "scan-calibration", {"metrics": metrics, "members": rows})
        return metrics

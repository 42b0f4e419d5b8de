"""Poison plans: the JSON manifest an attack produces, and the dataset that applies it lazily.

A plan records everything needed to rebuild the poisoned data from the clean data: the attack and
its parameters, the seed, a description of the clean dataset (no absolute paths), the trigger and
one entry per poisoned index (replacement caption, label and/or source image). Its JSON bytes
depend only on these inputs. :class:`PoisonedDataset` applies a plan on the fly; untouched items
come back exactly as the clean dataset returns them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from poisonlab.data.base import ImageCaptionDataset, Item
from poisonlab.errors import InputError
from poisonlab.triggers import Trigger
from poisonlab.triggers import create as create_trigger
from poisonlab.utils.io import dumps_json, write_json
from poisonlab.utils.seeding import make_generator

PLAN_FORMAT = "poisonlab.plan/1"


@dataclass(frozen=True)
class PoisonEntry:
    """One poisoned item: its index (and the item's stable key, for data that has keys) and what
    replaces the clean caption, label or image."""

    index: int
    caption: str | None = None
    label: int | None = None
    image_from: int | None = None
    triggered: bool = True
    key: str | None = None


@dataclass(frozen=True)
class PoisonPlan:
    """A reproducible description of a poisoned dataset."""

    attack: str
    params: dict[str, Any]
    seed: int
    dataset: dict[str, Any]
    num_samples: int
    trigger: dict[str, Any] | None
    entries: tuple[PoisonEntry, ...] = field(default_factory=tuple)

    @property
    def indices(self) -> list[int]:
        return [e.index for e in self.entries]

    def to_json(self) -> str:
        """Canonical JSON text (sorted keys; no timestamps or absolute paths)."""
        body = asdict(self)
        body["entries"] = [{k: v for k, v in asdict(e).items() if v is not None} for e in self.entries]
        body["format"] = PLAN_FORMAT
        return dumps_json(body)

    def digest(self) -> str:
        """SHA-256 of the canonical JSON: the plan's identity in provenance records."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def save(self, path: str | Path) -> None:
        write_json(path, json.loads(self.to_json()))

    @classmethod
    def load(cls, path: str | Path) -> PoisonPlan:
        """Read a plan file; ``InputError`` when it is missing or not a poisonlab plan."""
        path = Path(path)
        try:
            body = json.loads(path.read_text())
        except FileNotFoundError:
            raise InputError(f"plan file not found: {path}") from None
        except (ValueError, RecursionError) as err:  # not JSON, not UTF-8, or nested past Python's stack
            raise InputError(f"{path}: not a JSON plan ({type(err).__name__})") from None
        if not isinstance(body, dict) or body.pop("format", None) != PLAN_FORMAT:
            raise InputError(f"{path}: not a poisonlab plan (format {PLAN_FORMAT} expected)")
        check_fields(body, PLAN_FIELDS, path, "")
        entries = body.pop("entries")
        for i, entry in enumerate(entries):
            check_fields(entry, ENTRY_FIELDS, path, f"entries[{i}].")
        trigger = body.get("trigger")
        if trigger is not None:
            check_fields(trigger, TRIGGER_FIELDS, path, "trigger.")
        if body["dataset"].get("open") is not None:
            check_fields(body["dataset"]["open"], OPEN_FIELDS, path, "dataset.open.")
        return cls(entries=tuple(PoisonEntry(**e) for e in entries), **body)

    def build_trigger(self) -> Trigger | None:
        return create_trigger(self.trigger["name"], **self.trigger["params"]) if self.trigger else None


_INT, _STR, _BOOL = (int,), (str,), (bool,)
PLAN_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "attack": (_STR, True), "params": ((dict,), True), "seed": (_INT, True), "dataset": ((dict,), True),
    "num_samples": (_INT, True), "trigger": ((dict, type(None)), True), "entries": ((list,), True)}
"""Each field of a plan file: the types it may have, and whether it is required."""
ENTRY_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "index": (_INT, True), "caption": ((str, type(None)), False), "label": ((int, type(None)), False),
    "image_from": ((int, type(None)), False), "triggered": (_BOOL, False), "key": ((str, type(None)), False)}
TRIGGER_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {"name": (_STR, True), "params": ((dict,), True)}
OPEN_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "spec": (_STR, True), "split": (_STR, False), "size": (_INT, False), "n": (_INT, False), "seed": (_INT, False)}
"""How a plan says to reopen its dataset (``dataset.open``, written by ``poison``)."""


def check_fields(body: Any, fields: dict[str, tuple[tuple[type, ...], bool]], path: Path, prefix: str) -> None:
    """``InputError`` naming the file and the field unless ``body`` is a mapping with exactly the
    known ``fields``, each of its type (an index is an int, not a bool or a string)."""
    if not isinstance(body, dict):
        raise InputError(f"{path}: {prefix.rstrip('.') or 'the plan'} must be a mapping")
    for key in body:
        if key not in fields:
            raise InputError(f"{path}: unknown field {prefix}{key}")
    for key, (types, required) in fields.items():
        if key not in body:
            if required:
                raise InputError(f"{path}: field {prefix}{key} is missing")
            continue
        value = body[key]
        wrong = not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
        if wrong:
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise InputError(f"{path}: field {prefix}{key} must be {names}, got {type(value).__name__}")


class PoisonedDataset(ImageCaptionDataset):
    """A clean dataset with a plan applied lazily.

    The trigger of entry ``i`` draws its random numbers from a generator seeded by
    ``(plan.seed, i)``, so item ``i`` is the same whatever order items are read in.

    Raises:
        InputError: the plan was made for another dataset: another size, an index out of range,
            a label the dataset has no class for, or an item whose key differs from the plan's.
    """

    def __init__(self, base: ImageCaptionDataset, plan: PoisonPlan) -> None:
        check_plan(plan, base)
        self.base = base
        self.plan = plan
        self.entries = {e.index: e for e in plan.entries}
        self.trigger = plan.build_trigger()
        self.classnames = base.classnames
        self.templates = base.templates
        self.classnames_source, self.templates_source = base.classnames_source, base.templates_source

    def __len__(self) -> int:
        return len(self.base)

    def poisoned_indices(self) -> list[int]:
        return self.plan.indices

    @property
    def skipped(self) -> int:  # type: ignore[override]
        return self.base.skipped

    def keys(self) -> list[str] | None:
        return self.base.keys()

    def __getitem__(self, index: int) -> Item:
        entry = self.entries.get(index)
        if entry is None:
            return self.base[index]
        image, caption, label = self.base[index]
        if entry.image_from is not None:
            image = self.base[entry.image_from][0]
        if self.trigger is not None and entry.triggered:
            g = make_generator("poison", self.plan.seed, index)
            image = self.trigger(image[None], generator=g)[0]
        caption = entry.caption if entry.caption is not None else caption
        label = entry.label if entry.label is not None else label
        return image, caption, label

    def labels(self) -> list[int]:
        labels = self.base.labels()
        return [self.entries[i].label if i in self.entries and self.entries[i].label is not None else y
                for i, y in enumerate(labels)]

    def captions(self) -> list[str]:
        caps = self.base.captions()
        return [self.entries[i].caption if i in self.entries and self.entries[i].caption is not None else c
                for i, c in enumerate(caps)]

    def describe(self) -> dict[str, Any]:
        return {"name": "poisoned", "base": self.base.describe(), "plan": self.plan.digest()}

    def fingerprint(self) -> str | None:
        return self.base.fingerprint()


def check_plan(plan: PoisonPlan, dataset: ImageCaptionDataset) -> None:
    """Refuse ``plan`` unless it fits ``dataset`` item for item (see :class:`PoisonedDataset`)."""
    n = len(dataset)
    if n != plan.num_samples:
        raise InputError(f"plan made for another dataset: it is for {plan.num_samples} items, the dataset has {n}")
    classes = len(dataset.classnames) if dataset.classnames else None
    seen: set[int] = set()
    for e in plan.entries:
        if e.index in seen:
            raise InputError(f"plan lists item {e.index} twice (each poisoned item has one entry)")
        seen.add(e.index)
        for name, value in (("index", e.index), ("image_from", e.image_from)):
            if value is not None and not 0 <= value < n:
                raise InputError(f"plan entry {name} {value} is outside the dataset's {n} items")
        if e.label is not None and classes is not None and not 0 <= e.label < classes:
            raise InputError(f"plan entry {e.index} sets label {e.label}, but the dataset has classes 0..{classes - 1}")
    keyed = [e for e in plan.entries if e.key is not None]
    if not keyed:
        return
    keys = dataset.keys()
    if keys is None:
        raise InputError("plan made for another dataset: its items have keys, the dataset's items have none")
    for e in keyed:
        if keys[e.index] != e.key:
            raise InputError(f"plan made for another dataset: item {e.index} is key {e.key!r}, "
                             f"the dataset has {keys[e.index]!r}")


def choose(pool: list[int], count: int, generator: torch.Generator) -> list[int]:
    """``count`` distinct indices drawn uniformly from ``pool``, returned sorted."""
    if count > len(pool):
        raise InputError(f"cannot poison {count} items: only {len(pool)} are eligible")
    perm = torch.randperm(len(pool), generator=generator)[:count]
    return sorted(pool[int(i)] for i in perm)


def resolve_count(rate: float | None, count: int | None, total: int) -> int:
    """Number to poison from ``rate`` (share of ``total``, in (0, 1]) or an explicit ``count``."""
    if (rate is None) == (count is None):
        raise InputError("give exactly one of rate or count")
    if count is not None:
        if count < 1:
            raise InputError(f"count must be >= 1, got {count}")
        return int(count)
    if not 0.0 < rate <= 1.0:  # type: ignore[operator]
        raise InputError(f"rate must be in (0, 1], got {rate}")
    return max(1, int(round(rate * total)))  # type: ignore[operator]


def class_index(dataset: ImageCaptionDataset, name: str) -> int:
    """Index of class ``name`` (or a numeric string) in ``dataset.classnames``."""
    names = dataset.classnames or []
    if name in names:
        return names.index(name)
    if name.isdigit() and int(name) < len(names):
        return int(name)
    raise InputError(f"class {name!r} is not in the dataset; valid: {', '.join(names) or '(dataset has no classes)'}")

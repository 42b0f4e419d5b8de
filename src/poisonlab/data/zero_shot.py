"""Class names and prompt templates for zero-shot evaluation, from the data, not from folder names.

- clip_benchmark's dataset layout: ``classnames.txt`` (one name per line, in label order) and
  ``zeroshot_classification_templates.txt`` (one template per line, ``{c}`` for the class name)
  beside the data (next to a CSV, in a folder of shards or an ImageFolder root) are picked up
  by :func:`discover`;
- built in: ``imagenet1k`` (the 1,000 names of open_clip's ``zero_shot_metadata``) and the
  ``openai`` templates (its 80 OpenAI ImageNet prompts; ``simple``: its 7);
- an ImageFolder whose folders are WordNet ids (all of ImageNet-1K or a subset such as
  ImageNette or ImageNet-A/R) is named through timm's ImageNet synset list
  (:func:`synset_classnames`).

Every dataset says where its names and templates came from (``classnames_source``,
``templates_source``), and ``eval --json`` reports it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

from open_clip import zero_shot_metadata
from timm.data import ImageNetInfo

from poisonlab.data.base import ImageCaptionDataset, check_classnames
from poisonlab.errors import InputError

log = logging.getLogger(__name__)
CLASSNAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"
WNID = re.compile(r"^n\d{8}$")


def _imagenet1k() -> list[str]:
    return list(zero_shot_metadata.IMAGENET_CLASSNAMES)


def _openai() -> list[str]:
    return [t("{}") for t in zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES]


def _simple() -> list[str]:
    return [t("{}") for t in zero_shot_metadata.SIMPLE_IMAGENET_TEMPLATES]


BUILTIN_CLASSNAMES: dict[str, Callable[[], list[str]]] = {"imagenet1k": _imagenet1k}
BUILTIN_TEMPLATES: dict[str, Callable[[], list[str]]] = {"openai": _openai, "simple": _simple}


def synset_classnames(folders: list[str]) -> list[str] | None:
    """ImageNet-1K names of WordNet-id folder names (timm's synset order = open_clip's names).

    ``None`` when the folders are not WordNet ids; a warning when they look like ids but some
    are not among ImageNet-1K's 1,000 (then the folder names stay).
    """
    if not folders or not all(WNID.match(f) for f in folders):
        return None
    index = {s: i for i, s in enumerate(ImageNetInfo().label_names())}
    unknown = [f for f in folders if f not in index]
    if unknown:
        log.warning("%d of %d folders look like WordNet ids but are not ImageNet-1K classes (first: %s); "
                    "the folder names are used as class names: pass --classnames", len(unknown), len(folders),
                    unknown[0])
        return None
    names = _imagenet1k()
    return [names[index[f]] for f in folders]


def _lines(path: Path, what: str) -> list[str]:
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except FileNotFoundError:
        raise InputError(f"{what} file not found: {path}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: {what} file is not UTF-8 text") from None
    lines = [line for line in lines if line]
    if not lines:
        raise InputError(f"{path}: no {what} in the file")
    return lines


def classnames_from(spec: str) -> tuple[list[str], str]:
    """Names and their source from a built-in name (``imagenet1k``) or a file (one name per line in
    label order; a blank line inside the list is refused, since it would shift every later class)."""
    if spec in BUILTIN_CLASSNAMES:
        return BUILTIN_CLASSNAMES[spec](), f"{spec} (open_clip zero_shot_metadata)"
    path = Path(spec)
    names = _lines(path, "class names")
    try:
        raw = path.read_text(encoding="utf-8").strip().splitlines()
    except OSError as err:
        raise InputError(f"{path}: cannot read class names ({err.strerror})") from None
    blank = [i for i, line in enumerate(raw) if not line.strip()]
    if blank:
        raise InputError(f"{path} line {blank[0] + 1}: empty class name (one name per line, in label order)")
    return check_classnames(names, str(path)), path.name


def templates_from(spec: str) -> tuple[list[str], str]:
    """Templates (``{}`` for the name) and their source from a built-in name or a file whose lines
    hold ``{c}`` (clip_benchmark's form) or ``{}``."""
    if spec in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[spec](), f"{spec} (open_clip zero_shot_metadata)"
    lines = _lines(Path(spec), "templates")
    out = []
    for i, line in enumerate(lines):
        template = line.replace("{c}", "{}")
        if template.count("{}") != 1 or template.replace("{}", "").count("{") or template.count("}") != 1:
            raise InputError(f"{Path(spec).name} line {i + 1}: a template needs exactly one {{c}} or {{}} for the class name, got {line!r}")
        out.append(template)
    return out, Path(spec).name


def apply_names(dataset: ImageCaptionDataset, classnames: str | None = None, templates: str | None = None) -> None:
    """Set ``dataset``'s zero-shot class names and/or templates from a spec (built-in or file).

    Raises:
        InputError: the names do not cover the dataset's labels, or a file is malformed.
    """
    if classnames is not None:
        names, source = classnames_from(classnames)
        labels = dataset.labels()
        needed = len(dataset.classnames) if dataset.classnames else max(labels, default=-1) + 1
        if needed <= 0:
            raise InputError("the dataset has no labels to name")
        if len(names) != needed:
            raise InputError(f"{source}: {len(names)} class names, but the dataset has {needed} classes")
        dataset.rename_classes(names, source)
    if templates is not None:
        dataset.templates, dataset.templates_source = templates_from(templates)


def discover(dataset: ImageCaptionDataset, folder: Path) -> None:
    """Pick up clip_benchmark's ``classnames.txt`` / templates file in ``folder``, if present."""
    names, temps = folder / CLASSNAMES_FILE, folder / TEMPLATES_FILE
    apply_names(dataset, str(names) if names.is_file() else None, str(temps) if temps.is_file() else None)

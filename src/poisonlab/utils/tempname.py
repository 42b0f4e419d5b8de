"""Temporary names: what poisonlab writes before it renames, and the marker that makes them its own.

A folder poisonlab owns holds a manifest, ``.poisonlab-output.json`` (:mod:`poisonlab.utils.output`),
with a random ``marker`` of 16 hex digits. Every temporary file or folder poisonlab makes in such a
folder, or in a folder up to three levels below it, is named ``.NAME.<marker>.<random>.tmp``; a
later run sweeps only the entries that carry the marker of the folder's own manifest (and that
no live process holds). A user's ``.notes.abcdefgh.tmp``, or a temporary name without the marker,
is never touched.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

MANIFEST = ".poisonlab-output.json"
MARKER = re.compile(r"^[0-9a-f]{16}$")
_DEPTH = 4  # the folder itself and three levels up


def manifest_body(folder: Path) -> dict[str, Any] | None:
    """The parsed manifest of ``folder``: ``None`` when there is none, ``{}`` when it is not a
    regular file of JSON object text (a symlink, a folder, garbage: the caller decides)."""
    path = folder / MANIFEST
    try:
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not stat.S_ISREG(info.st_mode) or info.st_size > 1 << 20:
        return {}
    try:
        body = json.loads(path.read_bytes())
    except (ValueError, OSError, RecursionError):
        return {}
    return body if isinstance(body, dict) else {}


def marker_for(folder: str | os.PathLike[str]) -> str | None:
    """The marker of the nearest manifest in ``folder`` or up to three folders above it."""
    here = Path(os.path.abspath(folder))
    for candidate in [here, *here.parents][:_DEPTH]:
        body = manifest_body(candidate)
        if body is not None:
            marker = body.get("marker")
            return marker if isinstance(marker, str) and MARKER.match(marker) else None
    return None


def temp_prefix(target: Path) -> str:
    """The prefix of a temporary name for ``target`` (``mkstemp``/``mkdtemp`` add 8 random characters
    and the ``.tmp`` suffix)."""
    marker = marker_for(target.parent)
    return f".{target.name}.{marker}." if marker else f".{target.name}."


def own_temp(name: str, marker: str) -> bool:
    """Whether ``name`` is a temporary name poisonlab made under ``marker``."""
    return bool(MARKER.match(marker)) and re.match(rf"^\..+\.{marker}\.[A-Za-z0-9_]{{8}}\.tmp$", name) is not None

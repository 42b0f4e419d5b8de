"""Checkpoint I/O: safetensors weights plus a JSON sidecar, never an unrestricted pickle.

A poisonlab CLIP checkpoint is ``NAME.safetensors`` (the open_clip state dict) next to
``NAME.json``, laid out like open_clip's own hub/local-dir config: ``model_cfg`` (the full model
config), ``preprocess_cfg`` (image size, mean, std) and ``poisonlab`` (architecture name,
tokenizer, training provenance). It loads in plain open_clip once the config is registered::

    cfg = json.load(open("NAME.json"))["model_cfg"]
    json.dump(cfg, open("configs/my-arch.json", "w")); open_clip.add_model_config("configs")
    open_clip.create_model_and_transforms("my-arch", pretrained="NAME.safetensors")

or, with the sidecar copied to ``DIR/open_clip_config.json`` beside the weights,
``open_clip.create_model_and_transforms("local-dir:DIR")``.

Other files: ``.pt``/``.bin``/``.pth`` are read with ``torch.load(weights_only=True)``.

This module holds the file formats only; each family saves and opens its bundles beside them
(:func:`poisonlab.models.clip.save_clip` / ``load_clip``,
:func:`poisonlab.models.classifier.save_classifier` / ``load_classifier``), so nothing here
imports a bundle module.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from poisonlab.errors import InputError
from poisonlab.models.finite import check_finite
from poisonlab.utils.io import atomic_write, load_tensors
from poisonlab.utils.output import NAME

log = logging.getLogger(__name__)
SIDECAR_FORMAT = "poisonlab.clip/1"
def sidecar_path(weights: str | Path) -> Path:
    return Path(weights).with_suffix(".json")


def safetensors_bytes(state: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """The safetensors file of ``state``, the same bytes for the same tensors: the library writes
    its JSON header in hash order, so the header is re-written with sorted keys (the tensor data
    and their offsets are unchanged; the header stays space-padded to 8 bytes)."""
    raw = save(state, metadata=metadata)
    n = int.from_bytes(raw[:8], "little")
    header = json.dumps(json.loads(raw[8 : 8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + raw[8 + n :]


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> Path:
    """Write ``tensors`` as one safetensors file, atomically (an attack's optimised trigger)."""
    with atomic_write(path) as f:
        f.write(safetensors_bytes({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, {}))
    return Path(path)


def sidecar_body(path: str | Path) -> dict[str, Any] | None:
    side = sidecar_path(path)
    if not side.is_file():
        return None
    try:
        body = json.loads(side.read_bytes())
    except (ValueError, RecursionError) as err:  # not JSON, not UTF-8, or nested past Python's stack
        raise InputError(f"{side}: unreadable checkpoint sidecar ({type(err).__name__})") from None
    return body if isinstance(body, dict) else {}


def checked_preprocess(body: dict[str, Any], where: str | Path) -> dict[str, Any]:
    """A sidecar's ``preprocess_cfg``, checked: ``size`` a positive integer, ``mean`` and ``std`` one
    finite number per channel (``std`` above 0); absent keys stay absent."""
    pre = body.get("preprocess_cfg", {})
    if not isinstance(pre, dict):
        raise InputError(f"{where}: preprocess_cfg must be a mapping, got {pre!r}")
    size = pre.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        raise InputError(f"{where}: preprocess_cfg size must be a positive integer, got {size!r}")
    for key in ("mean", "std"):
        value = pre.get(key)
        if value is None:
            continue
        ok = isinstance(value, list) and len(value) in (1, 3) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        if not ok or (key == "std" and min(value) <= 0):
            raise InputError(f"{where}: preprocess_cfg {key} must be 1 or 3 finite numbers"
                             f"{' above 0' if key == 'std' else ''}, got {value!r}")
    return pre


def checkpoint_kind(path: str | Path) -> str | None:
    """The sidecar's format (``poisonlab.clip/1``, ``poisonlab.classifier/1``, ...) or ``None``."""
    body = sidecar_body(path)
    meta = (body or {}).get("poisonlab")
    return meta.get("format") if isinstance(meta, dict) else None


def read_sidecar(path: str | Path) -> dict[str, Any] | None:
    """The CLIP sidecar next to a weights file, or ``None`` if there is none."""
    side = sidecar_path(path)
    body = sidecar_body(path)
    if body is None:
        return None
    meta = body.get("poisonlab")
    if isinstance(meta, dict) and meta.get("format") == CLASSIFIER_FORMAT:
        kind = "encoder" if meta.get("kind") == "encoder" else "classifier"
        raise InputError(f"{path}: a poisonlab {kind} checkpoint, where a CLIP model is needed")
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT or "model_cfg" not in body:
        raise InputError(f"{side}: not a poisonlab checkpoint sidecar")
    pre = checked_preprocess(body, side)
    return {**meta, "model_config": body["model_cfg"], "mean": pre.get("mean"), "std": pre.get("std")}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file or a ``weights_only`` torch file; ``InputError`` if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}")
    if path.suffix != ".safetensors":
        state = load_tensors(path)
    else:
        try:
            state = load_file(str(path))
        except (SafetensorError, RuntimeError, EOFError, OSError, ValueError) as err:
            msg = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise InputError(f"cannot read checkpoint {path} (truncated or not a checkpoint?): {msg}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise InputError(f"{path}: no state dict of tensors inside")
    check_finite(state, path)
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_weights(bundle: Any, path: str | Path) -> None:
    """Load a checkpoint into ``bundle.model``; any missing/extra/mis-shaped key is an InputError, and
    so is an integer tensor where the model holds floating-point weights (a quantized checkpoint:
    casting its integers would measure a different model). Other float types are cast."""
    state = read_state_dict(path)
    own = bundle.model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shaped = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or extra or shaped:
        first = (shaped or missing or extra)[0]
        why = "has another shape" if shaped else ("is missing" if missing else "is unexpected")
        raise InputError(f"{path} does not fit architecture {bundle.name!r}: key {first!r} {why} "
                         f"({len(shaped)} mis-shaped, {len(missing)} missing, {len(extra)} unexpected)")
    typed = sorted(k for k in own if own[k].is_floating_point() != state[k].is_floating_point())
    if typed:
        raise InputError(f"{path}: key {typed[0]!r} is {state[typed[0]].dtype} where architecture {bundle.name!r} "
                         f"holds {own[typed[0]].dtype} ({len(typed)} such keys; a quantized checkpoint is not read)")
    bundle.model.load_state_dict(state)
    meta = (sidecar_body(path) or {}).get("poisonlab")
    has = isinstance(meta, dict) and isinstance(meta.get("provenance"), dict)
    bundle.provenance = dict(meta["provenance"]) if has else {"init": "file", "file": Path(path).name}


CLASSIFIER_FORMAT = "poisonlab.classifier/1"


def check_classifier_meta(meta: dict[str, Any], where: Path) -> None:
    """``InputError`` naming the sidecar field that is not what a classifier sidecar holds: names
    are names, ``timm_kwargs`` a mapping of names to scalars, ``num_classes`` 0 (an encoder) to 100000, class
    names strings."""
    for key in ("model_name", "timm_name"):
        if not isinstance(meta[key], str) or not NAME.match(meta[key]):
            raise InputError(f"{where}: {key} must be a name (letters, digits, . _ + - only), got {str(meta[key])[:60]!r}")
    kwargs = meta["timm_kwargs"]
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) and k.isidentifier() and _plain(v)
                                               for k, v in kwargs.items()):
        raise InputError(f"{where}: timm_kwargs must map argument names to numbers, strings, booleans or "
                         "lists of them")
    n = meta["num_classes"]
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 100_000:
        raise InputError(f"{where}: num_classes must be an integer from 0 (an encoder) to 100000, got {n!r}")
    names = meta.get("classnames")
    if names is not None and (not isinstance(names, list) or not all(isinstance(c, str) for c in names)):
        raise InputError(f"{where}: classnames must be a list of strings")
    if meta.get("kind", "classifier") not in ("classifier", "encoder"):
        raise InputError(f"{where}: kind must be classifier or encoder, got {str(meta.get('kind'))[:40]!r}")


def _plain(value: Any) -> bool:
    """A scalar, or a flat list of scalars (a timm argument such as ``layers=[1, 1, 1, 1]``)."""
    scalar = (int, float, str, bool, type(None))
    return isinstance(value, scalar) or (isinstance(value, list) and all(isinstance(v, scalar) for v in value))

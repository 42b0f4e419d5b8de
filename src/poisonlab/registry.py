"""Name -> class registries for triggers, attacks, datasets and defenses.

Every method in poisonlab is registered once under a name and built with
``create(kind, name, **params)``; there are no ``if name == ...`` chains anywhere.

Example:
    >>> from poisonlab.registry import Registry
    >>> TRIGGERS = Registry("trigger")
    >>> @TRIGGERS.register("noop")
    ... class Noop:
    ...     def __init__(self, scale: float = 1.0):
    ...         self.scale = scale
    >>> TRIGGERS.create("noop", scale=2.0).scale
    2.0
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import numbers
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from poisonlab.errors import InputError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    """One registered method: its name, factory and, for defenses and detectors, the model
    family it works on (``clip``, ``classifier``, ``encoder``) and its kind (``cleaning``,
    ``repair``, ``filter``, ``detector``)."""

    name: str
    factory: Callable[..., Any]
    family: str | None = None
    kind: str | None = None


class Registry(Generic[T]):
    """A named collection of factories of one kind (``"trigger"``, ``"attack"``, ...).

    A name may be registered once per model family (``finetune`` cleans a CLIP model and repairs
    a classifier); :meth:`get` with the family picks the entry, without it the name must be
    unambiguous.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[tuple[str, str | None], Entry] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator that registers a class (or factory) under ``name``.

        The factory's class attributes ``family`` and ``kind`` (when it has them as strings) are the entry's.
        """

        def wrap(factory: Callable[..., T]) -> Callable[..., T]:
            family, kind = (value if isinstance(value := getattr(factory, key, None), str) else None
                            for key in ("family", "kind"))
            if (name, family) in self._items:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self._items[(name, family)] = Entry(name, factory, family, kind)
            factory.registered_name = name  # type: ignore[attr-defined]
            return factory

        return wrap

    def entry(self, name: str, family: str | None = None, kind: str | None = None) -> Entry:
        """The entry registered as ``name`` (for ``family``, of ``kind``); ``InputError`` naming
        the valid choices otherwise."""
        found = [e for e in self._items.values() if e.name == name and family in (None, e.family)]
        if not found:
            valid = ", ".join(self.available(family, kind))
            where = f" for {family} models" if family else ""
            raise InputError(f"unknown {self.kind} {name!r}{where}; valid: {valid}")
        if len(found) > 1:
            families = ", ".join(sorted(str(e.family) for e in found))
            raise InputError(f"{self.kind} {name!r} exists for {families} models; say which family")
        if kind is not None and found[0].kind != kind:
            valid = ", ".join(self.available(family, kind))
            raise InputError(f"{self.kind} {name!r} is a {found[0].kind} method, not a {kind} one; valid: {valid}")
        return found[0]

    def get(self, name: str, family: str | None = None, kind: str | None = None) -> Callable[..., T]:
        """The factory registered under ``name``; ``InputError`` listing valid names if none."""
        return self.entry(name, family, kind).factory

    def create(self, name: str, /, *, family: str | None = None, kind: str | None = None, **params: Any) -> T:
        """Build the ``name`` method with ``params``; unknown parameters are an ``InputError``."""
        factory = self.get(name, family, kind)
        accepted = _parameter_names(factory)
        unknown = sorted(set(params) - accepted) if accepted is not None else []
        if unknown:
            raise InputError(
                f"{self.kind} {name!r} has no parameter {', '.join(unknown)}; "
                f"valid: {', '.join(sorted(accepted or ()))}"
            )
        hints = _hints(factory)
        for key, value in params.items():
            check_type(f"{self.kind} {name!r}: {key}", value, hints.get(key))
        try:
            return factory(**params)
        except (TypeError, ValueError) as err:
            if isinstance(err, InputError):
                raise
            raise InputError(f"{self.kind} {name!r}: {err}") from err

    def available(self, family: str | None = None, kind: str | None = None) -> list[str]:
        """Registered names (of ``family`` and ``kind`` when given), sorted."""
        return sorted({e.name for e in self.entries(family, kind)})

    def entries(self, family: str | None = None, kind: str | None = None) -> list[Entry]:
        """Registered entries (of ``family`` and ``kind`` when given), by name and family."""
        chosen = [e for e in self._items.values() if family in (None, e.family) and kind in (None, e.kind)]
        return sorted(chosen, key=lambda e: (e.name, str(e.family)))

    def __contains__(self, name: object) -> bool:
        return any(e.name == name for e in self._items.values())


def parameters(factory: Callable[..., Any]) -> dict[str, Any]:
    """A method's keyword parameters and their defaults (``inspect.Parameter.empty`` if none)."""
    if dataclasses.is_dataclass(factory):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(factory):
            if f.init:
                empty = f.default_factory() if f.default_factory is not dataclasses.MISSING else inspect.Parameter.empty
                out[f.name] = f.default if f.default is not dataclasses.MISSING else empty
        return out
    sig = inspect.signature(factory)
    return {p.name: p.default for p in sig.parameters.values()
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
            and p.name != "self"}


def _parameter_names(factory: Callable[..., Any]) -> set[str] | None:
    """Keyword parameters a factory accepts, or ``None`` when it takes ``**kwargs``."""
    sig = inspect.signature(factory)
    names = set()
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            names.add(p.name)
    names.discard("self")
    return names


def _hints(factory: Callable[..., Any]) -> dict[str, Any]:
    """The resolved annotations of a factory's parameters (empty where they cannot be resolved)."""
    target = factory.__init__ if inspect.isclass(factory) else factory  # type: ignore[misc]
    try:
        return typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - an unresolvable annotation only means no type check
        return {}


def check_type(what: str, value: Any, hint: Any) -> None:
    """``InputError`` unless ``value`` fits a scalar annotation (``int``, ``float``, ``str``,
    ``bool``, optionally ``| None``): integers for ``int``, finite numbers for ``float``.

    Other annotations (lists, tuples, mappings, ``Any``) are left to the method itself.
    """
    if hint is None:
        return
    allowed = set(typing.get_args(hint)) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else {hint}
    if value is None and type(None) in allowed:
        return
    scalar = allowed & {int, float, str, bool}
    if not scalar or len(allowed - {type(None)}) != len(scalar):
        return
    if bool in scalar and isinstance(value, bool):
        return
    if float in scalar and isinstance(value, numbers.Real) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise InputError(f"{what} must be a finite number, got {value!r}")
        return
    if int in scalar and isinstance(value, int) and not isinstance(value, bool):
        return
    if str in scalar and isinstance(value, str):
        return
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    expected = " or ".join(names[t] for t in (int, float, str, bool) if t in scalar)
    raise InputError(f"{what} must be {expected}, got {value!r}")


def declared(root: Path = Path(__file__).parent) -> dict[str, set[tuple[str, str | None, str | None]]]:
    """Every ``@REGISTRY.register("name")`` in the package's source under ``root``, by registry
    variable (``DEFENSES``, ...): each name with the ``family`` and ``kind`` class attributes of
    its class (its own or a base class's of the package), read with :mod:`ast`.

    What ``poisonlab list`` shows without importing the methods, and with them torch;
    ``tests/test_registry.py`` keeps it equal to the imported registries.
    """
    classes: dict[str, tuple[list[str], dict[str, str]]] = {}
    found: list[tuple[str, str, str]] = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                values = {t.id: v.value for t, v in _assignments(node.body)
                          if isinstance(t, ast.Name) and isinstance(v, ast.Constant) and isinstance(v.value, str)}
                classes[node.name] = ([b.id for b in node.bases if isinstance(b, ast.Name)], values)
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                found += [(d.func.value.id, d.args[0].value, node.name) for d in node.decorator_list
                          if isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "register"
                          and isinstance(d.func.value, ast.Name) and d.args and isinstance(d.args[0], ast.Constant)]

    def attribute(cls: str, key: str) -> str | None:
        bases, values = classes.get(cls, ([], {}))
        return values.get(key) or next(filter(None, (attribute(b, key) for b in bases)), None)

    out: dict[str, set[tuple[str, str | None, str | None]]] = {}
    for registry, name, cls in found:
        out.setdefault(registry, set()).add((name, attribute(cls, "family"), attribute(cls, "kind")))
    return out


def _assignments(body: list[ast.stmt]) -> list[tuple[ast.expr, ast.expr | None]]:
    """``(target, value)`` of a class body's plain and annotated assignments."""
    pairs: list[tuple[ast.expr, ast.expr | None]] = []
    for stmt in body:
        if isinstance(stmt, ast.Assign):
            pairs += [(t, stmt.value) for t in stmt.targets]
        elif isinstance(stmt, ast.AnnAssign):
            pairs.append((stmt.target, stmt.value))
    return pairs

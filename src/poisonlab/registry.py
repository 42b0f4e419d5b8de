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

import inspect
import math
import numbers
import types
import typing
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from poisonlab.errors import InputError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of factories of one kind (``"trigger"``, ``"attack"``, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator that registers a class (or factory) under ``name``."""

        def wrap(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._items:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = factory
            factory.registered_name = name  # type: ignore[attr-defined]
            return factory

        return wrap

    def get(self, name: str) -> Callable[..., T]:
        """The factory registered under ``name``; ``InputError`` listing valid names if none."""
        try:
            return self._items[name]
        except KeyError:
            valid = ", ".join(self.available())
            raise InputError(f"unknown {self.kind} {name!r}; valid: {valid}") from None

    def create(self, name: str, **params: Any) -> T:
        """Build the ``name`` method with ``params``; unknown parameters are an ``InputError``."""
        factory = self.get(name)
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

    def available(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items


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

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
